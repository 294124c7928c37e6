from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from curation.config import IMAGE_EXTENSIONS
from curation.devtools.synthetic import make_pool
from curation.errors import PoolError
from curation.scoring import pool as pool_module
from curation.scoring.pool import content_id, resolve_pool, scan_pool, walk_directory
from store import Store

EXT = IMAGE_EXTENSIONS


def test_resolve_pool_errors(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"pool not found: .*missing"):
        resolve_pool(tmp_path / "missing")
    with pytest.raises(PoolError, match="no pool given"):
        resolve_pool(None)
    bad = tmp_path / "pool.xlsx"
    bad.write_text("x")
    with pytest.raises(PoolError, match="not a manifest"):
        resolve_pool(bad)


def test_walk_recurses_filters_extensions_and_guards_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for p in (root / "x.JPG", root / "a" / "y.png", root / "a" / "b" / "z.webp", outside / "o.jpg"):
        p.write_bytes(b"data" + p.name.encode())
    (root / "notes.txt").write_text("no")
    (root / "link_out").symlink_to(outside)  # leaves the root: skipped
    (root / "file_out.jpg").symlink_to(outside / "o.jpg")  # leaves the root: skipped
    (root / "a" / "loop").symlink_to(root)  # a loop: must terminate
    (root / "a" / "inside.jpg").symlink_to(root / "x.JPG")  # stays inside: kept
    (root / "dangling.jpg").symlink_to(root / "nothing.jpg")
    skipped: list[tuple[str, str]] = []
    found = sorted(p.relative_to(root).as_posix() for p in walk_directory(root, EXT, skipped))
    assert found == ["a/b/z.webp", "a/inside.jpg", "a/y.png", "x.JPG"]
    reasons = {Path(p).name: r for p, r in skipped}
    assert reasons["link_out"] == "symlink leaves the pool root"
    assert reasons["file_out.jpg"] == "symlink leaves the pool root"
    assert reasons["dangling.jpg"] == "broken symlink"


def test_manifests_txt_csv_jsonl(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    images = make_pool(tmp_path / "imgs", n=4, size=32)
    (tmp_path / "list.txt").write_text("# comment\n" + "\n".join(f"imgs/{p.name}" for p in images[:3]) + "\n\n")
    (tmp_path / "list.csv").write_text("id,path\n" + "".join(f"{i},imgs/{p.name}\n" for i, p in enumerate(images)))
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"path": str(images[0])}) + "\n" + json.dumps(f"imgs/{images[1].name}") + "\n"
    )
    expected = {"list.txt": 3, "list.csv": 4, "list.jsonl": 2}
    for name, n in expected.items():
        _, report = scan_pool(store, resolve_pool(tmp_path / name), EXT)
        assert report.files == n, name
    (tmp_path / "broken.jsonl").write_text('{"path": "a.jpg"}\nnot json\n')
    with pytest.raises(PoolError, match=r"broken.jsonl line 2: invalid JSON"):
        scan_pool(store, resolve_pool(tmp_path / "broken.jsonl"), EXT)
    (tmp_path / "missing.txt").write_text("imgs/none.jpg\n")
    _, report = scan_pool(store, resolve_pool(tmp_path / "missing.txt"), EXT)
    assert report.files == 0 and report.skipped[0][1] == "file not found"
    store.close()


def test_a_manifest_reads_only_images_inside_its_own_tree_and_reports_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    base = tmp_path / "data"
    inside = make_pool(base / "imgs", n=2, size=32)
    elsewhere = make_pool(tmp_path / "elsewhere", n=1, size=32)[0]
    (base / "notes.txt").write_text("secret")
    (base / "imgs" / "sneaky.jpg").symlink_to(elsewhere)  # inside by name, outside once followed
    manifest = base / "list.txt"
    entries = ["/etc/passwd", "notes.txt", f"../elsewhere/{elsewhere.name}", "imgs/sneaky.jpg"]
    manifest.write_text("\n".join([*entries, *(f"imgs/{p.name}" for p in inside)]) + "\n")
    opened: list[Path] = []
    real_content_id = content_id
    monkeypatch.setattr(pool_module, "content_id", lambda path: opened.append(path) or real_content_id(path))

    _, report = scan_pool(store, resolve_pool(manifest), EXT)
    assert report.files == 2
    reasons = dict(report.skipped)
    assert reasons["/etc/passwd"].startswith("not an image file name")
    assert reasons[str(base / "notes.txt")].startswith("not an image file name")
    outside = "outside the manifest's directory (set pool.allow_outside_root: true to allow it)"
    assert reasons[str(base / ".." / "elsewhere" / elsewhere.name)] == outside
    assert reasons[str(base / "imgs" / "sneaky.jpg")] == outside
    assert sorted(p.name for p in opened) == sorted(p.name for p in inside)  # the refused ones were never read

    _, report = scan_pool(store, resolve_pool(manifest), EXT, allow_outside_root=True)
    assert report.files == 4  # the two outside images now count; /etc/passwd and notes.txt still never do
    assert sorted(dict(report.skipped)) == ["/etc/passwd", str(base / "notes.txt")]
    store.close()


def test_content_ids_are_stable_across_moves_and_duplicates_collapse(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    root = tmp_path / "pool"
    paths = make_pool(root, n=5, size=32)
    shutil.copy(paths[0], root / "copy_of_0.jpg")
    source = resolve_pool(root)
    pool_id, report = scan_pool(store, source, EXT)
    assert report.files == 6 and report.new_items == 5 and report.duplicate_paths == 1
    ids_before = {p: k.item_id for p, k in store.pools.known_paths(pool_id).items()}
    assert ids_before["copy_of_0.jpg"] == ids_before[paths[0].name]

    # unchanged rescan: nothing hashed
    _, report = scan_pool(store, source, EXT)
    assert report.hashed == 0 and report.new_items == 0

    # rename + move into a subfolder: same item, no new item
    (root / "sub").mkdir()
    paths[1].rename(root / "sub" / "renamed.jpg")
    _, report = scan_pool(store, source, EXT)
    assert report.new_items == 0 and report.removed == 1
    ids_after = {p: k.item_id for p, k in store.pools.known_paths(pool_id).items()}
    assert ids_after["sub/renamed.jpg"] == ids_before[paths[1].name]
    assert paths[1].name not in ids_after

    # content change: a new item
    paths[2].write_bytes(paths[2].read_bytes() + b"\x00")
    os.utime(paths[2], ns=(1, 1))
    _, report = scan_pool(store, source, EXT)
    assert report.new_items == 1
    assert content_id(paths[2]) != content_id(paths[3])
    store.close()


def test_unreadable_file_is_reported_not_fatal(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    root = tmp_path / "pool"
    paths = make_pool(root, n=2, size=32)
    paths[0].chmod(0)
    _, report = scan_pool(store, resolve_pool(root), EXT)
    assert report.files == 1 and "cannot read" in report.skipped[0][1]
    store.close()


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_is_registered(db_url: str, tmp_path: Path) -> None:
    """Issue 17, item 5: one such name made the whole scan fail and registered nothing."""
    import json
    import os

    from typer.testing import CliRunner

    from cli import app
    from curation.devtools.synthetic import make_pool
    from tests.models import save_thumbnail_model

    pool = tmp_path / "pool"
    make_pool(pool, n=3, size=32)
    os.rename(pool / "img_00000.jpg", os.fsencode(pool) + b"/bad\xff\xfe.jpg")
    (pool / "sub\udcff").mkdir()  # a folder with such a name: its files are reported too
    os.rename(pool / "img_00001.jpg", pool / "sub\udcff" / "inside.jpg")
    model, cfg = save_thumbnail_model(tmp_path)
    args = ["score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db_url, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["scored"] == 1 and summary["files"] == 1, summary
    skipped = {s["path"]: s["reason"] for s in summary["skipped_files"]}
    assert skipped.keys() == {f"{pool}/bad\\xff\\xfe.jpg", f"{pool}/sub\\xff/inside.jpg"}
    assert all("not valid UTF-8" in reason for reason in skipped.values())
    assert "warning: skipped" in result.stderr and "bad\\xff\\xfe.jpg" in result.stderr
    status = CliRunner().invoke(app, ["status", "--json", "--db", db_url, "--pool", str(pool)])
    assert status.exit_code == 0 and json.loads(status.stdout)["counts"]["items"] == 1, status.stderr


def test_a_large_folder_is_stat_ed_in_chunks_and_an_in_place_edit_is_still_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk pass (a folder's files stat-ed in chunks, compared as sets) finds exactly what the file-by-file
    pass found: the one file rewritten in place (same size, same directory mtime), the one removed, and an entry
    that is not a regular file, reported by name while the rest of its chunk is registered."""
    monkeypatch.setattr(pool_module, "STAT_CHUNK", 3)  # 10 files: four chunks, one of them with the fifo
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    root = tmp_path / "pool"
    root.mkdir()
    files = [root / f"img_{i:02d}.jpg" for i in range(10)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 64)
    (root / "sub").mkdir()
    (root / "sub" / "deep.png").write_bytes(b"deep" * 16)
    source = resolve_pool(root)
    pool_id, report = scan_pool(store, source, EXT)
    assert report.files == 11 and report.new_items == 11 and not report.skipped
    before = {p: k.item_id for p, k in store.pools.known_paths(pool_id).items()}

    _, report = scan_pool(store, source, EXT)
    assert report.hashed == 0 and report.files == 11

    folder_mtime = os.stat(root).st_mtime_ns
    files[4].write_bytes(b"\xff" * 64)  # rewritten in place: same size, same name
    os.utime(files[4], ns=(10**18, 10**18))
    assert os.stat(root).st_mtime_ns == folder_mtime  # the folder does not tell
    files[7].unlink()
    os.mkfifo(root / "img_07.jpg")  # same name, no longer a regular file
    _, report = scan_pool(store, source, EXT)
    assert report.hashed == 1 and report.new_items == 1
    assert report.removed == 1 and report.files == 10
    assert report.skipped == [(str(root / "img_07.jpg"), "not a regular file")]
    after = {p: k.item_id for p, k in store.pools.known_paths(pool_id).items()}
    assert after["img_04.jpg"] != before["img_04.jpg"]
    assert {p: i for p, i in after.items() if p != "img_04.jpg"} == {
        p: i for p, i in before.items() if p not in ("img_04.jpg", "img_07.jpg")
    }
    store.close()


@pytest.mark.parametrize("by_folder", [True, False], ids=["stat-in-folder", "stat-full-path"])
def test_a_rescan_notices_a_removal_alone_and_a_removal_with_an_addition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_folder: bool
) -> None:
    """An idle rescan skips building the set of known paths only when nothing can be gone (nothing new, as many
    files as known): a file removed alone, or removed while another is added (the same count), is still gone.
    Both ways of stat-ing a folder's files (by name in the opened folder, or by full path) agree."""
    if not by_folder:
        monkeypatch.setattr(pool_module, "_open_folder", lambda path: None)
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        (root / ("sub" if i == 3 else "") / f"img_{i}.jpg").write_bytes(bytes([i]) * 64)
    source = resolve_pool(root)
    pool_id, report = scan_pool(store, source, EXT)
    assert (report.files, report.new_items, report.removed) == (4, 4, 0)
    _, report = scan_pool(store, source, EXT)
    assert (report.files, report.hashed, report.removed) == (4, 0, 0)

    (root / "sub" / "img_3.jpg").unlink()  # removed alone: nothing to hash
    _, report = scan_pool(store, source, EXT)
    assert (report.files, report.hashed, report.removed) == (3, 0, 1)
    assert set(store.pools.known_paths(pool_id)) == {"img_0.jpg", "img_1.jpg", "img_2.jpg"}

    (root / "img_1.jpg").unlink()  # one removed, one added: as many files as before
    (root / "sub" / "new.jpg").write_bytes(b"\x07" * 64)
    _, report = scan_pool(store, source, EXT)
    assert (report.files, report.hashed, report.removed, report.new_items) == (3, 1, 1, 1)
    assert set(store.pools.known_paths(pool_id)) == {"img_0.jpg", "img_2.jpg", "sub/new.jpg"}
    store.close()
