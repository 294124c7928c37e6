"""The Python API (``curation.api``): the README's example runs as written, ``ranked_scores`` ranks what selection
would, and importing the API stays light."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation import api
from curation.errors import ConfigError, ModelLoadError, PoolError, UnknownReferenceError
from store import Store
from store.records import ScannedFile, ScoredChunk, ScoredItem
from strategies import uncertainty_scores

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first ``python`` block of the README's "Using curate from Python" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Using curate from Python\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert match, "the README's Python section has no python code block"
    return match.group(1)


def with_inputs(code: str, **values: str) -> str:
    """The example with its input lines (``pool = "..."`` etc.) pointing at test data; each must occur once."""
    for name, value in values.items():
        code, n = re.subn(rf'^{name} = "[^"\n]*"', f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, f'the README example has no single `{name} = "..."` line to point at test data'
    return code


@pytest.mark.slow
def test_the_readme_example_runs_as_written(
    tmp_path: Path, pool_dir: Path, tiny_cls_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(("CURATE_", "LABEL_STUDIO_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no ./curate.yaml here: the example's own settings only
    db = f"sqlite:///{tmp_path / 'example.db'}"
    code = with_inputs(readme_example(), pool=str(pool_dir), model=str(tiny_cls_model), db=db)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Using curate from Python)", "exec"), namespace)
    printed = out.getvalue()

    scored, ranked, chosen = namespace["scored"], namespace["ranked"], namespace["chosen"]
    assert isinstance(ranked, api.RankedScores)
    assert scored.scoring.scored > 0 and f"scored {scored.scoring.scored} images" in printed  # type: ignore[attr-defined]
    assert ranked.measure == "margin" and len(ranked) == scored.scoring.scored  # type: ignore[attr-defined]
    assert ranked.uncertainty.dtype == np.float64 and ranked.item_ids.dtype == np.int64
    assert np.all(np.diff(ranked.uncertainty) <= 0), "not most uncertain first"
    assert all(Path(p).is_file() and Path(p).is_relative_to(pool_dir.resolve()) for p in ranked.paths)
    rows = chosen.rows  # type: ignore[attr-defined]
    assert len(rows) == 10 and chosen.selection.strategy == "margin"  # type: ignore[attr-defined]
    # margin selection takes the top of the same ranking (the first pick can never be a near-duplicate)
    assert rows[0]["path"] == ranked.paths[0]
    assert {r["path"] for r in rows} <= set(ranked.paths.tolist())
    assert f"{rows[0]['rank']} {round(rows[0]['score'], 3)} {rows[0]['path']}" in printed

    with api.open_store(namespace["settings"]) as store:  # type: ignore[arg-type]
        left = api.ranked_scores(store, namespace["settings"])  # type: ignore[arg-type]
    assert len(left) == len(ranked) - 10  # selected items are no longer selectable
    assert not {r["path"] for r in rows} & set(left.paths.tolist())


def _scored_pool(url: str, root: Path, probs: np.ndarray) -> tuple[Store, list[int]]:
    """A store where ``root`` was scanned and scored by model version ``m-1`` with the given probabilities."""
    root.mkdir()
    store = Store.open(url)
    location = str(root.resolve())
    pool_id = store.pools.get_or_create(location, "directory", location)
    files = [ScannedFile(f"sub/img_{i}.jpg", 100 + i, 1_000 + i, f"{i:032x}") for i in range(len(probs))]
    store.pools.apply_scan(pool_id, files, [])
    known = store.pools.known_paths(pool_id)
    ids = [known[f.path].item_id for f in files]
    mv = store.models.register(
        version="m-1",
        source="m.pt",
        format="ultralytics",
        task="classify",
        class_names=["a", "b", "c"],
        imgsz=64,
        embedding_dim=2,
    ).id
    store.models.set_current(mv)
    run = store.runs.start(mv, pool_id, len(ids), "cpu", 4)
    chunk = ScoredChunk()
    for item_id, p in zip(ids, probs, strict=True):
        chunk.scored.append(
            ScoredItem(item_id, 64, 48, probs=p.astype(np.float32), embedding=np.array([0.6, 0.8], np.float32))
        )
    store.runs.write_chunk(run, mv, chunk)
    return store, ids


def test_ranked_scores_ranks_the_stored_outputs_by_the_measure(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=12)
    probs[7] = probs[3]  # a tie: item id order decides
    root = tmp_path / "pool"
    store, ids = _scored_pool(db_url, root, probs)
    settings = api.load_settings(overrides={"pool.path": str(root), "strategy.name": "entropy"}, environ={})
    with store:
        ranked = api.ranked_scores(store, settings)
        expected = uncertainty_scores(probs.astype(np.float32), "entropy")
        order = np.argsort(-expected, kind="stable")
        assert ranked.model_version == "m-1" and ranked.measure == "entropy"
        assert ranked.item_ids.tolist() == [ids[i] for i in order]
        np.testing.assert_allclose(ranked.uncertainty, expected[order], rtol=1e-6)
        assert ranked.paths.tolist() == [str(root.resolve() / "sub" / f"img_{i}.jpg") for i in order]
        tie = [ranked.item_ids.tolist().index(ids[3]), ranked.item_ids.tolist().index(ids[7])]
        assert tie[1] == tie[0] + 1

        # an explicit measure (either spelling) and version; the same items, another order
        lc = api.ranked_scores(store, settings, model_version="m-1", measure="least-confidence")
        assert lc.measure == "least_confidence" and sorted(lc.item_ids.tolist()) == sorted(ids)
        np.testing.assert_allclose(np.sort(lc.uncertainty)[::-1], lc.uncertainty)

        with pytest.raises(ConfigError, match=r"unknown uncertainty measure 'entropie'; valid: least_confidence"):
            api.ranked_scores(store, settings, measure="entropie")
        with pytest.raises(UnknownReferenceError, match="model version 'm-9' is not in the database"):
            api.ranked_scores(store, settings, model_version="m-9")


def test_ranked_scores_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool").mkdir()
    with Store.open(f"sqlite:///{tmp_path / 'c.db'}") as store:
        with pytest.raises(PoolError, match="no pool given"):
            api.ranked_scores(store, api.load_settings(environ={}))
        settings = api.load_settings(overrides={"pool": {"path": str(tmp_path / "pool")}}, environ={})
        with pytest.raises(PoolError, match=r"has not been scanned into .*: score it first"):
            api.ranked_scores(store, settings)
    store, _ = _scored_pool(f"sqlite:///{tmp_path / 'd.db'}", tmp_path / "other", np.full((2, 3), 1 / 3))
    with store:
        store.models.register(  # not current: ranked_scores still reads the current model unless told
            version="m-2",
            source="n.pt",
            format="ultralytics",
            task="classify",
            class_names=["a"],
            imgsz=8,
            embedding_dim=None,
        )
        settings = api.load_settings(overrides={"pool.path": str(tmp_path / "other")}, environ={})
        assert api.ranked_scores(store, settings).model_version == "m-1"
        assert len(api.ranked_scores(store, settings, model_version="m-2")) == 0  # never scored this pool
    with Store.open(f"sqlite:///{tmp_path / 'e.db'}") as empty:
        empty.pools.get_or_create(str((tmp_path / "pool").resolve()), "directory", str(tmp_path / "pool"))
        settings = api.load_settings(overrides={"pool.path": str(tmp_path / "pool")}, environ={})
        with pytest.raises(ModelLoadError, match="no current model"):
            api.ranked_scores(empty, settings)


@pytest.mark.heavy
def test_importing_the_api_does_not_import_torch() -> None:
    script = (
        "import json, sys\n"
        "from curation import api\n"
        "light = [api.load_settings, api.open_store, api.run_lock, api.ranked_scores, api.status, api.Settings]\n"
        "before = 'torch' in sys.modules or 'curation.jobs.score' in sys.modules\n"
        "api.score\n"  # a model-running job: loaded on first use (the positive control)
        "print(json.dumps({'before': before, 'after': 'curation.jobs.score' in sys.modules, 'dir': dir(api)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"before": False, "after": True, "dir": result["dir"]}
    assert set(api.__all__) <= set(result["dir"])
    with pytest.raises(AttributeError, match="has no attribute 'scroe'"):
        api.scroe  # noqa: B018
