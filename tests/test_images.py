from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.devtools.synthetic import BAD_CONVERTIBLE, BAD_UNREADABLE, write_bad_files
from curation.scoring import images
from curation.scoring.images import ImageDecodeError, center_crop, letterbox, load_rgb, original_size

MAX_PIXELS = 89_478_485


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bad_files(tmp_path_factory.mktemp("bad"), size=64)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated_jpeg", "corrupt image"),
        ("zero_bytes", "not an image"),
        ("text_as_jpg", "not an image"),
        ("html_as_jpg", "not an image"),
        ("bomb", "image too large"),
    ],
)
def test_unreadable_files_fail_with_a_reason(bad_files: dict[str, Path], name: str, reason: str) -> None:
    assert name in BAD_UNREADABLE
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_rgb(bad_files[name], MAX_PIXELS)
    assert not info.value.transient  # a broken file stays broken: it is marked failed


def test_a_file_that_cannot_be_read_now_is_a_transient_failure(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found") as info:
        load_rgb(tmp_path / "gone.jpg", MAX_PIXELS)
    assert info.value.transient
    with pytest.raises(ImageDecodeError, match="cannot read file") as info:
        load_rgb(tmp_path, MAX_PIXELS)  # a directory: EISDIR from the operating system
    assert info.value.transient


@pytest.mark.parametrize("name", BAD_CONVERTIBLE)
def test_convertible_files_become_rgb(bad_files: dict[str, Path], name: str) -> None:
    decoded = load_rgb(bad_files[name], MAX_PIXELS)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3 and decoded.rgb.shape[2] == 3
    assert decoded.rgb.shape[:2] == (decoded.height, decoded.width)


def test_exif_orientation_is_applied(bad_files: dict[str, Path]) -> None:
    stored = Image.open(bad_files["exif_rotated"]).size
    decoded = load_rgb(bad_files["exif_rotated"], MAX_PIXELS)
    assert (decoded.width, decoded.height) == (stored[1], stored[0])


def test_sixteen_bit_grayscale_maps_linearly(bad_files: dict[str, Path]) -> None:
    decoded = load_rgb(bad_files["gray16"], MAX_PIXELS)
    flat = decoded.rgb[..., 0].reshape(-1)
    assert flat[0] == 0 and flat[-1] == 255
    assert np.all(np.diff(flat.astype(int)) >= 0)  # a ramp stays a ramp, no clipping at 255
    assert (decoded.rgb[..., 0] == decoded.rgb[..., 2]).all()


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageDecodeError, match=r"300x200 .*pool.max_pixels"):
        load_rgb(path, max_pixels=50_000)


def test_jpeg_draft_decoding_keeps_full_resolution_geometry(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(path, quality=90)
    decoded = load_rgb(path, MAX_PIXELS, target=64)
    assert (decoded.width, decoded.height) == (2000, 1000)
    assert decoded.rgb.shape[1] < 2000  # decoded at reduced scale
    canvas, geo = letterbox(decoded.rgb, 64, decoded.width, decoded.height)
    assert canvas.shape == (64, 64, 3) and geo.scale == pytest.approx(64 / 2000)


def test_letterbox_geometry_maps_back_to_original() -> None:
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[40:60, 140:160] = 255  # a white square at x 140..160, y 40..60
    canvas, geo = letterbox(rgb, 96, 300, 100)
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    x0 = (xs.min() - geo.pad_x) / geo.scale
    y0 = (ys.min() - geo.pad_y) / geo.scale
    assert abs(x0 - 140) <= 4 and abs(y0 - 40) <= 4
    assert (canvas[: int(geo.pad_y) - 1] == 114).all()  # grey padding above


def test_center_crop_size() -> None:
    crop, _ = center_crop(np.zeros((50, 200, 3), np.uint8), 32, 200, 50)
    assert crop.shape == (32, 32, 3)


def test_rect_shape_is_stride_aligned_and_keeps_the_long_side() -> None:
    from curation.scoring.images import rect_shape

    assert rect_shape(640, 480, 640) == (480, 640)
    assert rect_shape(480, 640, 640) == (640, 480)
    assert rect_shape(1920, 1080, 640) == (384, 640)  # 360 rounded up to the stride
    assert rect_shape(100, 100, 640) == (640, 640)
    assert rect_shape(5000, 10, 640, stride=32) == (32, 640)


def test_letterbox_to_a_rectangle_maps_back_to_original() -> None:
    from curation.scoring.images import rect_shape

    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[100:140, 300:360] = 255
    shape = rect_shape(640, 480, 320)
    canvas, geo = letterbox(rgb, 320, 640, 480, shape)
    assert canvas.shape == (*shape, 3) == (256, 320, 3)
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    assert abs((xs.min() - geo.pad_x) / geo.scale - 300) <= 2
    assert abs((ys.min() - geo.pad_y) / geo.scale - 100) <= 2


def test_shape_batches_never_mix_shapes() -> None:
    from curation.scoring.engine import ScoreJob, shape_batches

    dims = [(640, 480), (480, 640), (640, 480), (None, None), (640, 480), (480, 640)]
    jobs = [ScoreJob(i, Path(f"{i}.jpg"), w, h) for i, (w, h) in enumerate(dims)]
    shapes, batches = shape_batches(jobs, "letterbox", 320, 32, batch_size=2)
    assert sorted(p for b in batches for p in b) == list(range(6))
    for batch in batches:
        assert len({shapes[p] or (320, 320) for p in batch}) == 1 and len(batch) <= 2
    shapes, batches = shape_batches(jobs, "center_crop", 224, 32, batch_size=4)
    assert shapes == [None] * 6 and [len(b) for b in batches] == [4, 2]


# --- one file must never block a pool (issue 17, item 4) -----------------------------------------------------------


def test_an_absurd_aspect_ratio_is_refused_before_decoding(tmp_path: Path) -> None:
    line = tmp_path / "line.png"
    Image.new("RGB", (20_000, 1), (200, 10, 10)).save(line)
    with pytest.raises(ImageDecodeError, match=r"aspect ratio too extreme: 20000x1 .*pool.max_aspect_ratio \(20:1\)"):
        load_rgb(line, MAX_PIXELS, target=64)
    tall = tmp_path / "tall.png"
    Image.new("RGB", (30, 300), (0, 0, 0)).save(tall)
    assert load_rgb(tall, MAX_PIXELS).rgb.shape == (300, 30, 3)  # 10:1 passes the default
    with pytest.raises(ImageDecodeError, match=r"pool.max_aspect_ratio \(5:1\)"):
        load_rgb(tall, MAX_PIXELS, max_aspect=5)


def test_the_default_aspect_limit_is_the_documented_setting() -> None:
    from curation.config import PoolSettings
    from curation.scoring.images import DEFAULT_MAX_ASPECT

    assert PoolSettings().max_aspect_ratio == DEFAULT_MAX_ASPECT
    assert "pool.max_aspect_ratio" in (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize(("mode", "colour"), [("RGB", (128, 128, 128)), ("L", 128), ("RGBA", (128, 128, 128, 255))])
def test_a_large_non_jpeg_is_reduced_to_what_the_model_input_needs(
    tmp_path: Path, mode: str, colour: int | tuple[int, ...]
) -> None:
    path = tmp_path / "large.png"
    Image.new(mode, (3000, 2000), colour).save(path)
    decoded = load_rgb(path, MAX_PIXELS, target=64)
    assert (decoded.width, decoded.height) == (3000, 2000)  # geometry of the original
    h, w = decoded.rgb.shape[:2]
    assert 128 <= min(h, w) < 256 and abs(w / h - 1.5) < 0.02  # short side within [2, 4) x target, ratio kept
    crop, _ = center_crop(decoded.rgb, 64, decoded.width, decoded.height)
    assert crop.shape == (64, 64, 3) and int(crop[..., 0].mean()) == 128


def test_a_palette_image_is_not_reduced_by_averaging_indices(tmp_path: Path) -> None:
    """Indices 0 (red) and 2 (blue) in a checkerboard: averaging the indices would paint it green (index 1)."""
    path = tmp_path / "palette.png"
    board = (np.indices((600, 600)).sum(axis=0) % 2 * 2).astype(np.uint8)
    im = Image.fromarray(board, mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(path)
    decoded = load_rgb(path, MAX_PIXELS, target=64)
    assert decoded.rgb[..., 1].max() == 0  # no green anywhere
    crop, _ = center_crop(decoded.rgb, 64, decoded.width, decoded.height)
    assert abs(int(crop[..., 0].mean()) - 127) <= 2 and abs(int(crop[..., 2].mean()) - 127) <= 2  # purple


def test_any_preprocessing_error_is_that_items_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails inside the worker (here OpenCV refusing an allocation, as a 4,000,000 x 1 PNG made it do)
    becomes a failed sample; the loader never raises."""
    import cv2

    from curation.scoring import engine

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 30)).save(good)
    Image.new("RGB", (30, 40)).save(bad)

    def crop(rgb: np.ndarray, size: int, w: int, h: int) -> object:
        if h > w:
            raise cv2.error("OpenCV(4.x) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate")
        return center_crop(rgb, size, w, h)

    monkeypatch.setitem(engine._PREPROCESS, "center_crop", crop)
    dataset = engine.PoolDataset([good, bad], "center_crop", 32, MAX_PIXELS)
    assert dataset[0].image is not None
    failed = dataset[1]
    assert failed.image is None and not failed.transient
    assert failed.error is not None and failed.error.startswith("cannot preprocess image: error: OpenCV")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_four_million_pixel_line_fails_alone_and_the_pool_is_scored(
    db_url: str, tmp_path: Path, workers: int
) -> None:
    """The probe's file: a 4,000,000 x 1 PNG of ~12 KB. It is one failed item, on every rerun too."""
    import json

    from typer.testing import CliRunner

    from cli import app
    from curation.devtools.synthetic import make_pool
    from tests.models import save_thumbnail_model

    pool = tmp_path / "pool"
    make_pool(pool, n=4, size=32)
    Image.new("L", (4_000_000, 1), 255).save(pool / "line.png")
    assert (pool / "line.png").stat().st_size < 20_000
    model, cfg = save_thumbnail_model(tmp_path)
    args = ["score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db_url]
    result = CliRunner().invoke(app, [*args, "--workers", str(workers), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["scored"] == 4 and summary["failed"] == 1
    assert "line.png" in summary["failures"][0]["path"]
    assert "aspect ratio too extreme: 4000000x1" in summary["failures"][0]["reason"]
    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["scored"] == 0, again.stderr


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds almost no data: opening it reads only the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def test_pool_max_pixels_is_the_one_limit_not_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses images above 2 x Image.MAX_IMAGE_PIXELS on its own; pool.max_pixels must decide instead."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's own limit: 20,000 px
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(path)  # 60,000 px
    decoded = load_rgb(path, max_pixels=100_000)  # raised above Pillow's limit: it now decodes
    assert decoded.rgb.shape == (200, 300, 3)
    for limit in (20_000, 59_999):  # below Pillow's limit and above it: one check, one wording
        with pytest.raises(ImageDecodeError, match=r"too large: 300x200 = 0\.1 MP exceeds pool\.max_pixels"):
            load_rgb(path, max_pixels=limit)
    assert Image.MAX_IMAGE_PIXELS == 10_000  # set per call, restored: nothing global changes


def test_a_header_above_pillows_default_limit_is_read_and_judged_by_max_pixels(tmp_path: Path) -> None:
    path = _png_header(tmp_path / "huge.png", 20_000, 10_000)  # 200 MP > Pillow's default 179 MP
    assert original_size(path) == (20_000, 10_000)  # the pool scan records its size
    with pytest.raises(ImageDecodeError, match=r"20000x10000 = 200\.0 MP exceeds pool\.max_pixels \(89\.5 MP\)"):
        load_rgb(path, max_pixels=89_478_485)
    with pytest.raises(ImageDecodeError, match=r"20000x10000 = 200\.0 MP exceeds pool\.max_pixels \(150\.0 MP\)"):
        load_rgb(path, max_pixels=150_000_000)  # the configured limit decides, not Pillow's 179 MP


def test_the_readme_names_the_one_pixel_limit_the_messages_use() -> None:
    """The README, the config default and the refusal message agree on one limit (not Pillow's 178,956,970)."""
    from curation.config import PoolSettings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    limit = PoolSettings().max_pixels
    assert f"`pool.max_pixels` (default {limit:,} pixels = {limit / 1e6:.1f} MP" in readme
    assert "178,956,970" not in readme and "179 MP" not in readme


# -- JPEG decoding through simplejpeg (libjpeg-turbo) ---------------------------------------------------------------


def _jpeg_variants(folder: Path) -> list[Path]:
    """JPEGs covering what the simplejpeg path must decode like Pillow: RGB and grayscale, baseline and
    progressive, every chroma subsampling, every EXIF orientation, odd sizes, and sizes that need each DCT scale."""
    from PIL import ExifTags

    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
    paths = []
    for i, (size, mode, progressive, subsampling) in enumerate(
        [
            ((97, 61), "RGB", False, 0),
            ((641, 479), "RGB", True, 2),
            ((640, 480), "L", False, 0),
            ((1283, 961), "RGB", False, 1),
            ((2001, 1499), "L", True, 0),
            ((4001, 3001), "RGB", False, 2),
        ]
    ):
        img = base.resize(size, Image.Resampling.BILINEAR).convert(mode)
        for orientation in range(1, 9):
            exif = Image.Exif()
            exif[ExifTags.Base.Orientation] = orientation
            path = folder / f"v{i}_o{orientation}.jpg"
            img.save(path, quality=90, progressive=progressive, subsampling=subsampling, exif=exif.tobytes())
            paths.append(path)
            if size[0] > 1000:  # orientations of the large files: 1 and 6 are enough
                if orientation == 1:
                    continue
                break
    return paths


@pytest.mark.heavy
@pytest.mark.skipif(images._jpeg_codec() is None, reason="simplejpeg is not installed")
@pytest.mark.parametrize("target", [None, 64, 224, 640])
def test_simplejpeg_decodes_exactly_what_pillow_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: int | None
) -> None:
    """Same pixels (bit for bit), same DCT scale, same orientation, same full-resolution size — and the fast path
    really ran for every file (otherwise this would compare Pillow with itself)."""
    paths = _jpeg_variants(tmp_path)
    codec = images._jpeg_codec()
    calls = []

    class Counting:
        @staticmethod
        def decode_jpeg(*args: object, **kwargs: object) -> np.ndarray:
            calls.append(1)
            return codec.decode_jpeg(*args, **kwargs)  # type: ignore[no-any-return,union-attr]

    fast = {}
    monkeypatch.setattr(images, "_jpeg_codec", lambda: Counting)
    for p in paths:
        fast[p] = load_rgb(p, MAX_PIXELS, target=target)
    assert len(calls) == len(paths)
    monkeypatch.setattr(images, "_jpeg_codec", lambda: None)
    for p in paths:
        slow = load_rgb(p, MAX_PIXELS, target=target)
        got = fast[p]
        assert (got.width, got.height) == (slow.width, slow.height), p.name
        assert got.rgb.shape == slow.rgb.shape and got.rgb.dtype == np.uint8, p.name
        assert np.array_equal(got.rgb, slow.rgb), p.name
        assert got.rgb.flags["C_CONTIGUOUS"]


@pytest.mark.skipif(images._jpeg_codec() is None, reason="simplejpeg is not installed")
def test_what_simplejpeg_does_not_take_goes_to_pillow(
    bad_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CMYK never reaches simplejpeg; a truncated JPEG is refused by it (strict) and Pillow then fails it with
    Pillow's own reason, as the bad-input tests above expect."""
    codec = images._jpeg_codec()
    seen: list[str] = []

    class Recording:
        @staticmethod
        def decode_jpeg(data: bytes, **kwargs: object) -> np.ndarray:
            seen.append(str(kwargs["colorspace"]))
            return codec.decode_jpeg(data, **kwargs)  # type: ignore[no-any-return,union-attr]

    monkeypatch.setattr(images, "_jpeg_codec", lambda: Recording)
    assert load_rgb(bad_files["cmyk"], MAX_PIXELS).rgb.shape[2] == 3
    assert seen == []
    with pytest.raises(ImageDecodeError, match="corrupt image: image file is truncated"):
        load_rgb(bad_files["truncated_jpeg"], MAX_PIXELS)
    assert seen == ["RGB"]  # it was tried, refused, and Pillow decided
