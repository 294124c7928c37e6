"""Does replaying the model's own training set help retraining? ``curate simulate --trainer finetune`` on a
generated detection dataset, once with ``--base-dataset`` (base + labels, as ``train.base_dataset`` trains) and once
without (labels only), from the same detector and the same seeds; prints a Markdown table of mAP50-95 per round.

    PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python bench/detection_replay.py --preset cpu --out replay-cpu.json
    PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python bench/detection_replay.py --preset gpu --out replay-gpu.json

Everything is generated (shapes on textured backgrounds, ``curation.devtools.synthetic``): a base set the detector
is first trained on, and a second, disjoint set (other seed) that is the simulated pool and its test split. The
``gpu`` preset is the same experiment with more images, larger inputs, more epochs and seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "size": 96,
        "base": 60,
        "pool": 96,
        "base_epochs": 8,
        "epochs": 3,
        "initial": 8,
        "step": 8,
        "rounds": 2,
        "seeds": 2,
        "batch": 4,
    },
    "gpu": {
        "size": 256,
        "base": 800,
        "pool": 1200,
        "base_epochs": 40,
        "epochs": 15,
        "initial": 25,
        "step": 25,
        "rounds": 5,
        "seeds": 3,
        "batch": 32,
    },
}
DET_OPTIONS = {"optimizer": "AdamW", "lr0": 0.008, "warmup_epochs": 0.5, "mosaic": 0.0, "close_mosaic": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("detection-replay.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated data and runs here")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    p = PRESETS[args.preset]

    from curation.config import Settings, TrainSettings
    from curation.devtools.synthetic import make_detection_dataset
    from curation.simulate.simulation import SimulationConfig, simulate
    from curation.training.trainer import train_ultralytics, training_device

    work = args.workdir or Path(tempfile.mkdtemp(prefix="curate-replay-"))
    started = time.perf_counter()
    base = make_detection_dataset(work / "base", n_train=p["base"], n_val=p["base"] // 5, size=p["size"], seed=100)
    pool = make_detection_dataset(work / "pool", n_train=p["pool"], n_val=0, size=p["size"], seed=200)
    device = training_device(args.device)
    options = {**DET_OPTIONS, "nbs": p["batch"]}
    weights = train_ultralytics(
        "yolov8n.yaml",
        base,
        work / "base_run",
        epochs=p["base_epochs"],
        imgsz=p["size"],
        batch=p["batch"],
        device=device,
        options={**options, "val": False},
    ).weights
    settings = Settings(
        train=TrainSettings(batch_size=p["batch"], imgsz=p["size"], device=args.device, options=options),
        model={"imgsz": p["size"]},
        scoring={"device": args.device},
    )
    results: dict[str, Any] = {}
    for arm, base_dataset in (("labels only", None), ("base + labels", base)):
        config = SimulationConfig(
            dataset=pool,
            strategies=("random",),
            initial=p["initial"],
            step=p["step"],
            rounds=p["rounds"],
            seeds=p["seeds"],
            seed=0,
            test_fraction=0.2,
            trainer="finetune",
            epochs=p["epochs"],
            base_dataset=base_dataset,
        )
        results[arm] = simulate(config, settings, str(weights)).to_json()
    seconds = time.perf_counter() - started
    rows = []
    only = results["labels only"]["curves"]["random"]
    both = results["base + labels"]["curves"]["random"]
    for n in sorted(only, key=int):
        rows.append((int(n), only[n]["mean"], only[n]["std"], both[n]["mean"], both[n]["std"]))
    report = {
        "preset": args.preset,
        "parameters": p,
        "device": device,
        "seconds": seconds,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "table": [
            dict(zip(("labels", "only_mean", "only_std", "base_mean", "base_std"), r, strict=True)) for r in rows
        ],
        "runs": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("| labels | labels only | base + labels |\n|---:|---:|---:|")
    for n, om, osd, bm, bsd in rows:
        print(f"| {n} | {om:.3f} ± {osd:.3f} | {bm:.3f} ± {bsd:.3f} |")
    print(f"({args.preset} preset, device {device}, {seconds:.0f} s; {args.out})")


if __name__ == "__main__":
    main()
