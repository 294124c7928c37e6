"""Rescans of object-store pools list key ranges concurrently, cut at keys the previous scan stored
(``ranged_pages``): the ranges must add up to exactly the prefix's listing, whatever changed since — objects added
inside a range, before the first boundary or past the last one, boundary objects deleted, a whole "directory"
holding a boundary emptied. Checked on the in-memory fake and on the real SeaweedFS."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from curation.config import IMAGE_EXTENSIONS
from curation.errors import ObjectStoreError
from curation.objects.source import ListingOrderError, ObjectInfo, ranged_pages
from curation.scoring import object_pool
from curation.scoring.object_pool import resolve_object_pool, scan_object_pool
from store import Store
from tests.fake_objects import MemoryObjectSource

EXT = tuple(IMAGE_EXTENSIONS)


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of a few keys, so that a pool of tens of objects is listed in four ranges."""
    monkeypatch.setattr(object_pool, "LIST_RANGES", 4)
    monkeypatch.setattr(object_pool, "MIN_RANGE", 5)


def _keys(source: Any, prefix: str) -> list[str]:
    return [o.key for page in source.list_pages(prefix) for o in page]


def test_ranges_add_up_to_the_listing_for_any_boundaries() -> None:
    """Boundaries that are keys, that fall between keys (deleted objects), before the first key or after the
    last: the pages come out in byte order, each object once, the same as one sequential listing."""
    fake = MemoryObjectSource(page_size=3)
    for i in range(0, 60, 2):
        fake.put(f"p/{i // 10}/{i:03d}.png", b"x")
    full = _keys(fake, "p/")
    rng = random.Random(7)
    candidates = [*full, "p/", "p/0", "p/00", "p/2/021.png", "p/9/999.png", "p/5/", "p/3/0305.png"]
    for _ in range(40):
        boundaries = sorted(set(rng.sample(candidates, rng.randint(1, 8))))
        pages = list(fake.list_ranges("p/", boundaries))
        assert [o.key for page in pages for o in page] == full, boundaries
        assert all(0 < len(page) <= 3 for page in pages)


def test_a_stopped_ranged_listing_ends_its_threads_and_errors_reach_the_caller() -> None:
    fake = MemoryObjectSource(page_size=2)
    for i in range(40):
        fake.put(f"p/{i:03d}.png", b"x")
    before = threading.active_count()
    pages = fake.list_ranges("p/", ["p/009.png", "p/019.png", "p/029.png"])
    assert [o.key for o in next(iter(pages))] == ["p/000.png", "p/001.png"]
    pages.close()  # type: ignore[attr-defined]
    assert threading.active_count() == before

    def failing(after: str | None) -> Iterator[Sequence[ObjectInfo]]:
        yield [ObjectInfo(f"{after or ''}/x.png", 1, "e")]  # within its range: the listing goes on
        if after == "p/b":
            raise ObjectStoreError("S3 bucket 'x': endpoint unreachable")

    with pytest.raises(ObjectStoreError, match="unreachable"):
        list(ranged_pages(failing, ["p/a", "p/b", "p/c"], 2))
    assert threading.active_count() == before

    def unordered(after: str | None) -> Iterator[Sequence[ObjectInfo]]:
        yield [ObjectInfo("p/2.png", 1, "e"), ObjectInfo("p/1.png", 1, "e")]

    with pytest.raises(ListingOrderError):
        list(ranged_pages(unordered, ["p/0.png"], 2))


def _rescan_scenario(
    store: Store,
    pool_uri: str,
    source: Any,
    put: Callable[[str, bytes], None],
    delete: Callable[[str], None],
    lists: Callable[[], int],
) -> None:
    """The first scan lists in one stream; rescans in four ranges; every change is found, and what the store
    holds afterwards is exactly the listing."""
    pool = resolve_object_pool(pool_uri)
    prefix = pool.prefix
    for d in range(5):
        for i in range(8):
            put(f"{prefix}{d}/{i:02d}.png", f"v1 {d} {i}".encode())
    put(f"{prefix}notes.txt", b"not an image")
    pool_id, report = scan_object_pool(store, pool, source, EXT)
    assert (report.files, report.new_items) == (40, 40)
    first_lists = lists()
    points = store.pools.split_points(pool_id, 4, 5)
    assert len(points) == 3

    _, report = scan_object_pool(store, pool, source, EXT)
    assert (report.files, report.new_items, report.removed) == (40, 0, 0)
    assert lists() - first_lists >= 4  # one listing per range

    boundary_dir = points[1].split("/")[0]  # a "directory" that holds a boundary: emptied entirely
    put(f"{prefix}0/00a.png", b"inside the first range")
    put(f"{prefix}{points[0].split('/')[0]}/99.png", b"inside a range, after its boundary's neighbours")
    put(f"{prefix}0.png", b"before every boundary")  # "." sorts before "/"
    put(f"{prefix}9/00.png", b"past the last boundary")
    put(f"{prefix}99.png", b"past the last boundary, at the top")
    delete(f"{prefix}{points[0]}")  # a boundary object
    for i in range(8):
        delete(f"{prefix}{boundary_dir}/{i:02d}.png")
    changed = f"{prefix}{points[2]}"
    put(changed, b"v2 of a boundary object")
    _, report = scan_object_pool(store, pool, source, EXT)
    present = [k for k in _keys(source, prefix) if k.endswith(".png")]
    assert len(present) == 40 + 5 - 1 - 8
    assert (report.files, report.new_items) == (len(present), 5 + 1)
    removed = 1 + 8 - (1 if points[0].startswith(f"{boundary_dir}/") else 0)
    assert report.removed == removed
    stored = {p for p, *_ in store.pools.known_in_range(pool_id, None, "\U0010ffff")}
    assert stored == {k[len(prefix) :] for k in present}

    _, report = scan_object_pool(store, pool, source, EXT)  # and the next rescan (new boundaries) agrees
    assert (report.files, report.new_items, report.removed) == (len(present), 0, 0)


def test_ranged_rescan_finds_every_change_on_the_fake(db_url: str, small_ranges: None) -> None:
    """On SQLite and Postgres (byte order there is ``COLLATE "C"``; the page comparison reads the driver's rows)."""
    fake = MemoryObjectSource(page_size=4)
    store = Store.open(db_url)
    _rescan_scenario(
        store,
        "s3://fake-bucket/frames/",
        fake,
        fake.put,
        fake.objects.__delitem__,
        lambda: len(fake.listings_after),
    )
    assert fake.reads == []
    assert len({a for a in fake.listings_after if a is not None}) >= 3  # listings started after boundaries


def test_unordered_server_under_ranges_falls_back_to_marks(tmp_path: Path, small_ranges: None) -> None:
    fake = MemoryObjectSource(page_size=4)
    for i in range(30):
        fake.put(f"frames/{i:03d}.png", f"{i}".encode())
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    pool = resolve_object_pool("s3://fake-bucket/frames/")
    scan_object_pool(store, pool, fake, EXT)
    fake.shuffled = True
    del fake.objects["frames/010.png"]
    fake.put("frames/100.png", b"new")
    _, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.removed, report.new_items) == (30, 1, 1)


def test_ranged_rescan_finds_every_change_on_real_s3(seaweedfs: Any, tmp_path: Path, small_ranges: None) -> None:
    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
    from curation.objects.s3 import S3Credentials, S3ObjectSource
    from tests.ls_support import FaultProxy

    bucket = f"b-{uuid.uuid4().hex[:10]}"
    client: Any = seaweedfs.client()
    client.create_bucket(Bucket=bucket)
    with FaultProxy(seaweedfs.endpoint, keep_host=True) as proxy:
        source = S3ObjectSource(
            bucket, S3Credentials(proxy.url, "us-east-1", LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY), max_concurrency=4
        )
        store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
        _rescan_scenario(
            store,
            f"s3://{bucket}/frames/",
            source,
            lambda key, body: client.put_object(Bucket=bucket, Key=key, Body=body),
            lambda key: client.delete_object(Bucket=bucket, Key=key),
            lambda: int(proxy.lists),
        )
        assert proxy.object_gets() == 0
