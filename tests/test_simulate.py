"""curate simulate: determinism, no test-split leak, output schema, end to end on generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from curation.config import load_settings
from curation.devtools.synthetic import make_classification_dataset
from curation.errors import ConfigError
from curation.simulate.simulation import (
    SimulationConfig,
    SimulationResult,
    _labels_to_reach,
    fit_linear,
    predict_proba,
    simulate,
    split_test,
)
from tests.models import save_thumbnail_model

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    make_classification_dataset(root / "data", n_train=40, n_val=0, size=32, seed=3)
    return root / "data"


@pytest.fixture(scope="module")
def thumb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_thumbnail_model(tmp_path_factory.mktemp("thumb"))


def run(dataset: Path, thumb: tuple[Path, Path], out: Path, *extra: str) -> dict:
    model, cfg = thumb
    result = runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            str(dataset),
            "--strategies",
            "entropy,hybrid,kcenter",
            "--initial",
            "9",
            "--step",
            "6",
            "--rounds",
            "3",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--model",
            str(model),
            "--config",
            str(cfg),
            "--json",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def base(dataset: Path, thumb: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The simulation most tests look at, run once: its --json output and its --out file."""
    out = tmp_path_factory.mktemp("base") / "r.json"
    return run(dataset, thumb, out), out


@pytest.mark.slow  # runs `curate simulate` end to end (scoring with a model)
def test_end_to_end_outputs_and_schema(base: tuple[dict, Path]) -> None:
    data, out = base
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 1000
    saved = json.loads(out.read_text())
    assert saved["records"] == data["records"]
    assert data["strategies"] == ["entropy", "hybrid", "kcenter"] and data["trainer"] == "linear"
    names = {r["strategy"] for r in data["records"]}
    assert names == {"random", "entropy", "hybrid", "kcenter"}  # random is always there
    assert len(data["records"]) == 4 * 2 * 4
    for r in data["records"]:
        assert set(r) >= {"strategy", "seed", "round", "n_labeled", "metric"}
        assert r["n_labeled"] == 9 + 6 * r["round"] and 0.0 <= r["metric"] <= 1.0
    assert set(data["curves"]) == names and data["test_size"] == len(data["test_items"]) == 24
    # the headline measures every strategy against random's final mean (27 labels)
    head = data["headline"]
    final = data["curves"]["random"]["27"]["mean"]
    assert head["random_final_labels"] == 27 and head["random_final_metric"] == final
    for name in ("entropy", "hybrid", "kcenter"):
        h = head["strategies"][name]
        curve = data["curves"][name]
        assert h["final_metric"] == curve["27"]["mean"]
        assert h["rounds_below_random"] == [
            int(n) for n in curve if curve[n]["mean"] < data["curves"]["random"][n]["mean"] - 1e-12
        ]
        reached = [int(n) for n in curve if curve[n]["mean"] >= final - 1e-12]
        if reached:
            assert 9 <= h["labels_to_reach_random_final"] <= min(reached)
            assert h["fraction_of_random_labels"] == pytest.approx(h["labels_to_reach_random_final"] / 27)
        else:
            assert h["labels_to_reach_random_final"] is None and h["fraction_of_random_labels"] is None


@pytest.mark.slow  # runs `curate simulate` end to end (scoring with a model)
def test_strategies_select_differently_from_the_same_start(base: tuple[dict, Path]) -> None:
    data, _ = base
    first = {(r["strategy"], r["seed"]): r["selected"] for r in data["records"] if r["round"] == 0}
    for seed in (0, 1):
        picks = [tuple(first[name, seed]) for name in ("random", "entropy", "hybrid", "kcenter")]
        assert all(len(p) == 6 for p in picks)
        assert len(set(picks)) == 4, f"two strategies picked the same items for seed {seed}"


@pytest.mark.slow  # runs `curate simulate` end to end (scoring with a model)
def test_same_seed_same_numbers(
    base: tuple[dict, Path], dataset: Path, thumb: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = base
    b = run(dataset, thumb, tmp_path / "b.json")
    assert b["records"] == a["records"]
    c = run(dataset, thumb, tmp_path / "c.json", "--seed", "1")
    assert c["records"] != a["records"] and c["test_items"] != a["test_items"]


@pytest.mark.slow  # runs `curate simulate` end to end (scoring with a model)
def test_the_test_split_never_leaks(
    base: tuple[dict, Path], dataset: Path, thumb: tuple[Path, Path], tmp_path: Path
) -> None:
    data, _ = base
    test = set(data["test_items"])
    assert any(r.get("selected") for r in data["records"])  # the check below has something to check
    for r in data["records"]:
        assert not test & set(r.get("selected", [])), f"{r['strategy']} selected a test item"
    # the same split whatever the strategies and rounds: fixed by --seed alone
    model, cfg = thumb
    other = runner.invoke(
        app,
        [
            "simulate", "--dataset", str(dataset), "--strategies", "margin", "--initial", "5", "--step", "3",
            "--rounds", "1", "--seeds", "1", "--out", str(tmp_path / "o.json"), "--model", str(model),
            "--config", str(cfg), "--json",
        ],
    )  # fmt: skip
    assert other.exit_code == 0, other.stderr
    assert json.loads(other.stdout)["test_items"] == data["test_items"]
    # stratified: 20 % of each class, and another seed draws another split
    labels = np.repeat(np.arange(3), 40)
    mask = split_test(labels, 0.2, 0)
    assert [int(mask[labels == k].sum()) for k in range(3)] == [8, 8, 8]
    assert (split_test(labels, 0.2, 0) == mask).all() and not (split_test(labels, 0.2, 1) == mask).all()


@pytest.mark.heavy
def test_linear_head_learns_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(loc=i * 3, size=(30, 5)) for i in range(3)]).astype(np.float32)
    y = np.repeat(np.arange(3), 30)
    w1, b1 = fit_linear(x, y, 3)
    w2, b2 = fit_linear(x, y, 3)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)
    assert (predict_proba(x, w1, b1).argmax(1) == y).mean() > 0.95


def test_headline_interpolates_and_says_never_reached() -> None:
    assert _labels_to_reach({10: (0.5, 0), 20: (0.7, 0), 30: (0.9, 0)}, 0.8) == pytest.approx(25.0)
    assert _labels_to_reach({10: (0.5, 0), 20: (0.6, 0)}, 0.8) is None
    config = SimulationConfig(dataset=Path("d"), strategies=("entropy",))
    recs = [
        {"strategy": s, "seed": 0, "round": i, "n_labeled": n, "metric": m}
        for s, pts in {"random": [(10, 0.5), (20, 0.6)], "entropy": [(10, 0.5), (20, 0.7)]}.items()
        for i, (n, m) in enumerate(pts)
    ]
    head = SimulationResult(config, "m", "accuracy", 100, 20, recs).headline()
    assert head["strategies"]["entropy"]["labels_to_reach_random_final"] == pytest.approx(15.0)
    assert head["strategies"]["entropy"]["rounds_below_random"] == []


def test_bad_requests_are_clear(dataset: Path, thumb: tuple[Path, Path], tmp_path: Path) -> None:
    settings = load_settings(None, {}, environ={})
    with pytest.raises(ConfigError, match="needs 1009"):
        simulate(
            SimulationConfig(dataset=dataset, strategies=("entropy",), initial=1000, step=1, rounds=9),
            settings,
            str(thumb[0]),
        )
    result = runner.invoke(app, ["simulate", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 3 and "dataset not found" in result.stderr
    result = runner.invoke(
        app, ["simulate", "--dataset", str(dataset), "--strategies", "entropie", "--out", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2 and "entropie" in result.stderr


@pytest.mark.slow
def test_finetune_trainer_classification_and_detection(tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_detection_dataset

    make_classification_dataset(tmp_path / "cls", n_train=10, n_val=0, size=48, seed=2)
    make_detection_dataset(tmp_path / "det", n_train=14, n_val=4, size=64, seed=2)
    # classification starts from 2 labels for 3 classes: a class the fine-tuned model has never seen must not break
    # the round (its probability is 0)
    for dataset, model, metric, initial in (
        (tmp_path / "cls" / "train", "yolov8n-cls.yaml", "accuracy", 2),
        (tmp_path / "det", "yolov8n.yaml", "map50_95", 6),
    ):
        result = runner.invoke(
            app,
            [
                "simulate",
                "--dataset",
                str(dataset),
                "--strategies",
                "margin",
                "--initial",
                str(initial),
                "--step",
                "3",
                "--rounds",
                "1",
                "--seeds",
                "1",
                "--trainer",
                "finetune",
                "--epochs",
                "1",
                "--model",
                model,
                "--imgsz",
                "64",
                "--out",
                str(tmp_path / f"{metric}.json"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["trainer"] == "finetune" and data["metric"] == metric
        assert [r["n_labeled"] for r in data["records"] if r["strategy"] == "margin"] == [initial, initial + 3]


def test_linear_trainer_refuses_detection(tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_detection_dataset

    make_detection_dataset(tmp_path / "det", n_train=4, n_val=2, size=64, seed=2)
    result = runner.invoke(app, ["simulate", "--dataset", str(tmp_path / "det"), "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "--trainer finetune" in result.stderr
