"""Benchmark: images/s of curate's batched scoring with each runtime (torch, OpenVINO, ONNX Runtime) against a
naive one-image-at-a-time ``YOLO.predict`` loop and against the bare batched forward pass of the same runtime, all
measured in this run on the same images, as ratios.

    .venv/bin/python bench/score_bench.py --images 300 --task classify
    .venv/bin/python bench/score_bench.py --images 96 --task detect
    python3 bench/score_bench.py --device cuda --task detect --images 2000 --json-out gpu-detect.json

On a CPU it also runs the pipeline of the runtime ``auto`` picks with Pillow decoding every JPEG (``decode
pillow``: curate before simplejpeg) and times decode + preprocess alone both ways, in the same run.

On CUDA it measures torch fp16 and fp32, TensorRT (Ultralytics' engine export, when the tensorrt package is
installed) and GPU JPEG decoding (``torchvision.io.decode_jpeg`` on the device) against the bare forward pass.

Targets (issue 16): on a 2-core CPU classify >= 4x and detect >= 3x naive, and the pipeline >= 70 % of the chosen
runtime's bare forward pass for detection; on a GPU >= 10x naive and >= 90 % of the bare forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    model_path: str,
    pool: Path,
    imgsz: int,
    device: str,
    batch: int,
    workers: int | None,
    precision: str,
    runtime_name: str = "torch",
    decoder: str = "auto",
) -> dict:
    import curation.jobs.common
    import curation.jobs.model
    import curation.jobs.score
    from curation.config import load_settings

    with tempfile.TemporaryDirectory() as tmp, jpeg_decoder(decoder):
        overrides = {
            "db": f"sqlite:///{tmp}/bench.db",
            "pool.path": str(pool),
            "model.path": model_path,
            "model.imgsz": imgsz,
            "scoring.device": device,
            "scoring.batch_size": batch,
            "scoring.workers": workers,
            "scoring.precision": precision,
            "scoring.runtime": runtime_name,
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


@contextmanager
def jpeg_decoder(name: str) -> Iterator[None]:
    """``auto``: curate's decode path as shipped (simplejpeg for JPEGs when installed); ``pillow``: Pillow for every
    file, as before simplejpeg. Set in this process before the DataLoader forks its workers, which inherit it."""
    from curation.scoring import images

    if name == "auto":
        yield
        return
    saved = images._jpeg_codec
    images._jpeg_codec = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        images._jpeg_codec = saved  # type: ignore[assignment]


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
    """The ceiling: uint8 batches already in memory, forward pass only (no decode, no NMS, no database), with
    every core (on a CPU) for inference, as nothing else runs."""
    x = torch.randint(0, 255, (batch, 3, *shape), dtype=torch.uint8)
    cuda = runtime.device.type == "cuda"  # type: ignore[attr-defined]
    if cuda:
        x = x.pin_memory()
        return _timed_forward(runtime, x, batch, n, cuda)
    from curation.scoring.engine import _cores

    with runtime.threads(_cores()):  # type: ignore[attr-defined]
        return _timed_forward(runtime, x, batch, n, cuda)


def _timed_forward(runtime: object, x: torch.Tensor, batch: int, n: int, cuda: bool) -> float:
    runtime.forward(x)  # type: ignore[attr-defined]
    batches = max(2, n // batch)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        runtime.forward(x)  # type: ignore[attr-defined]
    if cuda:
        torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - start)


def bench_cpu_decode(paths: list[Path], info: object, decoder: str = "auto") -> float:
    """curate's decode + preprocess of one image (what each DataLoader worker does), single process."""
    from curation.scoring.engine import PoolDataset

    dataset = PoolDataset(paths, info.preprocess, info.imgsz, 10**9)  # type: ignore[attr-defined]
    with jpeg_decoder(decoder):
        dataset[0]
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        return len(paths) / (time.perf_counter() - start)


def bench_gpu_decode(paths: list[Path], runtime: object, shape: tuple[int, int], batch: int) -> dict:
    """JPEG decoding on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), alone and followed by a resize and
    the forward pass, in batches: is decoding the bottleneck once the CPU no longer does it? (On a CPU device,
    ``--gpu-parts`` runs the same code there: a dry run of the GPU check.)"""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg, read_file

    device = runtime.device  # type: ignore[attr-defined]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = [read_file(str(p)) for p in paths]
    chunks = [data[i : i + batch] for i in range(0, len(data), batch)]
    decode_jpeg(chunks[0], device=device)  # warm-up (nvJPEG handles)
    sync()
    start = time.perf_counter()
    for chunk in chunks:
        decode_jpeg(chunk, device=device)
    sync()
    decode_rate = len(data) / (time.perf_counter() - start)

    def prepared(chunk: list[torch.Tensor]) -> torch.Tensor:
        images = decode_jpeg(chunk, device=device)
        resized = [F.interpolate(im[None].float(), size=shape, mode="bilinear", antialias=True) for im in images]
        return torch.cat(resized).clamp_(0, 255).to(torch.uint8)

    runtime.forward(prepared(chunks[0]))  # type: ignore[attr-defined]
    sync()
    start = time.perf_counter()
    for chunk in chunks:
        runtime.forward(prepared(chunk))  # type: ignore[attr-defined]
    sync()
    pipeline_rate = len(data) / (time.perf_counter() - start)
    return {"decode_images_per_s": round(decode_rate, 1), "decode_resize_forward_images_per_s": round(pipeline_rate, 1)}


def bench_tensorrt(model_path: str, shape: tuple[int, int], batch: int, n: int, out_dir: Path) -> dict:
    """Bare forward of a TensorRT fp16 engine built by Ultralytics' exporter (needs the tensorrt package)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return {"skipped": "the tensorrt package is not installed"}
    from curation.scoring.runtime import torch_threads

    try:
        with torch_threads():
            from ultralytics import YOLO
            from ultralytics.nn.autobackend import AutoBackend

            torch.manual_seed(0)
            model = YOLO(model_path)
            engine = model.export(
                format="engine", half=True, imgsz=list(shape), batch=batch, device=0, project=str(out_dir),
                simplify=False,  # onnxslim and onnxruntime-gpu are not carried to the GPU machine; onnx is
            )  # fmt: skip
            backend = AutoBackend(engine, device=torch.device("cuda:0"), fp16=True)
        x = torch.rand(batch, 3, *shape, device="cuda").half()
        backend(x)
        torch.cuda.synchronize()
        batches = max(2, n // batch)
        start = time.perf_counter()
        for _ in range(batches):
            backend(x)
        torch.cuda.synchronize()
        return {"bare_forward_images_per_s": round(batches * batch / (time.perf_counter() - start), 1)}
    except Exception as exc:  # an export failure is a result to report, not a reason to lose the others
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def cpu_description() -> dict:
    info = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "model" not in info:
            info["model"] = value.strip()
        if key.strip() == "flags":
            flags = set(value.split())
            wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
            info["flags"] = [f for f in wanted if f in flags]
            break
    return info


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        _measure(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--task", choices=sorted(ARCH), default="classify")
    parser.add_argument("--imgsz", type=int, default=None, help="default 224 classify, 640 detect/segment")
    parser.add_argument("--batch-size", type=int, default=None, help="default: curate's per-task default")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--naive-images", type=int, default=None, help="images for the naive loop (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--runtimes", default=None, help="comma-separated (default: torch and every installed exported runtime on CPU)"
    )
    parser.add_argument(
        "--gpu-parts",
        action="store_true",
        help="also on a CPU device: run the GPU-only parts (decode_jpeg pipeline, TensorRT) there; a dry run of "
        "bench/gpu_check.sh (DEVICE=cpu)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON report to this file")
    args = parser.parse_args()

    from curation.scoring.engine import default_batch_size
    from curation.scoring.exported import EXPORTED, is_installed, resolve_runtime
    from curation.scoring.images import rect_shape

    imgsz = args.imgsz or (224 if args.task == "classify" else 640)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cuda = device.startswith("cuda")
    model = ARCH[args.task]
    if args.runtimes:
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    else:
        runtimes = ["torch"] + ([] if cuda else [r for r in EXPORTED if is_installed(r)])
    batch = default_batch_size(args.batch_size, args.task, torch.device(device))
    # the canvas curate feeds the network: square crops for classification, 4:3 rectangles for 640x480 photos
    shape = (imgsz, imgsz) if args.task == "classify" else rect_shape(640, 480, imgsz)
    rows: list[dict] = []
    extra: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        paths = make_images(pool, args.images)
        naive = bench_naive(model, paths[: args.naive_images or len(paths)], imgsz, device)
        reference = bench_curate(model, pool, imgsz, device, batch, args.workers, "fp32", "torch")
        ref_forward = bench_forward(reference["runtime"], shape, batch, args.images)
        variants = [(name, "auto", "auto") for name in runtimes]
        if cuda:
            variants = [("torch", "fp16", "auto")]
        elif _jpeg_codec_installed():
            # the same pipeline with Pillow decoding every JPEG (curate before simplejpeg), for the runtime auto picks
            chosen = resolve_runtime("auto", torch.device(device), "ultralytics")
            if chosen in runtimes:
                variants.append((chosen, "auto", "pillow"))
        loaded = reference["runtime"]
        for name, precision, decoder in variants:
            if name != "torch":
                # each exported runtime in a process of its own: their thread pools never share a process with
                # torch's (one process holding OpenVINO and ONNX Runtime sessions was seen to crash at teardown)
                cur, forward = _measure_elsewhere(name, precision, decoder, model, pool, imgsz, device, batch, args)
                rows.append(_row(cur["name"], cur["precision"], cur, forward, naive, reference, decoder))
                continue
            cur = bench_curate(model, pool, imgsz, device, batch, args.workers, precision, name, decoder)
            runtime = cur["runtime"]
            if runtime.precision == "fp32" and decoder == "auto":
                cur, forward = reference, ref_forward
            else:
                forward = bench_forward(runtime, shape, batch, args.images)
            rows.append(_row(runtime.name, runtime.precision, cur, forward, naive, reference, decoder))
            loaded = runtime
        if not any(r["runtime"] == "torch" and r["precision"] == "fp32" for r in rows):
            rows.append(_row("torch", "fp32", reference, ref_forward, naive, reference))
        extra["cpu_decode_images_per_s"] = round(bench_cpu_decode(paths, reference["runtime"].info), 1)
        if _jpeg_codec_installed():
            pillow = bench_cpu_decode(paths, reference["runtime"].info, "pillow")
            extra["cpu_decode_pillow_images_per_s"] = round(pillow, 1)
            extra["cpu_decode_vs_pillow"] = round(extra["cpu_decode_images_per_s"] / pillow, 2)
        if cuda or args.gpu_parts:
            extra["gpu_decode"] = bench_gpu_decode(paths, loaded, shape, batch)  # torch fp16 on CUDA
            extra["gpu_decode"]["vs_bare_forward_fp16"] = round(
                extra["gpu_decode"]["decode_resize_forward_images_per_s"] / rows[0]["bare_forward_images_per_s"], 3
            )
            extra["gpu_decode"]["speedup_vs_naive"] = round(
                extra["gpu_decode"]["decode_resize_forward_images_per_s"] / naive, 2
            )
            extra["tensorrt"] = trt = bench_tensorrt(model, shape, batch, args.images, Path(tmp) / "trt")
            if "bare_forward_images_per_s" in trt:
                trt["vs_torch_bare_forward"] = round(
                    trt["bare_forward_images_per_s"] / rows[0]["bare_forward_images_per_s"], 3
                )
                trt["speedup_vs_naive"] = round(trt["bare_forward_images_per_s"] / naive, 2)
    machine = torch.cuda.get_device_name(0) if cuda else cpu_description()
    result = {
        "task": args.task,
        "model": model,
        "imgsz": imgsz,
        "canvas": list(shape),
        "images": args.images,
        "batch_size": batch,
        "device": device,
        "machine": machine,
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "naive_images_per_s": round(naive, 1),
        "runtimes": rows,
        **extra,
    }
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.task} {model} @ {imgsz}px (canvas {shape[0]}x{shape[1]}), {args.images} images, batch {batch}, "
          f"{device} ({machine})")  # fmt: skip
    print(f"  naive YOLO.predict loop (torch fp32): {naive:8.1f} img/s")
    print("  runtime      prec  decode   curate img/s  x naive   bare fwd img/s  curate/fwd  Spearman vs torch fp32")
    for r in rows:
        print(
            f"  {r['runtime']:<12} {r['precision']:<5} {r['decoder']:<7} {r['curate_images_per_s']:12.1f} "
            f"{r['speedup_vs_naive']:7.2f}x "
            f"{r['bare_forward_images_per_s']:15.1f} {r['fraction_of_bare_forward']:10.1%}  "
            f"{r['ranking_agreement_vs_torch_fp32']['spearman']}"
        )
    print(f"  curate decode + preprocess, one process: {extra['cpu_decode_images_per_s']:.1f} img/s", end="")
    if "cpu_decode_pillow_images_per_s" in extra:
        print(f" (Pillow only: {extra['cpu_decode_pillow_images_per_s']:.1f} img/s, {extra['cpu_decode_vs_pillow']}x)")
    else:
        print()
    for key in ("gpu_decode", "tensorrt"):
        if key in extra:
            print(f"  {key}: {extra[key]}")


def _jpeg_codec_installed() -> bool:
    from curation.scoring import images

    return images._jpeg_codec() is not None


def _measure_elsewhere(
    name: str,
    precision: str,
    decoder: str,
    model: str,
    pool: Path,
    imgsz: int,
    device: str,
    batch: int,
    args: argparse.Namespace,
) -> tuple[dict, float]:
    import subprocess

    spec = {
        "name": name, "precision": precision, "decoder": decoder, "model": model, "pool": str(pool), "imgsz": imgsz,
        "device": device, "batch": batch, "workers": args.workers, "images": args.images, "task": args.task,
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured, measured["bare_forward_images_per_s"]


def _measure(spec: dict) -> None:
    """One runtime's pipeline and bare forward rates (``--measure``), printed as one JSON line."""
    from curation.scoring.images import rect_shape

    pool = Path(spec["pool"])
    cur = bench_curate(
        spec["model"], pool, spec["imgsz"], spec["device"], spec["batch"], spec["workers"], spec["precision"],
        spec["name"], spec.get("decoder", "auto"),
    )  # fmt: skip
    runtime = cur.pop("runtime")
    imgsz = spec["imgsz"]
    shape = (imgsz, imgsz) if spec["task"] == "classify" else rect_shape(640, 480, imgsz)
    cur["bare_forward_images_per_s"] = bench_forward(runtime, shape, spec["batch"], spec["images"])
    cur["name"], cur["precision"] = runtime.name, runtime.precision
    print(json.dumps(cur), flush=True)


def _row(
    name: str, precision: str, cur: dict, forward: float, naive: float, reference: dict, decoder: str = "auto"
) -> dict:
    return {
        "runtime": name,
        "precision": precision,
        "decoder": decoder,
        "curate_images_per_s": round(cur["images_per_s"], 1),
        "curate_end_to_end_images_per_s": round(cur["end_to_end_images_per_s"], 1),
        "bare_forward_images_per_s": round(forward, 1),
        "speedup_vs_naive": round(cur["images_per_s"] / naive, 2),
        "fraction_of_bare_forward": round(cur["images_per_s"] / forward, 3),
        "ranking_agreement_vs_torch_fp32": ranking_agreement(reference["uncertainty"], cur["uncertainty"]),
    }


if __name__ == "__main__":
    main()
