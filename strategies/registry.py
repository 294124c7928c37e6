"""Strategies by name, the shape of the YAML config (``{name: options}``).

A new strategy registers by adding one entry to ``STRATEGIES``: a factory whose keyword parameters are its
options. ``get_strategy`` checks the options against the factory's signature, so a typo in a config names the
bad option instead of failing somewhere inside. Names are spelled one way everywhere: ``canonical_name``
("least-confidence" → "least_confidence") is the only normalisation, used for strategy, measure and reducer
names alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

from strategies._validate import canonical_name, check_name
from strategies.base import Strategy
from strategies.errors import InvalidOptionError
from strategies.hybrid import HybridStrategy
from strategies.kcenter import KCenterStrategy
from strategies.kmeans_sampling import KMeansStrategy
from strategies.random_sampling import RandomStrategy
from strategies.uncertainty_sampling import UncertaintyStrategy

__all__ = ["STRATEGIES", "StrategyFactory", "canonical_name", "get_strategy", "strategy_names"]

StrategyFactory = Callable[..., Strategy]

STRATEGIES: Mapping[str, StrategyFactory] = MappingProxyType(
    {
        "least_confidence": partial(UncertaintyStrategy, "least_confidence"),
        "margin": partial(UncertaintyStrategy, "margin"),
        "entropy": partial(UncertaintyStrategy, "entropy"),
        "ratio": partial(UncertaintyStrategy, "ratio"),
        "random": RandomStrategy,
        "kcenter": KCenterStrategy,
        "kmeans": KMeansStrategy,
        "hybrid": HybridStrategy,
    }
)


def strategy_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(STRATEGIES)


def _check_options(name: str, factory: StrategyFactory, options: Mapping[str, Any]) -> None:
    params_by_name = inspect.signature(factory).parameters
    params = params_by_name.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = {p.name for p in params if p.kind in keyword_kinds}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise InvalidOptionError(f"strategy {name!r} has no option {unknown[0]!r}; valid options: {valid}")
    missing = sorted(
        name for name in accepted - set(options) if params_by_name[name].default is inspect.Parameter.empty
    )
    if missing:
        raise InvalidOptionError(f"strategy {name!r} needs option {missing[0]!r}")


def get_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` ("least-confidence" spelling accepted) with ``options``.

    Raises:
        UnknownStrategyError: no such strategy (the message lists the valid names, sorted).
        InvalidOptionError: an option the strategy does not take, a required one missing, or a bad value.
    """
    key = check_name(name, STRATEGIES, "strategy")
    factory = STRATEGIES[key]
    _check_options(key, factory, options)
    return factory(**options)
