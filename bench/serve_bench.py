"""Benchmark: an idle ``curate loop`` turn on a database of N items, and ``curate serve``'s answers while a turn
runs, against a real local Label Studio.

    .venv/bin/python bench/serve_bench.py --items 100000

The pool's files are real (small, distinct); their rows, the model version and every item's scores are written
straight into the store (what ``curate score`` would have stored), so that setting up 100k items takes seconds
instead of a scoring run. Then ``curate select`` pushes a queue, one ``curate loop`` settles it, and each timed
``curate loop --json`` (a fresh process, as from cron) has nothing to do. Finally ``curate serve`` runs, a webhook
starts a turn, and ``/health`` and ``/webhook`` are timed while it runs.

Targets (issue "Answer Label Studio"): a no-op loop on 100k items ≤ 2 s; ``/health`` and a webhook < 50 ms while a
turn runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

CLASSES = ["circle", "square", "triangle"]
SECRET = "bench-secret"


def populate(db: str, pool: Path, n: int) -> None:
    """N distinct files and, in the store, their items, one registered current model and its scores."""
    from store import Store
    from store.records import ScannedFile, ScoredChunk, ScoredItem

    pool.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = pool / f"img_{i:06d}.jpg"
        path.write_bytes(rng.bytes(64))
        st = path.stat()
        files.append(ScannedFile(path.name, st.st_size, st.st_mtime_ns, f"{i:032x}", 64, 64))
    store = Store.open(db)
    pool_id = store.pools.get_or_create(str(pool), "directory", str(pool))
    store.pools.apply_scan(pool_id, files, [])
    mv = store.models.register(
        version="bench-model",
        source=str(pool / "bench-model.pt"),
        format="ultralytics",
        task="classify",
        class_names=CLASSES,
        imgsz=64,
        embedding_dim=16,
    )
    store.models.set_current(mv.id, note="bench")
    ids = [k.item_id for k in store.pools.known_paths(pool_id).values()]
    run = store.runs.start(mv.id, pool_id, len(ids), "cpu", 64)
    for start in range(0, len(ids), 5000):
        chunk = ScoredChunk()
        for item_id in ids[start : start + 5000]:
            p = rng.dirichlet(np.ones(3)).astype(np.float32)
            e = rng.normal(size=16).astype(np.float32)
            chunk.scored.append(
                ScoredItem(item_id=item_id, width=64, height=64, probs=p, embedding=e / np.linalg.norm(e))
            )
        store.runs.write_chunk(run, mv.id, chunk)
    store.runs.finish(run, "completed", 1.0)
    store.close()


def curate(*args: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"curate {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


CLIENT = httpx.Client(timeout=5, trust_env=False)  # one keep-alive connection: the server's time, not TCP set-up


def timed(method: str, url: str, **kw: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = CLIENT.request(method, url, **kw)
    return (time.perf_counter() - started) * 1000, response


def summary_ms(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": round(statistics.median(values), 1),
        "p95": round(ordered[int(0.95 * (len(values) - 1))], 1),
        "max": round(max(values), 1),
    }


def profile_turn(env: dict[str, str]) -> None:
    import cProfile
    import pstats

    os.environ.update(env)
    from curation.config import load_settings
    from curation.jobs.common import open_store, run_lock
    from curation.jobs.loop import loop

    settings = load_settings()
    with open_store(settings) as store, run_lock(store):
        profiler = cProfile.Profile()
        profiler.enable()
        loop(store, settings)
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true", help="Profile one idle turn in-process and stop there.")
    args = parser.parse_args()

    from curation.devtools.local_label_studio import start_local_label_studio
    from curation.devtools.local_serve import start_local_serve

    out: dict[str, Any] = {"items": args.items, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        root = Path(tmp) / "root"
        pool = root / "pool"
        db = f"sqlite:///{Path(tmp) / 'curate.db'}"
        t0 = time.perf_counter()
        populate(db, pool, args.items)
        out["populate_s"] = round(time.perf_counter() - t0, 1)
        server = start_local_label_studio(root, data_dir=Path(tmp) / "ls")
        try:
            env = {
                **os.environ,
                "PYTHONPATH": str(REPO),
                "LABEL_STUDIO_URL": server.url,
                "LABEL_STUDIO_API_KEY": server.api_key,
                "CURATE_DB": db,
                "CURATE_POOL__PATH": str(pool),
                "CURATE_LABEL_STUDIO__DOCUMENT_ROOT": str(root),
                "CURATE_LABEL_STUDIO__PROJECT": "serve-bench",
                "CURATE_SERVE__WEBHOOK_SECRET": SECRET,
                "CURATE_SERVE__DEBOUNCE_S": "0",
            }
            seconds, _ = curate("select", "--budget", "50", "--push", env=env)
            out["select_push_s"] = round(seconds, 1)
            curate("loop", env=env)  # may re-rank once; the next turns have nothing to do
            idle = []
            for _ in range(args.repeat):
                seconds, summary = curate("loop", env=env)
                if summary["scoring"]["scored"] or summary["queue"]["changed"] or summary["scoring"]["device"]:
                    raise SystemExit(f"the loop was not idle: {summary}")
                idle.append(seconds)
            out["idle_loop_s"] = [round(s, 2) for s in idle]
            out["idle_loop_inside_s"] = summary["seconds"]
            if args.profile:
                print(json.dumps(out), flush=True)
                profile_turn(env)
                return

            serve = start_local_serve([], env=env, cwd=REPO)
            try:
                url = serve.url
                hook = {"json": {"action": "ANNOTATION_CREATED"}, "headers": {"X-Curate-Secret": SECRET}}
                idle_health = [timed("GET", f"{url}/health")[0] for _ in range(200)]
                out["health_ms_no_turn"] = summary_ms(idle_health)
                timed("POST", f"{url}/webhook", **hook)
                deadline = time.monotonic() + 30
                while not httpx.get(f"{url}/status", timeout=5).json()["turns"]["running"]:
                    if time.monotonic() > deadline:
                        raise SystemExit("no turn started")
                    time.sleep(0.01)
                health, webhook = [], []
                while httpx.get(f"{url}/status", timeout=5).json()["turns"]["running"] and len(health) < 200:
                    health.append(timed("GET", f"{url}/health")[0])
                    webhook.append(timed("POST", f"{url}/webhook", **hook)[0])
                out["health_ms"] = summary_ms(health)
                out["webhook_ms"] = summary_ms(webhook)
            finally:
                serve.stop()
        finally:
            server.stop()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['items']} items ({out['machine']}); setup {out['populate_s']} s, select+push {out['select_push_s']} s")
    print(f"idle curate loop (fresh process each): {out['idle_loop_s']} s (target ≤ 2 s)")
    print(f"  of which the turn itself: {out['idle_loop_inside_s']} s")
    for name in ("health_ms_no_turn", "health_ms", "webhook_ms"):
        v = out[name]
        print(f"{name} during a turn: n={v['n']} median {v['median']} p95 {v['p95']} max {v['max']} (target < 50 ms)")


if __name__ == "__main__":
    main()
