"""Label Studio formats and the ranking-tag codec, as pure functions (no server)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curation.errors import ConfigError, ProjectConfigMismatchError, UnservableImageError
from curation.labelstudio.formats import (
    SCORE_STEP,
    LabelingInterface,
    check_label_config,
    curation_id_of,
    fit_scores,
    group_by_curation_id,
    image_url,
    label_config,
    ls_time,
    normalize_annotation,
    parse_label_config,
    parse_ls_time,
    prediction_result,
    queue_scores,
    ranking_prediction,
    task_payload,
    unchanged_prediction,
)
from curation.labelstudio.tags import MAX_LENGTH, PREFIX, is_ours, make_tag, parse_tag
from store.records import ModelVersionRecord, PendingItem, StoredPrediction
from tests.fake_labelstudio import server_parse  # Label Studio's own parse (the SDK's parse_config)

UI = LabelingInterface(from_name="label", to_name="image", data_key="image")


def _mv(task: str = "classify", classes: tuple[str, ...] = ("cat", "dog")) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=1,
        version="m-1",
        source="m.pt",
        format="ultralytics",
        task=task,
        class_names=list(classes),
        imgsz=64,
        embedding_dim=4,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _pred(**kw: object) -> StoredPrediction:
    base: dict[str, object] = {
        "item_id": 1,
        "width": 200,
        "height": 100,
        "probs": None,
        "boxes": np.zeros((0, 4), np.float32),
        "box_conf": np.zeros(0, np.float32),
        "box_scores": np.zeros((0, 2), np.float32),
        "polygons": [],
    }
    base.update(kw)
    return StoredPrediction(**base)  # type: ignore[arg-type]


# -- labeling configs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_label_config_round_trips_through_the_check(task: str) -> None:
    classes = ["a <b>", 'quote"d', "plain"]
    ui = check_label_config(server_parse(label_config(task, classes)), task, classes)
    assert ui == UI


def test_config_mismatch_names_every_differing_label() -> None:
    parsed = server_parse(label_config("classify", ["cat", "hexagon"]))
    with pytest.raises(ProjectConfigMismatchError) as err:
        check_label_config(parsed, "classify", ["cat", "dog"])
    assert "dog" in str(err.value) and "hexagon" in str(err.value) and "cat" not in str(err.value).split(":", 1)[1]
    with pytest.raises(ProjectConfigMismatchError, match="no <RectangleLabels>"):
        check_label_config(parsed, "detect", ["cat", "hexagon"])
    with pytest.raises(ConfigError, match="no Label Studio labeling interface"):
        label_config("pose", ["x"])


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_a_grown_models_classes_are_added_to_the_config_only_when_nothing_else_differs(task: str) -> None:
    from curation.labelstudio.formats import missing_labels, with_labels

    config = label_config(task, ["cat", "dog"])
    parsed = parse_label_config(config)
    assert missing_labels(parsed, task, ["cat", "dog"]) is None
    assert missing_labels(parsed, task, ["cat"]) is None  # the project has a label the model lacks: still an error
    assert missing_labels(parsed, task, ["cat", "dog", 'a "new" <one>']) == ("label", ['a "new" <one>'])
    grown = with_labels(config, task, "label", ['a "new" <one>'])
    ui = check_label_config(parse_label_config(grown), task, ["cat", "dog", 'a "new" <one>'])
    assert ui == UI


def test_a_custom_config_is_written_where_it_says() -> None:
    config = (
        '<View><Image name="photo" value="$img"/><Choices name="cls" toName="photo">'
        '<Choice value="cat"/><Choice value="dog"/></Choices></View>'
    )
    assert check_label_config(server_parse(config), "classify", ["dog", "cat"]) == LabelingInterface(
        "cls", "photo", "img"
    )


def test_curates_parse_agrees_with_the_servers() -> None:
    """``curate serve`` parses the configs Label Studio sends (``/setup``, ``/predict``) itself: on what
    ``check_label_config`` reads (type, to_name, input types and data keys, labels) it must agree with the server's
    own parse, for curate's configs and for hand-written ones (several controls, a nested View)."""
    configs = [label_config(task, ["a <b>", 'quote"d', "plain"]) for task in ("classify", "detect", "segment")]
    configs += [
        '<View><Image name="photo" value="$img"/><Choices name="cls" toName="photo">'
        '<Choice value="cat"/><Choice value="dog"/></Choices></View>',
        '<View><View><Header value="Look closely"/><Image name="a" value="$left"/><Image name="b" value="$right"/>'
        '</View><RectangleLabels name="boxes" toName="a"><Label value="car"/><Label value="bus"/></RectangleLabels>'
        '<Choices name="quality" toName="b" choice="single"><Choice value="good"/><Choice value="bad"/></Choices>'
        "</View>",
    ]

    def essentials(parsed: dict[str, Any]) -> dict[str, Any]:
        return {
            name: (c["type"], list(c["to_name"]), [(i["type"], i["value"]) for i in c["inputs"]], list(c["labels"]))
            for name, c in parsed.items()
        }

    for config in configs:
        assert essentials(parse_label_config(config)) == essentials(server_parse(config)), config


# -- pre-annotations and pulled annotations --------------------------------------------------------------------------


def test_classification_prediction_is_the_top_class_with_its_probability() -> None:
    result = prediction_result("classify", _pred(probs=np.array([0.3, 0.7], np.float32)), ["cat", "dog"], UI, 0.5)
    assert result == [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": ["dog"]},
            "original_width": 200,
            "original_height": 100,
            "image_rotation": 0,
            "origin": "prediction",  # the editor shows the region as the model's
            "score": 0.7,
        }
    ]
    assert prediction_result("classify", _pred(probs=None), ["cat", "dog"], UI, 0.5) == []
    assert normalize_annotation("classify", result) == {"task": "classify", "classes": ["dog"]}


def test_boxes_go_out_in_percent_and_come_back_in_pixels() -> None:
    pred = _pred(
        boxes=np.array([[20, 10, 120, 60], [0, 0, 5, 5]], np.float32),
        box_conf=np.array([0.9, 0.1], np.float32),
        box_scores=np.array([[0.2, 0.8], [0.9, 0.1]], np.float32),
    )
    result = prediction_result("detect", pred, ["cat", "dog"], UI, 0.25)
    assert len(result) == 1  # the 0.1-confidence box is below min_conf
    value = result[0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (10.0, 10.0, 50.0, 50.0)
    assert value["rectanglelabels"] == ["dog"]
    back = normalize_annotation("detect", result)
    assert back["width"] == 200 and back["height"] == 100
    assert back["boxes"] == [{"label": "dog", "x1": 20.0, "y1": 10.0, "x2": 120.0, "y2": 60.0}]


def test_segments_are_polygons_and_tiny_masks_are_left_out() -> None:
    pred = _pred(
        boxes=np.array([[0, 0, 100, 50], [0, 0, 2, 2]], np.float32),
        box_conf=np.array([0.9, 0.9], np.float32),
        box_scores=np.array([[0.9, 0.1], [0.9, 0.1]], np.float32),
        polygons=[np.array([[0, 0], [100, 0], [100, 50]], np.float32), np.zeros((2, 2), np.float32)],
    )
    result = prediction_result("segment", pred, ["cat", "dog"], UI, 0.25)
    assert [r["type"] for r in result] == ["polygonlabels"]
    assert result[0]["value"]["points"] == [[0.0, 0.0], [50.0, 0.0], [50.0, 50.0]]
    back = normalize_annotation("segment", result)
    assert back["polygons"] == [{"label": "cat", "points": [[0.0, 0.0], [100.0, 0.0], [100.0, 50.0]]}]


# -- payloads --------------------------------------------------------------------------------------------------------


def test_queue_scores_are_the_models_confidence_kept_increasing_along_the_queue() -> None:
    # uncertainty order: the scores are exactly the confidences (Uncertainty sampling serves the lowest first)
    assert queue_scores([0.2, 0.5, 0.9]) == [0.2, 0.5, 0.9]
    # a diversity pick puts a confident item early: the next ones are raised just enough to stay behind it
    raised = queue_scores([0.2, 0.8, 0.5, 0.9])
    assert raised[:2] == [0.2, 0.8] and raised[2] == pytest.approx(0.8 + SCORE_STEP) and raised[3] == 0.9
    assert all(a < b for a, b in itertools.pairwise(raised))
    # ties, no model output, and out-of-range values never break the order; appending continues after a score
    tied = queue_scores([0.5, 0.5, None, 1.7, -1.0], after=0.5)
    assert all(a < b for a, b in zip([0.5, *tied], tied, strict=False))
    assert fit_scores([0.5, 1.0 + SCORE_STEP]) == [pytest.approx(0.5 / (1 + SCORE_STEP)), 1.0]
    assert fit_scores([0.1, 0.2]) == [0.1, 0.2]


def test_task_payload_carries_curates_bookkeeping_and_its_ranking_prediction() -> None:
    item = PendingItem(5, "abc", "a.jpg", "/pool", 3, 1, 0.123456789, 2, "entropy")
    mv = _mv()
    pred = _pred(probs=np.array([0.9, 0.1], np.float32))
    payload = task_payload(item, "/data/local-files/?d=a.jpg", 0.9, "curate-m-1-x", pred, mv, UI, 0.25)
    # nothing a re-rank would make stale: position, confidence and model version live in the prediction
    assert payload["data"] == {"image": "/data/local-files/?d=a.jpg", "curation_id": "abc"}
    assert payload["predictions"] == [ranking_prediction("curate-m-1-x", 0.9, pred, mv, UI, 0.25)]
    assert payload["predictions"][0]["score"] == 0.9
    # no model output: the task still gets a prediction, or the label stream would not serve it
    assert ranking_prediction("t", 0.3, None, mv, UI, 0.25) == {"model_version": "t", "score": 0.3, "result": []}


def test_curation_ids_group_tasks_and_foreign_tasks_have_none() -> None:
    tasks = [
        {"id": 1, "data": {"curation_id": "a"}},
        {"id": 2, "data": {"image": "x"}},
        {"id": 3, "data": {"curation_id": "a"}},
        {"id": 4},
    ]
    assert [curation_id_of(t) for t in tasks] == ["a", None, "a", None]
    assert group_by_curation_id(tasks) == {"a": [1, 3]}


def test_image_urls(tmp_path: Path) -> None:
    pool = tmp_path / "root" / "pool"
    pool.mkdir(parents=True)
    image = pool / "sub dir" / "a#1.jpg"
    image.parent.mkdir()
    image.write_bytes(b"x")
    assert image_url(image, pool, str(tmp_path / "root"), None) == "/data/local-files/?d=pool/sub%20dir/a%231.jpg"
    assert image_url(image, pool, None, "s3://b/p/") == "s3://b/p/sub%20dir/a%231.jpg"
    with pytest.raises(UnservableImageError, match="document root"):
        image_url(image, pool, str(tmp_path / "elsewhere"), None)
    with pytest.raises(UnservableImageError, match="outside the pool root"):
        image_url(image, tmp_path / "other", None, "https://h/")
    with pytest.raises(ConfigError, match="document_root"):
        image_url(image, pool, None, None)


def test_label_studio_times_round_trip() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert ls_time(at) == "2026-03-04T05:06:07.891011Z"
    assert parse_ls_time(ls_time(at)) == at
    assert parse_ls_time(None) is None and parse_ls_time("yesterday") is None


# -- tags ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["m-1", "yolov8n-cls-abc123", "v", "2026-01-01-x"])
def test_tags_round_trip(version: str) -> None:
    at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    tag = make_tag(version, at)
    assert tag.startswith(PREFIX) and is_ours(tag)
    parsed = parse_tag(tag)
    assert parsed is not None and parsed.model_version == version and parsed.created == at


def test_tags_are_fresh_and_ordered_in_time() -> None:
    at = datetime(2026, 5, 6, tzinfo=UTC)
    tags = [make_tag("m", at + timedelta(microseconds=i)) for i in range(3)]
    assert len(set(tags)) == 3 and tags == sorted(tags)


def test_a_long_version_is_shortened_never_the_time() -> None:
    at = datetime(2026, 5, 6, tzinfo=UTC)
    tag = make_tag("v" * 500, at)
    parsed = parse_tag(tag)
    assert len(tag) == MAX_LENGTH and parsed is not None and parsed.created == at
    assert make_tag("v" * 500, at + timedelta(microseconds=1)) != tag


@pytest.mark.parametrize(
    "tag", ["", None, "v2", "curate-", "curate-m", "curate-m-notatime", "curate--20260101T000000000000Z"]
)
def test_other_model_versions_are_not_ours(tag: str | None) -> None:
    assert not is_ours(tag) and parse_tag(tag) is None


def _box(x: float, label: str = "cat", **extra: object) -> dict[str, object]:
    value = {"x": x, "y": 10.0, "width": 20.0, "height": 30.0, "rotation": 0, "rectanglelabels": [label]}
    region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": value}
    return {**region, "original_width": 200, "original_height": 100, **extra}


def test_an_annotation_is_the_models_guess_only_when_started_from_it_and_unchanged() -> None:
    prediction = {"id": 41, "result": [_box(10.0, score=0.9), _box(50.0, "dog", score=0.7)]}
    others = [{"id": 40, "result": []}, prediction]

    def annotation(result: list[dict[str, object]], parent: object = 41, **kw: object) -> dict[str, object]:
        return {"result": result, "parent_prediction": parent, **kw}

    same = [_box(50.0, "dog", origin="prediction"), _box(10.0001, origin="prediction")]  # re-serialised, reordered
    assert unchanged_prediction("detect", annotation(same), others)
    assert not unchanged_prediction("detect", annotation(same, parent=None), others)  # not started from it
    assert not unchanged_prediction("detect", annotation(same, parent=39), others)  # its prediction is gone
    assert not unchanged_prediction("detect", annotation(same, was_cancelled=True), others)  # a skip
    moved = [_box(50.0, "dog"), _box(11.0)]  # 1 % of 200 px = 2 px: moved
    assert not unchanged_prediction("detect", annotation(moved), others)
    relabeled = [_box(50.0, "cat"), _box(10.0)]
    assert not unchanged_prediction("detect", annotation(relabeled), others)
    assert not unchanged_prediction("detect", annotation([_box(10.0)]), others)  # a box deleted
    assert not unchanged_prediction("detect", annotation([*same, _box(80.0)]), others)  # a box added
    touched = [_box(50.0, "dog", origin="prediction-changed"), _box(10.0, origin="prediction")]
    assert not unchanged_prediction("detect", annotation(touched), others)  # edited and put back: looked at
    choice = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}
    guess = {"id": 7, "result": [{**choice, "score": 0.8}]}
    assert unchanged_prediction("classify", {"result": [choice], "parent_prediction": 7}, [guess])
    dog = {**choice, "value": {"choices": ["dog"]}}
    assert not unchanged_prediction("classify", {"result": [dog], "parent_prediction": 7}, [guess])
