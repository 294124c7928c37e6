"""End to end with tiny real YOLO models on generated images, through the real CLI (typer's runner) and a
subprocess where the process must really die."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import BAD_CONVERTIBLE, BAD_UNREADABLE, make_pool, write_bad_files
from store import Store
from strategies import uncertainty_scores

runner = CliRunner()
pytestmark = pytest.mark.slow


def curate(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def select_json(*args: str) -> dict:
    code, out, err = curate("select", "--no-push", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_classification_select_with_broken_files(tmp_path: Path, tiny_cls_model: Path, db_url: str) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=20, size=72, seed=5)
    bad = write_bad_files(pool / "bad", size=64)
    out = tmp_path / "sel.jsonl"
    data = select_json(
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "10",
        "--strategy",
        "entropy",
        "--out",
        str(out),
        "--db",
        db_url,
        "--workers",
        "2",
        "--min-distance",
        "0",  # near-duplicate skipping off: the ranking below must be the pure entropy order
    )
    scoring = data["scoring"]
    assert scoring["scored"] == 20 + len(BAD_CONVERTIBLE)
    assert scoring["failed"] == len(BAD_UNREADABLE)
    failed_paths = {Path(f["path"]).name for f in scoring["failures"]}
    assert failed_paths == {bad[name].name for name in BAD_UNREADABLE}

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10 and [r["rank"] for r in lines] == list(range(1, 11))
    for row in lines:
        assert {"item_id", "path", "rank", "score", "strategy"} <= set(row) and row["strategy"] == "entropy"
        assert Path(row["path"]).is_file()
        assert Path(row["path"]).name not in failed_paths
    scores = [r["score"] for r in lines]
    assert scores == sorted(scores, reverse=True)

    # the ranking is the entropy of the stored probabilities, highest first: every selected score is the entropy
    # of that item's stored probabilities, and no unselected item is more uncertain than the last one selected
    store = Store.open(db_url)
    mv = store.models.get(data["model_version"])
    assert mv is not None and mv.task == "classify"
    pool_id = store.pools.find(scoring["pool"])
    assert pool_id is not None
    ids = store.items.by_content([r["item_id"] for r in lines])
    chosen = store.scores.classification_for(mv.id, [ids[r["item_id"]] for r in lines])
    by_id = dict(zip(chosen.item_ids.tolist(), uncertainty_scores(chosen.probs, "entropy"), strict=True))
    assert [by_id[ids[r["item_id"]]] for r in lines] == pytest.approx(scores, abs=1e-6)
    rest = store.scores.candidate_classification(pool_id, mv.id)
    assert len(rest.item_ids) == scoring["scored"] - 10
    assert uncertainty_scores(rest.probs, "entropy").max() <= min(scores) + 1e-6
    store.close()

    # second identical run: nothing new is scored, 10 new items are selected
    data2 = select_json(
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "10",
        "--strategy",
        "entropy",
        "--db",
        db_url,
    )
    assert data2["scoring"]["scored"] == 0 and data2["scoring"]["failed"] == 0
    assert not {r["item_id"] for r in data2["items"]} & {r["item_id"] for r in lines}

    # the pool is now exhausted: fewer than asked, with a warning; then nothing left (exit 7)
    # (near-duplicate skipping off: the tiny model embeds same-class shapes almost identically, see test_diversity)
    data3 = select_json(
        "--pool", str(pool), "--model", str(tiny_cls_model), "--budget", "10", "--db", db_url, "--min-distance", "0"
    )
    assert data3["selected"] == 5 and "only 5 selectable" in data3["warnings"][0]
    code, _, err = curate(
        "select",
        "--no-push",
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "3",
        "--db",
        db_url,
    )
    assert code == 7 and "nothing to select" in err


def test_strategies_rerank_without_rescoring(tmp_path: Path, tiny_cls_model: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=30, size=64, seed=8)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    code, out, err = curate("score", "--pool", str(pool), "--model", str(tiny_cls_model), "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["scored"] == 30
    picks = {}
    for name in ("least_confidence", "margin", "ratio", "random"):
        # a fresh copy of the database per strategy, so each one sees the whole pool
        copy = tmp_path / f"{name}.db"
        copy.write_bytes((tmp_path / "c.db").read_bytes())
        data = select_json(
            "--pool",
            str(pool),
            "--model",
            str(tiny_cls_model),
            "--budget",
            "5",
            "--strategy",
            name,
            "--db",
            f"sqlite:///{copy}",
        )
        assert data["scoring"]["scored"] == 0
        picks[name] = [r["item_id"] for r in data["items"]]
    assert picks["random"] != picks["margin"]
    again = tmp_path / "again.db"
    again.write_bytes((tmp_path / "c.db").read_bytes())
    data = select_json(
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "5",
        "--strategy",
        "random",
        "--db",
        f"sqlite:///{again}",
    )
    assert [r["item_id"] for r in data["items"]] == picks["random"]  # seeded


def test_detection_and_segmentation_store_boxes(tmp_path: Path, tiny_det_model: Path, tiny_seg_model: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=8, size=96, seed=2)
    # a one-epoch model is unsure of everything: keep low-confidence boxes so there is something to check
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scoring:\n  box_conf: 0.0005\n  max_det: 20\nstrategy:\n  detection:\n    conf: 0.0005\n")
    for model, task in ((tiny_det_model, "detect"), (tiny_seg_model, "segment")):
        db = f"sqlite:///{tmp_path / (task + '.db')}"
        data = select_json(
            "--pool",
            str(pool),
            "--model",
            str(model),
            "--budget",
            "3",
            "--strategy",
            "margin",
            "--db",
            db,
            "--config",
            str(cfg),
        )
        assert data["scoring"]["task"] == task and data["scoring"]["scored"] == 8
        store = Store.open(db)
        mv = store.models.get(data["model_version"])
        pool_id = store.pools.find(data["scoring"]["pool"])
        assert mv is not None and pool_id is not None
        det = store.scores.candidate_detection(pool_id, mv.id, len(mv.class_names))
        assert len(det.item_ids) == 5
        total_boxes = 0
        for item_id in det.item_ids:
            pred = store.scores.prediction(int(item_id), mv.id, len(mv.class_names))
            assert pred is not None and pred.width == 96 and pred.height == 96
            assert pred.box_scores.shape == (len(pred.boxes), len(mv.class_names))
            if len(pred.boxes):
                assert (pred.boxes[:, 2] >= pred.boxes[:, 0]).all() and (pred.boxes <= 96.01).all()
                if task == "segment":
                    assert len(pred.polygons) == len(pred.boxes)
            total_boxes += len(pred.boxes)
        store.close()
        assert total_boxes > 0, f"the {task} model kept no box at box_conf 0.05"


class _NaNOnBright(torch.nn.Module):
    """A TorchScript classifier that returns NaN for bright images: invalid output must never be selected."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3))
        logits = torch.stack([mean * 3, 1 - mean, x[:, 0].mean(dim=(1, 2)) - x[:, 2].mean(dim=(1, 2))], dim=1)
        logits = torch.where((mean > 2.3)[:, None], torch.full_like(logits, float("nan")), logits)
        return logits, x.mean(dim=(2, 3))


def test_torchscript_classifier_and_nan_outputs(tmp_path: Path) -> None:
    from PIL import Image

    model = tmp_path / "clf.torchscript"
    torch.jit.script(_NaNOnBright()).save(str(model))
    pool = tmp_path / "pool"
    make_pool(pool, n=10, size=64, seed=4)
    Image.new("RGB", (64, 64), (255, 255, 255)).save(pool / "white.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  torchscript:\n    imgsz: 32\n    class_names: [a, b, c]\n")
    data = select_json(
        "--pool",
        str(pool),
        "--model",
        str(model),
        "--budget",
        "11",
        "--config",
        str(cfg),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert data["scoring"]["invalid"] == 1 and data["scoring"]["scored"] == 10
    assert data["selected"] == 10
    assert all(Path(r["path"]).name != "white.png" for r in data["items"])
    code, out, _ = curate("status", "--pool", str(pool), "--db", f"sqlite:///{tmp_path / 'c.db'}", "--json")
    assert code == 0 and json.loads(out)["counts"]["invalid"] == 1


def _count_predictions(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_where_it_stopped(tmp_path: Path, tiny_cls_model: Path, sig: int) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=240, size=64, seed=9)
    db = tmp_path / "c.db"
    env = {**os.environ, "CURATE_SCORING__CHUNK_SIZE": "16", "CURATE_SCORING__BATCH_SIZE": "8"}
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "score",
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--db",
        f"sqlite:///{db}",
        "--workers",
        "0",
        "--json",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1]
    )
    deadline = time.time() + 120
    while _count_predictions(db) < 32 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "scoring finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    done_before = _count_predictions(db)
    assert 0 < done_before < 240
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"Interrupted" in err and b"Traceback" not in err
    data = json.loads(
        subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    )
    assert data["scored"] == 240 - done_before  # only the rest
    assert _count_predictions(db) == 240
    store = Store.open(f"sqlite:///{db}")
    statuses = [r["status"] for r in store.runs.recent()]
    assert statuses[0] == "completed" and statuses[1] == "interrupted"
    store.close()


def test_exact_duplicates_are_one_item(tmp_path: Path, tiny_cls_model: Path) -> None:
    pool = tmp_path / "pool"
    paths = make_pool(pool, n=6, size=64, seed=10)
    for i in range(3):
        (pool / f"dup_{i}.jpg").write_bytes(paths[0].read_bytes())
    data = select_json(
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "6",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert data["scoring"]["scored"] == 6 and data["scoring"]["duplicate_paths"] == 3
    ids = [r["item_id"] for r in data["items"]]
    assert len(ids) == len(set(ids)) == 6


def test_embeddings_are_normalised_and_stored(tmp_path: Path, tiny_cls_model: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=5, size=64, seed=11)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    code, out, err = curate("score", "--pool", str(pool), "--model", str(tiny_cls_model), "--db", db, "--json")
    assert code == 0, err
    summary = json.loads(out)
    store = Store.open(db)
    mv = store.models.get(summary["model_version"])
    pool_id = store.pools.find(summary["pool"])
    assert mv is not None and mv.embedding_dim and pool_id is not None
    ids = store.scores.candidate_classification(pool_id, mv.id).item_ids
    assert len(ids) == 5
    emb, found = store.scores.embeddings(mv.id, ids, mv.embedding_dim)
    assert found.all() and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=5e-3)
    store.close()


def _planted_pool(root: Path, clusters: int = 6, copies: int = 4, others: int = 24) -> dict[str, int]:
    """A pool where each of ``clusters`` images has ``copies`` near-identical versions (re-encoded at another
    quality, 1 % brighter): what a camera burst or a re-uploaded file looks like. Returns path → cluster."""
    from PIL import Image, ImageEnhance

    from curation.devtools.synthetic import make_pool

    make_pool(root / "others", n=others, size=96, seed=21)
    originals = make_pool(root / "bursts", n=clusters, size=96, seed=22)
    planted = {}
    for c, path in enumerate(originals):
        planted[str(path)] = c
        with Image.open(path) as im:
            for j in range(copies):
                copy = ImageEnhance.Brightness(im).enhance(1.0 + 0.01 * (j + 1))
                target = root / "bursts" / f"{path.stem}_copy{j}.jpg"
                copy.save(target, quality=80 - 5 * j)
                planted[str(target)] = c
    return planted


@pytest.fixture(scope="module")
def thumbnail_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.models import save_thumbnail_model

    return save_thumbnail_model(tmp_path_factory.mktemp("thumb"))


@pytest.mark.parametrize("strategy", ["hybrid", "kcenter", "kmeans", "entropy", "random"])
def test_planted_near_duplicates_are_selected_at_most_once(
    tmp_path: Path, thumbnail_model: tuple[Path, Path], strategy: str, db_url: str
) -> None:
    model, cfg = thumbnail_model
    pool = tmp_path / "pool"
    planted = _planted_pool(pool)
    data = select_json(
        "--pool",
        str(pool),
        "--model",
        str(model),
        "--config",
        str(cfg),
        "--budget",
        "20",
        "--strategy",
        strategy,
        "--db",
        db_url,
    )
    hits = [planted[r["path"]] for r in data["items"] if r["path"] in planted]
    assert len(hits) == len(set(hits)), f"{strategy} selected near-duplicates: {sorted(hits)}"
    assert data["selected"] == 20
    # a second batch never takes a copy of something already selected either
    again = select_json(
        "--pool",
        str(pool),
        "--model",
        str(model),
        "--config",
        str(cfg),
        "--budget",
        "10",
        "--strategy",
        strategy,
        "--db",
        db_url,
    )
    hits2 = [planted[r["path"]] for r in again["items"] if r["path"] in planted]
    assert not set(hits2) & set(hits) and len(hits2) == len(set(hits2))


def test_diverse_selection_records_clusters_and_balance(tmp_path: Path, tiny_cls_model: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=40, size=64, seed=31)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    data = select_json(
        "--pool", str(pool), "--model", str(tiny_cls_model), "--budget", "9", "--strategy", "kcenter", "--db", db
    )
    clusters = [r["cluster"] for r in data["items"]]
    assert all(c is not None for c in clusters) and len(set(clusters)) > 1
    balanced = select_json(
        "--pool",
        str(pool),
        "--model",
        str(tiny_cls_model),
        "--budget",
        "6",
        "--balance",
        "--strategy",
        "entropy",
        "--db",
        db,
    )
    assert balanced["strategy"] == "entropy+balance" and balanced["selected"] == 6


def test_a_file_that_vanishes_before_scoring_is_retried_not_failed(tmp_path: Path, tiny_cls_model: Path) -> None:
    import curation.jobs.model
    import curation.jobs.score
    from curation.config import load_settings
    from curation.progress import NullProgress
    from curation.scoring.engine import ScoreJob, score_items
    from curation.scoring.pool import absolute_path

    pool = tmp_path / "pool"
    make_pool(pool, n=4, size=48, seed=12)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    settings = load_settings(None, {"pool.path": str(pool), "model.path": str(tiny_cls_model)})
    store = Store.open(url)
    source, pool_id, _ = curation.jobs.score.scan(store, settings)
    mv = curation.jobs.model.register_model(store, curation.jobs.model.load_runtime(settings, store))
    todo = store.items.to_score(pool_id, mv.id)
    jobs = [ScoreJob(t.item_id, absolute_path(source.root, t.path), t.width, t.height) for t in todo]
    moved = jobs[0].path.rename(tmp_path / "elsewhere.jpg")  # e.g. a sync job moving files mid-run
    progress = NullProgress()
    runtime = curation.jobs.model.load_runtime(settings, store)
    report = score_items(store, runtime, mv.id, pool_id, jobs, settings.scoring, settings.pool.max_pixels, progress)
    assert report.scored == 3 and report.failed == 0 and report.retry_later == 1
    assert any("tried again next run" in w for w in progress.warnings)
    left = store.items.to_score(pool_id, mv.id)
    assert [t.item_id for t in left] == [jobs[0].item_id]
    moved.rename(jobs[0].path)
    again = score_items(store, runtime, mv.id, pool_id, jobs[:1], settings.scoring, settings.pool.max_pixels, progress)
    assert again.scored == 1 and store.items.to_score(pool_id, mv.id) == []
    store.close()
