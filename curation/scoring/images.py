"""Image decoding and preprocessing, run inside DataLoader workers.

Decoding is strict and predictable: every file either becomes an RGB uint8 array or fails with one reason.
Conversions (documented in the README):

- EXIF orientation is applied, so sizes and boxes match what a browser shows;
- CMYK, palette, grayscale, 1-bit and LA images are converted to RGB by Pillow; alpha is dropped (the colour
  channels are kept, as OpenCV does when Ultralytics trains), palette transparency included;
- 16-bit and 32-bit integer grayscale are mapped linearly to 8 bits (value / 257, i.e. 65535 → 255);
- multi-frame files (GIF, TIFF, animated WebP) use their first frame;
- images above ``max_pixels`` (``pool.max_pixels``, the one limit: Pillow's own follows it) are refused as
  decompression bombs before any pixel is decoded;
- images whose long side is more than ``max_aspect`` times their short side (a 4,000,000 x 1 PNG of 12 KB) are
  refused before any pixel is decoded: resizing one to a model input would cost memory without bound;
- work per image is bounded by the model input, not the file: JPEGs decode at reduced scale (``draft``) and other
  formats are box-reduced (``Image.reduce``) before conversion, so that no later step sees more than about twice the
  pixels the model input needs;
- RGB and grayscale JPEGs are decoded by libjpeg-turbo through simplejpeg when it is installed (a core dependency):
  the same decode at the same DCT scale as Pillow's ``draft``, bit for bit, without Pillow's per-image overhead.
  Pillow still reads the header (so every check above is Pillow's), and decodes everything else: other formats,
  CMYK, and any JPEG simplejpeg reports the slightest problem with — a bad file fails with Pillow's reason.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from curation.errors import CurateError


class ImageDecodeError(CurateError):
    """One file cannot be used as an image; the run goes on without it.

    ``transient``: the file could not be *read* (gone, no permission, I/O error, out of memory) rather than
    decoded; it is skipped for this run only and tried again by the next, instead of being marked failed.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _pillow_open() -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``.

    Importing Ultralytics replaces ``PIL.Image.open`` with a wrapper that, on an unrecognised file, tries to
    pip-install a HEIF plugin. A bad file in a pool must never trigger an install, so decode with the original.
    """
    opener = Image.open
    module = getattr(opener, "__module__", "") or ""
    if module.startswith("ultralytics"):
        opener = getattr(sys.modules[module], "_image_open", opener)
    return opener


DEFAULT_MAX_ASPECT = 20.0  # pool.max_aspect_ratio: wider than phone panoramas (~10:1), far below a 1-px line
DEFAULT_MAX_PIXELS = 89_478_485  # pool.max_pixels' default (Pillow's warning level)
_PILLOW_LIMIT_LOCK = threading.RLock()


def _fresh_lock_after_fork() -> None:
    global _PILLOW_LIMIT_LOCK  # a DataLoader worker forked while a scan thread held the lock must not inherit it
    _PILLOW_LIMIT_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Make ``pool.max_pixels`` Pillow's limit too, for one decode (None: no limit, to read a header).

    Pillow refuses images above twice ``Image.MAX_IMAGE_PIXELS`` (179 MP by default) on its own, in ``open`` and
    while loading some formats' frames; left alone, that would fire before a raised ``pool.max_pixels``. The
    module global is set per call, restored after, under a lock (pool scans read headers from threads), so that
    importing curate changes nothing for other code in the process.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        _set_pillow_limit(max_pixels)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _set_pillow_limit(max_pixels: int | None) -> None:
    """Only inside ``_pixel_limit``. Pillow raises above 2 x MAX_IMAGE_PIXELS (and warns above it): halve,
    rounding up, so that it raises where pool.max_pixels does."""
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else (max_pixels + 1) // 2


def _too_large(pixels: float, max_pixels: int, size: str = "") -> ImageDecodeError:
    return ImageDecodeError(
        f"image too large: {size}{pixels / 1e6:.1f} MP exceeds pool.max_pixels ({max_pixels / 1e6:.1f} MP)"
    )


@dataclass(frozen=True)
class Geometry:
    """How a preprocessed image maps back to the original (EXIF-corrected) image."""

    width: int
    height: int
    scale: float  # preprocessed pixels per original pixel
    pad_x: float
    pad_y: float


@dataclass(frozen=True)
class Decoded:
    rgb: NDArray[np.uint8]  # (H, W, 3), possibly decoded at reduced scale
    width: int  # full-resolution width after EXIF orientation
    height: int


def load_rgb(
    path: Path | BinaryIO, max_pixels: int, target: int | None = None, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Decoded:
    """Decode ``path`` to an RGB uint8 (H, W, 3) array, EXIF-oriented.

    ``target`` (the model input size) bounds the work: JPEG decoding uses libjpeg's DCT scaling (``draft``) when
    the image is much larger than the model input (a 4000 px photo at 1/8 scale is ~20x faster and gives the same
    resized result), and other formats are box-reduced before conversion, keeping the short side at least
    ``2 * target``. Every preprocessing (letterbox, centre crop, stretch) needs at most ``target`` on the short side.
    """
    try:
        with warnings.catch_warnings(), _pixel_limit(None):  # opening reads the header only: we judge the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # palette transparency notes
            with _pillow_open()(path) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise ImageDecodeError("image has zero width or height")
                if width * height > max_pixels:
                    raise _too_large(width * height, max_pixels, f"{width}x{height} = ")
                if max(width, height) > max_aspect * min(width, height):
                    ratio = max(width, height) / min(width, height)
                    raise ImageDecodeError(
                        f"aspect ratio too extreme: {width}x{height} is {ratio:.0f}:1, above "
                        f"pool.max_aspect_ratio ({max_aspect:g}:1)"
                    )
                _set_pillow_limit(max_pixels)  # frames sized while loading (GIF, ICO) meet the same limit
                if im.format == "JPEG" and im.mode in ("RGB", "L"):
                    fast = _decode_turbo(im, width, height, target)
                    if fast is not None:
                        return fast
                draft = _draft_size(width, height, target)
                if draft is not None and im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
                    im.draft(im.mode, draft)
                im.seek(0)
                im.load()
                try:
                    oriented = ImageOps.exif_transpose(im)
                except Exception:  # corrupt EXIF block: keep the stored orientation
                    oriented = im
                swapped = oriented.size != im.size
                if target is not None:
                    oriented = _reduce(oriented, target)
                rgb = _to_rgb(oriented)
                return Decoded(rgb, height if swapped else width, width if swapped else height)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:  # Pillow's check, set to pool.max_pixels by _pixel_limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(int(found.group(1)) if found else max_pixels + 1, max_pixels) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found", transient=True) from None
    except PermissionError:
        raise ImageDecodeError("permission denied", transient=True) from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding", transient=True) from None
    except OSError as exc:
        if exc.errno is not None:  # the operating system failed to read the file (EIO, ESTALE, ...)
            raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}", transient=True) from None
        # Pillow's own OSErrors carry no errno: truncated JPEGs ("image file is truncated ...") and the like.
        raise ImageDecodeError(f"corrupt image: {exc}") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        # Truncated JPEGs raise OSError("image file is truncated ..."); broken PNG chunks raise SyntaxError.
        raise ImageDecodeError(f"corrupt image: {exc}") from None


def _draft_size(width: int, height: int, target: int | None) -> tuple[int, int] | None:
    """The size to ask libjpeg's DCT scaling for (Pillow's ``draft``), or None when the file is near the input.

    The oriented size is unknown until EXIF is read, so enough pixels are requested for either orientation."""
    if target is None:
        return None
    scale = target / min(width, height)
    if scale >= 0.5:
        return None
    return max(1, int(width * scale * 1.01)), max(1, int(height * scale * 1.01))


def _draft_factor(width: int, height: int, draft: tuple[int, int] | None) -> int:
    """The DCT scale denominator Pillow's ``JpegImageFile.draft`` picks for ``draft``: the largest of 8, 4, 2, 1
    that keeps both sides at least the requested size."""
    if draft is None:
        return 1
    scale = min(width // draft[0], height // draft[1])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


@lru_cache(maxsize=1)
def _jpeg_codec() -> Any | None:
    """simplejpeg (libjpeg-turbo straight into a numpy array) when installed, else None (Pillow decodes)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


# EXIF orientation -> the array operation Pillow's exif_transpose performs (Image.Transpose.*)
_ORIENT: dict[int, Callable[[NDArray[np.uint8]], NDArray[np.uint8]]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


def _decode_turbo(im: Image.Image, width: int, height: int, target: int | None) -> Decoded | None:
    """Decode an opened (header-only, already size-checked) baseline or progressive RGB/grayscale JPEG with
    simplejpeg: the same libjpeg-turbo decode at the same DCT scale as Pillow's ``draft`` (bit-identical pixels,
    tests/test_images.py), minus Pillow's per-image overhead — 1.2-2.3x faster on photo-sized files
    (docs/BENCHMARKS.md). None — Pillow then decodes the file as before, with its own errors — when simplejpeg
    is not installed or reports anything at all (``strict``: a libjpeg warning such as a truncated file is an
    error here), so every bad file still fails exactly as it does with Pillow. CMYK is left to Pillow (Adobe's
    inverted CMYK)."""
    codec = _jpeg_codec()
    fp = getattr(im, "fp", None)  # an ImageFile's open file (the path Pillow opened, or the caller's stream)
    if codec is None or fp is None:
        return None
    factor = _draft_factor(width, height, _draft_size(width, height, target))
    want_w, want_h = -(-width // factor), -(-height // factor)
    fp.seek(0)
    data = fp.read()
    gray = im.mode == "L"
    try:
        array = codec.decode_jpeg(
            data, colorspace="GRAY" if gray else "RGB", min_width=want_w, min_height=want_h, strict=True
        )
    except ValueError:
        return None
    array = np.asarray(array, dtype=np.uint8)
    if array.shape[:2] != (want_h, want_w):  # another scale than Pillow's: let Pillow decode
        return None
    if gray:
        array = np.repeat(array.reshape(want_h, want_w, 1), 3, axis=2)
    try:  # exactly exif_transpose's reading: EXIF, then XMP; a corrupt block keeps the stored orientation
        transpose = _ORIENT.get(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        transpose = None
    if transpose is not None:
        array = transpose(array)
    swapped = transpose is not None and array.shape[:2] != (want_h, want_w)
    if target is not None and min(array.shape[:2]) // (2 * target) >= 2:  # _reduce's rule, on the array
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array)).reduce(min(array.shape[:2]) // (2 * target)))
    return Decoded(np.ascontiguousarray(array), height if swapped else width, width if swapped else height)


_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})


def _reduce(im: Image.Image, target: int) -> Image.Image:
    """Box-average ``im`` by an integer factor that keeps its short side at least ``2 * target`` (a no-op for an
    image already near the model input). Why: conversion and resizing then cost what the output needs, not what
    the file holds. Palette images are kept as they are (averaging palette indices would invent colours), as are
    modes ``reduce`` does not support (1-bit, 16-bit)."""
    factor = min(im.size) // (2 * target)
    if factor < 2 or im.mode not in _REDUCIBLE:
        return im
    return im.reduce(factor)


def _to_rgb(im: Image.Image) -> NDArray[np.uint8]:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(im, dtype=np.float64)
        if mode == "I" and data.max(initial=0) > 65535:
            data = data / max(float(data.max()), 1.0) * 65535.0
        gray = np.clip(np.rint(data / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        data = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        gray = np.zeros(data.shape, np.uint8) if hi <= lo else ((data - lo) / (hi - lo) * 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P":
        im = im.convert("RGBA")
    if mode != "RGB":
        im = im.convert("RGB")
    array = np.asarray(im, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageDecodeError(f"unsupported image layout {array.shape} (mode {mode})")
    return np.ascontiguousarray(array)


PHASH_BITS = 64
_PHASH_SIDE = 32  # the DCT input: 32 x 32 grey, of which the 8 x 8 lowest frequencies are kept


def perceptual_hash(rgb: NDArray[np.uint8]) -> int:
    """A 64-bit perceptual hash (pHash) of a decoded image, as an unsigned integer: model-independent, so exact
    and near-exact copies (resized, re-encoded, slightly recoloured) are found even when the scoring model is
    young or random.

    The image is reduced to 32 x 32 grey by area averaging, transformed by a 2-D DCT, and each of the 8 x 8 lowest
    frequencies becomes one bit: above the median of those 64 coefficients (DC excluded from the median) or not.
    Copies differ in a few bits (Hamming distance); unrelated images in about half. Computed from the array
    ``load_rgb`` returns (EXIF-oriented, possibly decoded at reduced scale: the hash reads 32 x 32 pixels only).
    """
    import cv2

    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    small = cv2.resize(grey, (_PHASH_SIDE, _PHASH_SIDE), interpolation=cv2.INTER_AREA)
    low = np.asarray(cv2.dct(np.ascontiguousarray(small, dtype=np.float32)), dtype=np.float32)[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _resize(rgb: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """OpenCV resize: area averaging when shrinking (no aliasing), bilinear when enlarging; SIMD-fast."""
    import cv2

    interp = cv2.INTER_AREA if width < rgb.shape[1] else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(rgb, (width, height), interpolation=interp), dtype=np.uint8)


def rect_shape(width: int, height: int, size: int, stride: int = 32) -> tuple[int, int]:
    """(H, W) of the smallest stride-aligned canvas holding the image with its long side at ``size``.

    A 4:3 photo at 640 needs 640x480, not 640x640: a quarter fewer pixels through the network (16:9: 44 %).
    """
    scale = size / max(width, height)
    h = min(size, int(np.ceil(round(height * scale) / stride) * stride))
    w = min(size, int(np.ceil(round(width * scale) / stride) * stride))
    return max(h, stride), max(w, stride)


def letterbox(
    rgb: NDArray[np.uint8], size: int, orig_w: int, orig_h: int, shape: tuple[int, int] | None = None
) -> tuple[NDArray[np.uint8], Geometry]:
    """Resize the long side to ``size`` and pad to ``shape`` (default a square) with grey 114, as Ultralytics
    does for detection."""
    h, w = rgb.shape[:2]
    out_h, out_w = shape or (size, size)
    # The canvas may come from header dimensions; never let a differing decoded size overflow it.
    scale = min(size / max(orig_w, orig_h), out_w / orig_w, out_h / orig_h)
    new_w, new_h = min(out_w, max(1, round(orig_w * scale))), min(out_h, max(1, round(orig_h * scale)))
    if (w, h) != (new_w, new_h):
        rgb = _resize(rgb, new_w, new_h)
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    canvas = np.full((out_h, out_w, 3), 114, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = rgb
    return canvas, Geometry(orig_w, orig_h, scale, float(left), float(top))


def center_crop(rgb: NDArray[np.uint8], size: int, orig_w: int, orig_h: int) -> tuple[NDArray[np.uint8], Geometry]:
    """Resize the short side to ``size`` then crop the centre, as Ultralytics' classification transforms do."""
    h, w = rgb.shape[:2]
    scale = size / min(orig_w, orig_h)
    new_w, new_h = max(size, round(orig_w * scale)), max(size, round(orig_h * scale))
    if (w, h) != (new_w, new_h):
        rgb = _resize(rgb, new_w, new_h)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    crop = np.ascontiguousarray(rgb[top : top + size, left : left + size])
    return crop, Geometry(orig_w, orig_h, scale, float(-left), float(-top))


def stretch(rgb: NDArray[np.uint8], size: int, orig_w: int, orig_h: int) -> tuple[NDArray[np.uint8], Geometry]:
    """Resize to a square ignoring the aspect ratio (for TorchScript models trained that way)."""
    out = _resize(rgb, size, size)
    return np.ascontiguousarray(out), Geometry(orig_w, orig_h, size / max(orig_w, orig_h), 0.0, 0.0)


def original_size(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """EXIF-corrected (width, height) without decoding pixels, if it can (reading a PNG's EXIF loads the image:
    above ``max_pixels`` the stored size is returned, since decoding will refuse the file anyway)."""
    with warnings.catch_warnings(), _pixel_limit(None), _pillow_open()(path) as im:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        width, height = im.size
        if width * height > max_pixels:
            return width, height
        _set_pillow_limit(max_pixels)
        orientation = im.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
