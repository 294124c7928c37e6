"""Benchmark: the Ray engine against the local engine on the same pool, on this machine, as a ratio, and the Ray
engine's throughput by actor count.

    RAY_AUTH_MODE=disabled .venv/bin/python bench/ray_bench.py --images 2000 --actors 2 --repeat 2
    .venv/bin/python bench/ray_bench.py --images 200 --ray-address 127.0.0.1:6379   # an existing cluster
    python3 bench/ray_bench.py --device cuda --images 20000 --actors 1,2,4 --gpus-per-actor 0.5  # a GPU machine

Each run scores a fresh database (random-init yolov8n-cls, 224 px, fp32, torch runtime in both engines). Reported
per engine: the scoring phase (``images_per_s`` of the run: Ray's actor start-up included, its ``ray.init`` not),
within it the start-up (``first_batch_s``: until the first batch of results reached the driver; on Ray the actors'
model loads) and the rate after it (``steady_img_s``), and end to end (scan + model load + cluster start +
scoring). Target (issue 12): Ray's overhead on one machine <= 25 % of the local engine's time at 2,000 images.
Without ``--ray-address`` each Ray run starts a local Ray and stops it (its ~10 s start-up is in ``end_to_end_s``
only). ``--repeat N`` alternates the engines N times (local, Ray, local, Ray, ...) so that both see the same load;
each run records the 1-minute load average when it started and ended. ``--process`` runs each as a fresh
``curate score --json`` process instead (end to end as a user sees it: the local engine's torch import and model
load counted too; no first-batch split).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# both engines score with the same model, input size, precision and runtime
BASE: dict[str, object] = {
    "model.path": "yolov8n-cls.yaml",
    "model.imgsz": 224,
    "scoring.precision": "fp32",
    "scoring.runtime": "torch",
}


def run(work: Path, name: str, pool: Path, overrides: dict[str, object]) -> dict[str, object]:
    from curation.config import load_settings
    from curation.jobs.score import score
    from store import Store

    (work / name).mkdir()
    store = Store.open(f"sqlite:///{work / name / 'c.db'}")
    settings = load_settings(
        overrides={"pool.path": str(pool), **BASE, **overrides},
        environ={k: v for k, v in os.environ.items() if not k.startswith("CURATE_")},
    )
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    outcome = score(store, settings)
    total = time.perf_counter() - started
    store.close()
    report = outcome.scoring
    first = report.first_batch_s or 0.0
    return {
        "images": report.scored,
        "device": outcome.device,
        "scoring_s": round(report.seconds, 2),
        "scoring_img_s": round(report.images_per_s, 1),
        "first_batch_s": round(first, 2),
        "steady_img_s": round(report.scored / (report.seconds - first), 1) if report.seconds > first else None,
        "end_to_end_s": round(total, 2),
        "nodes": len(report.nodes) or None,
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def run_process(work: Path, name: str, pool: Path, overrides: dict[str, object]) -> dict[str, object]:
    """One run as a user runs it: a fresh ``curate score --json`` process (so the local engine pays its torch
    import and model load too, as Ray's driver and actors do). ``end_to_end_s`` is the process's wall time."""
    from serve_bench import curate

    (work / name).mkdir()
    settings = {"pool.path": str(pool), **BASE, **overrides}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATE_")}
    env.update({"CURATE_" + key.upper().replace(".", "__"): str(value) for key, value in settings.items()})
    env["CURATE_DB"] = f"sqlite:///{work / name / 'c.db'}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    load_before = os.getloadavg()[0]
    total, summary = curate("score", env=env)  # a fresh process; its wall time
    return {
        "images": summary["scored"],
        "device": summary["device"],
        "scoring_s": summary["seconds"],
        "scoring_img_s": summary["images_per_s"],
        "end_to_end_s": round(total, 2),
        "nodes": summary["ray_nodes"],
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def _median(runs: list[dict[str, object]], key: str) -> float:
    import statistics

    return float(statistics.median(float(r[key]) for r in runs))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--actors", default="2", help="comma-separated actor counts for the Ray engine")
    parser.add_argument("--repeat", type=int, default=1, help="alternate local and Ray runs this many times")
    parser.add_argument("--decode", default="auto", help="scoring.ray.decode: auto, actors or tasks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="with --device cuda: 0.5 = 2 per GPU")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--decode-cpus", type=float, default=1.0)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--process",
        action="store_true",
        help="each run a fresh `curate score` process (end to end as a user sees it) instead of in this process",
    )
    args = parser.parse_args()
    runner = run_process if args.process else run

    from score_bench import make_images

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        work = Path(tmp)
        pool = work / "pool"
        make_images(pool, args.images)
        common: dict[str, object] = {"scoring.device": args.device}
        result: dict[str, object] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
            "images": args.images,
            "device": args.device,
        }
        locals_: list[dict[str, object]] = []
        ray_runs: dict[int, list[dict[str, object]]] = {}
        for turn in range(args.repeat):
            locals_.append(runner(work, f"local{turn}", pool, common))
            print(json.dumps({"local": locals_[-1]}), file=sys.stderr)
            for actors in [int(a) for a in args.actors.split(",") if a]:
                ray_opts = {
                    **common,
                    "scoring.engine": "ray",
                    "scoring.ray.actors": actors,
                    "scoring.ray.cpus_per_actor": args.cpus_per_actor,
                    "scoring.ray.decode_cpus": args.decode_cpus,
                    "scoring.ray.decode": args.decode,
                }
                if args.gpus_per_actor is not None:
                    ray_opts["scoring.ray.gpus_per_actor"] = args.gpus_per_actor
                if args.ray_address:
                    ray_opts["scoring.ray.address"] = args.ray_address
                ray_runs.setdefault(actors, []).append(runner(work, f"ray{actors}-{turn}", pool, ray_opts))
                print(json.dumps({f"ray_{actors}_actors": ray_runs[actors][-1]}), file=sys.stderr)
        result["local"] = locals_
        result["ray"] = ray_runs
        # the actor count with the best median scoring phase; overhead = its extra time over the local engine's,
        # medians over the repeats
        best = min(ray_runs.values(), key=lambda runs: _median(runs, "scoring_s"))
        for key, name in (("scoring_s", "scoring"), ("end_to_end_s", "end_to_end")):
            result[f"ray_overhead_{name}"] = round(_median(best, key) / _median(locals_, key) - 1, 3)
        if not args.process:
            steady = _median(locals_, "steady_img_s") / _median(best, "steady_img_s")
            result["ray_overhead_after_first_batch"] = round(steady - 1, 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
