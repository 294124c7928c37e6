"""Fast unit tests of the training room: the promotion decision, the YOLO dataset layout (written and read back),
the version lineage, the models folder, atomic writes and the torch thread guard. No model is trained here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from curation.config import TrainSettings
from curation.devtools.synthetic import SHAPES
from curation.files import atomic_copy, atomic_path, atomic_write_text
from curation.jobs.model import register_model
from curation.training.dataset import (
    box_row,
    export_dataset,
    label_path_for,
    polygon_row,
    read_data_yaml,
    write_data_yaml,
    write_labels,
    yolo_image_path,
)
from curation.training.promotion import Promotion, decide_promotion
from curation.training.round import _lineage, models_dir
from store.records import LabeledExample


@pytest.mark.parametrize(
    ("policy", "candidate", "current", "min_delta", "expected"),
    [
        ("auto", 0.9, 0.8, 0.0, Promotion(True, "promoted: accuracy 0.9000 > 0.8000 (current)")),
        ("auto", 0.8, 0.8, 0.0, Promotion(False, "kept as candidate: accuracy 0.8000 does not beat 0.8000 (current)")),
        ("auto", 0.7, 0.8, 0.0, Promotion(False, "kept as candidate: accuracy 0.7000 does not beat 0.8000 (current)")),
        (
            "auto",
            0.84,
            0.8,
            0.05,
            Promotion(False, "kept as candidate: accuracy 0.8400 does not beat 0.8000 (current) by more than 0.05"),
        ),
        ("auto", 0.86, 0.8, 0.05, Promotion(True, "promoted: accuracy 0.8600 > 0.8000 (current)")),
        ("always", 0.1, 0.9, 0.0, Promotion(True, "promoted (train.promote: always)")),
        ("never", 0.99, 0.1, 0.0, Promotion(False, "kept as candidate (train.promote: never)")),
    ],
)
def test_promotion_decision(
    policy: str, candidate: float, current: float, min_delta: float, expected: Promotion
) -> None:
    assert decide_promotion("accuracy", candidate, current, policy=policy, min_delta=min_delta) == expected


def test_a_nan_metric_never_wins_under_auto() -> None:
    nan = math.nan
    assert not decide_promotion("map50_95", nan, 0.5, policy="auto", min_delta=0.0).promote
    assert not decide_promotion("map50_95", 0.5, nan, policy="auto", min_delta=0.0).promote
    assert decide_promotion("map50_95", nan, 0.5, policy="always", min_delta=0.0).promote
    with pytest.raises(ValueError, match=r"unknown train\.promote policy 'sometimes'"):
        decide_promotion("accuracy", 1.0, 0.0, policy="sometimes", min_delta=0.0)


def test_yolo_dataset_written_is_read_back(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for stem in stems:
            image = yolo_image_path(root, split, f"{stem}.png")
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(image)
    write_labels(root, "train", "a", [box_row(1, 0.5, 0.25, 0.2, 0.1), box_row(0, 0.1, 0.2, 0.3, 0.4)])
    write_labels(root, "train", "b", [])  # a background image
    write_labels(root, "val", "c", [polygon_row(2, [0.1, 0.1, 0.9, 0.1, 0.5, 0.9])])  # polygons carry no box
    data = write_data_yaml(root, ["cat", 'a "quoted": name', "dog"])
    assert label_path_for(yolo_image_path(root, "train", "a.png")) == root / "labels" / "train" / "a.txt"
    read = read_data_yaml(data)
    assert read.root == root.resolve() and read.class_names == ["cat", 'a "quoted": name', "dog"]
    assert [p.name for p in read.images] == ["a.png", "b.png", "c.png"]
    assert read.boxes == [[(1, 0.5, 0.25, 0.2, 0.1), (0, 0.1, 0.2, 0.3, 0.4)], [], []]
    test = read_data_yaml(write_data_yaml(root, ["cat", "x", "dog"], val="test", name="test.yaml"))
    assert [p.name for p in test.images] == ["a.png", "b.png"]  # no test split exists: train only
    assert box_row(3, 0.123456789, 0.5, 1, 0, digits=3) == "3 0.123 0.500 1.000 0.000"


def test_segmentation_export_normalises_and_clips_polygons(tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (100, 50)).save(image)
    poly = {"label": "x", "points": [[10, 5], [120, 5], [50, -10]]}
    tiny = {"label": "x", "points": [[1, 1], [2, 2]]}  # two points: not a polygon
    example = LabeledExample(0, "s0", str(image), {"polygons": [poly, tiny], "width": 100, "height": 50}, 100, 50)
    ds = export_dataset([example], {0: "train"}, "segment", ["x"], tmp_path / "seg")
    assert (
        tmp_path / "seg/labels/train/s0.txt"
    ).read_text() == "0 0.100000 0.100000 1.000000 0.100000 0.500000 0.000000\n"
    assert ds.n_train == 1 and ds.per_class == {"x": {"train": 1, "val": 0}}
    assert read_data_yaml(ds.data).class_names == ["x"]


def test_lineage_strips_only_a_digest_suffix() -> None:
    assert _lineage("shapes-0123456789ab") == "shapes"
    assert _lineage("my-model-v2") == "my-model-v2"
    assert _lineage("shapes-0123456789AB") == "shapes-0123456789AB"  # not a digest we write
    assert _lineage("0123456789ab") == "0123456789ab"


def test_models_dir_follows_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert models_dir(TrainSettings(), f"sqlite:///{tmp_path / 'db' / 'c.db'}") == tmp_path / "db" / "curate-models"
    assert models_dir(TrainSettings(), "postgresql+psycopg://u@h/db") == tmp_path / "curate-models"
    assert models_dir(TrainSettings(models_dir=str(tmp_path / "m")), "sqlite://") == tmp_path / "m"


def test_atomic_writes_replace_whole_or_leave_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    copy = atomic_copy(target, tmp_path / "copy.json")
    assert copy.read_text() == "new"
    link = tmp_path / "link"
    for dest in ("a", "b"):  # a symlink is switched in one step, too
        with atomic_path(link) as tmp:
            tmp.symlink_to(dest)
        assert link.is_symlink() and str(link.readlink()) == dest
    assert not list(tmp_path.glob(".*.tmp"))


def test_torch_threads_restores_the_count_whatever_happens() -> None:
    import torch

    from curation.scoring.runtime import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads():
        torch.set_num_threads(1)  # what Ultralytics' trainer does
        raise KeyError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_a_real_round_registers_a_candidate_then_recognises_its_twin(tmp_path: Path, tiny_cls_model: Path) -> None:
    """train_round end to end without Label Studio: real fine-tune of the tiny classifier on labeled shapes."""
    import numpy as np

    from curation.config import ModelSettings
    from curation.devtools.synthetic import SHAPES, classification_image
    from curation.scoring.runtime import load_model, resolve_device
    from curation.training.round import train_round
    from store import Store
    from store.records import ScannedFile

    rng = np.random.default_rng(5)
    pool = tmp_path / "pool"
    pool.mkdir()
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    pool_id = store.pools.get_or_create(str(pool), "directory", str(pool))
    truth: dict[str, str] = {}
    for k, cls in enumerate(SHAPES * 10):
        content = f"{k:032x}"
        classification_image(rng, cls, 64).save(pool / f"{content}.jpg", quality=92)
        truth[content] = cls
    store.pools.apply_scan(pool_id, [ScannedFile(f"{c}.jpg", 1, 1, c, 64, 64) for c in truth], [])
    ids = store.items.by_content(list(truth))
    examples = [
        LabeledExample(ids[c], c, str(pool / f"{c}.jpg"), {"task": "classify", "classes": [cls]}, 64, 64)
        for c, cls in truth.items()
    ]
    runtime = load_model(ModelSettings(path=str(tiny_cls_model)), resolve_device("cpu"), "fp32")
    base = register_model(store, runtime)  # the first model a database uses becomes current
    assert (current := store.models.current()) is not None and current.id == base.id
    settings = TrainSettings(epochs=1, batch_size=16, device="cpu", promote="never")
    models = tmp_path / "models"
    leftover = models / "train-k1lled" / "dataset"  # what a round killed with -9 leaves behind
    leftover.mkdir(parents=True)
    (leftover / "x.jpg").write_bytes(b"x")

    report = train_round(store, base, settings, models, examples=examples)
    assert report.trained and not report.promoted, report.reason
    assert report.reason == "kept as candidate (train.promote: never)"
    assert report.n_train + report.n_val == 30 and report.n_val >= 3  # every class held out at least once
    assert set(report.candidate_metrics) == set(report.current_metrics) == {"accuracy"}
    assert 0.0 <= report.candidate_metrics["accuracy"] <= 1.0 and 0.0 <= report.current_metrics["accuracy"] <= 1.0
    versions = {mv.version: mv for mv, _ in store.models.versions()}
    new = versions[report.version or ""]
    assert new.status == "candidate" and new.parent_id == base.id and new.n_labeled == 30
    assert new.weights_path == report.weights and Path(new.weights_path).is_file()
    assert new.metric_value == report.candidate_metrics["accuracy"] and new.class_names == sorted(SHAPES)
    assert versions[base.version].metric_value == report.current_metrics["accuracy"]  # the parent is measured too
    assert report.summary()["candidate_metrics"] == report.candidate_metrics  # a Report: fields are the JSON
    # no work dir (the killed round's included), no .tmp
    assert sorted(p.name for p in models.iterdir()) == [Path(new.weights_path).name]

    again = train_round(store, base, settings, models, examples=examples)
    assert (
        not again.trained and again.reason == f"not registered: the fine-tuned weights are identical to {new.version}"
    )
    assert len(store.models.versions()) == 2
    store.close()


# --------------------------------------------------------------------------------------------------------------------
# The paired bootstrap, the promotion rule that reads it, and the base set's replay draw


def test_paired_bootstrap_of_identical_models_is_exactly_zero_and_a_clear_win_is_beyond_it() -> None:
    import numpy as np

    from curation.training.promotion import mean_metrics, paired_bootstrap

    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.7).astype(float)
    same = paired_bootstrap(200, mean_metrics(a, a.copy()), resamples=300, confidence=0.95)
    assert same is not None and same.difference == (0.0, 0.0) and same.candidate == same.current
    better = a.copy()
    better[a == 0] = 1.0  # the candidate fixes every mistake
    win = paired_bootstrap(200, mean_metrics(better, a), resamples=300, confidence=0.95)
    assert win is not None and win.difference[0] > 0.2 and win.candidate[0] > win.current[1]
    assert paired_bootstrap(0, mean_metrics(a, a), resamples=300, confidence=0.95) is None


def test_a_candidate_better_within_the_noise_is_kept_and_one_beyond_it_is_promoted() -> None:
    import numpy as np

    from curation.training.promotion import decide_with_interval, mean_metrics, paired_bootstrap

    cur = np.array([1.0] * 5 + [0.0] * 2)  # 7 validation items, as in a real small round
    cand = np.array([1.0] * 6 + [0.0] * 1)  # one more right: +14 points, but one item
    noisy = paired_bootstrap(7, mean_metrics(cand, cur), resamples=500, confidence=0.95)
    assert noisy is not None and noisy.difference[0] <= 0.0 < noisy.difference[1]
    kept = decide_with_interval("accuracy", 6 / 7, 5 / 7, noisy, policy="auto", min_delta=0.0)
    assert not kept.promote and kept.reason.startswith("kept as candidate: accuracy 0.8571 (95% interval")
    assert kept.reason.endswith("does not beat 0.7143 (current)")
    # without the interval the old rule would have promoted it
    assert decide_with_interval("accuracy", 6 / 7, 5 / 7, None, policy="auto", min_delta=0.0).promote
    big_cur = np.array([1.0] * 50 + [0.0] * 50)
    big_cand = big_cur.copy()
    big_cand[50:80] = 1.0
    clear = paired_bootstrap(100, mean_metrics(big_cand, big_cur), resamples=500, confidence=0.95)
    won = decide_with_interval("accuracy", 0.8, 0.5, clear, policy="auto", min_delta=0.0)
    assert won.promote and won.reason.startswith("promoted: accuracy 0.8000 > 0.5000 (current); 95% interval")
    assert not decide_with_interval("accuracy", 0.8, 0.5, clear, policy="auto", min_delta=0.5).promote
    assert decide_with_interval("accuracy", 0.1, 0.5, clear, policy="always", min_delta=0.0).promote


def test_the_evaluation_size_a_target_half_width_needs_scales_as_one_over_sqrt_n() -> None:
    from curation.training.promotion import items_for_half_width

    assert items_for_half_width(100, (0.6, 0.8), 0.05) == 400  # half-width 0.1 -> 0.05: four times the items
    assert items_for_half_width(100, (0.6, 0.8), 0.2) == 100  # already narrow enough
    assert items_for_half_width(7, (0.5, 0.5), 0.01) == 7  # a degenerate interval says nothing


def test_replay_draws_ratio_times_the_new_labels_seeded_and_different_per_round() -> None:
    from curation.training.reference import replay_sample

    base = [LabeledExample(-(k + 1), f"{k:032x}", f"/b/{k}.png", {}, 8, 8, "base") for k in range(40)]
    assert replay_sample(base, 10, None, "s") == base
    half = replay_sample(base, 10, 0.5, "0:v1")
    assert len(half) == 5 and half == replay_sample(base, 10, 0.5, "0:v1")
    assert half != replay_sample(base, 10, 0.5, "0:v2")  # the next round replays other base images
    assert len(replay_sample(base, 10, 100.0, "s")) == 40 and replay_sample(base, 10, 0.0, "s") == []


def test_reference_datasets_are_validated_with_the_key_named(tmp_path: Path) -> None:
    from curation.devtools.synthetic import make_classification_dataset, make_detection_dataset
    from curation.errors import ExitCode
    from curation.training.reference import ReferenceDatasetError, load_reference

    with pytest.raises(ReferenceDatasetError, match=r"train\.base_dataset: .*nope not found") as missing:
        load_reference("train.base_dataset", str(tmp_path / "nope"), "classify", held_out=False)
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    cls = make_classification_dataset(tmp_path / "cls", n_train=2, n_val=1, size=16)
    with pytest.raises(ReferenceDatasetError, match=r"train\.eval_dataset: .*has no data\.yaml"):
        load_reference("train.eval_dataset", str(cls), "detect", held_out=True)
    det = make_detection_dataset(tmp_path / "det", n_train=3, n_val=2, size=32)
    with pytest.raises(ReferenceDatasetError, match=r"train\.base_dataset: .*detection dataset"):
        load_reference("train.base_dataset", str(det), "classify", held_out=False)
    train = load_reference("train.base_dataset", str(cls), "classify", held_out=False)
    held = load_reference("train.eval_dataset", str(cls), "classify", held_out=True)
    assert len(train.examples) == 6 and len(held.examples) == 3  # the dataset's own split: val is evaluation
    assert all("/val/" not in e.path for e in train.examples) and all("/val/" in e.path for e in held.examples)
    ids = [e.item_id for e in train.examples + held.examples]
    assert all(i < 0 for i in ids) and len(set(ids)) == len(ids)
    assert {e.source for e in train.examples} == {"base"} and train.class_names == sorted(SHAPES)
    boxes = load_reference("train.eval_dataset", str(det), "detect", held_out=True)
    assert len(boxes.examples) == 2 and all(e.labels["boxes"] for e in boxes.examples)


def test_a_class_only_the_base_set_has_gets_a_validation_folder_for_ultralytics(tmp_path: Path) -> None:
    from curation.training.dataset import coverage_problem
    from curation.training.round import _val_from_base

    files = {}
    for name in ("p1", "p2", "b1", "b2"):
        files[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (8, 8)).save(files[name])

    def example(item_id: int, name: str, cls: str) -> LabeledExample:
        return LabeledExample(item_id, f"{name:0>32}", str(files[name]), {"task": "classify", "classes": [cls]}, 8, 8)

    examples = [example(1, "p1", "circle"), example(2, "p2", "circle"), example(-1, "b1", "square")]
    examples.append(example(-2, "b2", "square"))
    splits = {1: "train", 2: "val", -1: "train", -2: "train"}
    dataset = export_dataset(examples, splits, "classify", ["circle", "square"], tmp_path / "ds")
    assert "missing for: square" in (coverage_problem(dataset, "classify") or "")
    before = dataset.dataset_hash
    _val_from_base(dataset, tmp_path / "ds")
    assert coverage_problem(dataset, "classify") is None and dataset.dataset_hash == before
    linked = list((tmp_path / "ds" / "val" / "square").iterdir())
    assert len(linked) == 1 and linked[0].resolve() == files["b1"].resolve()
    assert len(dataset.items) == 4  # the recorded training set is unchanged
