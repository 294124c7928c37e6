"""Generated images for the offline demo, the tests and the benchmarks: nothing is downloaded.

Shapes (circle, square, triangle) in random colours, sizes and positions on noisy backgrounds, each with a dark
outline and at most a small tilt (squares stand upright, triangles point up), like icons or signs. Fully random
rotations and outline-free shapes made the classes so hard to tell apart that a tiny model trained from scratch for
a few seconds stayed at chance: the demo and the tests need models that genuinely learn in seconds. Datasets are
written in Ultralytics' layouts through ``curation.training.dataset`` (a folder per class; YOLO label files with a
``data.yaml``). ``write_bad_files`` plants every kind of bad input curate must survive.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from curation.training.dataset import (
    box_row,
    class_folder,
    polygon_row,
    write_data_yaml,
    write_labels,
    yolo_image_path,
    yolo_images_folder,
)

SHAPES = ("circle", "square", "triangle")
MAX_TILT_DEGREES = 10.0  # squares and triangles are tilted by at most this much from upright
OUTLINE_PER_PIXEL = 3 / 64  # outline width as a fraction of the image side (3 px at 64 px)
_UPRIGHT = {"square": math.pi / 4, "triangle": -math.pi / 2}  # polygon start angle: axis-aligned square, apex up


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    array = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "circle":
        n = 24
        return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)]
    corners = 4 if shape == "square" else 3
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * i / corners),
            cy + r * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def _colour(rng: np.random.Generator, avoid: NDArray[np.int64] | None = None) -> tuple[int, int, int]:
    while True:
        colour = rng.integers(0, 256, size=3)
        if avoid is None or np.abs(colour - avoid).sum() > 150:
            return (int(colour[0]), int(colour[1]), int(colour[2]))


def draw_shapes(
    rng: np.random.Generator, size: int, shapes: list[str], min_r: float = 0.12, max_r: float = 0.3
) -> tuple[Image.Image, list[tuple[str, list[tuple[float, float]]]]]:
    """An image with ``shapes`` drawn on it, and each shape's polygon in pixels."""
    img = _background(rng, size)
    bg = np.asarray(img).reshape(-1, 3).mean(axis=0).astype(np.int64)
    draw = ImageDraw.Draw(img)
    outline = max(1, round(size * OUTLINE_PER_PIXEL))
    drawn = []
    for shape in shapes:
        r = float(rng.uniform(min_r, max_r)) * size
        cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
        tilt = math.radians(float(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES)))
        poly = _shape_polygon(shape, cx, cy, r, _UPRIGHT.get(shape, 0.0) + tilt)
        draw.polygon(poly, fill=_colour(rng, bg), outline=(20, 20, 20), width=outline)
        drawn.append((shape, poly))
    return img, drawn


def classification_image(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    img, _ = draw_shapes(rng, size, [shape], 0.25, 0.45)
    return img


def make_classification_dataset(
    root: Path,
    n_train: int = 30,
    n_val: int = 10,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SHAPES,
) -> Path:
    """Ultralytics classification layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in classes:
            folder = class_folder(root, split, cls)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                classification_image(rng, cls, size).save(folder / f"{cls}_{i:04d}.png")
    return root


def make_pool(
    root: Path,
    n: int = 60,
    size: int = 96,
    seed: int = 1,
    classes: tuple[str, ...] = SHAPES,
    fmt: str = "jpg",
) -> list[Path]:
    """An unlabeled pool of shape images (a few with two shapes: genuinely ambiguous ones)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        picked = [classes[int(rng.integers(len(classes)))]]
        if rng.random() < 0.25:
            picked.append(classes[int(rng.integers(len(classes)))])
        img, _ = draw_shapes(rng, size, picked, 0.15, 0.35)
        path = root / f"img_{i:05d}.{fmt}"
        img.save(path, quality=92) if fmt == "jpg" else img.save(path)
        paths.append(path)
    return paths


def make_detection_dataset(
    root: Path,
    n_train: int = 40,
    n_val: int = 12,
    size: int = 128,
    seed: int = 0,
    segment: bool = False,
    classes: tuple[str, ...] = SHAPES,
) -> Path:
    """YOLO detection (or segmentation) dataset with ``data.yaml``; returns the yaml path."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        yolo_images_folder(root, split).mkdir(parents=True, exist_ok=True)  # an empty split is still a split
        for i in range(n):
            k = int(rng.integers(1, 4))
            picked = [classes[int(rng.integers(len(classes)))] for _ in range(k)]
            img, drawn = draw_shapes(rng, size, picked, 0.1, 0.2)
            img.save(yolo_image_path(root, split, f"{i:05d}.png"))
            rows = []
            for shape, poly in drawn:
                cls = classes.index(shape)
                pts = np.clip(np.array(poly) / size, 0, 1)
                if segment:
                    rows.append(polygon_row(cls, pts.reshape(-1).tolist(), digits=5))
                else:
                    x0, y0 = pts.min(axis=0)
                    x1, y1 = pts.max(axis=0)
                    rows.append(box_row(cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, digits=5))
            write_labels(root, split, f"{i:05d}", rows)
    return write_data_yaml(root, classes)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb without the memory cost."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_bad_files(folder: Path, size: int = 96, seed: int = 7) -> dict[str, Path]:
    """Every kind of troublesome file, by name. Unreadable ones must fail; convertible ones must score."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    good = classification_image(rng, "circle", size)
    buf = io.BytesIO()
    good.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()

    out["truncated_jpeg"] = folder / "truncated.jpg"
    out["truncated_jpeg"].write_bytes(jpeg[: len(jpeg) // 2])
    out["zero_bytes"] = folder / "empty.jpg"
    out["zero_bytes"].write_bytes(b"")
    out["text_as_jpg"] = folder / "notes.jpg"
    out["text_as_jpg"].write_text("this is not an image\n")
    out["html_as_jpg"] = folder / "page.jpg"
    out["html_as_jpg"].write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    out["bomb"] = folder / "bomb.png"
    out["bomb"].write_bytes(_png_header_only(40_000, 40_000))

    # Convertible ones: these must be scored, not failed.
    out["cmyk"] = folder / "cmyk.jpg"
    classification_image(rng, "square", size).convert("CMYK").save(out["cmyk"], quality=90)
    out["gray16"] = folder / "gray16.png"
    ramp = (np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16)
    Image.fromarray(ramp).save(out["gray16"])
    out["rgba"] = folder / "rgba.png"
    classification_image(rng, "triangle", size).convert("RGBA").save(out["rgba"])
    out["palette"] = folder / "palette.png"
    pal = classification_image(rng, "circle", size).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(out["palette"], transparency=0)
    out["exif_rotated"] = folder / "rotated.jpg"
    rotated = Image.new("RGB", (size * 2, size), (200, 30, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed: shown as size x 2*size
    rotated.save(out["exif_rotated"], exif=exif.tobytes(), quality=90)
    return out


BAD_UNREADABLE = ("truncated_jpeg", "zero_bytes", "text_as_jpg", "html_as_jpg", "bomb")
BAD_CONVERTIBLE = ("cmyk", "gray16", "rgba", "palette", "exif_rotated")
