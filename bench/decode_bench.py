"""Benchmark: JPEG decoding for scoring, curate's Pillow path against libjpeg-turbo bindings with DCT-domain
downscaling (simplejpeg, PyTurboJPEG where installed), single process, on the same files.

    .venv/bin/python bench/decode_bench.py --images 200

For each file size and model input it times:

- ``pillow``: ``curation.scoring.images.load_rgb`` with Pillow decoding (header checks, ``draft`` DCT scaling, EXIF,
  conversion to an RGB array) — what a DataLoader worker ran before simplejpeg;
- ``curate``: ``load_rgb`` as shipped (Pillow header, simplejpeg decode when installed);
- ``simplejpeg``: ``simplejpeg.decode_jpeg(..., min_height, min_width)`` (DCT scaling by libjpeg-turbo, straight into
  a numpy array), bare — no size checks, no EXIF, no CMYK: the most a switch could gain;
- ``simplejpeg+header``: the same after opening the file with Pillow for the header (size limits, EXIF orientation),
  i.e. what an adopted path would have to do to keep the bad-input handling identical;
- ``turbojpeg``: PyTurboJPEG's ``decode`` with a scaling factor (needs the system libturbojpeg), when importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        img = Image.fromarray(np.roll(base, i, axis=1)).resize(size, Image.Resampling.BILINEAR)
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def _rate(fn, paths: list[Path]) -> float:  # type: ignore[no-untyped-def]
    fn(paths[0])
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from curation.scoring import images
    from curation.scoring.images import load_rgb

    have_simplejpeg = importlib.util.find_spec("simplejpeg") is not None
    have_turbo = False
    if importlib.util.find_spec("turbojpeg") is not None:
        try:
            from turbojpeg import TurboJPEG

            turbo = TurboJPEG()
            have_turbo = True
        except Exception:  # the binding is there but the system library is not
            have_turbo = False
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((640, 480), (4000, 3000)):
            n = args.images if size[0] < 1000 else max(10, args.images // 10)
            paths = make_jpegs(Path(tmp) / f"{size[0]}", n, size)
            for target in (224, 640):
                row: dict = {"file": f"{size[0]}x{size[1]}", "target": target, "images": n}
                saved = images._jpeg_codec
                images._jpeg_codec = lambda: None  # type: ignore[assignment]
                try:
                    row["pillow"] = _rate(lambda p, t=target: load_rgb(p, 10**9, target=t), paths)
                finally:
                    images._jpeg_codec = saved  # type: ignore[assignment]
                row["curate"] = _rate(lambda p, t=target: load_rgb(p, 10**9, target=t), paths)
                if have_simplejpeg:
                    import simplejpeg

                    def sj(p: Path, t: int = target, wh: tuple[int, int] = size) -> np.ndarray:
                        data = p.read_bytes()
                        w, h = wh
                        scale = t / min(w, h)
                        if scale >= 0.5:
                            return simplejpeg.decode_jpeg(data, colorspace="RGB")
                        return simplejpeg.decode_jpeg(
                            data, colorspace="RGB", min_width=int(w * scale * 1.01), min_height=int(h * scale * 1.01)
                        )

                    def sj_header(p: Path, t: int = target) -> np.ndarray:
                        with Image.open(p) as im:
                            im.size, im.getexif().get(0x0112, 1)
                        return sj(p, t)

                    row["simplejpeg"] = _rate(sj, paths)
                    row["simplejpeg+header"] = _rate(sj_header, paths)
                if have_turbo:
                    from turbojpeg import TJPF_RGB

                    def tj(p: Path, t: int = target, wh: tuple[int, int] = size) -> np.ndarray:
                        factor = (1, 2) if t / min(wh) < 0.5 else (1, 1)
                        return turbo.decode(p.read_bytes(), pixel_format=TJPF_RGB, scaling_factor=factor)

                    row["turbojpeg"] = _rate(tj, paths)
                for key in ("curate", "simplejpeg", "simplejpeg+header", "turbojpeg"):
                    if key in row:
                        row[f"{key}_vs_pillow"] = round(row[key] / row["pillow"], 2)
                results.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        cells = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("file", "target", "images"))
        print(f"{r['file']} -> {r['target']} ({r['images']} files): {cells}")


if __name__ == "__main__":
    main()
