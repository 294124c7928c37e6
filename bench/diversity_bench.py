"""Benchmark: k-center greedy and FAISS k-means on a million embeddings, against the matrix products they cannot
beat (the arithmetic floor), measured in the same run; plus the memory k-center needs on top of the matrix.

    .venv/bin/python bench/diversity_bench.py                 # 1,000,000 x 256, budgets 1,000 and 10,000
    .venv/bin/python bench/diversity_bench.py --n 200000      # quicker

Embeddings: a mixture of 2,000 tight clusters on the unit sphere (cosine distance ~0.1 inside a cluster, ~1 between),
shuffled — the shape of real image embeddings, and the hard case for block-wise laziness because every block of
rows holds members of every cluster.

Targets (issue "diversity"): k-center 1M x 256 budget 1,000 <= 10 s on the 2-core machine; budget 10,000 within 2x
of the equivalent matrix products; memory <= 1.5x the embedding matrix; k-means rate reported as a fraction of a
plain GEMM rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from strategies import greedy_select, kmeans


def clustered(n: int, dim: int, clusters: int = 2000, noise: float = 0.03, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        block = centers[rng.integers(0, clusters, m)] + rng.standard_normal((m, dim), dtype=np.float32) * noise
        x[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def gemm_floor(x: np.ndarray, k: int, block: int = 16_384) -> float:
    """Seconds for the distances from every row to k centers (N x D @ D x k) with the row-wise max: the work a
    non-lazy k-center must do, done as efficiently as BLAS can."""
    centers = np.ascontiguousarray(x[:k])
    start = time.perf_counter()
    for s in range(0, len(x), block):
        (x[s : s + block] @ centers.T).max(axis=1)
    return time.perf_counter() - start


def plain_gemm_rate(x: np.ndarray, k: int, rows: int = 65_536, repeats: int = 8) -> float:
    """FLOP/s of a plain float32 matrix product of the same shape as k-means' distance step (BLAS, all cores)."""
    a = np.ascontiguousarray(x[:rows])
    b = np.ascontiguousarray(x[:k].T)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * rows * x.shape[1] * k * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--budgets", default="1000,10000")
    parser.add_argument("--kmeans-k", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    x = clustered(args.n, args.dim)
    matrix_mb = x.nbytes / 2**20
    result: dict[str, object] = {
        "n": args.n,
        "dim": args.dim,
        "matrix_mib": round(matrix_mb),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    for budget in (int(b) for b in args.budgets.split(",")):
        tracemalloc.start()
        start = time.perf_counter()
        picked = greedy_select(x, budget)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        floor = gemm_floor(x, budget)
        result[f"kcenter_{budget}"] = {
            "seconds": round(seconds, 2),
            "gemm_floor_seconds": round(floor, 2),
            "ratio_to_floor": round(seconds / floor, 2),
            "extra_memory_mib": round(peak / 2**20, 1),
            "memory_ratio": round((x.nbytes + peak) / x.nbytes, 3),
            "final_covering_distance": round(float(picked.distances[-1]), 4),
        }
    # k-means: FAISS trains on up to 256 points per centroid, then assigns every row
    k = args.kmeans_k
    start = time.perf_counter()
    clustering = kmeans(x, k, seed=0, niter=20)
    km_s = time.perf_counter() - start
    # each iteration assigns the training sample to its nearest centroid; then every row is assigned once
    km_flops = 2.0 * args.dim * k * (clustering.iterations * clustering.trained_on + len(x))
    gemm_rate = plain_gemm_rate(x, k)
    result["kmeans"] = {
        "k": k,
        "iterations": clustering.iterations,
        "trained_on": clustering.trained_on,
        "seconds": round(km_s, 2),
        "gflops": round(km_flops / km_s / 1e9, 1),
        "gemm_gflops": round(gemm_rate / 1e9, 1),
        "fraction_of_gemm_rate": round(km_flops / km_s / gemm_rate, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.n:,} x {args.dim} embeddings ({matrix_mb:.0f} MiB), {result['machine']}")
    for key, value in result.items():
        if key.startswith("kcenter_"):
            v = value
            print(
                f"  k-center budget {key[8:]:>6}: {v['seconds']:7.2f} s   GEMM floor {v['gemm_floor_seconds']:6.2f} s"  # type: ignore[index]
                f"   ratio {v['ratio_to_floor']:.2f}   extra memory {v['extra_memory_mib']} MiB"  # type: ignore[index]
                f" ({v['memory_ratio']:.3f}x matrix)"  # type: ignore[index]
            )
    km = result["kmeans"]
    print(
        f"  FAISS k-means k={km['k']} ({km['iterations']} iterations on {km['trained_on']:,} rows, then all rows "  # type: ignore[index]
        f"assigned): {km['seconds']:.2f} s, {km['gflops']} GFLOP/s = "  # type: ignore[index]
        f"{km['fraction_of_gemm_rate']:.0%} of the GEMM rate ({km['gemm_gflops']} GFLOP/s)"  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
