"""Benchmark: the Ray engine against the local engine on the same pool, on this machine, as a ratio, and the Ray
engine's throughput by actor count.

    .venv/bin/python bench/ray_bench.py --images 2000 --actors 1,2
    .venv/bin/python bench/ray_bench.py --images 200 --ray-address 127.0.0.1:6379   # an existing cluster
    python3 bench/ray_bench.py --device cuda --images 20000 --actors 1,2,4 --gpus-per-actor 0.5  # a GPU machine

Each run scores a fresh database (random-init yolov8n-cls, 224 px, fp32, torch runtime in both engines). Reported
per engine: the scoring phase (``images_per_s`` of the run: Ray's actor start-up included, its ``ray.init`` not)
and end to end (scan + model load + cluster start + scoring). Target (issue 12): Ray's overhead on one machine
<= 25 % of the local engine's time at 2,000 images. Without ``--ray-address`` each Ray run starts a local Ray and
stops it (its ~10 s start-up is in ``end_to_end_s`` only).
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


def run(work: Path, name: str, pool: Path, overrides: dict[str, object]) -> dict[str, object]:
    from curation.config import load_settings
    from curation.jobs.score import score
    from store import Store

    (work / name).mkdir()
    store = Store.open(f"sqlite:///{work / name / 'c.db'}")
    settings = load_settings(
        overrides={
            "pool.path": str(pool),
            "model.path": "yolov8n-cls.yaml",
            "model.imgsz": 224,
            "scoring.precision": "fp32",
            "scoring.runtime": "torch",
            **overrides,
        },
        environ={k: v for k, v in os.environ.items() if not k.startswith("CURATE_")},
    )
    started = time.perf_counter()
    outcome = score(store, settings)
    total = time.perf_counter() - started
    store.close()
    return {
        "images": outcome.scoring.scored,
        "device": outcome.device,
        "scoring_s": round(outcome.scoring.seconds, 2),
        "scoring_img_s": round(outcome.scoring.images_per_s, 1),
        "end_to_end_s": round(total, 2),
        "nodes": len(outcome.scoring.nodes) or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts for the Ray engine")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="with --device cuda: 0.5 = 2 per GPU")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--decode-cpus", type=float, default=1.0)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

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
        result["local"] = local = run(work, "local", pool, common)
        ray_runs = {}
        for actors in [int(a) for a in args.actors.split(",") if a]:
            ray_opts = {
                **common,
                "scoring.engine": "ray",
                "scoring.ray.actors": actors,
                "scoring.ray.cpus_per_actor": args.cpus_per_actor,
                "scoring.ray.decode_cpus": args.decode_cpus,
            }
            if args.gpus_per_actor is not None:
                ray_opts["scoring.ray.gpus_per_actor"] = args.gpus_per_actor
            if args.ray_address:
                ray_opts["scoring.ray.address"] = args.ray_address
            ray_runs[actors] = run(work, f"ray{actors}", pool, ray_opts)
            print(json.dumps({f"ray_{actors}_actors": ray_runs[actors]}), file=sys.stderr)
        result["ray"] = ray_runs
        best = max(ray_runs.values(), key=lambda r: r["scoring_img_s"])  # type: ignore[arg-type,return-value]
        # overhead = extra time of the Ray engine over the local engine's, for the same images
        result["ray_overhead_scoring"] = round(best["scoring_s"] / local["scoring_s"] - 1, 3)  # type: ignore[operator]
        end_to_end = best["end_to_end_s"] / local["end_to_end_s"]  # type: ignore[operator]
        result["ray_overhead_end_to_end"] = round(end_to_end - 1, 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
