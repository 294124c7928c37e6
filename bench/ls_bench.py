"""Benchmark: push N tasks with predictions to a local Label Studio and reprioritize N queued tasks, against a
raw single-request import of the same payload measured in the same run.

    .venv/bin/python bench/ls_bench.py --tasks 10000

Targets (issue "Label Studio queue"): curate's push rate ≥ 80 % of the raw import rate; 10k tasks in ≤ 30 s.
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
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from PIL import Image


def make_tiny_pool(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / f"t_{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import curation.jobs.common
    import curation.jobs.queue
    import curation.jobs.select
    from curation.config import load_settings
    from curation.devtools.local_label_studio import start_local_label_studio
    from curation.labelstudio.client import LabelStudioClient
    from curation.labelstudio.formats import label_config
    from curation.labelstudio.project import connect
    from curation.labelstudio.reprioritize import reprioritize
    from curation.labelstudio.tags import parse_tag

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        pool = root / "pool"
        t0 = time.perf_counter()
        make_tiny_pool(pool, args.tasks)
        gen_s = time.perf_counter() - t0
        server = start_local_label_studio(root, data_dir=Path(tmp) / "ls")
        try:
            overrides = {
                "db": f"sqlite:///{tmp}/bench.db",
                "pool.path": str(pool),
                "model.path": "yolov8n-cls.yaml",
                "model.imgsz": 32,
                "label_studio": {
                    "url": server.url,
                    "api_key": server.api_key,
                    "project": "bench-queue",
                    "document_root": str(root),
                    "import_chunk": 1000,
                },
            }
            settings = load_settings(None, overrides, environ={})
            recorded: list[dict[str, Any]] = []
            original = LabelStudioClient.import_tasks

            def recording(self: LabelStudioClient, project_id: int, tasks: Any) -> list[int]:
                recorded.extend(tasks)
                return original(self, project_id, tasks)

            LabelStudioClient.import_tasks = recording  # type: ignore[method-assign]
            with curation.jobs.common.open_store(settings) as store:
                t0 = time.perf_counter()
                curation.jobs.select.select(store, settings, budget=args.tasks)  # scores and selects, no push yet
                select_s = time.perf_counter() - t0
                latest = store.selections.recent(1)[0]["id"]
                t0 = time.perf_counter()
                pushed = curation.jobs.queue.push(store, settings, selection_id=latest)
                push_s = time.perf_counter() - t0
                # minus what came after the label stream already served the queue in order (clusters, cleanup)
                served_s = push_s - ((pushed.seconds or 0.0) - (pushed.served_after_s or 0.0))

                ls = connect(settings.label_studio)
                tag = parse_tag(pushed.model_version_tag)
                mv = store.models.get(tag.model_version) if tag else None
                assert mv is not None
                pool_id = store.pools.find(str(pool.resolve()))
                assert pool_id is not None
                t0 = time.perf_counter()
                margin = settings.strategy.model_copy(update={"name": "margin"})
                rep = reprioritize(
                    store, ls, mv, pool_id, settings.label_studio, margin, pool_path=settings.pool.path, force=True
                )
                repr_s = time.perf_counter() - t0
            LabelStudioClient.import_tasks = original  # type: ignore[method-assign]

            # the same payload, one raw request, into a fresh project
            raw_ls = LabelStudioClient(server.url, server.api_key)
            project = raw_ls.create_project("bench-raw", label_config("classify", mv.class_names))
            with httpx.Client(trust_env=False, timeout=600) as http:
                t0 = time.perf_counter()
                response = http.post(
                    f"{server.url}/api/projects/{project['id']}/import",
                    headers={"Authorization": f"Token {server.api_key}", "Content-Type": "application/json"},
                    content=json.dumps(recorded),
                    params={"return_task_ids": "true"},
                )
                raw_s = time.perf_counter() - t0
            response.raise_for_status()
        finally:
            server.stop()

    result = {
        "tasks": args.tasks,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "pool_generation_s": round(gen_s, 2),
        "score_and_select_s": round(select_s, 2),
        "curate_push_s": round(push_s, 2),
        "curate_push_tasks_per_s": round(pushed.pushed / push_s, 1),
        "raw_single_request_import_s": round(raw_s, 2),
        "raw_tasks_per_s": round(len(recorded) / raw_s, 1),
        "push_rate_vs_raw": round((pushed.pushed / push_s) / (len(recorded) / raw_s), 3),
        # the part comparable with the raw import: until the label stream serves the pushed queue in order (the
        # rest sets clusters on the queue's head, one request each, which the raw import cannot do at all)
        "push_served_after_s": round(served_s, 2),
        "push_served_rate_vs_raw": round((pushed.pushed / served_s) / (len(recorded) / raw_s), 3),
        "reprioritize_s": round(repr_s, 2),
        "reprioritized_tasks": rep.queue_size,
        "reprioritize_tasks_per_s": round(rep.queue_size / repr_s, 1),
        "reprioritize_new_order_served_after_s": rep.served_after_s,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Label Studio push/reprioritize, {args.tasks} tasks ({result['machine']})")
    print(f"  curate push            : {push_s:7.2f} s  ({result['curate_push_tasks_per_s']:.0f} tasks/s)")
    print(f"  raw single request     : {raw_s:7.2f} s  ({result['raw_tasks_per_s']:.0f} tasks/s)")
    print(f"  push rate / raw rate   : {result['push_rate_vs_raw']:.1%}")
    served_rate = result["push_served_rate_vs_raw"]
    print(f"    served in order after {served_s:.2f} s = {served_rate:.1%} of the raw rate (then: the head's clusters)")
    print(f"  reprioritize (margin)  : {repr_s:7.2f} s  ({result['reprioritize_tasks_per_s']:.0f} tasks/s)")
    print(f"    new order served after {rep.served_after_s:.2f} s (the rest: Label Studio deleting the old ranking)")
    print(f"  (score + select before the push: {select_s:.1f} s)")


if __name__ == "__main__":
    main()
