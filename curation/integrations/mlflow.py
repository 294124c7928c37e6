"""Optional MLflow integration (``pip install 'curate[mlflow]'``): load models from a registry URI
(``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) and log training rounds.

Kept in its own module and imported only when used: without MLflow installed, curate works and these features fail
with one clear "install curate[mlflow]" error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.errors import ConfigError, CurateError, ExitCode, ModelLoadError

if TYPE_CHECKING:
    from curation.config import Settings
    from curation.training.round import TrainReport

MODEL_URI_PREFIX = "models:/"
WEIGHT_SUFFIXES = (".pt", ".torchscript", ".ts", ".jit", ".ptl")


class MlflowUnavailable(CurateError):
    """MLflow is needed for this but is not installed."""

    exit_code = ExitCode.USAGE


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise MlflowUnavailable("this needs MLflow, which is not installed: pip install 'curate[mlflow]'") from None
    return mlflow


def is_registry_uri(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(MODEL_URI_PREFIX)


def _configure(mlflow: Any, settings: Settings) -> None:
    uri = settings.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        mlflow.set_tracking_uri(uri)


def resolve_model_uri(spec: str, settings: Settings) -> Path:
    """Download (or find in MLflow's cache) the artifacts of a registered model version; return its weights file."""
    mlflow = _mlflow()
    _configure(mlflow, settings)
    rest = spec[len(MODEL_URI_PREFIX) :]
    if not rest or ("@" not in rest and "/" not in rest):
        raise ConfigError(f"invalid MLflow model URI {spec!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    except Exception as exc:
        raise ModelLoadError(f"cannot load {spec} from MLflow: {type(exc).__name__}: {exc}") from None
    if local.is_file():
        return local
    candidates = sorted(p for p in local.rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES)
    if not candidates:
        raise ModelLoadError(f"MLflow model {spec} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return candidates[0]


def log_training(settings: Settings, report: TrainReport, weights: Path, parent: str) -> str:
    """Log one training round as an MLflow run (params, metrics, weights); register the weights as a version of
    ``mlflow.registered_model`` if set. Returns the run id."""
    mlflow = _mlflow()
    _configure(mlflow, settings)
    try:
        mlflow.set_experiment(settings.mlflow.experiment)
        with mlflow.start_run(run_name=report.version) as run:
            cfg = settings.train
            mlflow.log_params(
                {
                    "parent": parent,
                    "epochs": cfg.epochs,
                    "batch_size": cfg.batch_size,
                    "imgsz": cfg.imgsz or "model",
                    "metric": report.metric,
                    "n_train": report.n_train,
                    "n_val": report.n_val,
                    "dataset_hash": report.dataset_hash,
                    "eval_source": report.eval_source,
                    "n_eval": report.n_eval,
                    "base_items": report.base_items,
                    **({"base_dataset": cfg.base_dataset} if cfg.base_dataset else {}),
                    **({"replay_ratio": cfg.replay_ratio} if cfg.replay_ratio is not None else {}),
                    **({"new_classes": ",".join(report.new_classes)} if report.new_classes else {}),
                    **{f"option.{k}": v for k, v in cfg.options.items()},
                }
            )
            mlflow.log_metrics({f"candidate_{k}": float(v) for k, v in report.candidate_metrics.items()})
            mlflow.log_metrics({f"current_{k}": float(v) for k, v in report.current_metrics.items()})
            if report.interval:  # the paired bootstrap of candidate - current the promotion read
                low, high = report.interval["difference"]
                mlflow.log_metrics({"difference_low": float(low), "difference_high": float(high)})
            mlflow.set_tags({"curate.version": report.version or "", "curate.promoted": str(report.promoted)})
            mlflow.log_artifact(str(weights), artifact_path="weights")
            if settings.mlflow.registered_model:
                client = mlflow.MlflowClient()
                name = settings.mlflow.registered_model
                try:
                    client.get_registered_model(name)
                except Exception:
                    client.create_registered_model(name)
                version = client.create_model_version(
                    name,
                    source=mlflow.get_artifact_uri("weights"),
                    run_id=run.info.run_id,
                    tags={"curate.version": report.version or ""},
                )
                if report.promoted:
                    client.set_registered_model_alias(name, "current", version.version)
            return str(run.info.run_id)
    except Exception as exc:
        raise CurateError(f"logging to MLflow failed: {type(exc).__name__}: {exc}") from None
