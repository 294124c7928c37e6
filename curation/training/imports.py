"""Labels made elsewhere, read into curate's normalised form (``curate labels import``).

Three sources: a YOLO classification dataset (a folder per class, optionally under split folders), a YOLO
detection dataset (``data.yaml`` and its label files, boxes only), and a Label Studio JSON export (a list of tasks
with their annotations). Each yields ``ForeignLabel`` rows: the image file (or, for a task curate pushed, its
content id) and the labels in the shape ``curate pull`` stores (``{"task", "classes"}`` or ``{"task", "boxes",
"width", "height"}`` in pixels). No database here: the job matches the rows by content id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from curation.config import IMAGE_EXTENSIONS
from curation.errors import InputFileError
from curation.training.dataset import DATA_YAML, read_data_yaml

SPLIT_FOLDERS = {"train", "val", "valid", "test"}


@dataclass(frozen=True)
class ForeignLabel:
    image: Path | None  # the image file (None: unresolvable, or a curate task known by its content id)
    content_id: str | None  # a Label Studio task curate pushed carries it (``curation_id``)
    labels: dict[str, Any]
    annotator: str | None = None
    annotated_at: datetime | None = None
    reference: str = ""  # how the source names the image (for reports of unmatched ones)


@dataclass(frozen=True)
class ForeignDataset:
    kind: str  # yolo-classify | yolo-detect | label-studio
    task: str
    source: str  # the file or folder, as recorded with every imported label
    root: Path | None  # the folder whose images are registered as a pool (None: nothing to register)
    labels: list[ForeignLabel]


def read_foreign(path: Path, task: str, images: Path | None = None) -> ForeignDataset:
    """Read ``path`` (a YOLO dataset folder, its ``data.yaml``, or a Label Studio ``.json`` export) for a model of
    ``task``; ``images`` is where the files of a Label Studio export's tasks are (matched by relative path, then by
    file name)."""
    path = path.expanduser()
    if not path.exists():
        raise InputFileError(f"labels to import not found: {path}")
    path = path.resolve()
    if path.is_file() and path.suffix.lower() == ".json":
        return _label_studio(path, task, images)
    data_yaml = path if path.is_file() else path / DATA_YAML
    if data_yaml.is_file() and data_yaml.suffix.lower() in (".yaml", ".yml"):
        if task == "classify":
            raise InputFileError(f"{data_yaml} is a detection dataset; the current model classifies")
        if task == "segment":
            raise InputFileError("importing segmentation polygons is not supported: import boxes for a detector")
        return _yolo_detect(data_yaml)
    if path.is_dir():
        if task != "classify":
            raise InputFileError(f"{path} has no {DATA_YAML}: a {task} dataset needs one (class folders classify)")
        return _yolo_classify(path)
    raise InputFileError(f"{path} is neither a YOLO dataset (folder or data.yaml) nor a Label Studio .json export")


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _yolo_classify(root: Path) -> ForeignDataset:
    rows = []
    for image in _images(root):
        parts = image.relative_to(root).parts
        if len(parts) < 2 or parts[-2] in SPLIT_FOLDERS:
            continue  # an image outside any class folder
        label = parts[-2]
        rows.append(ForeignLabel(image, None, {"task": "classify", "classes": [label]}, reference=str(image)))
    return ForeignDataset("yolo-classify", "classify", str(root), root, rows)


def _yolo_detect(data_yaml: Path) -> ForeignDataset:
    from PIL import Image

    try:
        dataset = read_data_yaml(data_yaml)
    except Exception as exc:  # YAML errors and unreadable files alike
        raise InputFileError(f"cannot read {data_yaml}: {exc}") from None
    rows = []
    for image, boxes in zip(dataset.images, dataset.boxes, strict=True):
        try:
            with Image.open(image) as im:
                width, height = im.size
        except Exception:
            rows.append(ForeignLabel(None, None, {}, reference=str(image)))
            continue
        shapes = []
        for cls, cx, cy, w, h in boxes:
            name = dataset.class_names[cls] if 0 <= cls < len(dataset.class_names) else f"class #{cls}"
            shapes.append(
                {
                    "label": name,
                    "x1": (cx - w / 2) * width,
                    "y1": (cy - h / 2) * height,
                    "x2": (cx + w / 2) * width,
                    "y2": (cy + h / 2) * height,
                }
            )
        labels = {"task": "detect", "boxes": shapes, "width": width, "height": height}
        rows.append(ForeignLabel(image, None, labels, reference=str(image)))
    return ForeignDataset("yolo-detect", "detect", str(data_yaml), dataset.root, rows)


def _label_studio(path: Path, task: str, images: Path | None) -> ForeignDataset:
    from curation.labelstudio.formats import normalize_annotation, parse_ls_time

    try:
        tasks = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read the Label Studio export {path}: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputFileError(f"{path} is not a Label Studio JSON export (a list of tasks)")
    root = images.expanduser().resolve() if images else None
    if root is not None and not root.is_dir():
        raise InputFileError(f"--images {images} is not a folder")
    by_name = {p.name: p for p in _images(root)} if root else {}
    rows = []
    for t in tasks:
        done = [a for a in t.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not done:
            continue
        latest = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
        data = t.get("data") or {}
        reference = next((str(v) for k, v in data.items() if isinstance(v, str) and not k.startswith("curation_")), "")
        cid = str(data["curation_id"]) if data.get("curation_id") else None
        image = _resolve(reference, root, by_name) if cid is None else None
        who = latest.get("completed_by")
        annotator = str(who.get("email") or who.get("id")) if isinstance(who, dict) else (str(who) if who else None)
        labels = normalize_annotation(task, latest.get("result") or [])
        when = parse_ls_time(latest.get("updated_at") or latest.get("created_at"))
        rows.append(ForeignLabel(image, cid, labels, annotator, when, reference or f"task {t.get('id')}"))
    return ForeignDataset("label-studio", task, str(path), root, rows)


def _resolve(reference: str, root: Path | None, by_name: dict[str, Path]) -> Path | None:
    """A task's image as a local file: Label Studio's local-files URL (``?d=relative/path``) or a path, under
    ``root``; else a file of the same name anywhere under it."""
    if not reference or root is None:
        return None
    parsed = urlparse(reference)
    relative = parse_qs(parsed.query).get("d", [None])[0] or unquote(parsed.path)
    candidate = (root / relative.lstrip("/")).resolve()
    if candidate.is_file() and candidate.is_relative_to(root):
        return candidate
    return by_name.get(Path(relative).name)
