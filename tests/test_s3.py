"""Object-store pools against a real S3 server (SeaweedFS on loopback), a fault-injecting proxy in front of it,
and the in-memory fake for the scan's decisions."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from curation.config import IMAGE_EXTENSIONS, load_settings
from curation.devtools.synthetic import make_pool
from curation.errors import ExitCode, ObjectStoreError, PoolError
from curation.jobs.score import scan
from curation.objects.s3 import S3ObjectSource, resolve_credentials
from curation.objects.source import ObjectReadError, parse_s3_uri
from curation.scoring.object_pool import resolve_object_pool, scan_object_pool
from curation.scoring.pool import item_location, resolve_pool
from store import Store
from store.records import PENDING_PREFIX
from tests.fake_objects import MemoryObjectSource
from tests.ls_support import FaultProxy

EXT = tuple(IMAGE_EXTENSIONS)
SECRET = "s3-secret-never-shown-0123456789"


def _store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'c.db'}")


def _images(tmp_path: Path, n: int = 12) -> list[Path]:
    return make_pool(tmp_path / f"imgs-{uuid.uuid4().hex[:6]}", n=n, size=48, seed=5)


def _bucket(server: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    return name


def _upload(server: Any, bucket: str, prefix: str, files: list[Path]) -> list[str]:
    client = server.client()
    keys = []
    for path in files:
        key = f"{prefix}{path.name}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys


def _settings(pool: str, endpoint: str, **extra: Any) -> Any:
    from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    overrides = {
        "pool.path": pool,
        "pool.s3.endpoint_url": endpoint,
        "pool.s3.access_key_id": LOCAL_ACCESS_KEY,
        "pool.s3.secret_access_key": LOCAL_SECRET_KEY,
        "pool.s3.timeout_s": 5,
        "pool.s3.max_retries": 3,
        **extra,
    }
    return load_settings(overrides=overrides, environ={})


# -- the boundary ---------------------------------------------------------------------------------------------------


def test_s3_uris_are_validated_once() -> None:
    assert parse_s3_uri("s3://my-bucket/frames/").prefix == "frames/"
    assert resolve_pool("s3://my-bucket/a/b").kind == "s3"  # type: ignore[union-attr]
    for bad in ("s3://", "s3://A_B/x", "s3://ok-bucket//x"):
        with pytest.raises(PoolError):
            resolve_pool(bad)
    # exports and rankings name object-store items by their URI (a Path would fold "s3://" into "s3:/")
    assert item_location("s3://my-bucket/frames/", "a/b.jpg") == "s3://my-bucket/frames/a/b.jpg"
    assert item_location("/data/pool", "a/b.jpg") == "/data/pool/a/b.jpg"


def test_credentials_follow_aws_conventions_and_never_show(tmp_path: Path) -> None:
    settings = _settings("s3://bkt-x/", "http://127.0.0.1:9").pool.s3
    env = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "eu-west-3"}
    creds = resolve_credentials(load_settings(environ={}).pool.s3, env)
    assert (creds.access_key_id, creds.region, creds.endpoint_url) == ("AKIAENV", "eu-west-3", None)
    assert SECRET not in repr(creds) and "AKIAENV" not in repr(creds)
    assert SECRET not in repr(S3ObjectSource("bkt-x", creds))
    # config keys win over the environment
    assert resolve_credentials(settings, env).endpoint_url == "http://127.0.0.1:9"
    # a profile from the shared files
    (tmp_path / "credentials").write_text(
        f"[team]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = {SECRET}\n"
    )
    (tmp_path / "config").write_text("[profile team]\nregion = ap-south-1\nendpoint_url = http://127.0.0.1:9\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_CONFIG_FILE": str(tmp_path / "config")}
    creds = resolve_credentials(load_settings(environ={}).pool.s3, {**files, "AWS_PROFILE": "team"})
    assert (creds.access_key_id, creds.region, creds.endpoint_url) == (
        "AKIAPROFILE",
        "ap-south-1",
        "http://127.0.0.1:9",
    )
    assert creds.redact(f"oops {SECRET}") == "oops ***"


# -- decisions, on the in-memory fake -------------------------------------------------------------------------------


def _fake_pool(tmp_path: Path, n: int = 25, page: int = 10) -> MemoryObjectSource:
    fake = MemoryObjectSource(page_size=page)
    for path in _images(tmp_path, n):
        fake.put(f"frames/{path.name}", path.read_bytes())
    fake.put("frames/notes.txt", b"not listed as an image")
    return fake


def test_scan_streams_pages_and_rescans_incrementally_without_reading(tmp_path: Path) -> None:
    """The scan only lists: new and changed objects become pending items (read once, when scored); unchanged ones
    cost nothing; deleted ones are forgotten after a complete listing."""
    store = _store(tmp_path)
    pool = resolve_object_pool("s3://fake-bucket/frames/")
    fake = _fake_pool(tmp_path)
    pool_id, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.new_items, report.pending, report.hashed) == (25, 25, 25, 0)
    assert fake.pages_served == 3 and fake.max_page_seen == 10
    assert fake.reads == []  # nothing read: the content id is computed by scoring's read
    todo = store.items.to_score(pool_id, model_version_id=1)
    assert len(todo) == 25 and all(t.content_id and t.content_id.startswith(PENDING_PREFIX) for t in todo)

    _, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.new_items, report.removed) == (25, 0, 0) and fake.reads == []
    assert {t.content_id for t in store.items.to_score(pool_id, 1)} == {t.content_id for t in todo}

    keys = sorted(k for k in fake.objects if k.endswith(".jpg"))
    fake.put(keys[0], _images(tmp_path, 1)[0].read_bytes() + b"\0")
    del fake.objects[keys[1]]
    _, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.new_items, report.removed, report.pending) == (24, 1, 1, 24) and fake.reads == []
    assert store.items.counts(None, None)["items"] == 24  # the replaced and the deleted pending items are gone


def test_unordered_listing_is_swept_by_marks(tmp_path: Path) -> None:
    """A server that does not list in byte order: nothing listed is forgotten, what is gone is."""
    store = _store(tmp_path)
    pool = resolve_object_pool("s3://fake-bucket/frames/")
    fake = _fake_pool(tmp_path, n=12, page=4)
    scan_object_pool(store, pool, fake, EXT)
    fake.shuffled = True
    del fake.objects[sorted(k for k in fake.objects if k.endswith(".jpg"))[5]]
    _, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.removed, report.new_items) == (11, 1, 0)
    _, report = scan_object_pool(store, pool, fake, EXT)
    assert (report.files, report.removed, report.new_items) == (11, 0, 0)


def test_scoring_reads_each_object_once_and_resolves_content_ids(tmp_path: Path, tiny_cls_model: Path) -> None:
    """One read per new object: scoring hashes the bytes it decodes, renames the pending item to its content id
    (the SHA-256 a local scan computes) or merges it into the item that already has that content."""
    import hashlib

    from curation.jobs.score import score

    fake = _fake_pool(tmp_path, n=6, page=4)
    keys = sorted(k for k in fake.objects if k.endswith(".jpg"))
    fake.put("frames/copy.jpg", fake.objects[keys[0]])  # a duplicate, found when read
    store = _store(tmp_path)
    settings = load_settings(
        overrides={"pool.path": "s3://fake-bucket/frames/", "model.path": str(tiny_cls_model), "scoring.workers": 0},
        environ={},
    )
    outcome = score(store, settings, objects=fake)
    assert sorted(fake.reads) == sorted([*keys, "frames/copy.jpg"])  # each object exactly once
    assert (outcome.scoring.scored, outcome.scoring.duplicates) == (7, 1)
    counts = store.items.counts(outcome.pool_id, outcome.model.id)
    assert (counts["items"], counts["paths"], counts["scored"], counts["unscored"]) == (6, 7, 6, 0)
    expected = {hashlib.sha256(fake.objects[k]).hexdigest()[:32] for k in keys}
    assert set(store.items.by_content(sorted(expected))) == expected

    fake.reads.clear()
    again = score(store, settings, objects=fake)
    assert fake.reads == [] and again.scoring.todo == 0


@pytest.mark.heavy
def test_read_faults_at_scoring_are_per_object_and_retried_next_run(tmp_path: Path, tiny_cls_model: Path) -> None:
    from curation.jobs.score import score
    from curation.progress import NullProgress

    fake = _fake_pool(tmp_path, n=6, page=4)
    keys = sorted(k for k in fake.objects if k.endswith(".jpg"))
    fake.vanish_on_read.add(keys[0])
    fake.faults[keys[1]] = ObjectReadError("access denied", transient=False)
    fake.faults[keys[2]] = ObjectReadError("cannot read object: connection reset", transient=True)
    store = _store(tmp_path)
    settings = load_settings(
        overrides={"pool.path": "s3://fake-bucket/frames/", "model.path": str(tiny_cls_model), "scoring.workers": 0},
        environ={},
    )
    progress = NullProgress()
    outcome = score(store, settings, progress=progress, objects=fake)
    assert (outcome.scoring.scored, outcome.scoring.retry_later, outcome.scoring.failed) == (3, 3, 0)
    shown = "\n".join(progress.warnings)
    assert "deleted since it was listed" in shown and "access denied" in shown and "connection reset" in shown
    assert store.items.failures(None) == []  # nothing is marked failed for good
    fake.faults.clear()
    fake.reads.clear()
    outcome = score(store, settings, objects=fake)
    assert sorted(fake.reads) == [keys[1], keys[2]] and outcome.scoring.scored == 2  # the deleted one is forgotten
    assert outcome.scan.removed == 1


def test_zero_byte_and_non_image_objects_are_items_that_fail_like_local_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pool = resolve_object_pool("s3://fake-bucket/p/")
    fake = MemoryObjectSource()
    fake.put("p/empty.jpg", b"")
    fake.put("p/text.png", b"hello, not a png")
    pool_id, report = scan_object_pool(store, pool, fake, EXT)
    assert report.files == 2 and report.new_items == 2
    todo = store.items.to_score(pool_id, model_version_id=1)
    assert sorted(t.path for t in todo) == ["empty.jpg", "text.png"] and all(t.width is None for t in todo)


# -- the real server ----------------------------------------------------------------------------------------------


def _proxy(upstream: str, mode: str = "pass", **kw: Any) -> FaultProxy:
    return FaultProxy(upstream, mode, keep_host=True, **kw)


def _cls(tiny_cls_model: Path, **extra: Any) -> dict[str, Any]:
    return {"model.path": str(tiny_cls_model), "scoring.workers": 0, "scoring.batch_size": 4, **extra}


@pytest.mark.heavy
def test_real_s3_pool_reads_each_object_once_rerun_reads_nothing_and_changes_are_reread(
    seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path
) -> None:
    from curation.jobs.score import score

    bucket = _bucket(seaweedfs)
    files = _images(tmp_path, 12)
    _upload(seaweedfs, bucket, "frames/", files)
    store = _store(tmp_path)
    with _proxy(seaweedfs.endpoint) as proxy:
        settings = _settings(f"s3://{bucket}/frames/", proxy.url, **_cls(tiny_cls_model))
        _, _, report = scan(store, settings)
        assert (report.files, report.new_items, report.pending) == (12, 12, 12) and proxy.object_gets() == 0
        outcome = score(store, settings)
        assert outcome.scoring.scored == 12 and proxy.object_gets() == 12  # one read per object, scan included
        again = score(store, settings)
        assert again.scan.files == 12 and again.scoring.todo == 0 and proxy.object_gets() == 12  # nothing read
        seaweedfs.client().put_object(Bucket=bucket, Key=f"frames/{files[0].name}", Body=files[1].read_bytes())
        seaweedfs.client().delete_object(Bucket=bucket, Key=f"frames/{files[2].name}")
        changed = score(store, settings)
        assert (changed.scan.files, changed.scan.new_items, changed.scan.removed) == (11, 1, 1)
        assert proxy.object_gets() == 13 and changed.scoring.duplicates == 1  # files[0]'s key now holds files[1]
        assert store.pools.duplicate_paths(changed.pool_id) == 1


@pytest.mark.heavy
def test_real_s3_throttling_is_retried_and_resets_are_transient(
    seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path
) -> None:
    from curation.jobs.score import score

    bucket = _bucket(seaweedfs)
    files = _images(tmp_path, 6)
    _upload(seaweedfs, bucket, "", files)
    store = _store(tmp_path)
    with _proxy(seaweedfs.endpoint, mode="503", n=2) as proxy:
        outcome = score(store, _settings(f"s3://{bucket}/", proxy.url, **_cls(tiny_cls_model)))
        assert outcome.scoring.scored == 6 and outcome.scoring.retry_later == 0
        assert all(count == 3 for count in proxy.gets.values())  # two SlowDowns, then the object
    (tmp_path / "second").mkdir()
    store2 = _store(tmp_path / "second")
    with _proxy(seaweedfs.endpoint, mode="reset") as proxy:
        proxy.reset_keys = {f"/{bucket}/{files[0].name}"}
        settings = _settings(f"s3://{bucket}/", proxy.url, **_cls(tiny_cls_model, **{"pool.s3.max_retries": 1}))
        outcome = score(store2, settings)
        assert (outcome.scoring.scored, outcome.scoring.retry_later, outcome.scoring.failed) == (5, 1, 0)
        proxy.mode = "pass"
        outcome = score(store2, settings)
        assert outcome.scoring.scored == 1 and outcome.scoring.retry_later == 0


@pytest.mark.heavy
def test_real_s3_access_denied_is_reported_for_that_object(
    seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path
) -> None:
    from curation.jobs.score import score
    from curation.progress import NullProgress

    bucket = _bucket(seaweedfs)
    files = _images(tmp_path, 4)
    _upload(seaweedfs, bucket, "x/", files)
    store = _store(tmp_path)
    with _proxy(seaweedfs.endpoint, mode="deny") as proxy:
        proxy.denied = {f"/{bucket}/x/{files[1].name}"}
        progress = NullProgress()
        settings = _settings(f"s3://{bucket}/x/", proxy.url, **_cls(tiny_cls_model))
        outcome = score(store, settings, progress=progress)
        assert (outcome.scoring.scored, outcome.scoring.retry_later, outcome.scoring.failed) == (3, 1, 0)
        [warning] = [w for w in progress.warnings if files[1].name in w]
        assert "access denied" in warning and "tried again next run" in warning
        proxy.denied = set()
        assert score(store, settings).scoring.scored == 1


@pytest.mark.parametrize("problem", ["missing bucket", "unreachable", "bad credentials"])
def test_real_s3_unusable_store_fails_before_any_work(seaweedfs: Any, tmp_path: Path, problem: str) -> None:
    from typer.testing import CliRunner

    from cli import app

    bucket = _bucket(seaweedfs)
    endpoint = seaweedfs.endpoint
    env = {"AWS_ACCESS_KEY_ID": "curate-local", "AWS_SECRET_ACCESS_KEY": "curate-local-secret"}
    if problem == "missing bucket":
        bucket = "no-such-bucket-here"
    elif problem == "unreachable":
        endpoint = "http://127.0.0.1:9"
    else:
        env = {"AWS_ACCESS_KEY_ID": "wrong-key", "AWS_SECRET_ACCESS_KEY": SECRET}
    db = tmp_path / "c.db"
    result = CliRunner().invoke(
        app,
        ["score", "--pool", f"s3://{bucket}/", "--model", str(tmp_path / "unused.pt"), "--db", f"sqlite:///{db}"],
        env={**env, "AWS_ENDPOINT_URL": endpoint, "CURATE_POOL__S3__MAX_RETRIES": "1"},
    )
    assert result.exit_code == ExitCode.OBJECT_STORE, result.output
    assert bucket in result.output and endpoint in result.output and SECRET not in result.output
    assert "Traceback" not in result.output


def test_real_s3_reads_and_heads_work_from_code_that_already_runs_an_event_loop(seaweedfs: Any, tmp_path: Path) -> None:
    # a notebook, an ASGI handler or Playwright's sync API leaves a loop running in the caller's thread: the
    # concurrent reads and HEADs cannot re-enter it and must still return every object, in order
    import asyncio

    from curation.scoring.object_pool import object_source

    bucket = _bucket(seaweedfs)
    files = _images(tmp_path, 4)
    keys = _upload(seaweedfs, bucket, "f/", files)
    settings = _settings(f"s3://{bucket}/f/", seaweedfs.endpoint)
    source = object_source(resolve_object_pool(f"s3://{bucket}/f/"), settings.pool.s3)

    async def inside_a_loop() -> tuple[list[Any], list[Any]]:
        return source.read_many(keys), source.stat_many(keys)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as thread:  # a thread of its own: this test session's thread may run a loop already
        data, infos = thread.submit(lambda: asyncio.run(inside_a_loop())).result()
    assert data == [f.read_bytes() for f in files]
    assert [i.size for i in infos] == [f.stat().st_size for f in files]  # type: ignore[union-attr]


@pytest.mark.heavy
def test_real_s3_server_killed_mid_run_loses_nothing(tmp_path: Path, tiny_cls_model: Path) -> None:
    """The server dies while objects are being read (scan and scoring's one read): nothing is marked failed, and
    the rerun after a restart scores everything."""
    from curation.devtools.local_seaweedfs import start_local_seaweedfs
    from curation.jobs.score import score

    server = start_local_seaweedfs(tmp_path / "weed")
    try:
        bucket = _bucket(server)
        files = _images(tmp_path, 30)
        _upload(server, bucket, "", files)
        store = _store(tmp_path)
        with _proxy(server.endpoint, mode="slow", delay_s=0.5) as proxy:
            extra = {"pool.s3.max_retries": 1, "pool.s3.max_concurrency": 4, "pool.s3.timeout_s": 2}
            settings = _settings(f"s3://{bucket}/", proxy.url, **_cls(tiny_cls_model, **extra))
            killer = threading.Timer(1.0, server.kill)
            killer.start()
            try:
                first = score(store, settings)
            except ObjectStoreError:
                first = None
            killer.join()
            assert not server.is_running()
            assert store.items.failures(None) == []
            assert first is None or first.scoring.scored < 30
            server = start_local_seaweedfs(tmp_path / "weed", ports=server.ports)
            proxy.mode = "pass"
            outcome = score(store, settings)
        assert outcome.scan.files == 30 and outcome.scoring.failed == 0
        assert store.items.counts(outcome.pool_id, outcome.model.id)["scored"] == 30
    finally:
        server.stop()
        assert not server.is_running()


@pytest.mark.heavy
def test_real_s3_pool_scores_like_the_same_pool_on_disk(seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path) -> None:
    """Scored from S3 (read concurrently into memory, decoded there) or from local disk, the same images get the
    same content ids and the same probabilities; a broken object fails as a broken file does."""
    import numpy as np

    from curation.jobs.score import score

    files = _images(tmp_path, 10)
    (files[0].parent / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    from PIL import Image

    Image.new("RGB", (200, 200)).save(files[0].parent / "bomb.png")  # above pool.max_pixels below
    files += [files[0].parent / "broken.jpg", files[0].parent / "bomb.png"]
    bucket = _bucket(seaweedfs)
    _upload(seaweedfs, bucket, "pool/", files)
    common = {
        "model.path": str(tiny_cls_model),
        "scoring.workers": 1,
        "scoring.batch_size": 4,
        "pool.max_pixels": 10_000,
    }

    local_store = _store(tmp_path)
    local = score(local_store, load_settings(overrides={"pool.path": str(files[0].parent), **common}, environ={}))
    (tmp_path / "s3").mkdir()
    s3_store = Store.open(f"sqlite:///{tmp_path / 's3' / 'c.db'}")
    with _proxy(seaweedfs.endpoint) as proxy:
        remote = score(s3_store, _settings(f"s3://{bucket}/pool/", proxy.url, **common))
        gets_after_first = proxy.object_gets()
        again = score(s3_store, _settings(f"s3://{bucket}/pool/", proxy.url, **common))
    assert (remote.scoring.scored, remote.scoring.failed) == (local.scoring.scored, local.scoring.failed) == (10, 2)
    assert sorted(r for _, r in remote.scoring.failures) == sorted(r for _, r in local.scoring.failures)
    assert any("pool.max_pixels" in r for _, r in remote.scoring.failures)
    assert again.scoring.todo == 0 and proxy.object_gets() == gets_after_first  # nothing read again
    n = len(local.model.class_names)
    for name in (f.name for f in files[:10]):
        [lid] = [i for i, p in zip(*_items(local_store, local.pool_id), strict=True) if p == name]
        [rid] = [i for i, p in zip(*_items(s3_store, remote.pool_id), strict=True) if p == name]
        lp = local_store.scores.prediction(lid, local.model.id, n)
        rp = s3_store.scores.prediction(rid, remote.model.id, n)
        assert lp is not None and rp is not None
        np.testing.assert_allclose(lp.probs, rp.probs, atol=1e-6)


def _items(store: Store, pool_id: int) -> tuple[list[int], list[str]]:
    rows = store.items.to_score(pool_id, model_version_id=-1)
    return [r.item_id for r in rows], [r.path for r in rows]


@pytest.mark.heavy
def test_report_shows_thumbnails_of_s3_items(seaweedfs: Any, tmp_path: Path, tiny_cls_model: Path) -> None:
    """``curate report``'s top-of-the-queue thumbnails for an object-store pool are read from the bucket with the
    configured credentials; an object that cannot be read is that thumbnail's problem, not the report's."""
    from curation.jobs.report import gather
    from curation.jobs.select import select

    bucket = _bucket(seaweedfs)
    files = _images(tmp_path, 6)
    _upload(seaweedfs, bucket, "pool/", files)
    store = _store(tmp_path)
    settings = _settings(f"s3://{bucket}/pool/", seaweedfs.endpoint, **_cls(tiny_cls_model))
    outcome = select(store, settings, budget=3)
    picked = [row["path"] for row in outcome.rows]
    seaweedfs.client().delete_object(Bucket=bucket, Key=picked[0][len(f"s3://{bucket}/") :])
    queue = gather(store, settings).queue
    assert len(queue) == 3
    by_path = {f"s3://{bucket}/pool/{t.path}": t for t in queue}
    assert by_path[picked[0]].jpeg is None and "not found" in (by_path[picked[0]].problem or "")
    for path in picked[1:]:
        assert by_path[path].jpeg is not None and by_path[path].jpeg[:2] == b"\xff\xd8"
