"""Write scikit-learn's handwritten digits (UCI ML hand-written digits: 1,797 real 8x8 scans of 43 writers, shipped
inside scikit-learn, so no download) as a folder-per-class image dataset for ``curate simulate``.

    .venv/bin/pip install scikit-learn          # benchmark-only dependency
    .venv/bin/python bench/digits_dataset.py data/digits --size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32, help="side of the written PNGs (nearest-neighbour upscale)")
    args = parser.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this script needs scikit-learn: .venv/bin/pip install scikit-learn") from None
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = np.clip(image / 16.0 * 255.0, 0, 255).astype(np.uint8)  # values are 0..16
        folder = args.out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").resize((args.size, args.size), Image.Resampling.NEAREST).save(
            folder / f"{i:04d}.png"
        )
    print(f"wrote {len(digits.images)} images of {len(set(digits.target))} classes to {args.out}")


if __name__ == "__main__":
    main()
