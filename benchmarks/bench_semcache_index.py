# ruff: noqa: E402  (the BLAS thread count must be set before numpy is imported)
"""Nearest-neighbour search for the semantic cache: numpy brute force against FAISS indexes.

The committed results were produced on the machine they name, from the repository root, by::

    .venv/bin/python benchmarks/bench_semcache_index.py \
        --output benchmarks/results/semcache_index.md

What is measured, at 10,000 and 1,000,000 stored vectors of dimension 256 (Titan Text
Embeddings v2's smallest size, and what the cache uses by default), float32, unit length:

- ``numpy``: brute force, one matrix-vector product and an ``argmax`` (what
  :class:`chainkit.stages.semantic_cache.VectorStore` does per tenant-and-intent partition);
- ``faiss-flat``: FAISS ``IndexFlatIP``, exact too, its own BLAS kernel;
- ``faiss-hnsw``: FAISS ``IndexHNSWFlat`` (M=32, efConstruction=80, efSearch=64);
- ``faiss-ivf``: FAISS ``IndexIVFFlat`` (nlist = 4 sqrt(n), nprobe=16), trained on 50,000
  vectors at most.

The vectors are not uniform noise (on which every approximate index looks worse than it is on
embeddings): ``n / 20`` Gaussian cluster centres, each stored vector a centre plus noise, and
each query a stored vector plus more noise (a paraphrase of a stored question). Recall@1 is
the share of queries whose top hit is the exact top hit (numpy's). Latency: one query at a
time, ``--queries`` of them, median and p99, with one thread for every side (FAISS set to one
OpenMP thread), as a web worker would search. Memory: the bytes the index holds (numpy: the
matrix; FAISS: its serialised size). Build: the seconds to make the index from the matrix.
sqlite-vec was the other candidate: this Python's ``sqlite3`` is built without extension
loading, so it cannot be loaded here, and the script says so.
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads it: a web worker answers one query at a time, and a
# multi-threaded matrix-vector product only adds its start-up cost to every query.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import gc
import importlib.util
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_header import header

_F32 = NDArray[np.float32]


def _unit(x: _F32) -> _F32:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n: int, dim: int, queries: int, seed: int) -> tuple[_F32, _F32]:
    """``n`` clustered unit vectors, and ``queries`` noisy copies of some of them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim), dtype=np.float32)
    data = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):  # in slices: a 1M x 256 float64 temporary would be 2 GB
        stop = min(n, start + step)
        labels = rng.integers(0, len(centres), stop - start)
        block = centres[labels] + 0.6 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        data[start:stop] = _unit(block)
    picked = rng.integers(0, n, queries)
    noisy = data[picked] + 0.04 * rng.standard_normal((queries, dim), dtype=np.float32)
    return data, _unit(noisy)


def exact(data: _F32, queries: _F32) -> NDArray[np.int64]:
    """The true nearest neighbour (inner product) of each query."""
    out = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), 256):
        out[start : start + 256] = (queries[start : start + 256] @ data.T).argmax(axis=1)
    return out


def timed_queries(search: object, queries: _F32) -> tuple[list[float], NDArray[np.int64]]:
    """Latency in microseconds of each single query, and the top hit of each."""
    find = search  # a callable taking one (1, dim) query and returning an index
    hits = np.empty(len(queries), dtype=np.int64)
    latencies = []
    gc.disable()
    try:
        for i in range(len(queries)):
            q = queries[i : i + 1]
            started = time.perf_counter_ns()
            hits[i] = find(q)  # type: ignore[operator]
            latencies.append((time.perf_counter_ns() - started) / 1000)
    finally:
        gc.enable()
    return latencies, hits


def bench(n: int, dim: int, queries: int, seed: int, skip: set[str]) -> list[dict[str, object]]:
    """Every side at one size."""
    data, q = make_data(n, dim, queries, seed)
    truth = exact(data, q)
    rows: list[dict[str, object]] = []

    def add(name: str, build_s: float, memory: int, search: object, note: str = "") -> None:
        latencies, hits = timed_queries(search, q)
        latencies.sort()
        rows.append(
            {
                "n": n,
                "side": name,
                "build_s": build_s,
                "memory_mb": memory / 1e6,
                "p50_us": statistics.median(latencies),
                "p99_us": latencies[int(0.99 * (len(latencies) - 1))],
                "recall": float((hits == truth).mean()),
                "note": note,
            }
        )
        print(f"n={n:,} {name}: {rows[-1]}", flush=True)

    add("numpy", 0.0, data.nbytes, lambda x: int((data @ x[0]).argmax()))
    if importlib.util.find_spec("faiss") is None:
        print("faiss is not installed: pip install faiss-cpu", flush=True)
        return rows
    import faiss  # type: ignore[import-untyped]

    faiss.omp_set_num_threads(1)

    def size(index: object) -> int:
        return int(faiss.serialize_index(index).nbytes)

    def top(index: object) -> object:
        return lambda x: int(index.search(x, 1)[1][0, 0])  # type: ignore[attr-defined]

    started = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    add("faiss-flat", time.perf_counter() - started, size(flat), top(flat))
    del flat
    if "ivf" not in skip:
        nlist = int(4 * np.sqrt(n))
        started = time.perf_counter()
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = data[np.random.default_rng(seed).choice(n, min(n, 50_000), replace=False)]
        ivf.train(sample)
        ivf.add(data)
        ivf.nprobe = 16
        add(
            "faiss-ivf",
            time.perf_counter() - started,
            size(ivf),
            top(ivf),
            f"nlist {nlist}, nprobe 16",
        )
        del ivf, quantizer
    if "hnsw" not in skip:
        # Building HNSW is the slow part: two threads for the build only (queries stay on one).
        faiss.omp_set_num_threads(2)
        started = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(data)
        build = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        hnsw.hnsw.efSearch = 64
        add("faiss-hnsw", build, size(hnsw), top(hnsw), "M 32, efConstruction 80, efSearch 64")
        del hnsw
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip", default="", help="comma-separated: hnsw, ivf")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench(n, args.dim, args.queries, args.seed, set(filter(None, args.skip.split(","))))
    try:
        sqlite3.connect(":memory:").enable_load_extension(True)  # type: ignore[attr-defined]
        sqlite_note = "sqlite3 can load extensions: sqlite-vec could be measured too."
    except AttributeError:
        sqlite_note = (
            "sqlite-vec not measured: this Python's sqlite3 is built without extension loading "
            "(`enable_load_extension` is missing), so the extension cannot be loaded."
        )
    lines = header("Semantic cache: nearest-neighbour search", "bench_semcache_index.py")
    lines += [
        f"{args.queries:,} single queries per side, dimension {args.dim}, float32, unit vectors "
        "(clustered; each query a noisy copy of a stored vector); one thread per query. "
        "Recall@1 against the exact top hit.",
        "",
        "| stored | side | build s | memory MB | p50 µs | p99 µs | recall@1 | settings |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['side']} | {r['build_s']:.2f} | {r['memory_mb']:.1f} | "
            f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['recall']:.3f} | {r['note']} |"
        )
    lines += ["", sqlite_note, ""]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
