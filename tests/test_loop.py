"""The whole cycle with real components: Label Studio, tiny YOLO models, SQLite/Postgres — training, promotion,
the run lock, kill -9 at failpoints, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import SHAPES, classification_image
from curation.errors import ExitCode
from store import Store
from store.lock import RunLock
from tests.imports import heavy_imports
from tests.ls_support import LSApi
from tests.models import save_thumbnail_model

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def curate_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def labeled_pool(root: Path, per_class: int = 16, seed: int = 40) -> dict[str, str]:
    """Images whose true class is known: path (relative to the LS document root's parent) → class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    truth = {}
    for cls in SHAPES:
        for i in range(per_class):
            path = root / f"{cls}_{i:03d}.jpg"
            classification_image(rng, cls, 64).save(path, quality=92)
            truth[path.name] = cls
    return truth


def annotate(api: LSApi, project_id: int, truth: dict[str, str], n: int, wrong: bool = False) -> int:
    """Label n tasks through the API with their true class (or a constant wrong one)."""
    done = 0
    for task in api.tasks(project_id):
        if done >= n or task.get("annotations"):
            continue
        name = Path(unquote(task["data"]["image"].split("?d=")[-1])).name
        label = "circle" if wrong else truth[name]
        api.annotate(
            task["id"], [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
        )
        done += 1
    return done


@pytest.fixture
def api(label_studio: Any) -> LSApi:
    return LSApi(label_studio.url, label_studio.api_key)


@pytest.fixture
def setup(tmp_path: Path, ls_env: dict[str, str], ls_root: Path, tiny_cls_model: Path) -> dict[str, Any]:
    pool = ls_root / f"loop-{uuid.uuid4().hex[:8]}"
    truth = labeled_pool(pool)
    project = f"loop-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(
        f"pool:\n  path: {pool}\nlabel_studio:\n  project: {project}\n"
        "train:\n  epochs: 2\n  batch_size: 16\n  min_new_labels: 12\n"
        f"  models_dir: {tmp_path / 'models'}\n"
        # the tiny model embeds same-class shapes almost identically; near-duplicate skipping would shrink the queue
        "strategy:\n  min_distance: 0\n"
    )
    return {
        "pool": pool,
        "truth": truth,
        "project": project,
        "cfg": str(cfg),
        "db": f"sqlite:///{tmp_path / 'c.db'}",
        "model": str(tiny_cls_model),
    }


def test_loop_trains_registers_promotes_only_when_better_and_reorders(
    setup: dict[str, Any], api: LSApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    common = ("--config", s["cfg"], "--db", s["db"])
    curate_json("select", "--model", s["model"], "--budget", "36", *common)
    project = api.project_by_title(s["project"])
    assert annotate(api, project["id"], s["truth"], 24) == 24

    # an accuracy never beats another by more than 1: under train.promote auto the candidate is kept, whatever
    # the two measured (the rule itself is tested in tests/test_training.py)
    monkeypatch.setenv("CURATE_TRAIN__MIN_DELTA", "1")
    result = curate_json("loop", "--queue-size", "15", *common)
    monkeypatch.delenv("CURATE_TRAIN__MIN_DELTA")
    assert result["pulled"]["new_annotations"] == 24 and result["new_labels"] == 24
    training = result["training"]
    assert training["trained"], training["reason"]
    metric = training["metric"]
    assert metric == "accuracy" and not training["promoted"]
    assert training["reason"].startswith("kept as candidate: accuracy ")
    assert training["reason"].endswith(" (current) by more than 1.0")
    assert set(training["candidate_metrics"]) == set(training["current_metrics"]) == {"accuracy"}

    models = curate_json("models", "list", *common)
    versions = {v["version"]: v for v in models["versions"]}
    new = versions[training["version"]]
    assert new["parent"] == training["parent"] and new["metric"] == metric and new["n_labeled"] == 24
    assert Path(new["weights"]).is_file() and new["dataset_hash"] == training["dataset_hash"]
    assert models["current"] == training["parent"] and new["status"] == "candidate"
    detail = curate_json("models", "show", training["version"], *common)
    assert detail["metrics"][metric] == pytest.approx(training["candidate_metrics"][metric])

    # the queue follows the current model: its ranking tag names the current version
    project = api.project_by_title(s["project"])
    assert project["model_version"].startswith(f"curate-{models['current']}-")
    assert result["queue"]["queue_size"] == 15

    # promote by hand: from now on the loop ranks with it
    curate_json("models", "promote", training["version"], *common)
    assert curate_json("models", "current", *common)["version"] == training["version"]
    again = curate_json("loop", *common)
    assert again["training"] is None and again["current_model"] == training["version"]
    assert again["scoring"]["scored"] == 48 - 0  # the new current model scores the whole pool once
    assert api.project_by_title(s["project"])["model_version"].startswith(f"curate-{training['version']}-")
    # nothing new: a fast no-op
    idle = curate_json("loop", *common)
    assert idle["training"] is None and idle["scoring"]["scored"] == 0 and not idle["queue"]["changed"]

    # training is deterministic: the same base and labels reproduce a registered model, which is reported once
    monkeypatch.setenv("CURATE_TRAIN__PROMOTE", "never")
    first = curate_json("train", *common)
    assert first["trained"] and not first["promoted"]
    second = curate_json("train", *common)
    assert not second["trained"] and "identical to " + first["version"] in second["reason"]
    assert len(curate_json("models", "list", *common)["versions"]) == len(models["versions"]) + 1


def test_an_idle_turn_loads_neither_torch_nor_the_model(setup: dict[str, Any], tmp_path: Path) -> None:
    """Cron runs the loop every few minutes; a turn with nothing new must cost a pool scan and a few queries."""
    s = setup
    common = ["--config", s["cfg"], "--db", s["db"]]
    curate_json("select", "--model", s["model"], "--budget", "10", *common)
    curate_json("loop", *common)  # the first turn may re-rank; the next one has nothing to do
    code, heavy, stdout, stderr = heavy_imports(["loop", "--json", *common], tmp_path)
    assert code == 0, stderr
    assert not {"torch", "ultralytics", "faiss", "torchvision"} & set(heavy), f"an idle loop imported {heavy}"
    idle = json.loads(stdout)
    assert idle["scoring"]["scored"] == 0 and idle["scoring"]["device"] is None and not idle["queue"]["changed"]
    # a new image is work again: the model is loaded and scores exactly that one
    classification_image(np.random.default_rng(7), "circle", 64).save(s["pool"] / "new.jpg")
    assert curate_json("loop", *common)["scoring"]["scored"] == 1


def test_wrong_labels_are_not_promoted_when_not_better(setup: dict[str, Any], api: LSApi) -> None:
    s = setup
    common = ("--config", s["cfg"], "--db", s["db"])
    curate_json("select", "--model", s["model"], "--budget", "30", *common)
    annotate(api, api.project_by_title(s["project"])["id"], s["truth"], 20, wrong=True)
    curate_json("pull", *common)
    report = curate_json("train", *common)
    # every label says "circle": classification cannot train without every class in both splits
    assert not report["trained"] and "every class" in report["reason"]
    models = curate_json("models", "list", *common)
    assert len(models["versions"]) == 1 and models["current"] == report["parent"]


def test_a_model_curate_cannot_fine_tune_fails_training_but_the_turn_completes(
    setup: dict[str, Any], api: LSApi, tmp_path: Path
) -> None:
    s = setup
    model, _ = save_thumbnail_model(tmp_path)
    cfg = tmp_path / "ts.yaml"
    names = ", ".join(SHAPES)
    cfg.write_text(Path(s["cfg"]).read_text() + f"model:\n  torchscript:\n    imgsz: 64\n    class_names: [{names}]\n")
    common = ("--config", str(cfg), "--db", s["db"])
    curate_json("select", "--model", str(model), "--budget", "20", *common)
    annotate(api, api.project_by_title(s["project"])["id"], s["truth"], 14)
    result = runner.invoke(app, ["loop", "--queue-size", "10", *common, "--json"])
    assert result.exit_code == ExitCode.TRAINING, result.stderr
    assert "fine-tunes Ultralytics models only" in result.stderr and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["pulled"]["new_annotations"] == 14 and report["training"] is None
    assert report["queue"]["queue_size"] == 10  # the queue was still topped up and re-ranked


def test_a_second_run_exits_with_the_lock_message(setup: dict[str, Any]) -> None:
    s = setup
    store = Store.open(s["db"])
    with RunLock(store, command="curate loop (first)"):
        for command in (["loop"], ["select", "--model", s["model"], "--budget", "2"], ["reprioritize"]):
            result = runner.invoke(app, [*command, "--config", s["cfg"], "--db", s["db"]])
            assert result.exit_code == ExitCode.LOCKED, result.stderr
            assert f"another run holds the lock (pid {os.getpid()}" in result.stderr
            assert "curate loop (first)" in result.stderr and "Traceback" not in result.stderr
    store.close()


def test_lock_on_postgres(setup: dict[str, Any], postgres_url: str) -> None:
    s = setup
    store = Store.open(postgres_url)
    with RunLock(store, command="curate loop (pg first)"):
        result = runner.invoke(app, ["loop", "--config", s["cfg"], "--db", postgres_url])
        assert result.exit_code == ExitCode.LOCKED and "curate loop (pg first)" in result.stderr
    store.close()


def _run(args: list[str], failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("CURATE_FAILPOINT", None)
    if failpoint:
        env["CURATE_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "failpoint",
    [
        "score-after-chunk",
        "push-after-import",
        "train-after-weights-saved",
        "train-after-register",
        "loop-before-rescore",
    ],
)
def test_kill_9_mid_loop_then_rerun_loses_nothing(
    setup: dict[str, Any], api: LSApi, failpoint: str, ls_root: Path
) -> None:
    s = setup
    common = ["--config", s["cfg"], "--db", s["db"]]
    assert _run(["select", "--model", s["model"], "--budget", "24", *common]).returncode == 0
    project = api.project_by_title(s["project"])
    annotate(api, project["id"], s["truth"], 16)
    # new images arrive, so that the loop has scoring, training and pushing to do
    extra = labeled_pool(s["pool"] / "new", per_class=4, seed=41)
    killed = _run(["loop", "--queue-size", "20", *common], failpoint)
    assert killed.returncode == -9, (failpoint, killed.stderr[-2000:])
    rerun = _run(["loop", "--queue-size", "20", *common, "--json"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    # no duplicate task, ever
    ids = [t["data"]["curation_id"] for t in api.tasks(project["id"])]
    assert len(ids) == len(set(ids))
    store = Store.open(s["db"])
    try:
        # no score lost: every pool item is scored by the current model
        current = store.models.current()
        assert current is not None
        pool_id = store.pools.find(str(s["pool"]))
        assert pool_id is not None
        counts = store.items.counts(pool_id, current.id)
        assert counts["items"] == 48 + len(extra) and counts["unscored"] == 0
        # no half-registered model: every trained version is complete, and exactly one is current
        versions = [mv for mv, _ in store.models.versions()]
        assert sum(mv.status == "current" for mv in versions) == 1
        for mv in versions:
            if mv.trained_at is not None:
                assert mv.weights_path and Path(mv.weights_path).is_file() and mv.metrics and mv.dataset_hash
        trained = [mv for mv in versions if mv.trained_at is not None]
        assert len(trained) == 1, [mv.version for mv in trained]  # the killed round was not registered twice
        # every queued task is known and the project serves curate's ranking
        queued = store.label_studio.queue(store.label_studio.projects()[0].id)
        assert len(queued) == 20
        assert api.project_by_title(s["project"])["model_version"].startswith("curate-")
    finally:
        store.close()
    assert not list((Path(s["cfg"]).parent / "models").glob(".*.tmp"))


def test_mlflow_logging_and_registry_uri(
    setup: dict[str, Any], api: LSApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    s = setup
    tracking = f"file://{tmp_path / 'mlruns'}"
    cfg = Path(s["cfg"])
    cfg.write_text(
        cfg.read_text() + f"mlflow:\n  tracking_uri: {tracking}\n  registered_model: shapes\n"
        "  experiment: curate-test\n"
    )
    common = ("--config", s["cfg"], "--db", s["db"])
    curate_json("select", "--model", s["model"], "--budget", "36", *common)
    annotate(api, api.project_by_title(s["project"])["id"], s["truth"], 24)
    curate_json("pull", *common)
    report = curate_json("train", *common)
    assert report["trained"] and report["mlflow_run"] and not report["warnings"]

    import mlflow

    mlflow.set_tracking_uri(tracking)
    run = mlflow.get_run(report["mlflow_run"])
    assert run.data.params["parent"] == report["parent"] and "candidate_accuracy" in run.data.metrics
    assert run.data.tags["curate.version"] == report["version"]
    # the paired bootstrap the promotion read, and where the models were evaluated
    assert run.data.params["eval_source"] == "held-out split" and "difference_low" in run.data.metrics
    assert run.data.metrics["difference_low"] == pytest.approx(report["interval"]["difference"][0])
    # the registered version loads back by its models:/ URI, and is the same weights (same version name)
    scored = curate_json("score", "--model", "models:/shapes/1", *common)
    assert scored["model_version"] == report["version"]


def test_mlflow_missing_is_one_clear_error(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails, as without the extra
    result = runner.invoke(app, ["score", "--model", "models:/shapes/1", "--config", setup["cfg"], "--db", setup["db"]])
    assert result.exit_code == ExitCode.USAGE
    assert "pip install 'curate[mlflow]'" in result.stderr and "Traceback" not in result.stderr
