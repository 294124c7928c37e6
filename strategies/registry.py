"""Strategies by name, the shape of the YAML config (``{name: options}``).

A new strategy registers by adding one entry to ``STRATEGIES``: a factory whose keyword parameters are its
options, annotated with their types. ``check_options`` (run by ``get_strategy``, and by the config loader) checks
names and types against the factory's signature, so a typo or a wrong type in a config names the bad option
instead of failing somewhere inside. Names are spelled one way everywhere: ``canonical_name``
("least-confidence" → "least_confidence") is the only normalisation, used for strategy, measure and reducer
names alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

from strategies._validate import canonical_name, check_name, coerce_option
from strategies.badge import BadgeStrategy
from strategies.base import Strategy
from strategies.cluster_margin import ClusterMarginStrategy
from strategies.cold_hybrid import ColdHybridStrategy
from strategies.errors import InvalidOptionError
from strategies.hybrid import HybridStrategy
from strategies.kcenter import KCenterStrategy
from strategies.kmeans_sampling import KMeansStrategy
from strategies.random_sampling import RandomStrategy
from strategies.typiclust import TypiClustStrategy
from strategies.uncertainty_sampling import UncertaintyStrategy

__all__ = ["STRATEGIES", "StrategyFactory", "canonical_name", "check_options", "get_strategy", "strategy_names"]

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
        "badge": BadgeStrategy,
        "cluster_margin": ClusterMarginStrategy,
        "typiclust": TypiClustStrategy,
        "cold_hybrid": ColdHybridStrategy,
    }
)


def strategy_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(STRATEGIES)


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of strategy ``name``, checked against its factory's signature and converted to the types it
    declares (``"0.3"`` → 0.3 for a ``float``). New strategies get this for free from their annotations.

    Raises:
        UnknownStrategyError: no such strategy.
        InvalidOptionError: an unknown option (the message lists the valid ones), a missing required one, or a
            value of the wrong type ("strategy 'hybrid' option 'weight': expected a number, got 'abc'");
            ``.option`` names it.
    """
    key = check_name(name, STRATEGIES, "strategy")
    params_by_name = inspect.signature(STRATEGIES[key], eval_str=True).parameters
    params = params_by_name.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(options)
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = {p.name for p in params if p.kind in keyword_kinds}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise InvalidOptionError(
            f"strategy {key!r} has no option {unknown[0]!r}; valid options: {valid}", option=str(unknown[0])
        )
    missing = sorted(
        name for name in accepted - set(options) if params_by_name[name].default is inspect.Parameter.empty
    )
    if missing:
        raise InvalidOptionError(f"strategy {key!r} needs option {missing[0]!r}", option=missing[0])
    out: dict[str, Any] = {}
    for option, value in options.items():
        what = f"strategy {key!r} option {option!r}"
        try:
            out[option] = coerce_option(value, params_by_name[option].annotation, what)
        except InvalidOptionError as exc:
            raise InvalidOptionError(str(exc), option=option) from None
    return out


def get_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` ("least-confidence" spelling accepted) with ``options``.

    Raises:
        UnknownStrategyError: no such strategy (the message lists the valid names, sorted).
        InvalidOptionError: an option the strategy does not take, a required one missing, or a bad value.
    """
    key = check_name(name, STRATEGIES, "strategy")
    return STRATEGIES[key](**check_options(key, options))
