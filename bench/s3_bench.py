"""Benchmark: object-store pools against the same pool on local disk, in one run, on a local SeaweedFS.

    .venv/bin/python bench/s3_bench.py --images 300 --objects 100000

1. scoring throughput of ``curate score`` (scan + score, random-init yolov8n-cls at 224) from S3 vs from local
   disk, as a ratio (target ≥ 0.8);
2. the first scan of a prefix of ``--objects`` small objects (listing + one read each), and the listing rate;
3. a rerun over the unchanged prefix (target ≤ 10 s, nothing downloaded): once through a loopback proxy that
   counts the object reads, once straight to the server (reads counted in-process) — the one that is timed.

The first scan only lists (objects are read once, by scoring, which computes their content ids).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _settings(pool: str, endpoint: str | None, **extra: object) -> object:
    from curation.config import load_settings
    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    overrides: dict[str, object] = {"pool.path": pool, **extra}
    if endpoint:
        overrides |= {
            "pool.s3.endpoint_url": endpoint,
            "pool.s3.access_key_id": LOCAL_ACCESS_KEY,
            "pool.s3.secret_access_key": LOCAL_SECRET_KEY,
        }
    return load_settings(overrides=overrides, environ={})


def _put_many(server: object, bucket: str, items: list[tuple[str, bytes]], concurrency: int = 64) -> None:
    import obstore
    from obstore.store import S3Store

    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    store = S3Store(
        bucket,
        config={
            "endpoint": server.endpoint,  # type: ignore[attr-defined]
            "access_key_id": LOCAL_ACCESS_KEY,
            "secret_access_key": LOCAL_SECRET_KEY,
            "region": "us-east-1",
        },
        client_options={"allow_http": True},
    )

    async def go() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str, body: bytes) -> None:
            async with gate:
                await obstore.put_async(store, key, body)

        await asyncio.gather(*(one(k, b) for k, b in items))

    asyncio.run(go())


def scoring_ratio(server: object, work: Path, n_images: int) -> dict[str, object]:
    from score_bench import make_images

    from curation.jobs.score import score
    from store import Store

    images = make_images(work / "pool", n_images)
    bucket = "bench-score"
    server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    _put_many(server, bucket, [(f"pool/{p.name}", p.read_bytes()) for p in images])
    common = {"model.path": "yolov8n-cls.yaml", "model.imgsz": 224}
    out: dict[str, object] = {}
    for name, pool, endpoint in (
        ("local", str(work / "pool"), None),
        ("s3", f"s3://{bucket}/pool/", server.endpoint),  # type: ignore[attr-defined]
    ):
        (work / name).mkdir()
        store = Store.open(f"sqlite:///{work / name / 'c.db'}")
        started = time.perf_counter()
        outcome = score(store, _settings(pool, endpoint, **common))  # type: ignore[arg-type]
        total = time.perf_counter() - started
        out[name] = {
            "images": outcome.scoring.scored,
            "scoring_img_s": round(outcome.scoring.images_per_s, 1),
            "end_to_end_s": round(total, 2),
            "end_to_end_img_s": round(n_images / total, 1),
        }
        store.close()
    local, s3 = out["local"], out["s3"]
    out["ratio_scoring"] = round(s3["scoring_img_s"] / local["scoring_img_s"], 3)  # type: ignore[index]
    out["ratio_end_to_end"] = round(s3["end_to_end_img_s"] / local["end_to_end_img_s"], 3)  # type: ignore[index]
    return out


class _CountingSource:
    """The S3 source, counting the objects read through it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.bucket = inner.bucket  # type: ignore[attr-defined]
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read(self, key: str) -> bytes:
        self.reads += 1
        return self.inner.read(key)  # type: ignore[attr-defined,no-any-return]

    def read_many(self, keys: list[str]) -> list[object]:
        self.reads += len(keys)
        return self.inner.read_many(keys)  # type: ignore[attr-defined,no-any-return]


def listing_and_rerun(server: object, work: Path, n_objects: int) -> dict[str, object]:
    import io

    from PIL import Image

    from curation.jobs.score import scan
    from store import Store
    from tests.ls_support import FaultProxy

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    bucket = "bench-list"
    server.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    started = time.perf_counter()
    items = [(f"many/{i // 1000:03d}/{i:07d}.png", png + i.to_bytes(4, "big")) for i in range(n_objects)]
    _put_many(server, bucket, items)
    del items
    upload_s = time.perf_counter() - started

    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
    from curation.objects.s3 import S3Credentials, S3ObjectSource

    source = S3ObjectSource(
        bucket,
        S3Credentials(server.endpoint, "us-east-1", LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY),  # type: ignore[attr-defined]
    )
    started = time.perf_counter()
    listed = sum(len(page) for page in source.list_pages("many/"))
    list_s = time.perf_counter() - started

    (work / "many").mkdir()
    store = Store.open(f"sqlite:///{work / 'many' / 'c.db'}")
    with FaultProxy(server.endpoint, keep_host=True) as proxy:  # type: ignore[attr-defined]
        settings = _settings(f"s3://{bucket}/many/", proxy.url)
        started = time.perf_counter()
        _, _, first = scan(store, settings)  # type: ignore[arg-type]
        first_s = time.perf_counter() - started
        reads_first = proxy.object_gets()
        started = time.perf_counter()
        _, _, rerun = scan(store, settings)  # type: ignore[arg-type]
        rerun_s = time.perf_counter() - started
        reads_rerun = proxy.object_gets() - reads_first
    # the rerun as a user runs it (no proxy in the path); reads counted in-process
    counting = _CountingSource(source)
    started = time.perf_counter()
    _, _, direct = scan(store, _settings(f"s3://{bucket}/many/", server.endpoint), objects=counting)  # type: ignore[arg-type,attr-defined]
    direct_s = time.perf_counter() - started
    store.close()
    return {
        "objects": n_objects,
        "upload_s": round(upload_s, 1),
        "listing_s": round(list_s, 2),
        "listing_obj_s": round(listed / list_s),
        "first_scan_s": round(first_s, 1),
        "first_scan_obj_s": round(first.files / first_s),
        "first_scan_reads": reads_first,
        "rerun_s": round(rerun_s, 2),
        "rerun_reads": reads_rerun,
        "rerun_files": rerun.files,
        "rerun_direct_s": round(direct_s, 2),
        "rerun_direct_reads": counting.reads,
        "rerun_target_met": direct_s <= 10 and reads_rerun == 0 and counting.reads == 0 and direct.files == n_objects,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args()
    from curation.devtools.local_seaweedfs import start_local_seaweedfs

    result: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_before": [round(x, 1) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="s3-bench-") as tmp:
        work = Path(tmp)
        with start_local_seaweedfs(work / "weed") as server:
            if not args.skip_scoring:
                result["scoring"] = scoring_ratio(server, work, args.images)
                print(json.dumps(result["scoring"]), flush=True)
            if args.objects:
                result["listing"] = listing_and_rerun(server, work, args.objects)
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]  # 1, 5 and 15 min averages; the machine is shared
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
