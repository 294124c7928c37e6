"""Which model files curate loads, decided in one place before Ultralytics or torch reads them.

A model file is code unless it is loaded with care (README, "Trust"):

- ``.pt`` checkpoints are pickles; a default ``torch.load`` runs whatever a crafted one says. Every Ultralytics
  load runs in Ultralytics' restricted mode (``ULTRALYTICS_SAFE_LOAD``): ``torch.load(weights_only=True)`` with an
  allow-list of Ultralytics and torch model classes; the same mode builds a checkpoint's embedded architecture
  without ``eval()``. A checkpoint naming anything else is refused (``UnsafeModelError``), legacy pickles included.
- An architecture ``.yaml``'s ``activation:`` is evaluated by Ultralytics' default parser and its module names are
  looked up in a module's globals: ``check_architecture`` accepts only ``nn.<Activation>(numbers)``, known layer
  names and plain literal arguments.
- TorchScript (``torch.jit.load``) does not unpickle Python objects or import Python modules; its program runs
  only TorchScript operators. It is loaded as is.
- A registered model's weights must still be the ones registered: ``check_digest`` compares the SHA-256 over the
  loaded parameters with the registry's before the model is used.
"""

from __future__ import annotations

import ast
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from curation.errors import ExitCode, ModelLoadError

SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"
ARCHITECTURE_SUFFIXES = (".yaml", ".yml")
_PLAIN_STRING = re.compile(r"^[A-Za-z0-9_.:+-]*$")  # identifiers (nc, nearest, None) and numbers, never an expression
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


class UnsafeModelError(ModelLoadError):
    """A model file was refused: it references code or objects outside the allow-list, its architecture holds
    something other than plain names and numbers, or a registered model's weights changed since registration."""

    exit_code = ExitCode.UNSAFE_MODEL


def enable_safe_loading() -> None:
    """Switch Ultralytics' restricted loading on for this process; call before Ultralytics is imported."""
    os.environ[SAFE_LOAD_ENV] = "1"


def confirm_safe_loading() -> None:
    """After Ultralytics is imported: make sure its restricted mode is really on.

    The flag is read once, when Ultralytics is first imported; if something imported it earlier without the flag
    (a test, a plugin), the module's value is set here. Restricted loading needs torch 2.6 or later, without which
    Ultralytics would silently fall back to an unrestricted load: refused instead.
    """
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as ultralytics_utils

    if not tasks._SafeLoad.SUPPORTED:
        import torch

        raise ModelLoadError(
            f"torch {torch.__version__} cannot load model files safely (weights_only loading needs torch >= 2.6): "
            "upgrade torch"
        )
    tasks.SAFE_LOAD = True
    ultralytics_utils.SAFE_LOAD = True


def refusal(exc: BaseException, spec: str) -> UnsafeModelError | None:
    """The ``UnsafeModelError`` for an exception raised by a restricted load, or None if it is another failure.

    torch's restricted unpickler names the global it refused (``GLOBAL posix.system``); Ultralytics' layer and
    activation checks raise ``TypeError`` mentioning restricted loading.
    """
    for cause in _chain(exc):
        found = _REFUSED_GLOBAL.search(str(cause))
        if found:
            return UnsafeModelError(
                f"model file {spec} refused: it references {found.group(1)}, which is not an Ultralytics or torch "
                "model class (unpickling it could run code); curate loads only checkpoints made of allow-listed "
                "classes"
            )
        if isinstance(cause, TypeError) and "restricted" in str(cause):
            return UnsafeModelError(f"model file {spec} refused: {_first_line(cause)}")
    return None


def check_architecture(spec: str) -> None:
    """Refuse an architecture file that holds anything but plain layer names and numbers (see module doc).

    ``spec`` is what the user gave: a file, or the name of an architecture Ultralytics ships (resolved inside its
    package, unless a file of that name — or of its scale-less name, which Ultralytics also tries — exists here).
    """
    path = Path(spec).expanduser()
    candidates = [path]
    # Ultralytics also tries the scale-less name (yolov8n-cls.yaml -> yolov8-cls.yaml): check that file too.
    candidates.append(Path(re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", str(path))))
    for candidate in candidates:
        if candidate.is_file():
            validate_architecture(_read_architecture(candidate), str(candidate))
    if not path.is_file() and path.parent != Path("."):
        raise ModelLoadError(f"architecture file not found: {spec} (curate never downloads models)")


def _read_architecture(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read architecture file {path}: {_first_line(exc)}") from None


def validate_architecture(data: Any, source: str) -> None:
    """Raise ``UnsafeModelError`` unless ``data`` (a parsed architecture yaml) holds only plain values: an
    ``activation`` of the form ``nn.Name(numbers)``, layers ``[from, repeats, known module, [literal args]]``."""

    def refuse(what: str) -> UnsafeModelError:
        return UnsafeModelError(f"architecture file {source} refused: {what}")

    if not isinstance(data, dict):
        raise refuse("expected a mapping with backbone and head")
    for key, value in data.items():
        if key in ("backbone", "head", "activation"):
            continue
        if not _plain(value, allow_mappings=True):
            raise refuse(f"{key!r} must hold plain names and numbers")
    activation = data.get("activation")
    if activation is not None and not _known_activation(activation):
        raise refuse(
            f"activation {str(activation)[:80]!r} is not of the form nn.Name() with numeric arguments "
            "(e.g. nn.SiLU() or nn.LeakyReLU(0.1))"
        )
    known = _known_modules()
    for part in ("backbone", "head"):
        layers = data.get(part)
        if not isinstance(layers, list):
            raise refuse(f"{part!r} must be a list of layers")
        for i, layer in enumerate(layers):
            where = f"{part}[{i}]"
            if not (isinstance(layer, list) and len(layer) == 4):
                raise refuse(f"{where} must be [from, repeats, module, args]")
            origin, repeats, module, args = layer
            if not (_is_int(origin) or (isinstance(origin, list) and all(_is_int(o) for o in origin))):
                raise refuse(f"{where}: 'from' must be a layer index or a list of them")
            if not _is_int(repeats):
                raise refuse(f"{where}: the repeat count must be an integer")
            if not isinstance(module, str) or module not in known:
                raise refuse(f"{where}: {str(module)[:80]!r} is not an Ultralytics or torch.nn layer")
            if not isinstance(args, list) or not _plain(args, allow_mappings=False):
                raise refuse(f"{where}: arguments must be plain numbers, names or lists of them")


def check_digest(version: str, path: str, expected: str | None, actual: str) -> None:
    """Refuse a registered model whose loaded weights differ from the ones recorded when it was registered."""
    if expected and actual != expected:
        raise UnsafeModelError(
            f"the weights of registered model {version} at {path} changed since they were registered (SHA-256 of "
            f"the parameters is {actual[:12]}…, the registry holds {expected[:12]}…): refusing to use them; restore "
            "the file, or pass a model you trust with --model"
        )


def _plain(value: Any, *, allow_mappings: bool) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return bool(_PLAIN_STRING.match(value))
    if isinstance(value, list):
        return all(_plain(v, allow_mappings=allow_mappings) for v in value)
    if isinstance(value, dict) and allow_mappings:
        return all(isinstance(k, str | int) and _plain(v, allow_mappings=True) for k, v in value.items())
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _known_activation(spec: Any) -> bool:
    """``nn.Name(...)`` or ``torch.nn.Name(...)`` with number/bool/None arguments, ``Name`` a torch.nn module."""
    if not isinstance(spec, str):
        return False
    try:
        call = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call):
        return False
    names: list[str] = []
    node: ast.expr = call.func
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return False
    names.append(node.id)
    if names[1:] not in (["nn"], ["nn", "torch"]):
        return False
    import torch

    klass = getattr(torch.nn, names[0], None)
    if not (isinstance(klass, type) and issubclass(klass, torch.nn.Module)):
        return False
    arguments = [*call.args, *(kw.value for kw in call.keywords)]
    return all(_number_literal(a) for a in arguments)


def _number_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, bool | int | float))


@lru_cache(maxsize=1)
def _known_modules() -> frozenset[str]:
    """Layer names an architecture may use: torch.nn modules (``nn.X``) and the model layers Ultralytics' parser
    resolves by name (``ultralytics.nn.tasks``), nothing else in that module's namespace."""
    import torch
    import ultralytics.nn.tasks as tasks

    def is_layer(obj: Any) -> bool:
        return isinstance(obj, type) and issubclass(obj, torch.nn.Module)

    names = {name for name, obj in vars(tasks).items() if is_layer(obj) and not name.startswith("_")}
    names |= {f"nn.{name}" for name, obj in vars(torch.nn).items() if is_layer(obj)}
    return frozenset(names)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text.replace("ERROR ❌️ ", "")
