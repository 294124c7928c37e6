"""The Ultralytics dataset layout, written and read in one place.

Classification: ``<root>/<split>/<class>/<image>`` (a folder per class; Ultralytics takes the root).
Detection and segmentation: ``<root>/images/<split>/<image>`` with one YOLO label file per image at
``<root>/labels/<split>/<stem>.txt`` (one row per object: ``class cx cy w h``, or ``class x1 y1 x2 y2 ...`` for a
polygon, all normalised to [0, 1]) and a ``data.yaml`` naming the splits and the classes.

Training's export, the synthetic datasets and ``curate simulate`` write through these functions; ``simulate``
reads through ``read_data_yaml``. No torch here: the synthetic data and the status command stay light.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from curation.config import IMAGE_EXTENSIONS
from curation.errors import ExportError
from curation.training.splits import primary_label

if TYPE_CHECKING:
    from store.records import LabeledExample

DATA_YAML = "data.yaml"
Box = tuple[int, float, float, float, float]  # class, cx, cy, w, h (normalised)


# --------------------------------------------------------------------------------------------------------------------
# Layout


def class_folder(root: Path, split: str, label: str) -> Path:
    """The folder of the classification images of class ``label``."""
    return root / split / label


def yolo_images_folder(root: Path, split: str) -> Path:
    return root / "images" / split


def yolo_image_path(root: Path, split: str, name: str) -> Path:
    return yolo_images_folder(root, split) / name


def yolo_label_path(root: Path, split: str, stem: str) -> Path:
    return root / "labels" / split / f"{stem}.txt"


def label_path_for(image: Path) -> Path:
    """The label file of an image in a YOLO dataset (its ``images`` folder mirrored under ``labels``)."""
    return Path(str(image.parent).replace("images", "labels", 1)) / f"{image.stem}.txt"


def box_row(cls: int, cx: float, cy: float, w: float, h: float, digits: int = 6) -> str:
    return f"{cls} {cx:.{digits}f} {cy:.{digits}f} {w:.{digits}f} {h:.{digits}f}"


def polygon_row(cls: int, xy: Sequence[float], digits: int = 6) -> str:
    """A segmentation row from flat normalised coordinates ``x1, y1, x2, y2, ...``."""
    return f"{cls} " + " ".join(f"{v:.{digits}f}" for v in xy)


def write_labels(root: Path, split: str, stem: str, rows: Sequence[str]) -> Path:
    """One image's YOLO label file (empty for an image without objects: a background image)."""
    path = yolo_label_path(root, split, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows))
    return path


def write_data_yaml(
    root: Path,
    class_names: Sequence[str],
    *,
    val: str = "val",
    name: str = DATA_YAML,
    portable: bool = False,
    test: bool = False,
) -> Path:
    """The ``data.yaml`` Ultralytics trains (``val="val"``) or validates (e.g. ``val="test"``) from; ``portable``
    leaves out ``path`` (the splits are then relative to the file's folder); ``test`` names ``images/test``."""
    names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(class_names))
    data = root / name
    where = "" if portable else f"path: {root.resolve()}\n"
    tests = "test: images/test\n" if test else ""
    data.write_text(f"{where}train: images/train\nval: images/{val}\n{tests}names:\n{names}")
    return data


def link(src: Path, dst: Path) -> None:
    """A symlink at ``dst`` to ``src`` (replacing one that is there): datasets never copy pool files."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(src, dst)


@dataclass
class YoloDataset:
    """What a ``data.yaml`` describes: every image of its train, val and test splits, with its box rows."""

    root: Path
    class_names: list[str]
    images: list[Path]
    boxes: list[list[Box]]


def read_data_yaml(data_yaml: Path) -> YoloDataset:
    """Read a YOLO dataset (images of every split in ``data.yaml``, sorted; label rows with a box each)."""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text()) or {}
    root = Path(spec.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    names_spec = spec.get("names") or {}
    names = [str(names_spec[i]) for i in sorted(names_spec)] if isinstance(names_spec, dict) else list(names_spec)
    images: list[Path] = []
    boxes: list[list[Box]] = []
    for key in ("train", "val", "test"):
        folder = spec.get(key)
        if not folder:
            continue
        for image in sorted((root / folder).rglob("*")):
            if image.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            label_file = label_path_for(image)
            rows: list[Box] = []
            if label_file.is_file():
                for line in label_file.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 5:
                        cx, cy, w, h = (float(v) for v in parts[1:])
                        rows.append((int(parts[0]), cx, cy, w, h))
            images.append(image)
            boxes.append(rows)
    return YoloDataset(root, names, images, boxes)


# --------------------------------------------------------------------------------------------------------------------
# Training's export of the labeled items


LINK_MODES = ("copy", "symlink", "hardlink")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "sha256", "content_id", "split", "label", "label_source", "annotator", "annotated_at")


@dataclass(frozen=True)
class ExportedItem:
    """One image of an exported dataset: where it went (relative to the dataset root) and where it came from."""

    path: str
    example: LabeledExample
    split: str
    label: str  # the class (classify) or the classes of its objects, '|'-joined; empty for a background image


@dataclass
class ExportedDataset:
    data: Path  # the folder (classify) or data.yaml (detect/segment) to hand to Ultralytics
    n_train: int
    n_val: int
    dataset_hash: str
    skipped_labels: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    items: list[ExportedItem] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # path → SHA-256 of the bytes written (copy mode)
    n_test: int = 0  # test-set items (split ``test``: evaluation only, outside the dataset hash)


def export_dataset(
    examples: list[LabeledExample],
    splits: dict[int, str],
    task: str,
    class_names: list[str],
    out_dir: Path,
    *,
    link_mode: str = "symlink",
    verify: bool = False,
    portable: bool = False,
    fetch: Callable[[LabeledExample], bytes | None] | None = None,
) -> ExportedDataset:
    """Write an Ultralytics dataset of the labeled items: links to the pool files (``symlink``, training's choice),
    hard links or copies. Labels not among the model's classes are skipped (counted by name); detection coordinates
    are normalised by the image size the annotation was made on. ``verify``: every file's SHA-256 is computed
    (while copying) and must still match its content id, else ``ExportError``. ``portable``: the ``data.yaml``
    names no absolute path (Ultralytics then takes its folder), so the dataset can be moved. ``fetch``: the bytes of
    an item that is not a local file (an object, an ``ls://`` task's image, a manifest's URI line), written as a
    copy; None from it (or no ``fetch``) skips the item as a missing file.

    The dataset hash is a function of the content ids, splits and label rows only — not of paths or link mode —
    so training's temporary dataset and ``curate export`` of the same items hash the same. Items of split
    ``test`` (the test set) are written but left out of the hash: training never sees them."""
    if link_mode not in LINK_MODES:
        raise ExportError(f"unknown link mode {link_mode!r}; expected one of: {', '.join(LINK_MODES)}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    known = set(class_names)
    skipped: Counter[str] = Counter()
    per_class: dict[str, dict[str, int]] = {c: {"train": 0, "val": 0} for c in class_names}  # + test if any
    lines: list[str] = []
    counts = {"train": 0, "val": 0, "test": 0}
    items: list[ExportedItem] = []
    hashes: dict[str, str] = {}
    for e in examples:
        split = splits[e.item_id]
        src = Path(e.path) if e.path else None
        fetched: bytes | None = None
        if src is None or not src.is_file():
            fetched = fetch(e) if fetch is not None and e.path else None
            if src is None or fetched is None:
                skipped["missing file"] += 1
                continue
        suffix = src.suffix.lower()
        name = e.content_id + (suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ".jpg")
        if task == "classify":
            label = primary_label(task, e.labels)
            if label not in known:
                skipped[label] += 1
                continue
            dst = class_folder(out_dir, split, label) / name
            per_class[label][split] = per_class[label].get(split, 0) + 1
            lines.append(f"{e.content_id} {split} {label}")
        else:
            rows = _yolo_rows(task, e, class_names, skipped)
            if rows is None:
                continue
            dst = yolo_image_path(out_dir, split, name)
            write_labels(out_dir, split, e.content_id, rows)
            for r in rows:
                counted = per_class[class_names[int(r.split()[0])]]
                counted[split] = counted.get(split, 0) + 1
            label = "|".join(dict.fromkeys(class_names[int(r.split()[0])] for r in rows))
            lines.append(f"{e.content_id} {split} " + "|".join(rows))
        relative = dst.relative_to(out_dir).as_posix()
        if fetched is not None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(fetched)
            digest: str | None = hashlib.sha256(fetched).hexdigest() if verify else None
        else:
            digest = place(src, dst, link_mode, hashed=verify)
        if verify:
            if digest is None or digest[: len(e.content_id)] != e.content_id:
                raise ExportError(f"the file of labeled item {e.content_id} changed since it was labeled: {src}")
            hashes[relative] = digest
        items.append(ExportedItem(relative, e, split, label))
        counts[split] += 1
    # the hash is the training data's: test items (evaluation only) are not part of it
    digest = hashlib.sha256("\n".join(sorted(line for line in lines if line.split()[1] != "test")).encode()).hexdigest()
    data = (
        out_dir
        if task == "classify"
        else write_data_yaml(out_dir, class_names, portable=portable, test=counts["test"] > 0)
    )
    return ExportedDataset(
        data, counts["train"], counts["val"], digest, skipped, per_class, items, hashes, n_test=counts["test"]
    )


def place(src: Path, dst: Path, mode: str, *, hashed: bool = False) -> str | None:
    """Put ``src`` at ``dst`` as a symlink, hard link or copy; with ``hashed`` return the SHA-256 of its bytes
    (computed while copying, so a copy is read once)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "copy":
        sha = hashlib.sha256()
        with src.open("rb") as fin, dst.open("wb") as fout:
            while block := fin.read(1 << 20):
                sha.update(block)
                fout.write(block)
        shutil.copystat(src, dst)
        return sha.hexdigest() if hashed else None
    try:
        if mode == "hardlink":
            os.link(src, dst)
        else:
            os.symlink(src, dst)
    except OSError as exc:
        raise ExportError(f"cannot {mode} {src} to {dst}: {exc.strerror or exc} (try --link copy)") from None
    return file_sha256(src) if hashed else None


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(dataset: ExportedDataset, root: Path) -> Path:
    """``manifest.csv`` beside the dataset: one row per image (path relative to the root, SHA-256, content id,
    split, label, where the label came from, who made it and when), sorted by path so that an unchanged export is
    byte-identical (DVC sees no change)."""
    import csv

    target = root / MANIFEST
    with target.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for item in sorted(dataset.items, key=lambda i: i.path):
            e = item.example
            when = e.annotated_at.isoformat() if e.annotated_at else ""
            sha = dataset.sha256.get(item.path, "")
            writer.writerow(
                [item.path, sha, e.content_id, item.split, item.label, e.source or "", e.annotator or "", when]
            )
    return target


def _yolo_rows(task: str, e: LabeledExample, class_names: list[str], skipped: Counter[str]) -> list[str] | None:
    width = float(e.labels.get("width") or e.width or 0)
    height = float(e.labels.get("height") or e.height or 0)
    shapes = e.labels.get("polygons") if task == "segment" else e.labels.get("boxes")
    if shapes and not (width and height):
        skipped["unknown image size"] += 1
        return None
    index = {name: i for i, name in enumerate(class_names)}
    rows = []
    for shape in shapes or []:
        label = shape.get("label")
        if label not in index:
            skipped[str(label)] += 1
            continue
        if task == "segment":
            xy = [min(max(v / side, 0), 1) for x, y in shape["points"] for v, side in ((x, width), (y, height))]
            if len(xy) >= 6:
                rows.append(polygon_row(index[label], xy))
        else:
            x1, y1 = max(shape["x1"], 0.0) / width, max(shape["y1"], 0.0) / height
            x2, y2 = min(shape["x2"], width) / width, min(shape["y2"], height) / height
            if x2 > x1 and y2 > y1:
                rows.append(box_row(index[label], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return rows


def coverage_problem(dataset: ExportedDataset, task: str) -> str | None:
    """Ultralytics needs every class in both splits for classification, and some validation data for all."""
    if dataset.n_train == 0 or dataset.n_val == 0:
        return f"not enough labeled items yet ({dataset.n_train} train, {dataset.n_val} validation)" + (
            unknown_classes_note(dataset)
        )
    if task == "classify":
        missing = [c for c, n in dataset.per_class.items() if n["train"] == 0 or n["val"] == 0]
        if missing:
            return (
                "classification training needs at least one labeled example of every class in both the training "
                f"and the validation split; missing for: {', '.join(missing)}"
            ) + unknown_classes_note(dataset)
    return None


SKIP_REASONS = ("missing file", "unknown image size")  # skipped_labels keys that are not class names


def unknown_classes_note(dataset: ExportedDataset) -> str:
    """The labels left out because the model has no such class, by name and count (empty if none)."""
    unknown = {k: n for k, n in dataset.skipped_labels.items() if k not in SKIP_REASONS}
    if not unknown:
        return ""
    named = ", ".join(f"{name!r} ({n})" for name, n in sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"; labels outside the model's classes were left out: {named}"
