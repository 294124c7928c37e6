"""``curate export``: the labeled set as an Ultralytics dataset with a manifest, and exactly what trained a version
(store on SQLite and Postgres; one slow test fine-tunes a real tiny classifier and exports what trained it)."""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from curation.config import Settings
from curation.devtools.synthetic import SHAPES, classification_image
from curation.errors import ExportError, UnknownReferenceError
from curation.jobs.export import export
from curation.scoring.pool import content_id
from curation.training.dataset import export_dataset, file_sha256, read_data_yaml
from store import Store
from store.records import PulledAnnotation, ScannedFile, TrainedModel

SERVER = "http://127.0.0.1:8080"


def _pool(store: Store, root: Path, n: int, size: int = 64) -> dict[str, int]:
    """``n`` real images under ``root``, scanned: content id → item id (content ids are the real SHA-256)."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for k in range(n):
        path = root / f"img{k:03d}.png"
        classification_image(rng, SHAPES[k % len(SHAPES)], size).save(path)
        names[content_id(path)] = path.name
    pool = store.pools.get_or_create(str(root), "directory", str(root))
    store.pools.apply_scan(pool, [ScannedFile(name, 1, 1, c, size, size) for c, name in names.items()], [])
    return store.items.by_content(list(names))


def _annotate(store: Store, items: dict[str, int], labels: dict[str, dict], start: int = 1, who: str = "ann@x") -> None:
    project = store.label_studio.project(SERVER, 7, "shapes", "classify")
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    rows = [
        PulledAnnotation(start + k, 100 + items[c], items[c], False, who, 1.0, lab, [], when, when)
        for k, (c, lab) in enumerate(labels.items())
    ]
    store.label_studio.store_annotations(project.id, rows, [], None)


def _model(store: Store, task: str = "classify", classes: list[str] | None = None) -> int:
    mv = store.models.register(
        version="base-1",
        source="/m/base.pt",
        format="ultralytics",
        task=task,
        class_names=classes or sorted(SHAPES),
        imgsz=64,
        embedding_dim=8,
    )
    store.models.set_current(mv.id)
    return mv.id


def _cls(label: str) -> dict:
    return {"task": "classify", "classes": [label]}


def _read_manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_export_writes_class_folders_a_manifest_and_training_s_hash(db_url: str, tmp_path: Path) -> None:
    store = Store.open(db_url)
    items = _pool(store, tmp_path / "pool", 12)
    _model(store)
    shapes = sorted(SHAPES)
    truth = {c: shapes[k % len(shapes)] for k, c in enumerate(items)}
    labels = {c: _cls(lab) for c, lab in truth.items()}
    labels[next(iter(items))] = _cls("zebra")  # outside the model's classes: skipped by name
    _annotate(store, items, labels)
    settings = Settings()

    report = export(store, settings, tmp_path / "out")
    out = (tmp_path / "out").resolve()
    assert report.n_train + report.n_val == 11 and report.skipped_labels == {"zebra": 1}
    rows = _read_manifest(out)
    assert len(rows) == 11 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    splits = store.labels.splits()
    for row in rows:
        image = out / row["path"]
        split, label, _name = Path(row["path"]).parts
        assert image.is_file() and not image.is_symlink()  # copies by default
        assert row["sha256"] == file_sha256(image) and row["sha256"].startswith(row["content_id"])
        assert split == row["split"] == splits[items[row["content_id"]]] and label == row["label"]
        assert label == truth[row["content_id"]]
        assert row["label_source"] == f"{SERVER}/projects/7" and row["annotator"] == "ann@x"
        assert row["annotated_at"].startswith("2026-12-01T12:00:00")
    info = json.loads((out / "curate-export.json").read_text())
    assert info["dataset_hash"] == report.dataset_hash and info["model_version"] == "base-1"

    # training's own export of the same items (symlinks, absolute data.yaml) hashes the same
    training = export_dataset(store.labels.examples("classify"), splits, "classify", shapes, tmp_path / "t")
    assert training.dataset_hash == report.dataset_hash

    # exporting again replaces the earlier export byte for byte (DVC sees no change); links work too
    before = (out / "manifest.csv").read_bytes()
    again = export(store, settings, out, link="hardlink")
    assert (out / "manifest.csv").read_bytes() == before and again.dataset_hash == report.dataset_hash
    first = out / rows[0]["path"]
    assert os.stat(first).st_nlink >= 2
    export(store, settings, out, link="symlink")
    assert (out / rows[0]["path"]).is_symlink()
    store.close()


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    items = _pool(store, tmp_path / "pool", 4)
    _model(store)
    _annotate(store, items, {c: _cls("circle") for c in items})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="not empty and not an earlier curate export"):
        export(store, Settings(), mine)
    assert (mine / "thesis.tex").read_text() == "precious"
    with pytest.raises(ExportError, match="unknown link mode 'move'"):
        export(store, Settings(), tmp_path / "new", link="move")
    store.close()


def test_export_of_a_model_version_is_what_trained_it(db_url: str, tmp_path: Path) -> None:
    """Labels edited or added after training change the current export, never the export of the version."""
    store = Store.open(db_url)
    items = _pool(store, tmp_path / "pool", 10)
    base_id = _model(store)
    shapes = sorted(SHAPES)
    ids = list(items)
    first = {c: _cls(shapes[k % len(shapes)]) for k, c in enumerate(ids[:8])}
    _annotate(store, items, first)
    examples = store.labels.examples("classify")
    from curation.training.splits import assign_splits

    splits = assign_splits(store, examples, "classify", 0.2, 0)
    trained = export_dataset(examples, splits, "classify", shapes, tmp_path / "train-ds")
    store.models.register_trained(
        TrainedModel(
            version="base-2",
            weights_path="/m/b2.pt",
            digest="e" * 64,
            format="ultralytics",
            task="classify",
            class_names=shapes,
            imgsz=64,
            parent_id=base_id,
            metric_name="accuracy",
            metric_value=0.5,
            metrics={},
            dataset_hash=trained.dataset_hash,
            n_labeled=len(examples),
            note="test",
            examples=[(i.example, i.split) for i in trained.items],
        ),
        promote=True,
    )
    # afterwards: one label corrected in Label Studio (a newer annotation), two items labeled
    relabeled = ids[0]
    new_label = next(s for s in shapes if s != first[relabeled]["classes"][0])
    _annotate(store, items, {relabeled: _cls(new_label), ids[8]: _cls("circle"), ids[9]: _cls("square")}, start=50)

    report = export(store, Settings(), tmp_path / "v2", model_version="base-2")
    assert report.dataset_hash == report.trained_hash == trained.dataset_hash
    rows = {r["content_id"]: r for r in _read_manifest(tmp_path / "v2")}
    assert set(rows) == set(ids[:8]) and rows[relabeled]["label"] == first[relabeled]["classes"][0]
    now = export(store, Settings(), tmp_path / "now")
    assert now.n_train + now.n_val == 10 and now.dataset_hash != trained.dataset_hash
    assert {r["content_id"]: r["label"] for r in _read_manifest(tmp_path / "now")}[relabeled] == new_label

    with pytest.raises(UnknownReferenceError, match="no model version 'nope'"):
        export(store, Settings(), tmp_path / "x", model_version="nope")
    with pytest.raises(ExportError, match="base-1 was not trained by curate"):
        export(store, Settings(), tmp_path / "x", model_version="base-1")
    # a file that changed since it was labeled cannot be exported as what trained the version
    source = next(p for p in (tmp_path / "pool").iterdir() if content_id(p) == ids[1])
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(ExportError, match="changed since it was labeled"):
        export(store, Settings(), tmp_path / "x", model_version="base-2")
    assert not (tmp_path / "x").exists()  # no half export left behind
    store.close()


def test_detection_export_is_a_portable_yolo_dataset(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    items = _pool(store, tmp_path / "pool", 6, size=80)
    _model(store, "detect", ["circle", "square"])
    box = {"label": "square", "x1": 8.0, "y1": 16.0, "x2": 40.0, "y2": 48.0}
    labels = {c: {"task": "detect", "boxes": [box], "width": 80, "height": 80} for c in items}
    _annotate(store, items, labels)
    report = export(store, Settings(), tmp_path / "det")
    data = tmp_path / "det" / "data.yaml"
    assert report.data == data.resolve() and "path:" not in data.read_text()  # movable: no absolute root
    moved = tmp_path / "moved"
    (tmp_path / "det").rename(moved)
    read = read_data_yaml(moved / "data.yaml")
    assert read.class_names == ["circle", "square"] and len(read.images) == 6
    assert all(b == [(1, 0.3, 0.4, 0.4, 0.4)] for b in read.boxes)
    assert {r["label"] for r in _read_manifest(moved)} == {"square"}
    store.close()


def test_cli_export_reports_and_errors(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.open(db)
    items = _pool(store, tmp_path / "pool", 4)
    _model(store)
    _annotate(store, items, {c: _cls("circle") for c in items})
    store.close()
    runner = CliRunner()
    ok = runner.invoke(app, ["export", "--out", str(tmp_path / "o"), "--db", db, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["n_train"] + json.loads(ok.stdout)["n_val"] == 4
    bad = runner.invoke(app, ["export", "--out", str(tmp_path / "pool"), "--db", db])
    assert bad.exit_code == 3 and "not an earlier curate export" in bad.output
    unknown = runner.invoke(app, ["export", "--out", str(tmp_path / "p"), "--db", db, "--model-version", "v9"])
    assert unknown.exit_code == 2 and "no model version 'v9'" in unknown.output


@pytest.mark.slow
def test_a_real_training_round_records_what_export_reproduces(tiny_cls_model: Path, tmp_path: Path) -> None:
    from curation.config import ModelSettings, TrainSettings
    from curation.jobs.model import register_model
    from curation.scoring.runtime import load_model, resolve_device
    from curation.training.round import train_round

    db = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.open(db)
    items = _pool(store, tmp_path / "pool", 24)
    runtime = load_model(ModelSettings(path=str(tiny_cls_model)), resolve_device("cpu"), "fp32")
    base = register_model(store, runtime)
    rng_labels = {c: _cls(SHAPES[k % len(SHAPES)]) for k, c in enumerate(items)}
    _annotate(store, items, rng_labels)
    settings = TrainSettings(epochs=1, batch_size=16, device="cpu", promote="never")
    report = train_round(store, base, settings, tmp_path / "models")
    assert report.trained, report.reason
    store.close()
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        app, ["export", "--out", str(out), "--db", db, "--model-version", str(report.version), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset_hash"] == report.dataset_hash == summary["trained_hash"]
    assert (summary["n_train"], summary["n_val"]) == (report.n_train, report.n_val)
    assert len(_read_manifest(out)) == report.n_train + report.n_val


def test_labels_outside_the_model_s_classes_are_named_when_training_cannot_start(tmp_path: Path) -> None:
    from curation.training.dataset import coverage_problem
    from curation.training.splits import assign_splits

    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    items = _pool(store, tmp_path / "pool", 9)
    _model(store)
    ids = list(items)
    _annotate(store, items, {c: _cls("zebra" if k < 6 else "okapi") for k, c in enumerate(ids)})
    examples = store.labels.examples("classify")
    splits = assign_splits(store, examples, "classify", 0.2, 0)
    dataset = export_dataset(examples, splits, "classify", sorted(SHAPES), tmp_path / "ds")
    assert coverage_problem(dataset, "classify") == (
        "not enough labeled items yet (0 train, 0 validation); labels outside the model's classes were left out: "
        "'zebra' (6), 'okapi' (3)"
    )
    store.close()


def test_pull_resolve_chooses_among_several_annotations_of_one_item(tmp_path: Path) -> None:
    """latest | majority | ground_truth over real stored annotations (three annotators on one task)."""
    from curation.training.resolve import labeled_examples, resolve

    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    items = _pool(store, tmp_path / "pool", 2)
    _model(store)
    one, two = list(items)
    project = store.label_studio.project(SERVER, 7, "shapes", "classify")
    when = datetime(2026, 12, 1, tzinfo=UTC)

    def ann(aid: int, cid: str, label: str, truth: bool = False, cancelled: bool = False) -> PulledAnnotation:
        item = items[cid]
        return PulledAnnotation(aid, item, item, cancelled, f"a{aid}", 1.0, _cls(label), [], when, when, truth)

    store.label_studio.store_annotations(
        project.id,
        [
            ann(1, one, "circle"),
            ann(2, one, "square", truth=True),
            ann(3, one, "circle"),
            ann(4, one, "triangle"),
            ann(5, one, "triangle", cancelled=True),  # a skip is no vote
            ann(6, two, "square"),
            ann(7, two, "circle"),  # a tie: the newest of the tied wins
        ],
        [],
        None,
    )

    def chosen(rule: str) -> dict[str, str]:
        return {e.content_id: e.labels["classes"][0] for e in labeled_examples(store, "classify", rule)}

    assert chosen("latest") == {one: "triangle", two: "circle"}
    assert chosen("majority") == {one: "circle", two: "circle"}
    assert chosen("ground_truth") == {one: "square", two: "circle"}
    majority = {e.content_id: e for e in labeled_examples(store, "classify", "majority")}
    assert majority[one].annotator == "a3"  # the newest vote of the majority
    with pytest.raises(ValueError, match=r"unknown pull\.resolve rule 'vote'"):
        resolve([], "vote")
    store.close()
