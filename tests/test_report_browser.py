"""The report in a real browser: from a real score + select with a tiny trained model, a queue in (fake) Label
Studio and some labels, ``report.html`` opens in headless Chromium with every image rendered and nothing fetched
from the network. A full-page screenshot is kept under the test artifacts (``tests/browser.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from store import Store
from tests.browser import BrowserPage, artifacts_dir
from tests.report_support import label_queue

runner = CliRunner()


def curate(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture", ["tiny_cls_model", "tiny_det_model"])
def test_the_report_renders_in_chromium(
    model_fixture: str, pool_dir: Path, tmp_path: Path, browser_page: BrowserPage, request: pytest.FixtureRequest
) -> None:
    model: Path = request.getfixturevalue(model_fixture)
    db = f"sqlite:///{tmp_path / 'curate.db'}"
    common = ("--pool", str(pool_dir), "--model", str(model), "--db", db)
    first = curate("select", *common, "--budget", "10", "--no-push")
    with Store.open(db) as store:
        mv = store.models.current()
        assert mv is not None
        label_queue(store, mv, pool_dir.parent, [first["selection_id"]], n_label=3, n_skip=1)
    curate("select", *common, "--budget", "4", "--no-push")  # selected, kept out of Label Studio

    out = tmp_path / "report.html"
    summary = curate("report", "--db", db, "--out", str(out))
    assert summary["figures"][:4] == ["health", "uncertainty", "embeddings", "classes"], summary
    assert summary["counts"]["queued"] == 6 and summary["counts"]["labeled"] == 3

    page = browser_page.page
    page.goto(out.as_uri(), wait_until="load")
    shown = page.evaluate(
        """() => Array.from(document.images).map(img => ({
            alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
            kind: img.src.split(";")[0]}))"""
    )
    shot = artifacts_dir() / f"report-{model_fixture}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"report screenshot: {shot}")
    broken = [img for img in shown if not img["complete"] or img["width"] == 0]
    assert broken == [], broken
    figures = [img for img in shown if img["kind"] == "data:image/png"]
    thumbnails = [img for img in shown if img["kind"] == "data:image/jpeg"]
    assert len(figures) == len(summary["figures"]) and len(thumbnails) == 6, shown
    assert all(img["width"] >= 600 for img in figures)  # drawn at full size, not a placeholder
    assert browser_page.blocked == []  # opened offline: nothing but the file itself was requested
    assert page.locator("section#health .card").count() == 9
    assert shot.stat().st_size > 20_000
