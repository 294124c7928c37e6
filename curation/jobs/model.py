"""Loading the model a job runs: ``--model``, an MLflow URI, or the registry's current model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from curation.config import ModelSettings, Settings
from curation.errors import ModelLoadError
from curation.integrations.mlflow import is_registry_uri
from curation.scoring.model_files import check_digest
from store import Store
from store.records import ModelVersionRecord

if TYPE_CHECKING:  # the runtime imports torch: only a job that really runs the model loads it
    from curation.scoring.runtime import ModelRuntime


def model_settings(settings: Settings, store: Store | None) -> ModelSettings:
    """Which model to run: ``--model``/``model.path`` if given (an MLflow ``models:/`` URI is fetched first), else
    the registry's current model."""
    return _chosen(settings, store)[0]


def _chosen(settings: Settings, store: Store | None) -> tuple[ModelSettings, ModelVersionRecord | None]:
    """``model_settings`` and, when the model comes from the registry, its record (whose digest must match)."""
    model = settings.model
    if model.path and is_registry_uri(model.path):
        from curation.integrations.mlflow import resolve_model_uri

        local = resolve_model_uri(model.path, settings)
        return model.model_copy(update={"path": str(local)}), None
    if model.path or store is None:
        return model, None
    current = store.models.current()
    if current is None:
        raise ModelLoadError(
            "no model given and the registry has no current model: pass --model (a .pt, .yaml or TorchScript "
            "file) or set model.path"
        )
    path = current.weights_path or current.source
    return model.model_copy(update={"path": path, "version": model.version or current.version}), current


def registered_model(settings: Settings, store: Store) -> ModelVersionRecord | None:
    """The registry's record of the model a job would run, when that is known without loading it: the current
    model (or ``model.version``) when no ``model.path`` is given. ``None`` means: load the model to find out."""
    model = settings.model
    if model.path:
        return None  # a file's version is the digest of its weights: only loading it tells
    if model.version:
        return store.models.get(model.version)
    return store.models.current()


def load_runtime(settings: Settings, store: Store | None = None) -> ModelRuntime:
    """Load the model (see ``model_settings``) on the configured device and learn its embedding size with one
    warm-up batch. Weights the database already knows keep their registered version name."""
    from curation.scoring.runtime import DetectionOptions, load_model, model_format, resolve_device

    device = resolve_device(settings.scoring.device)
    chosen, registered = _chosen(settings, store)
    detection = DetectionOptions(settings.scoring.box_conf, settings.scoring.iou, settings.scoring.max_det)
    runtime: ModelRuntime
    name: str = settings.scoring.runtime
    if name != "torch":
        from curation.scoring.exported import load_exported, resolve_runtime

        name = resolve_runtime(name, device, model_format(chosen) if chosen.path else "ultralytics")
    if name == "torch":
        runtime = load_model(chosen, device, precision=settings.scoring.precision, detection=detection)
    else:
        runtime = load_exported(chosen, name, device, precision=settings.scoring.precision, detection=detection)
    if registered is not None:  # loaded safely; used only if still the weights that were registered
        check_digest(registered.version, str(chosen.path), registered.digest, runtime.info.digest)
    if store is not None and not chosen.version and runtime.info.digest:
        known = store.models.by_digest(runtime.info.digest)
        if known is not None:
            runtime.info = replace(runtime.info, version=known.version)
    runtime.warm_up()
    return runtime


def register_model(store: Store, runtime: ModelRuntime) -> ModelVersionRecord:
    """Record the model version; the first model a database ever uses becomes its current model."""
    info = runtime.info
    mv = store.models.register(
        version=info.version,
        source=info.source,
        format=info.format,
        task=info.task,
        class_names=info.class_names,
        imgsz=info.imgsz,
        embedding_dim=runtime.embedding_dim,
        digest=info.digest or None,
        weights_path=info.source if Path(info.source).is_file() else None,
    )
    if store.models.current() is None:
        store.models.set_current(mv.id, note="first model used with this database")
    return mv
