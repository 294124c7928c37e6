"""Benchmark: images/s of curate's batched scoring against a naive one-image-at-a-time ``YOLO.predict`` loop and
against the bare batched forward pass of the same model, all measured in this run on the same images.

    .venv/bin/python bench/score_bench.py --images 300 --task classify
    .venv/bin/python bench/score_bench.py --images 120 --task detect --imgsz 640

Targets (issue "core"): curate ≥ 3x naive on a 2-core CPU; on a GPU ≥ 10x naive and ≥ 90 % of the bare forward pass.
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

import numpy as np
import torch
from PIL import Image

ARCH = {"classify": "yolov8n-cls.yaml", "detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml"}


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs (640x480 and 480x640), the kind of files a real pool holds."""
    from curation.devtools.synthetic import draw_shapes

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, _ = draw_shapes(rng, 480, ["circle", "square", "triangle"][: 1 + i % 3], 0.1, 0.25)
        canvas = Image.new("RGB", (640, 480) if i % 2 == 0 else (480, 640), (90, 90, 90))
        canvas.paste(img, (0, 0))
        path = folder / f"bench_{i:05d}.jpg"
        canvas.save(path, quality=90)
        paths.append(path)
    return paths


def bench_naive(model_path: str, paths: list[Path], imgsz: int, device: str) -> float:
    from curation.scoring.runtime import torch_threads

    # Ultralytics' import and predictor set torch to fewer threads; give the baseline every core, as curate has.
    with torch_threads():
        from ultralytics import YOLO

        torch.manual_seed(0)
        model = YOLO(model_path)
        model.predict(str(paths[0]), imgsz=imgsz, device=device, verbose=False)  # warm-up
    start = time.perf_counter()
    for p in paths:
        model.predict(str(p), imgsz=imgsz, device=device, verbose=False)
    return len(paths) / (time.perf_counter() - start)


def bench_curate(
    model_path: str, pool: Path, imgsz: int, device: str, batch: int, workers: int | None, precision: str
) -> dict:
    import curation.jobs.common
    import curation.jobs.model
    import curation.jobs.score
    from curation.config import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "db": f"sqlite:///{tmp}/bench.db",
            "pool.path": str(pool),
            "model.path": model_path,
            "model.imgsz": imgsz,
            "scoring.device": device,
            "scoring.batch_size": batch,
            "scoring.workers": workers,
            "scoring.precision": precision,
        }
        settings = load_settings(None, overrides, environ={})
        runtime = curation.jobs.model.load_runtime(settings)
        with curation.jobs.common.open_store(settings) as store:
            start = time.perf_counter()
            outcome = curation.jobs.score.score(store, settings, runtime=runtime)
            wall = time.perf_counter() - start
            uncertainty = _entropy_by_item(store, outcome)
    n = outcome.scoring.scored
    return {
        "images_per_s": n / outcome.scoring.seconds,
        "end_to_end_images_per_s": n / wall,
        "runtime": runtime,
        "uncertainty": uncertainty,
    }


def _entropy_by_item(store: object, outcome: object) -> dict[str, float]:
    """Per-item uncertainty (entropy, or max-reduced margin for detection), keyed by path, to compare precisions."""
    from curation.config import DetectionAggregation
    from curation.selection import candidate_uncertainty

    mv = outcome.model  # type: ignore[attr-defined]
    cands = candidate_uncertainty(store, outcome.pool_id, mv, "entropy", DetectionAggregation(conf=0.0))  # type: ignore[arg-type,attr-defined]
    return {str(i): float(u) for i, u in zip(cands.item_ids, cands.uncertainty, strict=True)}


def ranking_agreement(a: dict[str, float], b: dict[str, float], top: float = 0.1) -> dict[str, float]:
    """How much two precisions agree on what to label: Spearman correlation and overlap of the top 10 %."""
    keys = sorted(a)
    x = np.array([a[k] for k in keys])
    y = np.array([b[k] for k in keys])
    rank_x, rank_y = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    spearman = float(np.corrcoef(rank_x, rank_y)[0, 1]) if len(keys) > 2 else 1.0
    k = max(1, int(len(keys) * top))
    top_x = set(np.argsort(-x, kind="stable")[:k])
    top_y = set(np.argsort(-y, kind="stable")[:k])
    return {
        "spearman": round(spearman, 4),
        "top10_overlap": round(len(top_x & top_y) / k, 3),
        "max_abs_diff": round(float(np.max(np.abs(x - y))) if len(keys) else 0.0, 4),
    }


def bench_forward(runtime: object, shape: tuple[int, int], batch: int, n: int) -> float:
    """The ceiling: uint8 batches already in memory, forward pass only (no decode, no NMS, no database)."""
    x = torch.randint(0, 255, (batch, 3, *shape), dtype=torch.uint8)
    if runtime.device.type == "cuda":  # type: ignore[attr-defined]
        x = x.pin_memory()
    runtime.forward(x)  # type: ignore[attr-defined]
    batches = max(1, n // batch)
    if runtime.device.type == "cuda":  # type: ignore[attr-defined]
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        runtime.forward(x)  # type: ignore[attr-defined]
    if runtime.device.type == "cuda":  # type: ignore[attr-defined]
        torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--task", choices=sorted(ARCH), default="classify")
    parser.add_argument("--imgsz", type=int, default=None, help="default 224 classify, 640 detect/segment")
    parser.add_argument("--batch-size", type=int, default=None, help="default: curate's per-task default")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    imgsz = args.imgsz or (224 if args.task == "classify" else 640)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    model = ARCH[args.task]
    from curation.scoring.engine import default_batch_size
    from curation.scoring.images import rect_shape

    batch = default_batch_size(args.batch_size, args.task, torch.device(device))
    # the canvas curate feeds the network: square crops for classification, 4:3 rectangles for 640x480 photos
    shape = (imgsz, imgsz) if args.task == "classify" else rect_shape(640, 480, imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        paths = make_images(pool, args.images)
        naive = bench_naive(model, paths, imgsz, device)
        cur = bench_curate(model, pool, imgsz, device, batch, args.workers, "auto")
        forward = bench_forward(cur["runtime"], shape, batch, args.images)
        precision = cur["runtime"].precision
        if precision != "fp32":
            cur32 = bench_curate(model, pool, imgsz, device, batch, args.workers, "fp32")
            forward32 = bench_forward(cur32["runtime"], shape, batch, args.images)
            agreement = ranking_agreement(cur32["uncertainty"], cur["uncertainty"])
        else:
            cur32, forward32, agreement = cur, forward, None
    machine = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    result = {
        "task": args.task,
        "model": model,
        "imgsz": imgsz,
        "images": args.images,
        "batch_size": batch,
        "device": device,
        "precision": precision,
        "machine": machine,
        "torch": torch.__version__,
        "naive_images_per_s": round(naive, 1),
        "curate_images_per_s": round(cur["images_per_s"], 1),
        "curate_end_to_end_images_per_s": round(cur["end_to_end_images_per_s"], 1),
        "bare_forward_images_per_s": round(forward, 1),
        "speedup_vs_naive": round(cur["images_per_s"] / naive, 2),
        "fraction_of_bare_forward": round(cur["images_per_s"] / forward, 3),
        "fp32_curate_images_per_s": round(cur32["images_per_s"], 1),
        "fp32_bare_forward_images_per_s": round(forward32, 1),
        "fp32_speedup_vs_naive": round(cur32["images_per_s"] / naive, 2),
        "fp32_fraction_of_bare_forward": round(cur32["images_per_s"] / forward32, 3),
        "ranking_agreement_vs_fp32": agreement,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.task} {model} @ {imgsz}px, {args.images} images, batch {batch}, {device} ({machine})")
    print(f"  naive YOLO.predict loop (fp32)     : {result['naive_images_per_s']:8.1f} img/s")
    print(
        f"  curate score ({precision:>4})              : {result['curate_images_per_s']:8.1f} img/s  "
        f"(end to end incl. scan+hash+db: {result['curate_end_to_end_images_per_s']:.1f})"
    )
    print(f"  bare batched forward ({precision:>4})      : {result['bare_forward_images_per_s']:8.1f} img/s")
    print(f"  speed-up vs naive                  : {result['speedup_vs_naive']:.2f}x")
    print(f"  fraction of bare forward           : {result['fraction_of_bare_forward']:.1%}")
    if agreement is not None:
        print(
            f"  curate score (fp32)                : {result['fp32_curate_images_per_s']:8.1f} img/s "
            f"= {result['fp32_speedup_vs_naive']:.2f}x naive, "
            f"{result['fp32_fraction_of_bare_forward']:.1%} of fp32 forward "
            f"({result['fp32_bare_forward_images_per_s']:.1f} img/s)"
        )
        print(
            f"  {precision} vs fp32 ranking: Spearman {agreement['spearman']}, "
            f"top-10% overlap {agreement['top10_overlap']:.0%}, max |Δ uncertainty| {agreement['max_abs_diff']}"
        )


if __name__ == "__main__":
    main()
