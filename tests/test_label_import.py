"""``curate labels import``: labels from a YOLO dataset or a Label Studio JSON export become labeled items, matched
by content id (store on SQLite and Postgres); one slow test fine-tunes a real tiny classifier on imported labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from curation.config import Settings
from curation.devtools.synthetic import SHAPES, make_classification_dataset, make_detection_dataset
from curation.errors import InputFileError
from curation.jobs.export import export
from curation.jobs.labels import import_labels
from curation.scoring.pool import content_id, resolve_pool, scan_pool
from curation.training.dataset import read_data_yaml
from store import Store


def _model(store: Store, task: str, classes: list[str]) -> None:
    mv = store.models.register(
        version="m-1", source="/m.pt", format="ultralytics", task=task, class_names=classes, imgsz=64, embedding_dim=8
    )
    store.models.set_current(mv.id)


def test_a_yolo_classification_dataset_becomes_labeled_items(db_url: str, tmp_path: Path) -> None:
    store = Store.open(db_url)
    _model(store, "classify", sorted(SHAPES))
    data = make_classification_dataset(tmp_path / "ds", n_train=12, n_val=3, size=48, seed=1)
    images = sorted(p for p in data.rglob("*.png") if p.is_file()) or sorted(data.rglob("*.jpg"))
    assert len(images) >= 15
    # two of its images are already in the database, under another pool (same bytes, other names)
    pool = tmp_path / "pool"
    pool.mkdir()
    for k, image in enumerate(images[:2]):
        shutil.copy(image, pool / f"mine{k}{image.suffix}")
    scan_pool(store, resolve_pool(pool), (".png", ".jpg"))
    zebra = data / "train" / "zebra"
    zebra.mkdir()
    shutil.copy(images[-1], zebra / "odd.png")  # same bytes as a val image: one item, the later path's label wins
    (data / "train" / "stray.png").write_bytes(images[0].read_bytes())  # not in a class folder: ignored

    report = import_labels(store, Settings(), data)
    assert report.kind == "yolo-classify" and report.labels == len(images) + 1
    assert report.matched == 2 and report.new == len(images) - 1 and report.unmatched == 0
    assert report.imported == len(images) and report.already_labeled == 0
    assert report.unknown_classes == {"zebra": 1}
    labeled = store.labels.examples("classify")
    assert len(labeled) == len(images) and {e.source for e in labeled} == {str(data.resolve())}
    by_cid = {e.content_id: e.labels["classes"][0] for e in labeled}
    for image in images:  # val/… sorts after train/zebra: the zebra label is reported, not kept
        assert by_cid[content_id(image)] == image.parent.name
    assert set(store.labels.item_ids()) == {e.item_id for e in labeled}  # never selected again

    again = import_labels(store, Settings(), data)  # idempotent: every item is labeled already
    assert again.imported == 0 and again.already_labeled == len(images)
    assert len(store.labels.examples("classify")) == len(images)

    out = export(store, Settings(), tmp_path / "out")
    assert out.n_train + out.n_val == len(images) and out.skipped_labels == {}
    store.close()


def test_a_yolo_detection_dataset_round_trips_through_export(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    data = make_detection_dataset(tmp_path / "det", n_train=6, n_val=2, size=96, seed=2)
    original = read_data_yaml(data)
    _model(store, "detect", original.class_names)
    report = import_labels(store, Settings(), data)
    assert (report.kind, report.new, report.imported, report.unknown_classes) == ("yolo-detect", 8, 8, {})
    exported = export(store, Settings(), tmp_path / "out")
    again = read_data_yaml(Path(exported.data))
    boxes = {content_id(p): sorted(b) for p, b in zip(original.images, original.boxes, strict=True)}
    for image, rows in zip(again.images, again.boxes, strict=True):
        expected = boxes[image.stem]
        assert len(rows) == len(expected)
        for got, want in zip(sorted(rows), expected, strict=True):
            assert got[0] == want[0] and all(abs(a - b) < 1e-5 for a, b in zip(got[1:], want[1:], strict=True))
    with pytest.raises(InputFileError, match="detection dataset; the current model classifies"):
        other = Store.open(f"sqlite:///{tmp_path / 'd.db'}")
        _model(other, "classify", ["a"])
        import_labels(other, Settings(), data)
    store.close()


def _ls_export(images: list[Path], curate_cid: str) -> list[dict]:
    """A Label Studio JSON export as the server writes it (tasks with data, annotations with result)."""
    tasks: list[dict] = []
    for k, image in enumerate(images):
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["circle"]}}]
        tasks.append(
            {
                "id": 10 + k,
                "data": {"image": f"/data/local-files/?d=somewhere/{image.name}"},
                "annotations": [
                    {
                        "id": 1,
                        "completed_by": {"id": 1, "email": "old@x"},
                        "result": [],
                        "was_cancelled": False,
                        "created_at": "2026-11-01T10:00:00.000000Z",
                        "updated_at": "2026-11-01T10:00:00.000000Z",
                    },
                    {
                        "id": 2,
                        "completed_by": {"id": 2, "email": "lead@x"},
                        "result": result,
                        "was_cancelled": False,
                        "created_at": "2026-11-02T10:00:00.000000Z",
                        "updated_at": "2026-11-02T10:00:00.000000Z",
                    },
                    {
                        "id": 3,
                        "completed_by": 3,
                        "result": [],
                        "was_cancelled": True,
                        "created_at": "2026-11-03T10:00:00.000000Z",
                        "updated_at": "2026-11-03T10:00:00.000000Z",
                    },
                ],
            }
        )
    tasks.append(
        {
            "id": 99,
            "data": {"image": "/data/local-files/?d=x/gone.png"},
            "annotations": [{"id": 4, "result": [], "was_cancelled": False, "created_at": "2026-11-01T10:00:00Z"}],
        }
    )
    tasks.append(
        {
            "id": 100,
            "data": {"image": "s3://b/k.png", "curation_id": curate_cid},
            "annotations": [
                {"id": 5, "result": [{"type": "choices", "value": {"choices": ["square"]}}], "was_cancelled": False}
            ],
        }
    )
    tasks.append({"id": 101, "data": {"image": "/x.png"}, "annotations": []})  # not labeled: not a label
    return tasks


def test_a_label_studio_export_is_matched_by_content_id(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.open(db)
    _model(store, "classify", ["circle", "square"])
    data = make_classification_dataset(tmp_path / "imgs", n_train=4, n_val=0, size=48, seed=3)
    images = sorted(p for p in data.rglob("*") if p.is_file())[:4]
    known = tmp_path / "known"
    known.mkdir()
    shutil.copy(images[0], known / "k.png")
    scan_pool(store, resolve_pool(known), (".png", ".jpg"))
    store.close()
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(_ls_export(images[1:], content_id(images[0]))))

    result = CliRunner().invoke(
        app, ["labels", "import", str(export_file), "--images", str(data), "--db", db, "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert (r["kind"], r["labels"], r["matched"], r["new"], r["unmatched"]) == ("label-studio", 5, 1, 3, 1)
    assert (
        r["imported"] == 4
        and r["unknown_classes"] == {}
        and r["unmatched_examples"] == ["/data/local-files/?d=x/gone.png"]
    )
    store = Store.open(db)
    labeled = {e.content_id: e for e in store.labels.examples("classify")}
    assert labeled[content_id(images[0])].labels["classes"] == ["square"]  # the curate task, by curation_id
    first = labeled[content_id(images[1])]
    assert first.labels["classes"] == ["circle"] and first.annotator == "lead@x"  # the latest finished annotation
    assert first.source == str(export_file.resolve())
    store.close()
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    refused = CliRunner().invoke(app, ["labels", "import", str(bad), "--db", db])
    assert refused.exit_code == 3 and "not a Label Studio JSON export" in refused.output
    missing = CliRunner().invoke(app, ["labels", "import", str(tmp_path / "nope"), "--db", db])
    assert missing.exit_code == 3 and "labels to import not found" in missing.output


@pytest.mark.slow
def test_imported_labels_feed_a_real_training_round(tiny_cls_model: Path, tmp_path: Path) -> None:
    from curation.config import ModelSettings, TrainSettings
    from curation.jobs.model import register_model
    from curation.scoring.runtime import load_model, resolve_device
    from curation.training.round import train_round

    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    runtime = load_model(ModelSettings(path=str(tiny_cls_model)), resolve_device("cpu"), "fp32")
    base = register_model(store, runtime)
    data = make_classification_dataset(tmp_path / "ds", n_train=24, n_val=6, size=64, seed=4)
    report = import_labels(store, Settings(), data)
    assert report.imported == 30 * len(SHAPES) and report.unknown_classes == {}
    trained = train_round(store, base, TrainSettings(epochs=1, batch_size=16, device="cpu"), tmp_path / "m")
    assert trained.trained and trained.n_train + trained.n_val == 30 * len(SHAPES), trained.reason
    store.close()
