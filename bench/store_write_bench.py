"""Benchmark: writing prediction rows to Postgres with batched INSERTs (what ``store.runs.write_chunk`` does) vs
``COPY ... FROM STDIN`` (psycopg 3), in one run, on the same server, as rows/s (``store.write_measure``).

    .venv/bin/python bench/store_write_bench.py --rows 20000 --chunk 512

Rows are shaped like a classification prediction (item id, model version, a 10-class float32 probability blob,
a 1280-d float16 embedding blob) in a scratch schema that is dropped afterwards. The number the scale plan
(docs/SCALING.md) extrapolates from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from store.write_measure import measure_writes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test", help="a libpq URL")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    probs = rng.random((args.rows, 10), dtype=np.float32)
    emb = rng.standard_normal((args.rows, 1280)).astype(np.float16)
    rows = [(i, 1, probs[i].tobytes(), emb[i].tobytes()) for i in range(args.rows)]
    seconds = measure_writes(args.url, rows, args.chunk)
    out: dict[str, object] = {"rows": args.rows, "chunk": args.chunk, "load": round(os.getloadavg()[0], 1)}
    for method, s in seconds.items():
        out[method] = {"seconds": round(s, 2), "rows_per_s": round(args.rows / s)}
    out["copy_speedup"] = round(seconds["insert"] / seconds["copy"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
