"""Training rounds with real tiny YOLO models: the base dataset replayed every round (and exported with the
version it trained), the trusted evaluation set with its paired bootstrap, and new classes growing the head
(classify and detect)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from curation.config import ModelSettings, Settings, TrainSettings
from curation.devtools.synthetic import classification_image, draw_shapes, make_classification_dataset
from curation.jobs.export import export
from curation.jobs.model import register_model
from curation.scoring.pool import content_id
from curation.scoring.runtime import load_model, resolve_device
from curation.training.dataset import box_row, write_data_yaml, write_labels, yolo_image_path
from curation.training.round import train_round
from curation.training.trainer import train_from_scratch, weights_identity
from store import Store
from store.records import LabeledExample, ScannedFile
from tests.conftest import TINY_DET_OPTIONS

pytestmark = pytest.mark.slow
OLD = ("circle", "square")  # what the models know; "triangle" is the new class


def _store_with(
    tmp_path: Path, images: dict[str, tuple[Path, dict[str, object]]]
) -> tuple[Store, list[LabeledExample]]:
    """A database whose pool holds ``images`` (content id → (file, labels)), and their labeled examples."""
    pool = tmp_path / "pool"
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    pool_id = store.pools.get_or_create(str(pool), "directory", str(pool))
    store.pools.apply_scan(pool_id, [ScannedFile(p.name, 1, 1, c, 64, 64) for c, (p, _) in images.items()], [])
    ids = store.items.by_content(list(images))
    examples = [LabeledExample(ids[c], c, str(p), labels, 64, 64, "ls") for c, (p, labels) in images.items()]
    return store, examples


@pytest.fixture(scope="module")
def two_class_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curation.devtools.demo import TINY_CLS_OPTIONS

    root = tmp_path_factory.mktemp("cls2")
    data = make_classification_dataset(root / "data", n_train=60, n_val=10, size=64, seed=0, classes=OLD)
    return train_from_scratch(
        "yolov8n-cls.yaml", data, root / "run", epochs=2, imgsz=64, batch=16, options=TINY_CLS_OPTIONS
    )


def test_a_classify_round_replays_the_base_set_evaluates_on_the_trusted_set_and_grows_a_class(
    tmp_path: Path, two_class_classifier: Path
) -> None:
    rng = np.random.default_rng(11)
    pool = tmp_path / "pool"
    pool.mkdir()
    images: dict[str, tuple[Path, dict[str, object]]] = {}
    for k, cls in enumerate(("circle", "square", "triangle") * 6):
        path = pool / f"p{k:03d}.png"
        classification_image(rng, cls, 64).save(path)
        images[content_id(path)] = (path, {"task": "classify", "classes": [cls]})
    store, examples = _store_with(tmp_path, images)
    base_dir = make_classification_dataset(tmp_path / "base", n_train=12, n_val=5, size=64, seed=3, classes=OLD)
    mv = register_model(store, load_model(ModelSettings(path=str(two_class_classifier)), resolve_device("cpu"), "fp32"))
    common = {"epochs": 1, "batch_size": 16, "device": "cpu", "promote": "never", "bootstrap": 200}

    # default: the new class is left out and named, as before
    refused = train_round(
        store,
        mv,
        TrainSettings(**common),
        tmp_path / "m0",
        examples=[e for e in examples if "triangle" in str(e.labels)],
    )
    assert not refused.trained and "'triangle' (6)" in refused.reason and refused.new_classes == []

    settings = TrainSettings(
        **common,
        base_dataset=str(base_dir),
        replay_ratio=1.0,
        eval_dataset=str(base_dir),  # its val/ folder: the trusted set; its train/ folder: the base set
        allow_new_classes=True,
        eval_half_width=0.01,  # far narrower than 10 items allow
    )
    report = train_round(store, mv, settings, tmp_path / "models", examples=examples)
    assert report.trained, report.reason
    assert report.new_classes == ["triangle"] and report.skipped_labels == {}
    n_pulled_train = report.n_train - report.base_items
    assert report.base_items == min(24, n_pulled_train) > 0  # replay_ratio 1: as many base images as new labels
    assert report.eval_source == str(base_dir) and report.n_eval == 10  # base_dir/val: 5 circles, 5 squares
    interval = report.interval
    assert interval is not None and interval["n_items"] == 10 and interval["confidence"] == 0.95
    low, high = interval["difference"]
    assert low <= report.candidate_metrics["accuracy"] - report.current_metrics["accuracy"] <= high
    assert interval["candidate"][0] <= report.candidate_metrics["accuracy"] <= interval["candidate"][1]
    if interval["candidate"][1] > interval["candidate"][0]:
        assert report.eval_items_needed is not None and report.eval_items_needed > 10
        assert any(f"±0.01 needs about {report.eval_items_needed}" in w for w in report.warnings)
    new = store.models.get(report.version or "")
    assert new is not None and new.class_names == ["circle", "square", "triangle"]
    _, names = weights_identity(Path(new.weights_path or ""))
    assert names == ["circle", "square", "triangle"]  # the head has three outputs now

    # curate export --model-version reproduces exactly what trained it, base images included
    out = export(store, Settings(), tmp_path / "export", model_version=new.version)
    assert out.dataset_hash == new.dataset_hash and out.class_names == ["circle", "square", "triangle"]
    with out.manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["label_source"] == "base" for r in rows) == report.base_items
    assert all(r["split"] == "train" for r in rows if r["label_source"] == "base")
    assert not any("/val/" in r["path"] and r["label_source"] == "base" for r in rows)
    assert len(rows) == report.n_train + report.n_val
    store.close()


def _detection_set(root: Path, n: int, classes: tuple[str, ...], seed: int, split: str = "train") -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        picked = [classes[int(rng.integers(len(classes)))] for _ in range(int(rng.integers(1, 3)))]
        img, drawn = draw_shapes(rng, 96, picked, 0.12, 0.22)
        path = yolo_image_path(root, split, f"{seed}_{i:04d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        rows = []
        for shape, poly in drawn:
            pts = np.clip(np.array(poly) / 96, 0, 1)
            (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
            rows.append(
                box_row(("circle", "square", "triangle").index(shape), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
            )
        write_labels(root, split, path.stem, rows)
        out.append(path)
    return out


def test_a_detect_round_grows_nc_and_bootstraps_map_on_the_eval_set(tmp_path: Path) -> None:
    train_dir = tmp_path / "det"
    _detection_set(train_dir, 40, OLD, seed=0)
    _detection_set(train_dir, 8, OLD, seed=1, split="val")
    data = write_data_yaml(train_dir, OLD)
    weights = train_from_scratch(
        "yolov8n.yaml", data, tmp_path / "run", epochs=2, imgsz=96, batch=2, options=TINY_DET_OPTIONS
    )
    # labeled pool images with the new class among the boxes
    labeled_dir = tmp_path / "labeled"
    paths = _detection_set(labeled_dir, 16, ("circle", "square", "triangle"), seed=2)
    names = ("circle", "square", "triangle")
    images: dict[str, tuple[Path, dict[str, object]]] = {}
    for path in paths:
        boxes = []
        for line in (labeled_dir / "labels" / "train" / f"{path.stem}.txt").read_text().splitlines():
            c, cx, cy, w, h = (float(v) for v in line.split())
            boxes.append(
                {
                    "label": names[int(c)],
                    "x1": (cx - w / 2) * 96,
                    "y1": (cy - h / 2) * 96,
                    "x2": (cx + w / 2) * 96,
                    "y2": (cy + h / 2) * 96,
                }
            )
        images[content_id(path)] = (path, {"task": "detect", "boxes": boxes, "width": 96, "height": 96})
    assert any(b["label"] == "triangle" for _, labels in images.values() for b in labels["boxes"])  # type: ignore[attr-defined]
    store, examples = _store_with(tmp_path, images)
    mv = register_model(store, load_model(ModelSettings(path=str(weights)), resolve_device("cpu"), "fp32"))
    settings = TrainSettings(
        epochs=1,
        batch_size=2,
        device="cpu",
        promote="auto",
        bootstrap=100,
        imgsz=96,
        base_dataset=str(data),
        replay_ratio=0.5,
        eval_dataset=str(data),  # its images/val: the trusted set
        allow_new_classes=True,
        options=TINY_DET_OPTIONS,
    )
    report = train_round(store, mv, settings, tmp_path / "models", examples=examples)
    assert report.trained, report.reason
    assert report.new_classes == ["triangle"] and report.n_eval == 8
    assert report.base_items == round(0.5 * (report.n_train - report.base_items))
    interval = report.interval
    assert interval is not None and interval["n_items"] == 8
    assert interval["difference"][0] <= interval["difference"][1]
    new = store.models.get(report.version or "")
    assert new is not None and new.class_names == ["circle", "square", "triangle"]
    assert weights_identity(Path(new.weights_path or ""))[1] == ["circle", "square", "triangle"]
    # under auto, the candidate is promoted only when the interval's lower end is above 0
    assert report.promoted == (interval["difference"][0] > 0 and report.reason.startswith("promoted"))
    store.close()


def test_simulate_replays_only_the_base_sets_training_images_in_the_simulated_class_order(tmp_path: Path) -> None:
    """``curate simulate --base-dataset``: held-out folders left out, classes mapped by name, a class the simulated
    dataset lacks dropped; only the finetune trainer replays."""
    from curation.config import Settings
    from curation.errors import ConfigError
    from curation.simulate.simulation import SimulationConfig, _base_rows, load_dataset, simulate

    data = load_dataset(make_classification_dataset(tmp_path / "sim", n_train=4, n_val=0, size=16, classes=OLD))
    base = make_classification_dataset(
        tmp_path / "base", n_train=3, n_val=2, size=16, classes=("square", "triangle", "circle")
    )
    rows = _base_rows(base, data)
    assert len(rows) == 6 and all("/val/" not in str(p) for p, _, _ in rows)  # 3 squares + 3 circles, no val
    assert {(p.parent.name, data.class_names[c]) for p, c, _ in rows} == {("square", "square"), ("circle", "circle")}
    with pytest.raises(ConfigError, match="use --trainer finetune"):
        simulate(SimulationConfig(dataset=tmp_path / "sim", strategies=(), base_dataset=base), Settings(), "x.yaml")


def test_simulate_finetune_rounds_train_on_labels_plus_the_replayed_base_images(tmp_path: Path) -> None:
    from curation.config import Settings
    from curation.devtools.synthetic import make_detection_dataset
    from curation.simulate.simulation import SimulationConfig, _FinetuneRunner, load_dataset

    pool = make_detection_dataset(tmp_path / "pool", n_train=12, n_val=0, size=32, seed=5)
    base = make_detection_dataset(tmp_path / "base", n_train=10, n_val=3, size=32, seed=6)
    data = load_dataset(pool)
    settings = Settings()
    labeled = np.arange(4, dtype=np.int64)
    test = np.zeros(len(data.paths), dtype=bool)
    test[-2:] = True
    for ratio, replayed in ((None, 10), (0.5, 2)):
        config = SimulationConfig(
            dataset=pool, strategies=(), trainer="finetune", base_dataset=base, replay_ratio=ratio
        )
        runner = _FinetuneRunner(data, settings.train, settings.model, settings.scoring, "yolov8n.yaml", config)
        runner._round = 1
        train_yaml, _ = runner._export(labeled, test, tmp_path / f"r{ratio}", seed=0)
        images = sorted((train_yaml.parent / "images" / "train").iterdir())
        assert len(images) == 4 + replayed and sum(p.name.startswith("base") for p in images) == replayed
        labels = train_yaml.parent / "labels" / "train"
        assert all((labels / f"{p.stem}.txt").read_text().strip() for p in images)  # every image has its boxes
        runner.close()


def test_curate_train_with_a_bad_base_dataset_is_one_line_and_exit_3(
    tmp_path: Path, tiny_cls_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli import app
    from curation.errors import ExitCode

    monkeypatch.setenv("CURATE_TRAIN__BASE_DATASET", str(tmp_path / "missing"))
    args = ["train", "--model", str(tiny_cls_model), "--db", f"sqlite:///{tmp_path / 'c.db'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitCode.NOT_FOUND, result.stderr
    assert f"train.base_dataset: {tmp_path / 'missing'} not found" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setenv("CURATE_TRAIN__BASE_DATASET", str(make_detection_like(tmp_path)))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitCode.NOT_FOUND and "is a detection dataset" in result.stderr


def make_detection_like(root: Path) -> Path:
    from curation.devtools.synthetic import make_detection_dataset

    return make_detection_dataset(root / "det", n_train=2, n_val=1, size=32)
