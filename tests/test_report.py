"""``curate report``: a self-contained page from what the store records — on an empty database, a full one
(queue, labels, two model versions), detection, no embeddings, a simulation; escaping; bad paths."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from curation.config import load_settings
from curation.errors import ExitCode
from curation.jobs.report import gather
from curation.reporting.projection import pca_2d
from tests.report_support import World, build_world
from tests.test_cli import assert_one_clean_error

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def make_report(world: World, tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "report.html"
    code, stdout, err = run("report", "--db", world.db_url, "--out", str(out), "--json", *extra)
    assert code == 0, err
    return json.loads(stdout), out.read_text(encoding="utf-8")


def images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)


def assert_self_contained(page: str) -> None:
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"(src|href)=\"(?!data:)", page), "every src/href must be an embedded data URI"
    assert "url(" not in page  # no CSS that fetches anything
    for src in images(page):
        mime, payload = src.removeprefix("data:").split(";base64,")
        raw = base64.b64decode(payload, validate=True)
        assert raw.startswith(b"\x89PNG" if mime == "image/png" else b"\xff\xd8"), mime


def test_an_empty_database_says_so(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, stdout, err = run("report", "--db", f"sqlite:///{tmp_path / 'e.db'}", "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["empty"] is True and summary["figures"] == [] and summary["out"] == str(out)
    page = out.read_text()
    assert 'id="empty"' in page and "This database is empty" in page
    assert images(page) == []
    assert_self_contained(page)
    code, _, err = run("report", "--db", f"sqlite:///{tmp_path / 'e.db'}", "--out", str(out))
    assert code == 0 and "empty" in err and f"Wrote {out}" in err


@pytest.mark.heavy
def test_a_full_database_gets_every_figure_and_the_pngs(tmp_path: Path) -> None:
    world = build_world(tmp_path)
    png_dir = tmp_path / "figs" / "nested"
    summary, page = make_report(world, tmp_path, "--png", str(png_dir))
    assert summary["figures"] == ["health", "uncertainty", "embeddings", "classes", "models"]
    assert summary["current_model"] == "model-v2" and not summary["empty"] and summary["notes"] == []
    assert summary["counts"]["queued"] == 6 and summary["counts"]["labeled"] == 5 and summary["counts"]["skipped"] == 1
    # every figure is embedded, identical to the PNG written beside it; thumbnails are JPEGs of the queue's top
    assert [Path(p).name for p in summary["png"]] == [f"{n}.png" for n in summary["figures"]]
    embedded = set(images(page))
    for path in summary["png"]:
        payload = base64.b64encode(Path(path).read_bytes()).decode()
        assert f"data:image/png;base64,{payload}" in embedded
    jpegs = [s for s in embedded if s.startswith("data:image/jpeg")]
    assert len(jpegs) == 6  # the 6 tasks still waiting
    assert "Top of the Label Studio queue (6 tasks waiting in report-queue)" in page
    assert_self_contained(page)
    # the registry table shows both versions with their metrics
    assert page.count("accuracy 0.") >= 2 and "model-v1" in page and "f1 0.6000" in page


def test_the_data_matches_what_the_store_counts(tmp_path: Path) -> None:
    world = build_world(tmp_path)
    data = gather(world.store, load_settings(None, {"db": world.db_url}))
    final = {s.name: s.values[-1] for s in data.timeline}
    assert final == {"scored": 40, "selected": 16, "queued": 6, "labeled": 5, "skipped": 1}
    assert all(s.times == sorted(s.times) for s in data.timeline)
    # the remaining pool: 40 items minus 16 selected, under each version; the newer model is surer
    assert [(d.version, len(d.values), d.current) for d in data.distributions] == [
        ("model-v1", 24, False),
        ("model-v2", 24, True),
    ]
    assert np.median(data.distributions[1].values) < np.median(data.distributions[0].values)
    m = data.embedding_map
    assert m is not None and m.method == "PCA" and m.embedded == 40 and len(m.coords) == 40
    # 5 labeled, 6 queued, 4 selected but never pushed + the skipped one (selected, no longer queued), 24 untouched
    assert {s: m.states.count(s) for s in ("labeled", "queued", "selected", "remaining")} == {
        "labeled": 5,
        "queued": 6,
        "selected": 5,
        "remaining": 24,
    }
    b = data.balance
    assert b is not None and b.n_selected == 16 and b.n_labeled == 5
    assert b.labeled == [2, 2, 1]  # labels cycle circle, square, triangle
    assert sum(b.selected) == 16  # one predicted class per classified item
    assert [t.position for t in data.queue] == [1, 2, 3, 4, 5, 6] and all(t.jpeg for t in data.queue)


@pytest.mark.heavy
def test_detection_models_count_boxes_labels(tmp_path: Path) -> None:
    world = build_world(tmp_path, task="detect", classes=("car", "person"))
    summary, page = make_report(world, tmp_path)
    assert "classes" in summary["figures"] and "uncertainty" in summary["figures"]
    data = gather(world.store, load_settings(None, {"db": world.db_url}))
    assert data.task == "detect" and data.balance is not None
    assert data.balance.classes == ["car", "person"] and data.balance.labeled == [3, 2]
    assert_self_contained(page)


@pytest.mark.heavy
def test_no_embeddings_leaves_the_map_out_and_says_why(tmp_path: Path) -> None:
    world = build_world(tmp_path, embeddings=False)
    summary, page = make_report(world, tmp_path)
    assert "embeddings" not in summary["figures"] and "health" in summary["figures"]
    assert any("No embeddings are stored for model-v2" in n for n in summary["notes"])
    assert "No embeddings are stored" in page
    assert "Top of the Label Studio queue" in page  # the queue's thumbnails do not need embeddings


@pytest.mark.heavy
def test_a_pool_without_label_studio_shows_the_latest_selection(tmp_path: Path) -> None:
    world = build_world(tmp_path, n_label=0, n_skip=0, push_queue=False, versions=1)
    summary, page = make_report(world, tmp_path)
    assert "Top of selection #2 (4 items not in Label Studio)" in page
    assert summary["counts"]["queued"] == 0 and "models" not in summary["figures"]  # one version: no metric curve


@pytest.mark.heavy
def test_strings_from_outside_are_escaped(tmp_path: Path) -> None:
    hostile = '<img src=x onerror="alert(1)">.jpg'
    world = build_world(tmp_path, classes=("<b>cat</b>", "dog&co"), renames={5: hostile}, n_label=2)
    summary, page = make_report(world, tmp_path, "--pool", str(world.pool))
    assert hostile not in page and "<b>cat</b>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.jpg" in page
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "dog&amp;co" in page
    assert len(images(page)) == len(summary["figures"]) + 9  # 9 queued thumbnails; the name made no <img>
    assert_self_contained(page)


@pytest.mark.heavy
def test_simulation_curves_are_added(tmp_path: Path) -> None:
    from curation.simulate.simulation import SimulationConfig, SimulationResult, write_json

    records = [
        {"strategy": s, "seed": seed, "n_labeled": n, "metric": base + 0.001 * n + 0.01 * seed}
        for s, base in (("random", 0.5), ("entropy", 0.55))
        for seed in range(2)
        for n in (10, 20, 30)
    ]
    result = SimulationResult(
        SimulationConfig(dataset=Path("digits"), strategies=("random", "entropy"), seeds=2),
        "yolov8n-cls.yaml",
        "accuracy",
        100,
        25,
        records,
    )
    sim = write_json(result, tmp_path / "sim.json")
    world = build_world(tmp_path, versions=1, n_label=0, n_skip=0)
    summary, page = make_report(world, tmp_path, "--simulation", str(sim))
    assert summary["figures"][-1] == "simulation"
    assert f"from <code>{sim}</code>" in page and "Simulated learning curves" in page
    assert "Labels each strategy needed to reach random's final accuracy (0.535 with 30 labels)" in page
    assert "<td>entropy</td><td class=num>0.585</td><td class=num>10</td><td class=num>33%</td>" in page


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "file not found"), ("{not json", "not JSON"), ('{"records": []}', "not a result of curate simulate")],
)
def test_a_bad_simulation_file_is_one_clean_error(tmp_path: Path, content: str | None, fragment: str) -> None:
    sim = tmp_path / "sim.json"
    if content is not None:
        sim.write_text(content)
    out = tmp_path / "r.html"
    code, _, err = run("report", "--db", f"sqlite:///{tmp_path / 'e.db'}", "--out", str(out), "--simulation", str(sim))
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "--simulation", fragment)
    assert not out.exists()


@pytest.mark.heavy
def test_bad_output_paths_are_refused_before_any_work(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'e.db'}"
    code, _, err = run("report", "--db", db, "--out", str(tmp_path))
    assert_one_clean_error(code, err, ExitCode.USAGE, "--out", "is a folder")
    code, _, err = run("report", "--db", db, "--out", str(tmp_path / "r.txt"))
    assert_one_clean_error(code, err, ExitCode.USAGE, "--out", "use a .html or .htm file name")
    (tmp_path / "file").write_text("x")
    code, _, err = run("report", "--db", db, "--out", str(tmp_path / "file" / "r.html"))
    assert_one_clean_error(code, err, ExitCode.USAGE, "is not a folder")
    code, _, err = run("report", "--db", db, "--out", str(tmp_path / "r.html"), "--png", str(tmp_path / "file"))
    assert_one_clean_error(code, err, ExitCode.USAGE, "--png", "is not a folder")
    assert not (tmp_path / "r.html").exists()
    code, stdout, _ = run("report", "--db", db, "--out", str(tmp_path / "file" / "r.html"), "--json")
    assert code == ExitCode.USAGE and json.loads(stdout)["exit_code"] == ExitCode.USAGE
    # missing folders are created, as every other output path's are
    code, _, err = run("report", "--db", db, "--out", str(tmp_path / "no" / "such" / "r.html"))
    assert code == 0 and (tmp_path / "no" / "such" / "r.html").is_file(), err


def test_unknown_pool_or_model_version_is_named(tmp_path: Path) -> None:
    world = build_world(tmp_path, versions=1, n_label=0, n_skip=0, push_queue=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = run("report", "--db", world.db_url, "--out", str(tmp_path / "r.html"), "--pool", str(elsewhere))
    assert_one_clean_error(code, err, ExitCode.USAGE, "elsewhere", "curate score")
    code, _, err = run("report", "--db", world.db_url, "--out", str(tmp_path / "r.html"), "--model-version", "nope")
    assert_one_clean_error(code, err, ExitCode.USAGE, "nope")


def test_the_report_replaces_the_old_one_atomically(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("old report")
    code, _, err = run("report", "--db", f"sqlite:///{tmp_path / 'e.db'}", "--out", str(out))
    assert code == 0, err
    assert out.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.db", "r.html"]  # no temporary file left behind


def test_pca_separates_clusters_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 16)) + 5
    b = rng.normal(size=(30, 16)) - 5
    x = np.concatenate([a, b])
    coords = pca_2d(x)
    assert coords.shape == (60, 2)
    assert np.all(np.sign(coords[:30, 0]) != np.sign(coords[30:, 0]).mean())  # the first axis splits them
    assert np.array_equal(coords, pca_2d(x.copy()))
    assert np.array_equal(pca_2d(x[:1]), np.zeros((1, 2)))
    assert pca_2d(np.ones((5, 1))).shape == (5, 2)


@pytest.mark.parametrize(("span_s", "expected"), [(12, "16:41:05"), (50, "16:41:10"), (5 * 3600, "17:00")])
def test_time_ticks_read_as_clock_times_at_every_span(span_s: int, expected: str) -> None:
    from datetime import UTC, datetime, timedelta

    from curation.reporting.figures import _new, format_time_axis

    start = datetime(2026, 12, 2, 16, 41, 3, tzinfo=UTC)
    ax = _new(9, 4).add_subplot()
    ax.plot([start, start + timedelta(seconds=span_s)], [0, 1])
    format_time_axis(ax)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == expected and all(":" in label for label in labels), labels
    assert ax.xaxis.get_major_formatter().get_offset() == "2026-Dec-02"
