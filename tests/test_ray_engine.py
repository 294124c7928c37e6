"""``scoring.engine: ray`` on a real two-node Ray cluster (tests/ray_support.py): both nodes work, the stored
outputs match the local engine's, and a killed actor or a killed driver loses and duplicates nothing.

Each ``curate`` run is its own process (as in production: the driver is the CLI), so a ``kill -9`` of it is real.
The cluster tests are ``slow``; the one without Ray is not. The cluster has 1 CPU per node; actors and decoding
tasks ask for half a CPU each (NOTES.md: whole CPUs starve on 2 cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import REPO

MODEL = "yolov8n-cls.yaml"  # seeded random weights: the same model in every process, built in a second
RAY_OPTS = {
    "CURATE_SCORING__RAY__ACTORS": "2",
    "CURATE_SCORING__RAY__CPUS_PER_ACTOR": "0.5",
    "CURATE_SCORING__RAY__DECODE_CPUS": "0.5",
    "CURATE_SCORING__PRECISION": "fp32",
    "CURATE_SCORING__RUNTIME": "torch",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    pytest.importorskip("ray")
    from tests.ray_support import RayCluster

    ray_cluster = RayCluster(cpus_per_node=1.0).start()
    try:
        yield ray_cluster
    finally:
        left = ray_cluster.stop()
        assert left == [], f"Ray processes left running: {left}"


def _env(**extra: str) -> dict[str, str]:
    from tests.ray_support import RAY_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATE_", "RAY_ADDRESS"))}
    # Ray Data hands blocks to the first actor that is up; these pools are scored in a second or two, less than
    # an actor's model load on this machine, so without this wait one actor may score everything and the tests
    # could not show both nodes (or a node's actor) working
    wait = {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}
    return {**env, **RAY_ENV, **wait, "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO), **RAY_OPTS, **extra}


def _curate(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _json(proc: subprocess.Popen[str], timeout: float = 400) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def _predictions(db: str) -> dict[int, int]:
    """item id -> how many predictions it has (any model version)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT item_id, COUNT(*) FROM predictions GROUP BY item_id")).all()
    engine.dispose()
    return {int(i): int(n) for i, n in rows}


def _count(db: str) -> int:
    try:
        return sum(_predictions(db).values())
    except Exception:  # the schema may not exist yet
        return 0


def _outputs(db: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """path -> (stored probabilities, stored embedding) of the current model version."""
    from store import Store

    store = Store.open(db)
    try:
        mv = store.models.current()
        assert mv is not None and mv.embedding_dim
        ((pool_id, _location),) = store.pools.all()
        scores = store.scores.candidate_classification(pool_id, mv.id)
        embeddings, found = store.scores.embeddings(mv.id, scores.item_ids, mv.embedding_dim)
        assert found.all()
        paths = store.items.paths(pool_id, [int(i) for i in scores.item_ids])
        return {p: (scores.probs[i], embeddings[i]) for i, p in enumerate(paths)}
    finally:
        store.close()


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    from curation.devtools.synthetic import make_pool, write_bad_files

    root = tmp_path / "pool"
    make_pool(root, n=30, size=64, seed=11)
    write_bad_files(root / "bad", size=48)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["actors", "tasks"])
def test_score_on_two_nodes_matches_the_local_engine(cluster: object, pool: Path, tmp_path: Path, decode: str) -> None:
    """Both places to decode (inside the actors — the CPU default — or as Ray tasks ahead of them) store what the
    local engine stores."""
    ray_db, local_db = f"sqlite:///{tmp_path / 'ray.db'}", f"sqlite:///{tmp_path / 'local.db'}"
    common = ["--pool", str(pool), "--model", MODEL, "--no-push", "--json", "--budget", "8", "--strategy", "hybrid"]
    common += ["--batch-size", "4"]  # 40 items in 10 blocks: work for both nodes' actors (ray_engine.block_rows)
    on_ray = _json(
        _curate(
            "select",
            *common,
            "--db",
            ray_db,
            "--out",
            str(tmp_path / "ray.jsonl"),
            "--engine",
            "ray",
            "--ray-address",
            cluster.address,  # type: ignore[attr-defined]
            env=_env(CURATE_SCORING__RAY__DECODE=decode),
        )
    )
    local = _json(_curate("select", *common, "--db", local_db, "--out", str(tmp_path / "local.jsonl"), env=_env()))
    scoring = on_ray["scoring"]
    assert scoring["engine"] == "ray" and scoring["ray_nodes"] == 2, scoring
    assert scoring["scored"] == local["scoring"]["scored"] > 0
    assert scoring["failed"] == local["scoring"]["failed"] > 0  # the planted broken files, recorded the same way
    assert sorted(f["path"] for f in scoring["failures"]) == sorted(f["path"] for f in local["scoring"]["failures"])

    # the same selection, in the same order, and outputs equal to fp32 precision
    def picked(name: str) -> list[str]:
        return [json.loads(line)["path"] for line in (tmp_path / name).read_text().splitlines()]

    assert picked("ray.jsonl") == picked("local.jsonl")
    stored = [_outputs(ray_db), _outputs(local_db)]
    assert stored[0].keys() == stored[1].keys() and len(stored[0]) == scoring["scored"] - 8  # 8: selected
    for path, (probs, embedding) in stored[0].items():
        other_probs, other_embedding = stored[1][path]
        assert np.abs(probs - other_probs).max() <= 1e-5, path
        # embeddings are stored as float16 (store.blobs): a 1e-7 difference in fp32 may round to neighbouring
        # float16 values, so they agree within 1e-5 or one float16 step of the value, whichever is larger
        step = np.maximum(1e-5, np.spacing(np.abs(embedding).astype(np.float16)).astype(np.float32))
        assert (np.abs(embedding - other_embedding) <= step).all(), path

    # a rerun scores only what is missing: nothing
    again = _json(
        _curate(
            "score",
            "--pool",
            str(pool),
            "--model",
            MODEL,
            "--db",
            ray_db,
            "--json",
            "--engine",
            "ray",
            "--ray-address",
            cluster.address,  # type: ignore[attr-defined]
            env=_env(),
        )
    )
    assert again["scored"] == 0 and again["already_scored"] == scoring["scored"] + scoring["failed"]


def _wait(condition: object, timeout: float, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_a_killed_actor_is_retried_and_every_item_scored_once(cluster: object, tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_pool

    pool = tmp_path / "pool"
    make_pool(pool, n=48, size=64, seed=12)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    proc = _curate(
        "score",
        "--pool",
        str(pool),
        "--model",
        MODEL,
        "--db",
        db,
        "--json",
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,  # type: ignore[attr-defined]
        "--batch-size",
        "4",
        env=_env(CURATE_SCORING__CHUNK_SIZE="4"),
    )
    workers: list[psutil.Process] = []

    def actor_working() -> bool:
        workers[:] = cluster.workers("MapWorker")  # type: ignore[attr-defined]
        return bool(workers) and _count(db) > 0

    _wait(actor_working, 300, "an actor scoring", proc)
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    report = _json(proc)
    assert not victim.is_running()
    assert report["scored"] == 48
    counts = _predictions(db)
    assert len(counts) == 48 and set(counts.values()) == {1}


@pytest.mark.slow
def test_a_killed_node_is_survived_and_every_item_scored_once(tmp_path: Path) -> None:
    """SIGKILL of the second node's raylet mid-job (its own cluster: the node does not come back). The GCS declares
    the node dead, Ray Data restarts its actor on the head and re-runs what was lost there; the run completes
    with every item scored exactly once, and every Ray process of the cluster is stopped afterwards."""
    pytest.importorskip("ray")
    from curation.devtools.synthetic import make_pool
    from tests.ray_support import RayCluster

    # a dead node is declared dead after period x threshold (Ray's default: 3 s x 5)
    fast_health = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    own = RayCluster(cpus_per_node=1.0, env=fast_health).start()
    try:
        pool = tmp_path / "pool"
        make_pool(pool, n=120, size=64, seed=14)
        db = f"sqlite:///{tmp_path / 'n.db'}"
        proc = _curate(
            "score",
            *("--pool", str(pool), "--model", MODEL, "--db", db, "--json"),
            *("--engine", "ray", "--ray-address", own.address, "--batch-size", "4"),
            env=_env(CURATE_SCORING__CHUNK_SIZE="4"),
        )
        raylet = own.second_raylet()

        def second_node_scoring() -> bool:
            try:
                on_node = [" ".join(c.cmdline()) for c in raylet.children(recursive=True)]
            except psutil.Error:
                return False
            return any("MapWorker" in c for c in on_node) and 0 < _count(db) < 80

        _wait(second_node_scoring, 300, "an actor scoring on the second node", proc)
        raylet.send_signal(signal.SIGKILL)
        report = _json(proc)
        assert not raylet.is_running()
        assert report["scored"] == 120 and report["failed"] == 0
        counts = _predictions(db)
        assert len(counts) == 120 and set(counts.values()) == {1}
        assert len(own.nodes()) == 1  # the node really is gone, not merely slow
    finally:
        left = own.stop()
    assert left == [], f"Ray processes left running: {left}"


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun_loses_and_duplicates_nothing(cluster: object, tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_pool

    pool = tmp_path / "pool"
    make_pool(pool, n=60, size=64, seed=13)
    db = f"sqlite:///{tmp_path / 'k.db'}"
    args = [
        "score",
        "--pool",
        str(pool),
        "--model",
        MODEL,
        "--db",
        db,
        "--json",
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,  # type: ignore[attr-defined]
        "--batch-size",
        "4",
    ]
    env = _env(CURATE_SCORING__CHUNK_SIZE="4")
    proc = _curate(*args, env=env)
    _wait(lambda: _count(db) >= 8, 300, "two committed chunks", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = _count(db)
    assert 0 < kept < 60
    report = _json(_curate(*args, env=env))
    assert report["scored"] == 60 - kept  # only what was missing
    counts = _predictions(db)
    assert len(counts) == 60 and set(counts.values()) == {1}


@pytest.mark.slow
def test_a_local_ray_is_started_for_the_run_and_leaves_no_process(pool: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import tempfile

    from tests.ray_support import processes_with

    # RAY_TMPDIR: this run's Ray lives (and is looked for) under here only; short, for Ray's socket paths
    ray_tmp = Path(tempfile.mkdtemp(prefix="cl", dir="/tmp"))
    started = time.time()
    db = f"sqlite:///{tmp_path / 'l.db'}"
    proc = _curate(
        "score",
        "--pool",
        str(pool),
        "--model",
        MODEL,
        "--db",
        db,
        "--json",
        "--engine",
        "ray",
        env=_env(RAY_TMPDIR=str(ray_tmp), CURATE_SCORING__RAY__ACTORS="1"),
    )
    report = _json(proc)
    assert report["engine"] == "ray" and report["scored"] > 0 and report["ray_nodes"] == 1
    left = [p for p in processes_with(str(ray_tmp))]
    for p in psutil.process_iter(["name", "create_time"]):  # a worker renames itself ray::...
        if (p.info["name"] or "").startswith("ray::") and (p.info["create_time"] or 0) >= started:
            left.append(p)
    assert left == [], [f"{p.pid} {p.name()}" for p in left]
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.heavy
def test_without_ray_installed_the_engine_is_one_clear_error(pool: Path, tmp_path: Path) -> None:
    """``import ray`` made impossible in the child (``sys.modules['ray'] = None``): exit 2, one line naming the
    extra, and the pool never scanned."""
    script = "import sys; sys.modules['ray'] = None; sys.argv[0] = 'curate'; import cli; cli.main()"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "score",
            "--pool",
            str(pool),
            "--model",
            MODEL,
            "--db",
            f"sqlite:///{tmp_path / 'n.db'}",
            "--engine",
            "ray",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'curate[ray]'" in done.stderr
    assert "scanning" not in done.stderr


def test_resources_default_from_the_cluster() -> None:
    """One actor per GPU where there are GPUs (two per GPU at 0.5), decoding as tasks; on CPUs one actor per CPU
    that decodes its own batches (with ``decode: tasks`` two thirds of the CPUs run inference); an actor the
    cluster cannot fit is a ClusterError (exit 13), not a job that waits forever."""
    from curation.config import RaySettings
    from curation.errors import ClusterError, ExitCode
    from curation.scoring.ray_engine import plan_resources

    gpu = plan_resources(RaySettings(), None, "classify", {"CPU": 64.0, "GPU": 8.0})
    assert (gpu.actors, gpu.gpus_per_actor, gpu.batch_size) == (8, 1.0, 64)
    half = plan_resources(RaySettings(gpus_per_actor=0.5), None, "detect", {"CPU": 64.0, "GPU": 8.0})
    assert (half.actors, half.batch_size) == (16, 32)
    assert not gpu.fused and not half.fused  # GPU actors: CPU tasks decode for them
    cpu = plan_resources(RaySettings(), None, "classify", {"CPU": 12.0})
    assert (cpu.actors, cpu.gpus_per_actor, cpu.threads, cpu.batch_size, cpu.fused) == (12, 0.0, 1, 32, True)
    tasks = plan_resources(RaySettings(decode="tasks"), None, "classify", {"CPU": 12.0})
    assert (tasks.actors, tasks.fused) == (8, False)  # a third of the CPUs left to the decoding tasks
    assert plan_resources(RaySettings(decode="actors"), None, "classify", {"CPU": 8.0, "GPU": 1.0}).fused
    fractional = plan_resources(RaySettings(cpus_per_actor=0.5, actors=3), 4, "detect", {"CPU": 2.0})
    assert (fractional.actors, fractional.threads, fractional.batch_size) == (3, 1, 4)
    with pytest.raises(ClusterError, match="gpus_per_actor") as err:
        plan_resources(RaySettings(gpus_per_actor=1.0), None, "classify", {"CPU": 8.0})
    assert err.value.exit_code == ExitCode.CLUSTER == 13
    with pytest.raises(ClusterError, match="cpus_per_actor"):
        plan_resources(RaySettings(cpus_per_actor=4.0), None, "classify", {"CPU": 2.0})
    with pytest.raises(ClusterError, match="decode_cpus"):
        plan_resources(RaySettings(decode="tasks", decode_cpus=4.0), None, "classify", {"CPU": 2.0})


def test_input_blocks_are_arrow_tables_in_the_batch_order() -> None:
    """The driver hands Ray the items as slices of one Arrow table (no dict per item): every item once, in
    ``order``, ``block`` rows a block, an unknown canvas shape as 0."""
    from curation.scoring.engine import ScoreJob
    from curation.scoring.ray_engine import block_rows, input_blocks

    # whole batches, ~16 blocks per actor, at most 1,024 rows, at least one batch
    assert (block_rows(2000, 2, 32), block_rows(60, 2, 4), block_rows(10, 2, 32)) == (64, 4, 32)
    assert block_rows(10**8, 64, 64) == 1024
    items = [ScoreJob(10 + i, f"/pool/{i}.jpg") for i in range(7)]
    shapes = [None, (224, 160), None, None, (160, 224), None, None]
    blocks = input_blocks(items, [6, 5, 4, 3, 2, 1, 0], shapes, 3)
    assert [b.num_rows for b in blocks] == [3, 3, 1]
    rows = [row for b in blocks for row in b.to_pylist()]
    assert [r["item_id"] for r in rows] == [16, 15, 14, 13, 12, 11, 10]
    assert rows[2] == {"item_id": 14, "path": "/pool/4.jpg", "shape_h": 160, "shape_w": 224}
    assert rows[0]["shape_h"] == rows[0]["shape_w"] == 0


def test_ray_starts_with_the_model_load_unless_this_file_already_scored_the_pool(tmp_path: Path) -> None:
    """``_likely_work``: Ray starts while the driver loads the model when there may be something to score — a
    file never registered, a pool with an item the newest version from this file lacks, ``--rescore`` — and not
    on a rerun whose model file (the newest version registered from it) has scored the whole pool."""
    from curation.config import load_settings
    from curation.jobs.score import _likely_work
    from store import Store
    from store.records import ScannedFile, ScoredChunk, ScoredItem

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    pool_id = store.pools.get_or_create(str(tmp_path / "pool"), "directory", str(tmp_path / "pool"))
    store.pools.apply_scan(pool_id, [ScannedFile(f"{i}.jpg", 8, 1, f"{i:032x}", 4, 4) for i in range(3)], [])
    settings = load_settings(overrides={"model.path": str(weights)}, environ={})
    assert _likely_work(store, settings, pool_id, rescore=False)  # never registered

    def register(version: str) -> int:
        mv = store.models.register(
            version=version, source=str(weights.resolve()), format="ultralytics", task="classify",
            class_names=["a", "b"], imgsz=32, embedding_dim=2,
        )  # fmt: skip
        return mv.id

    def score(mv_id: int, ids: list[int]) -> None:
        run = store.runs.start(mv_id, pool_id, len(ids), "cpu", 8)
        chunk = ScoredChunk()
        for item_id in ids:
            probs = np.array([0.5, 0.5], np.float32)
            emb = np.array([1.0, 0.0], np.float32)
            chunk.scored.append(ScoredItem(item_id=item_id, width=4, height=4, probs=probs, embedding=emb))
        store.runs.write_chunk(run, mv_id, chunk)
        store.runs.finish(run, "completed", 1.0)

    ids = [k.item_id for k in store.pools.known_paths(pool_id).values()]
    old = register("old")
    score(old, ids[:2])
    assert _likely_work(store, settings, pool_id, rescore=False)  # one item left
    score(old, ids[2:])
    assert not _likely_work(store, settings, pool_id, rescore=False)  # a rerun with nothing to do
    assert _likely_work(store, settings, pool_id, rescore=True)
    register("new")  # the file was rewritten: its newest version has scored nothing yet
    assert _likely_work(store, settings, pool_id, rescore=False)
    store.close()
