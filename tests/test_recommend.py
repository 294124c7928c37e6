"""``curate simulate`` recommends a strategy per horizon and stores it; ``strategy: auto`` uses it (and says so),
falling back to the default ``hybrid`` when nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from curation.config import StrategySettings, load_settings
from curation.selection import AUTO_FALLBACK, build_strategy, resolve_auto
from curation.simulate.simulation import horizon_table, recommend
from store import Store

runner = CliRunner()

# three strategies over 4 rounds of 10 from 10: "fast" saves most at every horizon but is below random once,
# "steady" is never below random, "slow" never reaches random's accuracy at the last horizon
CURVES = {
    "random": {10: (0.5, 0), 20: (0.6, 0), 30: (0.65, 0), 40: (0.7, 0), 50: (0.72, 0)},
    "fast": {10: (0.5, 0), 20: (0.59, 0), 30: (0.75, 0), 40: (0.8, 0), 50: (0.82, 0)},
    "steady": {10: (0.5, 0), 20: (0.62, 0), 30: (0.7, 0), 40: (0.74, 0), 50: (0.76, 0)},
    "slow": {10: (0.5, 0), 20: (0.6, 0), 30: (0.65, 0), 40: (0.7, 0), 50: (0.71, 0)},
}


def test_horizon_table_cuts_the_curves_at_each_horizon() -> None:
    table = horizon_table(CURVES, 10, 10, 4)
    assert sorted(table) == [1, 2, 3, 4]
    assert table[2]["random_labels"] == 30 and table[2]["random_metric"] == 0.65
    # steady reaches 0.65 between 20 (0.62) and 30 (0.70): 20 + 10 * 0.03 / 0.08 = 23.75 labels of 30
    fraction, below = table[2]["strategies"]["steady"]
    assert fraction == pytest.approx(23.75 / 30) and not below
    assert table[1]["strategies"]["fast"][1] is True  # 0.59 < 0.6 at 20 labels
    assert table[4]["strategies"]["slow"][0] is None  # 0.71 < 0.72: never reached
    assert table[4]["strategies"]["random"][0] == pytest.approx(1.0)


def test_recommend_prefers_never_below_random_then_the_fewest_labels() -> None:
    rec = recommend(CURVES, 10, 10, 4)
    assert rec is not None
    assert rec["strategy"] == "steady" and rec["below_random"] is False
    assert rec["ranking"][0] == "steady" and set(rec["ranking"]) == {"fast", "steady", "slow"}
    assert rec["horizons"] == 4
    assert recommend({"random": CURVES["random"]}, 10, 10, 4) is None


def test_auto_uses_the_stored_recommendation_and_falls_back_to_the_default(tmp_path: Path) -> None:
    auto = StrategySettings(name="auto")
    with Store.open(f"sqlite:///{tmp_path / 'c.db'}") as store:
        resolved, note = resolve_auto(auto, store)
        assert resolved.name == AUTO_FALLBACK == "hybrid" and note is not None and "no curate simulate" in note
        store.recommendations.record({"strategy": "badge", "dataset": "/data/mine"})
        resolved, note = resolve_auto(auto, store)
        assert (
            resolved.name == "badge"
            and note == "strategy auto: using badge (recommended by curate simulate on /data/mine)"
        )
        assert build_strategy(auto, store).name == "badge"
        store.recommendations.record({"strategy": "no_longer_registered"})
        assert resolve_auto(auto, store)[0].name == "hybrid"
    named = StrategySettings(name="margin")
    assert resolve_auto(named, None) == (named, None)


def test_auto_is_a_valid_strategy_name_in_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strategy:\n  name: auto\n")
    assert load_settings(cfg).strategy.name == "auto"


@pytest.mark.slow  # simulate and select end to end with a real model
def test_simulate_stores_a_recommendation_that_select_auto_uses(tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_classification_dataset, make_pool
    from tests.models import save_thumbnail_model

    make_classification_dataset(tmp_path / "data", n_train=30, n_val=0, size=32, seed=3)
    (tmp_path / "thumb").mkdir()
    model, cfg = save_thumbnail_model(tmp_path / "thumb")
    db = f"sqlite:///{tmp_path / 'user.db'}"
    common = ["--model", str(model), "--config", str(cfg), "--db", db]
    sim = runner.invoke(
        app,
        [
            *["simulate", "--dataset", str(tmp_path / "data"), "--strategies", "margin,typiclust", "--initial", "6"],
            *["--step", "6", "--rounds", "2", "--seeds", "1", "--out", str(tmp_path / "s.json"), "--json"],
            *["--save-recommendation", *common],
        ],
    )
    assert sim.exit_code == 0, sim.stderr
    saved = json.loads((tmp_path / "s.json").read_text())["recommendation"]
    assert saved["strategy"] in {"margin", "typiclust"} and saved["dataset"] == str(tmp_path / "data")
    with Store.open(db) as store:
        stored = store.recommendations.latest()
    assert stored is not None and stored["strategy"] == saved["strategy"]

    make_pool(tmp_path / "pool", n=12, size=32, seed=9)
    sel = runner.invoke(
        app,
        [
            "select",
            "--no-push",
            "--json",
            "--pool",
            str(tmp_path / "pool"),
            "--budget",
            "3",
            "--strategy",
            "auto",
            *common,
        ],
    )
    assert sel.exit_code == 0, sel.stderr
    data = json.loads(sel.stdout)
    assert data["strategy"] == saved["strategy"]
    assert any(w.startswith(f"strategy auto: using {saved['strategy']}") for w in data["warnings"])
