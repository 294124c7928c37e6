"""Exported runtimes: the same Ultralytics network run by OpenVINO or ONNX Runtime (``scoring.runtime``).

The network is exported offline from the weights already loaded (torch's own ONNX exporter, OpenVINO's own PyTorch
converter: nothing is downloaded) as a module with the outputs curate stores: the head's output (class
probabilities, or decoded boxes with every class score, plus mask prototypes for segmentation) *and* the pooled
backbone features the diversity strategies use as embeddings. Preprocessing (uint8 → [0, 1]) is part of the graph.
Everything after the forward pass (NMS, boxes back to original pixels, polygons, NaN checks, normalising the
embedding) is ``ModelRuntime``'s, so every runtime gives the same outputs in the same shapes.

The export is cached beside the weights (``.curate-exports/`` in the weights' folder; for an architecture ``.yaml``
or an unwritable folder, ``$XDG_CACHE_HOME/curate/exports``), in one folder per model version and runtime, with an
``export.json`` holding the key it was built for (weights digest, model version, task, input size, export format,
torch / Ultralytics / runtime versions) and the SHA-256 of each file written. A cached export is used only if the key
matches, every file is a regular file owned by this user, not writable by others, and hashes to what was recorded;
anything else (stale, tampered, half-written, someone else's) is rebuilt in a fresh folder and swapped in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from curation.config import ModelSettings
from curation.errors import ConfigError, ModelExportError, ModelLoadError, RuntimeUnavailableError
from curation.scoring.runtime import (
    DetectionOptions,
    ModelInfo,
    ModelRuntime,
    cpu_has_fast_bf16,
    model_format,
    read_ultralytics,
)

RUNTIMES = ("torch", "openvino", "onnxruntime")
EXPORTED = ("openvino", "onnxruntime")
AUTO_ORDER = ("onnxruntime",)  # what ``auto`` may pick on a CPU, in order (see resolve_runtime)
EXPORT_FORMAT = 1  # bump whenever the exported graph changes: every cached export becomes stale
ONNX_OPSET = 17
_PACKAGES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}
_EXTRAS = {"openvino": "curate[openvino]", "onnxruntime": "curate[onnx]"}
CACHE_DIR_NAME = ".curate-exports"
MANIFEST = "export.json"


def _missing(runtime: str) -> list[str]:
    """The packages ``runtime`` needs (to export and to run) that cannot be imported."""
    return [pkg for pkg in _PACKAGES.get(runtime, ()) if importlib.util.find_spec(pkg) is None]


def is_installed(runtime: str) -> bool:
    return not _missing(runtime)


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_runtime(requested: str, device: torch.device, fmt: str) -> str:
    """The runtime that will run the forward pass.

    ``auto``: torch on CUDA (fp16 on cuDNN) and for TorchScript models; on a CPU, ONNX Runtime if installed, else
    torch ("installed": onnxruntime and onnx both importable). OpenVINO (the fastest bare forward pass measured,
    within a few per cent of ONNX Runtime in the whole pipeline) runs only when asked for: a test process that had
    scored with it and then trained crashed (segfault) once, which the torch and ONNX Runtime paths never did, and
    the crash has not been reproduced or explained since (docs/BENCHMARKS.md). An explicit choice that cannot run
    is a clear error, never a silent fallback.
    """
    if requested not in ("auto", *RUNTIMES):
        raise ConfigError(f"unknown scoring.runtime {requested!r}: use auto, {', '.join(RUNTIMES)}")
    if requested == "auto":
        if device.type != "cpu" or fmt != "ultralytics":
            return "torch"
        return next((name for name in AUTO_ORDER if is_installed(name)), "torch")
    if requested == "torch":
        return "torch"
    if fmt != "ultralytics":
        raise ConfigError(
            f"scoring.runtime {requested} runs Ultralytics models; a TorchScript model runs with scoring.runtime torch"
        )
    missing = _missing(requested)
    if missing:
        raise RuntimeUnavailableError(
            f"scoring.runtime {requested} needs {', '.join(missing)}, which is not installed: "
            f"pip install '{_EXTRAS[requested]}' (or use scoring.runtime torch)"
        )
    if device.type == "cuda" and not (requested == "onnxruntime" and _ort_cuda()):
        raise RuntimeUnavailableError(
            f"scoring.runtime {requested} runs on the CPU here (no CUDA execution provider installed): "
            "use --device cpu, or scoring.runtime torch on the GPU"
        )
    return requested


# --------------------------------------------------------------------------------------------------------------------
# The exported graph


class WithEmbedding(torch.nn.Module):
    """An Ultralytics network with two outputs: its head's output and the pooled features entering the head.

    Input: uint8 (B, 3, H, W). Outputs: classify ``(probs, features)``; detect ``(pred, features)`` with ``pred``
    (B, 4 + nc, anchors); segment ``(pred, proto, features)``. The features are the same as the torch runtime's
    hook takes (not yet L2-normalised).
    """

    def __init__(self, net: Any, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self._features: list[torch.Tensor] = []
        head: Any = net.model[-1]
        if task != "classify":
            head.dynamic = True  # anchors follow the input's height and width (the graph keeps them symbolic)
        target: torch.nn.Module = head.linear if task == "classify" else head
        target.register_forward_pre_hook(self._grab)

    def _grab(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        feats = args[0]
        if isinstance(feats, (list, tuple)):
            self._features = [torch.cat([f.float().mean(dim=(2, 3)) for f in feats], dim=1)]
        else:
            self._features = [feats.float().flatten(1)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.float().mul(1.0 / 255.0)  # the torch runtime's scaling, to the last bit
        out = self.net(x)
        first = out[0] if isinstance(out, (tuple, list)) else out
        features = self._features[0]
        if self.task == "segment":
            return first[0], first[1], features
        return first, features


def _output_names(task: str) -> list[str]:
    return ["pred", "proto", "embedding"] if task == "segment" else ["pred", "embedding"]


def _export_onnx(wrapper: WithEmbedding, info: ModelInfo, folder: Path) -> list[str]:
    names = _output_names(info.task)
    spatial = {} if info.task == "classify" else {2: "height", 3: "width"}
    dynamic: dict[str, dict[int, str]] = {"images": {0: "batch", **spatial}}
    for name in names:
        dynamic[name] = {0: "batch"}
    if info.task == "segment":
        dynamic["proto"] = {0: "batch", 2: "proto_h", 3: "proto_w"}
    if info.task != "classify":
        dynamic["pred"] = {0: "batch", 2: "anchors"}
    example = torch.full((1, 3, info.imgsz, info.imgsz), 114, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the head
        torch.onnx.export(
            wrapper,
            (example,),
            str(folder / "model.onnx"),
            input_names=["images"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return ["model.onnx"]


def _export_openvino(wrapper: WithEmbedding, info: ModelInfo, folder: Path) -> list[str]:
    import openvino as ov

    size = info.imgsz
    example = torch.full((1, 3, size, size), 114, dtype=torch.uint8)
    shape = [-1, 3, size, size] if info.task == "classify" else [-1, 3, -1, -1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(wrapper, example_input=example, input=[(shape, ov.Type.u8)])
    for out, name in zip(model.outputs, _output_names(info.task), strict=True):
        out.get_tensor().set_names({name})
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return ["model.xml", "model.bin"]


_EXPORTERS: dict[str, Callable[[WithEmbedding, ModelInfo, Path], list[str]]] = {
    "onnxruntime": _export_onnx,
    "openvino": _export_openvino,
}


# --------------------------------------------------------------------------------------------------------------------
# The cache


def _package_version(runtime: str) -> str:
    module = __import__(_PACKAGES[runtime][0])
    return str(getattr(module, "__version__", "?"))


def export_key(info: ModelInfo, runtime: str) -> dict[str, Any]:
    """What an export depends on: a cached export built for another key is stale."""
    import ultralytics

    return {
        "export_format": EXPORT_FORMAT,
        "runtime": runtime,
        "runtime_version": _package_version(runtime),
        "digest": info.digest,
        "version": info.version,
        "task": info.task,
        "imgsz": info.imgsz,
        "classes": len(info.class_names),
        "opset": ONNX_OPSET if runtime == "onnxruntime" else None,
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
    }


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curate" / "exports"


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and not folder.is_symlink()


def cache_root(info: ModelInfo) -> Path:
    """``.curate-exports`` beside the weights; the user cache for a .yaml architecture or an unwritable folder."""
    source = Path(info.source)
    if source.is_file() and source.suffix.lower() == ".pt":
        beside = source.parent / CACHE_DIR_NAME
        if _writable_dir(beside):
            return beside
    return user_cache_dir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ours(path: Path) -> bool:
    """A regular file or folder (not a link) owned by this user and writable by nobody else."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return False
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return False
    return not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cached_export(folder: Path, key: dict[str, Any]) -> list[Path] | None:
    """The files of a valid export in ``folder`` built for ``key``, or None (missing, stale or not trusted)."""
    manifest = folder / MANIFEST
    if not (_ours(folder) and _ours(manifest)):
        return None
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("key") != key or not isinstance(recorded.get("files"), dict):
        return None
    files = []
    for name, digest in recorded["files"].items():
        path = folder / str(name)
        if Path(str(name)).name != name or not _ours(path) or not path.is_file() or _sha256(path) != digest:
            return None
        files.append(path)
    return files or None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] or "model"


@contextmanager
def _export_lock(root: Path, name: str) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(root / f"{name}.lock")):
        yield


def ensure_export(info: ModelInfo, net: Any, runtime: str, root: Path | None = None) -> list[Path]:
    """The exported model files for ``runtime``: reused from the cache when valid, else exported now."""
    root = root or cache_root(info)
    root.mkdir(parents=True, exist_ok=True)
    key = export_key(info, runtime)
    name = f"{_slug(info.version)}-{runtime}"
    folder = root / name
    with _export_lock(root, name):
        files = cached_export(folder, key)
        if files is not None:
            return files
        build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            os.chmod(build, 0o755)
            wrapper = WithEmbedding(net, info.task).eval()
            try:
                with torch.inference_mode(False), torch.no_grad():
                    written = _EXPORTERS[runtime](wrapper, info, build)
            except Exception as exc:  # the exporters raise many types; the message says which model failed
                raise ModelExportError(
                    f"cannot export {info.source} for scoring.runtime {runtime}: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''} "
                    "(scoring.runtime torch runs it without exporting)"
                ) from None
            for written_name in written:
                os.chmod(build / written_name, 0o644)
            manifest = {"key": key, "files": {n: _sha256(build / n) for n in written}}
            (build / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.chmod(build / MANIFEST, 0o644)
            stale = None
            if folder.exists() or folder.is_symlink():
                stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=root))
                os.replace(folder, stale / "old")
            os.replace(build, folder)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        files = cached_export(folder, key)
        if files is None:  # pragma: no cover - a concurrent writer outside the lock
            raise ModelExportError(f"the export of {info.source} in {folder} could not be verified after writing it")
        return files


# --------------------------------------------------------------------------------------------------------------------
# Sessions


class Session(Protocol):
    """One compiled exported model: uint8 (B, 3, H, W) in, its outputs (in ``_output_names`` order) out."""

    def run(self, images: NDArray[np.uint8]) -> list[NDArray[np.float32]]: ...


@dataclass
class OnnxSession:
    session: Any

    @classmethod
    def create(cls, path: Path, threads: int | None, cuda: bool) -> OnnxSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: one per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        return cls(ort.InferenceSession(str(path), options, providers=providers))

    def run(self, images: NDArray[np.uint8]) -> list[NDArray[np.float32]]:
        return [np.asarray(o) for o in self.session.run(None, {"images": images})]


@dataclass
class OpenVinoSession:
    compiled: Any

    @classmethod
    def create(cls, path: Path, threads: int | None, precision: str) -> OpenVinoSession:
        import openvino as ov
        import openvino.properties.hint as hints

        core = ov.Core()
        config: dict[str, Any] = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,  # one batch at a time, every thread on it
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        }
        if threads:
            import openvino.properties as props

            config[props.inference_num_threads] = threads
        return cls(core.compile_model(core.read_model(str(path)), "CPU", config))

    def run(self, images: NDArray[np.uint8]) -> list[NDArray[np.float32]]:
        result = self.compiled(images, share_inputs=True)
        return [np.asarray(result[out]) for out in self.compiled.outputs]


class ExportedRuntime(ModelRuntime):
    """``ModelRuntime`` whose forward pass runs an exported copy of the network (see the module docstring)."""

    def __init__(
        self,
        info: ModelInfo,
        runtime: str,
        files: list[Path],
        device: torch.device,
        precision: str,
        detection: DetectionOptions,
    ) -> None:
        super().__init__(info, torch.nn.Identity(), device, precision, detection)
        self.name = runtime
        self.files = files
        self._sessions: dict[int | None, Session] = {}
        self._threads: int | None = None

    def _install_hooks(self) -> None:  # the embedding is an output of the exported graph
        return None

    @contextmanager
    def _thread_scope(self, count: int | None) -> Iterator[None]:
        before, self._threads = self._threads, count
        try:
            yield
        finally:
            self._threads = before

    def threads(self, count: int | None) -> Any:
        return self._thread_scope(count)

    def _session(self) -> Session:
        count = self._threads
        if count not in self._sessions:
            if self.name == "onnxruntime":
                self._sessions[count] = OnnxSession.create(self.files[0], count, self.device.type == "cuda")
            else:
                self._sessions[count] = OpenVinoSession.create(self.files[0], count, self.precision)
        return self._sessions[count]

    def _outputs(self, batch: torch.Tensor) -> list[torch.Tensor]:
        images = np.ascontiguousarray(batch.cpu().numpy(), dtype=np.uint8)
        return [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in self._session().run(images)]

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> Any:
        return self._outputs(batch)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor, geometries: Any) -> list[Any]:
        outputs = self._outputs(batch)
        self._features = [outputs[-1]]
        embeddings = self._embeddings()
        if self.info.task == "classify":
            return self._classification_outputs(outputs[0], embeddings)
        head = (outputs[0], outputs[1]) if self.info.task == "segment" else outputs[0]
        return self._detection_outputs((head,), embeddings, geometries)


def resolve_exported_precision(runtime: str, precision: str) -> str:
    """The exported runtimes compute in fp32 (``auto`` included); OpenVINO runs bf16 only when asked for
    (``scoring.precision: bf16``, on a CPU with native bf16): it then computes every layer in bf16, the class
    logits included, which reorders near-tied uncertainties (the torch runtime keeps those layers in fp32)."""
    if precision == "fp16":
        raise ConfigError(f"scoring.precision fp16 is for CUDA with scoring.runtime torch, not {runtime}")
    if precision == "bf16":
        if runtime == "onnxruntime":
            raise ConfigError("scoring.runtime onnxruntime runs fp32: set scoring.precision fp32 or auto")
        if not cpu_has_fast_bf16():
            raise ConfigError("scoring.precision bf16 with scoring.runtime openvino needs a CPU with native bf16")
        return "bf16"
    return "fp32"


def load_exported(
    settings: ModelSettings,
    runtime: str,
    device: torch.device,
    precision: str = "auto",
    detection: DetectionOptions | None = None,
    cache: Path | None = None,
) -> ExportedRuntime:
    """Load the configured Ultralytics model for ``runtime`` (``openvino`` or ``onnxruntime``), exporting it first
    unless a valid export is cached. ``cache`` overrides the cache folder (tests)."""
    if runtime not in EXPORTED:
        raise ConfigError(f"scoring.runtime {runtime!r} is not an exported runtime")
    spec = settings.path
    if not spec:
        raise ModelLoadError("no model given: pass --model (a .pt, .yaml or TorchScript file) or set model.path")
    if model_format(settings) != "ultralytics":
        raise ConfigError(f"scoring.runtime {runtime} runs Ultralytics models (.pt or .yaml)")
    precision = resolve_exported_precision(runtime, precision)
    info, net = read_ultralytics(settings, spec)
    files = ensure_export(info, net, runtime, cache)
    return ExportedRuntime(info, runtime, files, device, precision, detection or DetectionOptions())
