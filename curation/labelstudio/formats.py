"""Label Studio's formats, as pure functions: labeling configs, task and prediction payloads, pre-annotation
results, image URLs, times, and pulled annotations normalised per task type. No HTTP here (that is
``curation.labelstudio.client``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from curation.errors import ConfigError, ProjectConfigMismatchError, UnservableImageError
from store.records import ModelVersionRecord, PendingItem, StoredPrediction

IMAGE_NAME = "image"
CONTROL_NAME = "label"
CONTROL_TAG = {"classify": "Choices", "detect": "RectangleLabels", "segment": "PolygonLabels"}
LS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the only format the task filter accepts
TEST_SET_FIELD, TEST_SET_VALUE = "curate_set", "test"  # a test-set task's data field (and meta): evaluation only


@dataclass(frozen=True)
class LabelingInterface:
    """Where curate writes in a project's labeling config: the control tag, the image tag and its data key."""

    from_name: str
    to_name: str
    data_key: str


def label_config(task: str, class_names: list[str]) -> str:
    """A labeling config for the model's task and classes (class names are XML-escaped)."""
    if task not in CONTROL_TAG:
        raise ConfigError(f"no Label Studio labeling interface for task {task!r}")
    tag = CONTROL_TAG[task]
    child = "Choice" if task == "classify" else "Label"
    extra = ' choice="single-radio" showInline="true"' if task == "classify" else ""
    options = "\n".join(f"    <{child} value={quoteattr(name)}/>" for name in class_names)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true"/>\n'
        f'  <{tag} name="{CONTROL_NAME}" toName="{IMAGE_NAME}"{extra}>\n'
        f"{options}\n"
        f"  </{tag}>\n"
        "</View>\n"
    )


def missing_labels(parsed: dict[str, Any], task: str, class_names: list[str]) -> tuple[str, list[str]] | None:
    """The control ``check_label_config`` reads and the model's classes it lacks, when that is the only
    difference (a model that grew classes: ``train.allow_new_classes``); None otherwise."""
    wanted = CONTROL_TAG.get(task)
    controls = [(name, c) for name, c in parsed.items() if isinstance(c, dict) and c.get("type") == wanted]
    if not controls:
        return None
    name, control = controls[0]
    labels = [str(label) for label in control.get("labels", [])]
    missing = [c for c in class_names if c not in labels]
    if not missing or any(label not in class_names for label in labels):
        return None
    return name, missing


def with_labels(config: str, task: str, control_name: str, labels: list[str]) -> str:
    """The labeling config XML with ``labels`` appended to the control ``control_name`` (``<Choice>`` or
    ``<Label>`` children), the rest of the config kept."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ConfigError(f"the project's labeling config is not valid XML: {exc}") from None
    control = next((el for el in root.iter(CONTROL_TAG[task]) if el.get("name") == control_name), None)
    if control is None:
        raise ConfigError(f"the project's labeling config has no <{CONTROL_TAG[task]} name={control_name!r}>")
    child = "Choice" if task == "classify" else "Label"
    for label in labels:
        ET.SubElement(control, child, {"value": label})
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def check_label_config(parsed: dict[str, Any], task: str, class_names: list[str]) -> LabelingInterface:
    """Find the control for ``task`` in a project's parsed labeling config and compare its labels with the
    model's classes; any difference is an error that lists exactly which labels mismatch."""
    wanted = CONTROL_TAG[task]
    controls = [(name, c) for name, c in parsed.items() if isinstance(c, dict) and c.get("type") == wanted]
    if not controls:
        found = ", ".join(sorted({str(c.get("type")) for c in parsed.values() if isinstance(c, dict)})) or "none"
        raise ProjectConfigMismatchError(
            f"the project's labeling config has no <{wanted}> control for this {task} model (found: {found})"
        )
    name, control = controls[0]
    images = [i for i in control.get("inputs", []) if i.get("type") == "Image"]
    if not images:
        raise ProjectConfigMismatchError(f"<{wanted} name={name!r}> is not attached to an <Image> tag")
    labels = [str(label) for label in control.get("labels", [])]
    missing = [c for c in class_names if c not in labels]
    extra = [label for label in labels if label not in class_names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"model classes missing from the project: {', '.join(missing)}")
        if extra:
            parts.append(f"project labels the model does not predict: {', '.join(extra)}")
        raise ProjectConfigMismatchError(
            f"labels of <{wanted} name={name!r}> do not match the model: " + "; ".join(parts)
        )
    to_name = control.get("to_name", [IMAGE_NAME])
    return LabelingInterface(from_name=name, to_name=to_name[0], data_key=str(images[0].get("value", IMAGE_NAME)))


@lru_cache(maxsize=64)
def _resolved(root: str) -> Path:
    """A root folder, resolved once per push rather than once per image."""
    return Path(root).expanduser().resolve()


def image_url(path: Path, pool_root: Path, document_root: str | None, url_prefix: str | None) -> str:
    """The URL Label Studio loads an image from.

    ``url_prefix`` (http(s):// or s3://) wins: prefix + the path relative to the pool root. Otherwise the file is
    served by Label Studio's local-files storage: ``/data/local-files/?d=<path relative to the document root>``.
    """
    if url_prefix:
        try:
            relative = path.resolve().relative_to(_resolved(str(pool_root)))
        except ValueError:
            raise UnservableImageError(
                f"image {path} is outside the pool root {pool_root}; cannot build a URL with url_prefix"
            ) from None
        return url_prefix.rstrip("/") + "/" + quote(relative.as_posix(), safe="/")
    if not document_root:
        raise ConfigError(
            "set label_studio.document_root (the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) or "
            "label_studio.url_prefix so that Label Studio can load the images"
        )
    root = _resolved(document_root)
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise UnservableImageError(
            f"image {path} is outside Label Studio's document root {root}: Label Studio cannot serve it"
        ) from None
    return "/data/local-files/?d=" + quote(relative.as_posix(), safe="/")


def _region(
    from_name: str, to_name: str, kind: str, value: dict[str, Any], width: int, height: int, score: float | None
) -> dict[str, Any]:
    region: dict[str, Any] = {
        "from_name": from_name,
        "to_name": to_name,
        "type": kind,
        "value": value,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        # Label Studio's editor marks a region of this origin as the model's (a sparkle icon beside its score in
        # the Regions panel); it turns into "prediction-changed" once a labeler edits the region
        "origin": "prediction",
    }
    if score is not None:
        region["score"] = round(float(score), 5)
    return region


def prediction_result(
    task: str, pred: StoredPrediction, class_names: list[str], ui: LabelingInterface, min_conf: float
) -> list[dict[str, Any]]:
    """The model's output as a Label Studio pre-annotation (percent coordinates of the EXIF-oriented image)."""
    if task == "classify":
        if pred.probs is None or len(pred.probs) == 0:
            return []
        top = int(np.argmax(pred.probs))
        value: dict[str, Any] = {"choices": [class_names[top]]}
        return [_region(ui.from_name, ui.to_name, "choices", value, pred.width, pred.height, float(pred.probs[top]))]
    out: list[dict[str, Any]] = []
    w, h = max(pred.width, 1), max(pred.height, 1)
    for i in range(len(pred.boxes)):
        conf = float(pred.box_conf[i])
        if conf < min_conf:
            continue
        label = class_names[int(np.argmax(pred.box_scores[i]))] if pred.box_scores.shape[1] else class_names[0]
        if task == "segment" and i < len(pred.polygons) and len(pred.polygons[i]) >= 3:
            points = [[round(float(x) / w * 100, 3), round(float(y) / h * 100, 3)] for x, y in pred.polygons[i]]
            value = {"points": points, "polygonlabels": [label], "closed": True}
            out.append(_region(ui.from_name, ui.to_name, "polygonlabels", value, w, h, conf))
            continue
        if task == "segment":
            continue  # a mask too small to outline: a polygon control cannot take a rectangle
        x1, y1, x2, y2 = (float(v) for v in pred.boxes[i])
        value = {
            "x": round(x1 / w * 100, 4),
            "y": round(y1 / h * 100, 4),
            "width": round((x2 - x1) / w * 100, 4),
            "height": round((y2 - y1) / h * 100, 4),
            "rotation": 0,
            "rectanglelabels": [label],
        }
        out.append(_region(ui.from_name, ui.to_name, "rectanglelabels", value, w, h, conf))
    return out


def normalize_annotation(task: str, result: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce an annotation's ``result`` to what training needs, in pixels where there are coordinates:
    classification ``{"classes": [...]}``, detection ``{"boxes": [{label, x1, y1, x2, y2}]}``, segmentation
    ``{"polygons": [{label, points}]}``, plus ``width``/``height`` when the result carries them."""
    labels: dict[str, Any] = {"task": task}
    if task == "classify":
        classes: list[str] = []
        for region in result:
            classes.extend(str(c) for c in region.get("value", {}).get("choices", []))
        labels["classes"] = classes
        return labels
    boxes: list[dict[str, Any]] = []
    polygons: list[dict[str, Any]] = []
    for region in result:
        value = region.get("value", {})
        w = float(region.get("original_width") or 0)
        h = float(region.get("original_height") or 0)
        if w and h:
            labels["width"], labels["height"] = int(w), int(h)
        names = value.get("rectanglelabels") or value.get("polygonlabels") or value.get("labels") or []
        label = str(names[0]) if names else None
        if "points" in value:
            pts = [[float(x) * w / 100, float(y) * h / 100] for x, y in value["points"]]
            polygons.append({"label": label, "points": pts})
        elif {"x", "y", "width", "height"} <= set(value):
            x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
            boxes.append(
                {
                    "label": label,
                    "x1": x,
                    "y1": y,
                    "x2": x + float(value["width"]) * w / 100,
                    "y2": y + float(value["height"]) * h / 100,
                }
            )
    labels["boxes"] = boxes
    if task == "segment":
        labels["polygons"] = polygons
    return labels


PIXEL_TOLERANCE = 0.5
"""Coordinates this close (in pixels) are the same: Label Studio's editor re-serialises percentages it loaded."""


def unchanged_prediction(task: str, annotation: dict[str, Any], predictions: Sequence[dict[str, Any]]) -> bool:
    """Whether a finished annotation is the model's pre-annotation submitted as it was: Label Studio links it to
    the prediction it was started from (``parent_prediction``; the link is lost once that prediction is deleted),
    no region is marked edited (``origin: prediction-changed``) and its labels are that prediction's — the same
    classes, or the same boxes / polygons within ``PIXEL_TOLERANCE``. Whether the labeler looked cannot be told."""
    parent = annotation.get("parent_prediction")
    if isinstance(parent, dict):
        parent = parent.get("id")
    if parent is None or annotation.get("was_cancelled"):
        return False
    source = next((p for p in predictions if isinstance(p, dict) and p.get("id") == parent), None)
    if source is None:
        return False
    result = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
    if any(r.get("origin") == "prediction-changed" for r in result):
        return False
    return same_labels(task, normalize_annotation(task, result), normalize_annotation(task, source.get("result") or []))


def same_labels(task: str, a: dict[str, Any], b: dict[str, Any], tol: float = PIXEL_TOLERANCE) -> bool:
    """Two normalised labels (``normalize_annotation``) say the same: classes as a set; boxes and polygons as a
    multiset, each coordinate within ``tol`` pixels."""
    if task == "classify":
        return sorted(a.get("classes", [])) == sorted(b.get("classes", []))
    key = "polygons" if task == "segment" else "boxes"

    def shapes(labels: dict[str, Any]) -> list[tuple[str, list[float]]]:
        out = []
        for shape in labels.get(key, []):
            if key == "boxes":
                coords = [float(shape[k]) for k in ("x1", "y1", "x2", "y2")]
            else:
                coords = [float(v) for point in shape.get("points", []) for v in point]
            out.append((str(shape.get("label")), coords))
        return sorted(out, key=lambda s: (s[0], s[1][:2]))

    left, right = shapes(a), shapes(b)
    if len(left) != len(right) or (task == "segment" and len(a.get("boxes", [])) != len(b.get("boxes", []))):
        return False
    for (label_a, xs), (label_b, ys) in zip(left, right, strict=True):
        if label_a != label_b or len(xs) != len(ys) or any(abs(x - y) > tol for x, y in zip(xs, ys, strict=True)):
            return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# Task and prediction payloads


SCORE_STEP = 1e-6
"""The least two neighbouring tasks' scores differ by: Label Studio orders by score, so they must never tie."""


def queue_scores(confidences: Sequence[float | None], after: float = 0.0) -> list[float]:
    """The prediction scores Label Studio ranks by, lowest first, for tasks in queue order (after a task scored
    ``after``): each task's score is the model's confidence in it (1 − its uncertainty: Uncertainty sampling's own
    reading, least confident first), raised just above the previous task's score where the ranking puts a more
    confident task earlier (diversity, class balance), so that the order holds. None: no model output (it takes
    the previous score + ``SCORE_STEP``). The result may pass 1: see ``fit_scores``."""
    out: list[float] = []
    prev = after
    for c in confidences:
        value = prev if c is None or not math.isfinite(c) else min(max(float(c), 0.0), 1.0)
        prev = max(value, prev + SCORE_STEP)
        out.append(prev)
    return out


def fit_scores(scores: list[float]) -> list[float]:
    """``scores`` squeezed into [0, 1] (bulk prediction imports drop scores above 1), order kept."""
    top = max(scores, default=0.0)
    return scores if top <= 1.0 else [s / top for s in scores]


def ranking_prediction(
    tag: str,
    score: float,
    pred: StoredPrediction | None,
    mv: ModelVersionRecord,
    ui: LabelingInterface,
    min_conf: float,
) -> dict[str, Any]:
    """The prediction that places a task in the queue (its score) and pre-annotates it (its result). Every queued
    task gets one, even without model output to show: without it the label stream would not serve the task."""
    result = prediction_result(mv.task, pred, mv.class_names, ui, min_conf) if pred else []
    return {"model_version": tag, "score": round(float(score), 9), "result": result}


def task_payload(
    item: PendingItem,
    url: str,
    score: float,
    tag: str,
    pred: StoredPrediction | None,
    mv: ModelVersionRecord,
    ui: LabelingInterface,
    min_conf: float,
) -> dict[str, Any]:
    """A task to import: the image, ``curation_id`` (finds it again), and its prediction. Nothing that a re-rank
    would make stale goes into the task's data: the live queue position and the model's confidence are the
    prediction's score, the ranking's model version its ``model_version``."""
    data = {ui.data_key: url, "curation_id": item.content_id}
    task: dict[str, Any] = {"data": data, "predictions": [ranking_prediction(tag, score, pred, mv, ui, min_conf)]}
    if item.purpose == "test":  # a Data Manager column (filterable) and the task's meta say it is a test item
        data[TEST_SET_FIELD] = TEST_SET_VALUE
        task["meta"] = {TEST_SET_FIELD: TEST_SET_VALUE}
    return task


def curation_id_of(task: dict[str, Any]) -> str | None:
    """The ``curation_id`` a task carries in its data (None: the task is not curate's)."""
    cid = (task.get("data") or {}).get("curation_id")
    return str(cid) if cid else None


def group_by_curation_id(tasks: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """curation_id → ids of the tasks that carry it (more than one means duplicates made outside curate)."""
    found: dict[str, list[int]] = {}
    for task in tasks:
        cid = curation_id_of(task)
        if cid:
            found.setdefault(cid, []).append(int(task["id"]))
    return found


# --------------------------------------------------------------------------------------------------------------------
# Times


def ls_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(LS_TIME_FORMAT)


def parse_ls_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------------------
# Labeling configs as Label Studio sends them (``/predict``, ``/setup``)


def parse_label_config(config: str) -> dict[str, Any]:
    """A labeling config's XML as Label Studio's ``parsed_label_config``: control name → type, to_name, inputs
    and labels (what ``check_label_config`` reads). Malformed XML is a ``ConfigError``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ConfigError(f"the labeling config is not valid XML: {exc}") from None
    objects = {el.get("name"): el for el in root.iter() if el.get("value", "").startswith("$")}
    parsed: dict[str, Any] = {}
    for el in root.iter():
        to_name = el.get("toName")
        if not to_name or el.get("name") is None:
            continue
        inputs = [
            {"type": objects[n].tag, "value": objects[n].get("value", "")[1:]}
            for n in to_name.split(",")
            if n in objects
        ]
        parsed[str(el.get("name"))] = {
            "type": el.tag,
            "to_name": to_name.split(","),
            "inputs": inputs,
            "labels": [child.get("value") for child in el if child.get("value") is not None],
        }
    return parsed
