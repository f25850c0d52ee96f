"""Benchmarks 4 and 5: batch runner efficiency, and memory while streaming 100,000 requests.

Committed results (``benchmarks/results/overhead.md``) come from ``run_all.py``::

    .venv/bin/python benchmarks/run_all.py

This script alone::

    .venv/bin/python benchmarks/bench_batch.py                  # both
    .venv/bin/python benchmarks/bench_batch.py --part batch     # benchmark 4 only
    .venv/bin/python benchmarks/bench_batch.py --part memory    # benchmark 5 only

4. ``pipeline.run_batch(requests, Ledger(), concurrency=32)`` over 1,000 requests through the
   five-step support flow of ``bench_overhead.py``, whose generator is
   ``OfflineModel("amazon.nova-micro-v1:0", latency_s=0.02)``. The requests carry no document, so
   Summarise passes them on free and each request makes exactly one 20 ms model call: the ideal
   wall time is ``1000 x 0.02 s / 32 = 0.625 s``. Median of 5 runs.
5. ``pipeline.stream(generator, SQLiteLedger(path), concurrency=8)`` over
   100,000 requests made lazily by a generator (a mix: a quarter canned, a quarter precomputed,
   half through summarise and generate with a short document; zero-latency models), consuming
   each result without keeping it. RSS (``/proc/self/status``) is sampled every 5,000 results.
   It always runs in a fresh process (``--part memory`` re-invokes this script), so nothing
   measured before it sits in the heap. Peak growth is VmHWM at the end less VmRSS before the
   stream starts (VmHWM is reset then through ``/proc/self/clear_refs`` where the kernel allows);
   "flat" means RSS grew by less than 5 MB between 20,000 results and the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import (
    CANNED_TEXT,
    DOCUMENT,
    MISS_TEXT,
    PRECOMPUTED_TEXT,
    SCRATCH,
    Row,
    build_flow,
    print_rows,
    write_json,
)

from chainkit import Ledger, Request, SQLiteLedger

LATENCY_S = 0.02


def bench_batch(requests: int, concurrency: int, runs: int) -> list[Row]:
    """Benchmark 4: wall time of ``run_batch`` against requests x latency / concurrency."""
    flow = build_flow(latency_s=LATENCY_S)
    try:
        pipeline = flow.pipeline
        # Warm-up: threads, imports, caches.
        pipeline.run_batch([Request(MISS_TEXT) for _ in range(64)], Ledger(), concurrency=32)
        walls: list[float] = []
        calls = []
        for _ in range(runs):
            batch = [Request(MISS_TEXT, tags={"tenant": f"t{i % 20}"}) for i in range(requests)]
            ledger = Ledger()
            gc.collect()
            t0 = time.perf_counter_ns()
            results = pipeline.run_batch(batch, ledger, concurrency=concurrency, progress=False)
            walls.append((time.perf_counter_ns() - t0) / 1e9)
            if len(results) != requests or any(r.stage != "generate" for r in results):
                raise SystemExit("batch benchmark: not every request reached the generator")
            calls.append(sum(1 for e in ledger if e.model is not None))
        if set(calls) != {requests}:
            raise SystemExit(f"batch benchmark: expected {requests} model calls, saw {calls}")
    finally:
        flow.close()
    ideal = requests * LATENCY_S / concurrency
    wall = statistics.median(walls)
    b = "4. batch runner"
    return [
        Row(
            b,
            f"ideal wall ({requests} x {LATENCY_S * 1000:.0f} ms / {concurrency})",
            ideal * 1000,
            "ms",
        ),
        Row(b, f"run_batch wall, median of {runs}", wall * 1000, "ms"),
        Row(b, f"run_batch wall, best of {runs}", min(walls) * 1000, "ms"),
        Row(b, f"run_batch wall, worst of {runs}", max(walls) * 1000, "ms"),
        Row(b, "wall / ideal (median)", wall / ideal, "x", "<= 1.15x", wall / ideal <= 1.15),
        Row(b, "throughput", requests / wall, "req/s"),
    ]


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in kB."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _requests(n: int) -> Iterator[Request]:
    """``n`` requests made one at a time: a quarter canned, a quarter precomputed, half full."""
    for i in range(n):
        tags = {"tenant": f"t{i % 20:02d}"}
        kind = i % 4
        if kind == 0:
            yield Request(CANNED_TEXT, tags=tags)
        elif kind == 1:
            yield Request(PRECOMPUTED_TEXT, tags=tags)
        else:
            yield Request(MISS_TEXT, tags=tags, document=DOCUMENT)


def bench_memory(requests: int, concurrency: int, every: int) -> tuple[list[Row], list[dict]]:
    """Benchmark 5: RSS while streaming ``requests`` through the runner into an SQLite ledger."""
    flow = build_flow()
    directory = Path(tempfile.mkdtemp(prefix="memory-", dir=SCRATCH))
    try:
        pipeline = flow.pipeline
        warm = SQLiteLedger(directory / "warm.db")
        for _ in pipeline.stream(_requests(4000), warm, concurrency=concurrency, progress=False):
            pass
        warm.close()
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        base = _status()
        ledger = SQLiteLedger(directory / "ledger.db")
        samples = [{"results": 0, "rss_kb": base["VmRSS"], "hwm_kb": base["VmHWM"], "s": 0.0}]
        t0 = time.perf_counter()
        stages: dict[str, int] = {}
        results = pipeline.stream(
            _requests(requests), ledger, concurrency=concurrency, progress=False
        )
        for done, result in enumerate(results, start=1):
            stages[result.stage] = stages.get(result.stage, 0) + 1
            if done % every == 0:
                s = _status()
                samples.append(
                    {
                        "results": done,
                        "rss_kb": s["VmRSS"],
                        "hwm_kb": s["VmHWM"],
                        "s": round(time.perf_counter() - t0, 2),
                    }
                )
        wall = time.perf_counter() - t0
        ledger.flush()
        entries = len(ledger)
        ledger.close()
        end = _status()
    finally:
        flow.close()
        shutil.rmtree(directory, ignore_errors=True)
    growth_mb = (end["VmHWM"] - base["VmRSS"]) / 1024
    at = min(
        (s for s in samples if s["results"] >= 20_000),
        key=lambda s: s["results"],
        default=samples[-1],
    )
    late_mb = (samples[-1]["rss_kb"] - at["rss_kb"]) / 1024
    b = "5. memory at scale"
    rows = [
        Row(b, "RSS before the stream (after a 4,000-request warm-up)", base["VmRSS"] / 1024, "MB"),
        Row(
            b,
            f"peak RSS growth over {requests:,} requests" + ("" if reset else " (VmHWM not reset)"),
            growth_mb,
            "MB",
            "< 100 MB",
            growth_mb < 100,
        ),
        Row(
            b,
            f"RSS growth from {at['results']:,} results to the end",
            late_mb,
            "MB",
            "flat (< 5 MB)",
            late_mb < 5,
        ),
        Row(
            b,
            f"stream throughput, concurrency {concurrency}, into SQLite",
            requests / wall,
            "req/s",
        ),
        Row(b, "ledger entries written", entries, "entries"),
    ]
    print(f"  answered by: {stages}")
    return rows, samples


def main(argv: list[str] | None = None) -> list[Row]:
    """Run benchmarks 4 and 5 and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["both", "batch", "memory"], default="both")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    extra: dict[str, object] = {}
    if args.part in ("both", "batch"):
        rows += bench_batch(1000, 32, 2 if args.quick else 5)
        print_rows("4. batch runner: 1,000 requests, 20 ms model, concurrency 32", rows)
    if args.part == "memory":
        n = 20_000 if args.quick else 100_000
        mem, samples = bench_memory(n, 8, 2_000 if args.quick else 5_000)
        print_rows(f"5. memory: {n:,} requests streamed into SQLite", mem)
        print(
            "  RSS samples (results: MB):",
            ", ".join(f"{s['results']:,}: {s['rss_kb'] / 1024:.1f}" for s in samples),
        )
        rows += mem
        extra["memory_samples"] = samples
    elif args.part == "both":
        # Memory is measured in a fresh process, so this one's heap does not blur it.
        with tempfile.NamedTemporaryFile(suffix=".json", dir=SCRATCH) as out:
            cmd = [sys.executable, __file__, "--part", "memory", "--json", out.name]
            if args.quick:
                cmd.append("--quick")
            subprocess.run(cmd, check=True)
            data = json.loads(Path(out.name).read_text(encoding="utf-8"))
        rows += [Row(**r) for r in data["rows"]]
        extra["memory_samples"] = data["memory_samples"]
    write_json(args.json, rows, extra)
    return rows


if __name__ == "__main__":
    main()
