"""Near-duplicates across the whole database: the perceptual hash (copies resized or re-encoded keep it), its
matching (``strategies.duplicates``, against brute force), and selection across pools, queues and labeled items
with a random-init model."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from curation.scoring.images import load_rgb, perceptual_hash
from strategies import InvalidOptionError, hamming, hash_duplicates


def _hash_of(img: Image.Image, fmt: str = "PNG", **save: object) -> int:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    buf.seek(0)
    return perceptual_hash(load_rgb(buf, 10**9).rgb)


def _photo(seed: int, size: int = 96) -> Image.Image:
    from curation.devtools.synthetic import SHAPES, draw_shapes

    rng = np.random.default_rng(seed)
    img, _ = draw_shapes(rng, size, [SHAPES[seed % len(SHAPES)], SHAPES[(seed + 1) % len(SHAPES)]], 0.15, 0.35)
    return img.convert("RGB")


# --- the hash -------------------------------------------------------------------------------------------------


def test_copies_keep_their_hash_and_different_images_do_not() -> None:
    images = [_photo(s) for s in range(12)]
    base = [_hash_of(i) for i in images]
    for img, h in zip(images, base, strict=True):
        assert 0 <= h < 1 << 64
        assert _hash_of(img) == h  # deterministic
        assert hamming(h, _hash_of(img.resize((61, 61)))) <= 6  # resized
        assert hamming(h, _hash_of(img.resize((300, 300)))) <= 6  # upscaled
        assert hamming(h, _hash_of(img, "JPEG", quality=60)) <= 6  # re-encoded
    distinct = [int(hamming(a, b)) for a, b in itertools.combinations(base, 2)]
    assert min(distinct) > 6, "two different images look like copies"


# --- the matching ---------------------------------------------------------------------------------------------


def _brute(h: np.ndarray, d: int, ref: np.ndarray, prio: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(len(h), dtype=bool)
    kept: list[int] = []
    for i in sorted(np.flatnonzero(valid).tolist(), key=lambda i: (-prio[i], i)):
        near_ref = len(ref) and int(hamming(h[i], ref).min()) <= d
        near_kept = kept and int(hamming(h[i], h[kept]).min()) <= d
        if near_ref or near_kept:
            out[i] = True
        else:
            kept.append(i)
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10),
    st.integers(1, 60),
    st.integers(0, 8),
    st.integers(0, 2**31 - 1),
)
def test_hash_duplicates_matches_brute_force(d: int, n: int, m: int, seed: int) -> None:
    """Random hashes planted with copies (a few flipped bits) of each other and of the reference."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=max(1, n // 3), dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, size=1
    ).astype(np.uint64)
    h = base[rng.integers(0, len(base), size=n)]
    flips = rng.integers(0, 64, size=(n, 3)).astype(np.uint64)
    mask = rng.random((n, 3)) < 0.5
    for k in range(3):
        h = np.where(mask[:, k], h ^ (np.uint64(1) << flips[:, k]), h)
    ref = np.concatenate([h[rng.integers(0, n, size=m // 2)], rng.integers(0, 2**63, size=m - m // 2, dtype=np.uint64)])
    prio = rng.random(n)
    prio[rng.random(n) < 0.2] = np.nan
    valid = rng.random(n) > 0.1
    want = _brute(h, d, ref, np.nan_to_num(prio, nan=-np.inf), valid)
    got = hash_duplicates(h, d, reference=ref, priority=prio, valid=valid)
    np.testing.assert_array_equal(got, want)
    # signed storage (BIGINT) holds the same bits
    np.testing.assert_array_equal(hash_duplicates(h.view(np.int64), d, reference=ref, priority=prio, valid=valid), want)


def test_hash_duplicates_keeps_the_most_uncertain_copy_and_checks_its_option() -> None:
    h = np.array([5, 5, 7, 1 << 40], dtype=np.uint64)  # 0 and 1 identical, 2 one bit off
    np.testing.assert_array_equal(
        hash_duplicates(h, 2, priority=np.array([0.1, 0.9, 0.5, 0.2])), [True, False, True, False]
    )
    np.testing.assert_array_equal(
        hash_duplicates(h, 0, priority=np.array([0.1, 0.9, 0.5, 0.2])), [True, False, False, False]
    )
    np.testing.assert_array_equal(
        hash_duplicates(h, 1, reference=np.array([1 << 40], dtype=np.uint64)), [False, True, True, True]
    )
    with pytest.raises(InvalidOptionError, match="hash distance"):
        hash_duplicates(h, 17)


# --- selection across the whole database, with a random-init model --------------------------------------------


def _select(db: str, pool: Path, budget: int, config: Path | None = None) -> dict:
    import json

    from typer.testing import CliRunner

    from cli import app

    args = ["select", "--no-push", "--json", "--pool", str(pool), "--model", "yolov8n-cls.yaml", "--db", db]
    args += ["--budget", str(budget), "--strategy", "random", "--min-distance", "0", "--workers", "0"]
    if config is not None:
        args += ["--config", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _originals(root: Path, n: int, first_seed: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = root / f"orig_{k}.png"
        _photo(first_seed + k).save(path)
        paths.append(path)
    return paths


def _copies(originals: list[Path], root: Path) -> list[Path]:
    """Of each original: a resized PNG, and a re-encoded JPEG (alternately), plus a byte-exact copy of the first."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for k, path in enumerate(originals):
        img = Image.open(path).convert("RGB")
        if k % 2 == 0:
            target = root / f"copy_{k}_small.png"
            img.resize((70, 70)).save(target)
        else:
            target = root / f"copy_{k}.jpg"
            img.save(target, "JPEG", quality=55)
        out.append(target)
    exact = root / "exact_copy.png"
    exact.write_bytes(originals[0].read_bytes())
    return [*out, exact]


@pytest.mark.slow
def test_copies_in_a_second_pool_are_not_selected_even_by_a_random_model(tmp_path: Path, db_url: str) -> None:
    """Pool A is selected completely; pool B holds resized, re-encoded and exact copies of it plus new images:
    only the new images are selected from B, though the model is random and embedding suppression is off (on
    SQLite and Postgres: hashes with the top bit set are stored as negative BIGINTs)."""
    pool_a, pool_b = tmp_path / "a", tmp_path / "b"
    originals = _originals(pool_a, 6, 100)
    _copies(originals, pool_b)
    new = _originals(pool_b / "new", 3, 200)
    db = db_url
    assert len(_select(db, pool_a, 6)["items"]) == 6
    picked = _select(db, pool_b, 20)
    names = sorted(Path(r["path"]).name for r in picked["items"])
    assert names == sorted(p.name for p in new)
    assert picked["skipped_copies"] == 6  # the exact copy is the same item as its original: not a candidate
    assert any("perceptual hash" in w for w in picked["warnings"])

    # without the hash (hash_distance: null) the random model selects the copies: what the hash is for
    off = tmp_path / "off.yaml"
    off.write_text("strategy:\n  hash_distance: null\n")
    db2 = f"sqlite:///{tmp_path / 'c2.db'}"
    _select(db2, pool_a, 6, off)
    assert len(_select(db2, pool_b, 20, off)["items"]) == 9


@pytest.mark.slow
def test_copies_within_one_pool_give_one_selection(tmp_path: Path) -> None:
    pool = tmp_path / "p"
    originals = _originals(pool, 5, 300)
    _copies(originals, pool / "copies")
    picked = _select(f"sqlite:///{tmp_path / 'c.db'}", pool, 30)

    def group(name: str) -> str:  # the byte-exact copy is the same item as orig_0 (listed under either path)
        return "0" if name == "exact_copy.png" else name.split("_")[1].split(".")[0]

    groups = sorted(group(Path(r["path"]).name) for r in picked["items"])
    assert groups == ["0", "1", "2", "3", "4"], picked["items"]  # one of each original and its copies
    assert picked["skipped_copies"] == 5


@pytest.mark.slow
def test_labeled_and_queued_copies_suppress_a_new_candidate(tmp_path: Path) -> None:
    """An item labeled (imported label) or queued in Label Studio in one pool keeps its copies in another pool
    from being selected."""
    from curation.scoring.pool import content_id
    from store import Store
    from store.records import ImportedLabel

    pool_a, pool_b = tmp_path / "a", tmp_path / "b"
    originals = _originals(pool_a, 4, 400)
    _copies(originals[:2], pool_b)  # copies of the two originals that will be labeled / queued
    new = _originals(pool_b / "new", 2, 500)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    from typer.testing import CliRunner

    from cli import app

    scored = CliRunner().invoke(
        app, ["score", "--pool", str(pool_a), "--model", "yolov8n-cls.yaml", "--db", db, "--workers", "0"]
    )
    assert scored.exit_code == 0, scored.stderr  # pool A scored (hashed), nothing of it selected
    store = Store.open(db)
    try:
        ids = store.items.by_content([content_id(p) for p in originals])
        item_of = {p: ids.get(content_id(p)) for p in originals}
        assert all(v is not None for v in item_of.values())
        labeled, queued = int(item_of[originals[0]]), int(item_of[originals[1]])
        store.labels.add_imported([ImportedLabel(labeled, {"class": "circle"}, "test")])
        project = store.label_studio.project("http://127.0.0.1:9", 1, "proj", "classify")
        store.label_studio.record_tasks(
            project.id, [{"item_id": queued, "task_id": 7, "position": 1, "cluster": None, "selection_id": None}]
        )
    finally:
        store.close()
    picked = _select(db, pool_b, 20)
    names = sorted(Path(r["path"]).name for r in picked["items"])
    assert names == sorted([*(p.name for p in new)]), picked["items"]
