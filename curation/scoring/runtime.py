"""Model runtime adapter: load an Ultralytics or TorchScript model and run batches on CPU or GPU.

One forward pass gives everything curate stores per image:

- classification: the class-probability vector;
- detection/segmentation: per kept box, its xyxy box, confidence, the *whole* class-score vector (not just the
  top class: uncertainty measures need it), and for segmentation a polygon;
- an embedding for diversity: the pooled input of the classifier's last linear layer (classification) or the
  global-average-pooled feature maps entering the detection head (detection/segmentation), L2-normalised.

Nothing here downloads: Ultralytics runs with ``YOLO_OFFLINE=1`` and weights must exist locally.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from numpy.typing import NDArray

from curation.config import ModelSettings
from curation.errors import ConfigError, ModelLoadError, ModelOutputError
from curation.scoring.images import Geometry

SUPPORTED_TASKS = ("classify", "detect", "segment")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TORCHSCRIPT_SUFFIXES = (".torchscript", ".ts", ".jit", ".ptl")


@dataclass(frozen=True)
class ModelInfo:
    source: str
    format: str  # "ultralytics" | "torchscript"
    task: str  # classify | detect | segment
    class_names: list[str]
    version: str
    imgsz: int
    preprocess: str  # letterbox | center_crop | stretch
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = "probs"  # what a TorchScript model returns: "logits" (softmax applied here) or "probs"
    stride: int = 32  # input sides must be multiples of this (detection)
    digest: str = ""  # SHA-256 of the weights (identifies the model whatever its file is called)


@dataclass
class ItemOutput:
    """The model's output for one image, in original-image pixel coordinates."""

    embedding: NDArray[np.float32]
    probs: NDArray[np.float32] | None = None
    boxes: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_conf: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0,), np.float32))
    box_scores: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    polygons: list[NDArray[np.float32]] = field(default_factory=list)
    problem: str | None = None  # set when the output is non-finite: stored as invalid, never selected


@dataclass(frozen=True)
class DetectionOptions:
    conf: float = 0.05
    iou: float = 0.7
    max_det: int = 100


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA request without CUDA is a configuration error."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"invalid scoring.device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"scoring.device is {spec!r} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"scoring.device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported scoring.device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over parameter and buffer bytes: identical weights give the same version wherever they live."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run the block with ``count`` CPU threads (``None``: unchanged) and restore the previous count afterwards.

    Ultralytics' import, trainer and predictor all lower torch's thread pool for their own use; whatever they do
    inside the block does not leak into scoring, which needs every core it was given.
    """
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _import_yolo() -> Any:
    """Import Ultralytics offline, quiet and in restricted (safe) loading mode, without letting it shrink torch's
    CPU thread pool.

    Its import sets ``OMP_NUM_THREADS=1`` when unset (a training default), which would halve CPU scoring speed
    on a 2-core machine; the thread count in force before the import is restored.
    """
    from curation.scoring.model_files import confirm_safe_loading, enable_safe_loading

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    enable_safe_loading()
    with torch_threads():
        from ultralytics import YOLO
    confirm_safe_loading()
    return YOLO


def load_yolo(spec: str | Path, seed: int = 0) -> Any:
    """``ultralytics.YOLO(spec)`` after the checks in ``model_files``: the one way curate opens an Ultralytics
    model file (scoring, training's base weights, evaluation). An architecture builds weights seeded by ``seed``,
    so the same file gives the same digest. A refused file raises ``UnsafeModelError``; Ultralytics' own failures
    propagate for the caller to name."""
    from curation.scoring.model_files import check_architecture, refusal

    spec = str(spec)
    is_architecture = Path(spec).suffix.lower() in (".yaml", ".yml")
    if is_architecture:
        check_architecture(spec)
    YOLO = _import_yolo()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return YOLO(spec)
    except Exception as exc:
        refused = refusal(exc, spec)
        if refused is not None:
            raise refused from None
        raise


def yolo_class_names(names: Any) -> list[str]:
    """An Ultralytics model's ``names`` ({index: name} or a list) as a list in index order."""
    return [str(names[i]) for i in range(len(names))] if isinstance(names, dict) else [str(n) for n in names]


def is_torchscript_archive(source: Path | IO[bytes]) -> bool:
    """Whether ``source`` (a file, or its bytes as a stream) is a ``torch.jit.save`` archive: checked before
    ``torch.jit.load`` so that a pickle is refused, never loaded."""
    import zipfile

    try:
        with zipfile.ZipFile(source) as zf:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class ModelRuntime:
    """A loaded model on a device. ``infer`` takes a uint8 batch and returns one ``ItemOutput`` per image.

    This class runs the network with torch; ``curation.scoring.exported`` runs an exported copy of the same
    network (OpenVINO, ONNX Runtime) and shares everything after the forward pass with it.
    """

    name = "torch"  # scoring.runtime

    def __init__(
        self,
        info: ModelInfo,
        net: torch.nn.Module,
        device: torch.device,
        precision: str,
        detection: DetectionOptions,
    ) -> None:
        self.info = info
        self.net = net
        self.device = device
        self.precision = precision
        self.detection = detection
        self._features: list[torch.Tensor] = []
        self._mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
        self.embedding_dim: int | None = None
        if info.format == "ultralytics":
            self._install_hooks()

    def threads(self, count: int | None) -> AbstractContextManager[None]:
        """Run the block's inference with ``count`` CPU threads (``None``: the runtime's default)."""
        return torch_threads(count)

    # -- embeddings ------------------------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        head: Any = self.net.model[-1]  # type: ignore[index]
        target: torch.nn.Module = head.linear if self.info.task == "classify" else head

        def grab(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            feats = args[0]
            if isinstance(feats, (list, tuple)):
                pooled = [f.float().mean(dim=(2, 3)) for f in feats]
                self._features = [torch.cat(pooled, dim=1)]
            else:
                self._features = [feats.float().flatten(1)]

        target.register_forward_pre_hook(grab)

    # -- inference -------------------------------------------------------------------------------------------------
    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        # Layout change on uint8 (4x less memory traffic), then one conversion straight to the compute dtype.
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = x.to(_DTYPES[self.precision]).mul_(1.0 / 255.0)
        if self.info.format == "torchscript":
            x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return x

    def _run(self, batch: torch.Tensor) -> Any:
        x = self._normalise(batch)
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                return self.net(x)
        return self.net(x)

    def warm_up(self) -> None:
        """One blank batch: learns the embedding size and fails early on a model that rejects its input size."""
        size = self.info.imgsz
        blank = torch.full((1, 3, size, size), 114, dtype=torch.uint8)
        try:
            self.infer(blank, [Geometry(size, size, 1.0, 0.0, 0.0)])
        except RuntimeError as exc:  # e.g. a TorchScript model that wants another input size
            raise ModelLoadError(f"model {self.info.source} fails on a {size}x{size} input: {exc}") from None

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> Any:
        """The bare forward pass (used by the benchmark as the speed ceiling)."""
        return self._run(batch)

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor, geometries: Sequence[Geometry]) -> list[ItemOutput]:
        self._features = []
        out = self._run(batch)
        if self.info.format == "torchscript":
            return self._torchscript_outputs(out, len(geometries))
        embeddings = self._embeddings()
        if self.info.task == "classify":
            probs = out[0] if isinstance(out, (tuple, list)) else out
            return self._classification_outputs(probs.float(), embeddings)
        return self._detection_outputs(out, embeddings, geometries)

    def _embeddings(self) -> torch.Tensor:
        if not self._features:
            raise ModelOutputError("the model's feature hook did not fire: unsupported architecture")
        emb = self._features[0]
        self.embedding_dim = int(emb.shape[1])
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _classification_outputs(self, probs: torch.Tensor, embeddings: torch.Tensor) -> list[ItemOutput]:
        if probs.ndim != 2 or probs.shape[1] != len(self.info.class_names):
            raise ModelOutputError(
                f"model output has shape {tuple(probs.shape)}, expected (batch, {len(self.info.class_names)})"
            )
        finite = torch.isfinite(probs).all(dim=1) & torch.isfinite(embeddings).all(dim=1)
        probs_np = probs.cpu().numpy().astype(np.float32)
        emb_np = embeddings.cpu().numpy().astype(np.float32)
        ok = finite.cpu().numpy()
        return [
            ItemOutput(
                embedding=emb_np[i],
                probs=probs_np[i],
                problem=None if ok[i] else "model output contains NaN or infinity",
            )
            for i in range(len(probs_np))
        ]

    def _torchscript_outputs(self, out: Any, batch: int) -> list[ItemOutput]:
        emb = None
        if isinstance(out, (tuple, list)):
            if len(out) < 1:
                raise ModelOutputError("TorchScript model returned an empty tuple")
            logits, emb = out[0], (out[1] if len(out) > 1 else None)
        elif isinstance(out, dict):
            logits, emb = out.get("logits", out.get("probs")), out.get("embedding")
        else:
            logits = out
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelOutputError(f"TorchScript model returned {shape}, expected (batch, classes) scores")
        logits = logits.float()
        probs = logits.softmax(dim=1) if self.info.output == "logits" else logits
        if probs.shape[1] != len(self.info.class_names):
            raise ModelOutputError(
                f"TorchScript model returns {probs.shape[1]} classes but {len(self.info.class_names)} class "
                "names are configured (model.torchscript.class_names)"
            )
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != batch:
            emb = probs  # no embedding output: the probability vector is the best description we have
        emb = emb.float()
        self.embedding_dim = int(emb.shape[1])
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return self._classification_outputs(probs, emb)

    def _detection_outputs(
        self, out: Any, embeddings: torch.Tensor, geometries: Sequence[Geometry]
    ) -> list[ItemOutput]:
        from ultralytics.utils.nms import non_max_suppression

        nc = len(self.info.class_names)
        first = out[0] if isinstance(out, (tuple, list)) else out
        proto = None
        if self.info.task == "segment":
            pred, proto = first[0], first[1]
        else:
            pred = first
        if not isinstance(pred, torch.Tensor) or pred.ndim != 3 or pred.shape[1] < 4 + nc:
            raise ModelOutputError(f"unexpected detection output {getattr(pred, 'shape', type(pred))}")
        pred = pred.float()
        # One reduction per image instead of an elementwise mask: any NaN/inf makes the sum non-finite.
        finite = pred.sum(dim=(1, 2)).isfinite() & embeddings.sum(dim=1).isfinite()
        safe = pred if bool(finite.all()) else torch.nan_to_num(pred, nan=0.0, posinf=0.0, neginf=0.0)
        kept, keep_idx = non_max_suppression(
            safe,
            conf_thres=self.detection.conf,
            iou_thres=self.detection.iou,
            max_det=self.detection.max_det,
            nc=nc,
            return_idxs=True,
        )
        emb_np = embeddings.cpu().numpy().astype(np.float32)
        results = []
        for i, geo in enumerate(geometries):
            det = kept[i]
            idx = keep_idx[i].long().view(-1)
            item = ItemOutput(embedding=emb_np[i])
            if not bool(finite[i]):
                item.problem = "model output contains NaN or infinity"
                item.box_scores = np.zeros((0, nc), np.float32)
                results.append(item)
                continue
            boxes_lb = det[:, :4]
            item.box_conf = det[:, 4].cpu().numpy().astype(np.float32)
            item.box_scores = safe[i, 4 : 4 + nc, :].index_select(1, idx).T.cpu().numpy().astype(np.float32)
            item.boxes = _to_original(boxes_lb.cpu().numpy(), geo)
            if proto is not None and len(det):
                item.polygons = self._polygons(proto[i], det[:, 6:], boxes_lb, geo)
            results.append(item)
        return results

    def _polygons(
        self, proto: torch.Tensor, coeffs: torch.Tensor, boxes: torch.Tensor, geo: Geometry
    ) -> list[NDArray[np.float32]]:
        import cv2
        from ultralytics.utils.ops import process_mask

        size = self.info.imgsz
        masks = process_mask(proto.float(), coeffs.float(), boxes.float(), (size, size), upsample=True)
        polygons: list[NDArray[np.float32]] = []
        for mask in masks.cpu().numpy().astype(np.uint8):
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                polygons.append(np.zeros((0, 2), np.float32))
                continue
            contour = max(contours, key=cv2.contourArea)
            contour = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2).astype(np.float32)
            pts = (contour - np.array([geo.pad_x, geo.pad_y], np.float32)) / geo.scale
            pts[:, 0] = pts[:, 0].clip(0, geo.width)
            pts[:, 1] = pts[:, 1].clip(0, geo.height)
            polygons.append(pts.astype(np.float32))
        return polygons


def _to_original(boxes: NDArray[Any], geo: Geometry) -> NDArray[np.float32]:
    out = boxes.astype(np.float32).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - geo.pad_x) / geo.scale).clip(0, geo.width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - geo.pad_y) / geo.scale).clip(0, geo.height)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_model(
    settings: ModelSettings,
    device: torch.device,
    precision: str = "auto",
    detection: DetectionOptions | None = None,
) -> ModelRuntime:
    """Load the configured model onto ``device``; every failure is a ``ModelLoadError`` naming the file."""
    spec = settings.path
    if not spec:
        raise ModelLoadError("no model given: pass --model (a .pt, .yaml or TorchScript file) or set model.path")
    precision = resolve_precision(precision, device)
    fmt = model_format(settings)
    path = Path(spec).expanduser()
    if fmt == "torchscript":
        return _load_torchscript(settings, path, device, precision)
    return _load_ultralytics(settings, spec, device, precision, detection or DetectionOptions())


def model_format(settings: ModelSettings) -> str:
    """``ultralytics`` or ``torchscript``: ``model.format``, or for ``auto`` what the file is."""
    if settings.format != "auto":
        return settings.format
    path = Path(settings.path or "").expanduser()
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES or (path.is_file() and is_torchscript_archive(path)):
        return "torchscript"
    return "ultralytics"


def cpu_has_fast_bf16() -> bool:
    """True on CPUs that run bf16 natively (AMX tiles or AVX512-BF16): oneDNN then runs bf16 convs ~4x faster."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - old torch builds
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise; fp16 on CPU is refused."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("scoring.precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def _load_ultralytics(
    settings: ModelSettings, spec: str, device: torch.device, precision: str, detection: DetectionOptions
) -> ModelRuntime:
    info, net = read_ultralytics(settings, spec)
    task = info.task
    head: Any = net.model[-1]
    net.to(device)
    if precision == "bf16":
        # bf16 keeps ~3 significant digits: enough for convolutions, not for the layers that produce numbers we
        # store. Box distances (DFL) and class logits run in fp32: boxes stay within ~0.5 px of fp32, not ~2 px.
        _run_in_fp32(head.linear if task == "classify" else getattr(head, "dfl", None), device)
    for module in net.modules():
        if isinstance(module, torch.nn.SiLU | torch.nn.ReLU):
            module.inplace = True  # inference only: no autograd needs the pre-activation, skip one allocation
    net.to(memory_format=torch.channels_last)  # oneDNN and cuDNN both run NHWC convolutions faster
    if precision == "fp16":
        net.half()
    return ModelRuntime(info, net, device, precision, detection)


def read_ultralytics(settings: ModelSettings, spec: str) -> tuple[ModelInfo, Any]:
    """Load Ultralytics weights (or a seeded architecture) on the CPU in fp32: what it is, and the fused network
    in eval mode. Every runtime starts from this network."""
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".yaml", ".yml"):
        raise ModelLoadError(
            f"unsupported model file {spec!r}: expected Ultralytics .pt weights, an architecture .yaml, "
            "or a TorchScript file (.torchscript)"
        )
    if suffix == ".pt" and not path.is_file():
        raise ModelLoadError(f"model weights not found: {spec} (curate never downloads models; pass a local file)")
    try:
        # Architecture-only models get seeded random weights, so the same .yaml gives the same version.
        yolo = load_yolo(str(path) if path.is_file() else spec)
    except ModelLoadError:
        raise
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelLoadError(f"cannot load model {spec}: {exc}") from None
    except Exception as exc:  # Ultralytics raises many types for a corrupt checkpoint
        raise ModelLoadError(f"cannot load model {spec}: {type(exc).__name__}: {_first_line(exc)}") from None
    task = getattr(yolo, "task", None)
    if task not in SUPPORTED_TASKS:
        raise ModelLoadError(f"model {spec} is a {task!r} model; curate supports {', '.join(SUPPORTED_TASKS)}")
    if not isinstance(yolo.model, torch.nn.Module):
        raise ModelLoadError(f"model {spec} is an exported format; use .pt weights or a TorchScript classifier")
    net: Any = yolo.model
    names = yolo.names
    class_names = yolo_class_names(names)
    train_args = getattr(net, "args", None) or {}
    trained_imgsz = train_args.get("imgsz") if isinstance(train_args, dict) else None
    imgsz = settings.imgsz or (trained_imgsz if isinstance(trained_imgsz, int) else None)
    imgsz = imgsz or (224 if task == "classify" else 640)
    stride = 32
    if task != "classify":
        stride = int(max(getattr(net, "stride", torch.tensor([32])).max().item(), 32))
        imgsz = int(np.ceil(imgsz / stride) * stride)
    digest = weights_digest(net)
    version = settings.version or f"{path.stem}-{digest[:12]}"
    info = ModelInfo(
        source=str(path.resolve()) if path.is_file() else spec,
        format="ultralytics",
        task=task,
        class_names=class_names,
        version=version,
        imgsz=imgsz,
        preprocess="center_crop" if task == "classify" else "letterbox",
        stride=stride,
        digest=digest,
    )
    net.eval()
    head: Any = net.model[-1]
    if getattr(head, "one2one_cv2", None) is not None and getattr(head, "cv2", None) is not None:
        head.end2end = False  # keep the one-to-many branch: NMS with full per-box class scores
    if hasattr(net, "fuse"):
        net = net.fuse(verbose=False)
    return info, net


def _first_line(exc: BaseException) -> str:
    """Ultralytics' multi-line error text, as one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).replace("ERROR ❌️ ", "")


def _run_in_fp32(module: torch.nn.Module | None, device: torch.device) -> None:
    """Make ``module`` compute in fp32 even inside a reduced-precision autocast region."""
    if module is None:
        return
    forward = module.forward

    def fp32_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, enabled=False):
            return forward(x.float())

    module.forward = fp32_forward


def _load_torchscript(settings: ModelSettings, path: Path, device: torch.device, precision: str) -> ModelRuntime:
    if not path.is_file():
        raise ModelLoadError(f"TorchScript model not found: {path} (curate never downloads models)")
    try:
        net = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript model {path}: {exc}") from None
    net.eval()
    ts = settings.torchscript
    names = ts.class_names
    if names is None:
        # Ask the model once for its class count on a blank image.
        with torch.inference_mode():
            probe = net(torch.zeros(1, 3, ts.imgsz, ts.imgsz, device=device))
        logits = probe[0] if isinstance(probe, (tuple, list)) else probe
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ModelLoadError(f"TorchScript model {path} does not return (batch, classes) scores")
        names = [f"class_{i}" for i in range(int(logits.shape[1]))]
    digest = weights_digest(net)  # of the stored weights: the same version on every device and precision
    if precision == "fp16":
        net.half()
    info = ModelInfo(
        source=str(path.resolve()),
        format="torchscript",
        task="classify",
        class_names=list(names),
        version=settings.version or f"{path.stem}-{digest[:12]}",
        imgsz=ts.imgsz,
        preprocess=ts.resize,
        mean=ts.mean,
        std=ts.std,
        output=ts.output,
        digest=digest,
    )
    return ModelRuntime(info, net, device, precision, DetectionOptions())
