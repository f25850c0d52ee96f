"""Benchmark 3: ledger write throughput, in memory and SQLite, and aggregations over 1M entries.

Committed results (``benchmarks/results/overhead.md``) come from ``run_all.py``::

    .venv/bin/python benchmarks/run_all.py

This script alone::

    .venv/bin/python benchmarks/bench_ledger.py              # 1,000,000 entries
    .venv/bin/python benchmarks/bench_ledger.py --profile    # cProfile of record and by_stage

The entries are what the support flow writes (see ``bench_overhead.py``): requests answered by
canned replies (2 entries), precomputed replies (3) or summarise + generate (5), over 20 tenants,
8 intents, 2 models and 30 days, priced from the default catalogue. They are built before the
clock starts, so the throughput is ``Ledger.record`` alone (building the entries is reported
apart). SQLite writes go through ``SQLiteLedger(path, batch_size=1000)``: one transaction per
1,000 entries; the default ``batch_size=1`` (a commit per entry) is measured on fewer entries.
Each aggregation is timed on the full ledger, the median of 3 runs. A figure whose run got less
than 80% of a core (other work on the machine) carries a note with its CPU time.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import SCRATCH, Row, print_rows, profile, write_json

from chainkit import Catalogue, Entry, Ledger, SQLiteLedger, Usage

SUMMARISER = "amazon.nova-micro-v1:0"
GENERATOR = "anthropic.claude-3-haiku-20240307-v1:0"
INTENTS = [
    "greeting",
    "thanks",
    "delivery_options",
    "returns_policy",
    "track_order",
    "refund",
    "complaint",
    "unknown",
]
CANNED = {"greeting", "thanks"}
PRECOMPUTED = {"delivery_options", "returns_policy"}


def make_entries(n: int) -> list[Entry]:
    """``n`` entries shaped like the support flow's, deterministic."""
    catalogue = Catalogue.load()
    if GENERATOR not in catalogue:
        raise SystemExit(f"{GENERATOR} is not in the default catalogue")
    # A pool of usages and their prices, shared by many entries as real ones would repeat.
    summary_usage = [Usage(300 + 7 * i, 90 + i) for i in range(50)]
    answer_usage = [Usage(150 + 5 * i, 200 + 3 * i) for i in range(50)]
    summary_cost = [catalogue.cost(SUMMARISER, u) for u in summary_usage]
    answer_cost = [catalogue.cost(GENERATOR, u) for u in answer_usage]
    avoided = [catalogue.cost(GENERATOR, Usage(40 + i, 300)) for i in range(50)]
    zero = Decimal(0)
    tenants = [{"tenant": f"t{i:02d}", "feature": "support"} for i in range(20)]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(days=30) / n
    entries: list[Entry] = []
    append = entries.append
    i = r = 0
    while i < n:
        rid = f"bench-{r:08d}"
        intent = INTENTS[(r * 7) % len(INTENTS)]
        tags = tenants[r % 20]
        k = r % 50
        when = start + step * i
        rows: list[dict[str, Any]] = [
            {"stage": "intent_scan", "outcome": "passed", "cost": zero},
        ]
        if intent in CANNED:
            rows.append(
                {"stage": "canned", "outcome": "answered", "cost": zero, "avoided_cost": avoided[k]}
            )
        else:
            rows.append({"stage": "canned", "outcome": "passed", "cost": zero})
            if intent in PRECOMPUTED:
                rows.append(
                    {
                        "stage": "precomputed",
                        "outcome": "answered",
                        "cost": zero,
                        "avoided_cost": avoided[k],
                    }
                )
            else:
                rows.append({"stage": "precomputed", "outcome": "passed", "cost": zero})
                rows.append(
                    {
                        "stage": "summarise",
                        "outcome": "passed",
                        "model": SUMMARISER,
                        "usage": summary_usage[k],
                        "cost": summary_cost[k],
                        "estimated": True,
                        "latency_s": 0.4,
                        "attempts": 1,
                    }
                )
                rows.append(
                    {
                        "stage": "generate",
                        "outcome": "answered",
                        "model": GENERATOR,
                        "usage": answer_usage[k],
                        "cost": answer_cost[k],
                        "latency_s": 1.2,
                        "attempts": 1,
                    }
                )
        for row in rows:
            if i >= n:
                break
            append(Entry(request_id=rid, intent=intent, tags=tags, time=when, **row))
            i += 1
        r += 1
    return entries


AGGREGATIONS: dict[str, Callable[[Ledger], object]] = {
    "by_stage()": lambda led: led.by_stage(),
    "by_model()": lambda led: led.by_model(),
    "by_intent()": lambda led: led.by_intent(),
    "by_tag('tenant')": lambda led: led.by_tag("tenant"),
    "by_day()": lambda led: led.by_day(),
    "totals()": lambda led: led.totals(),
    "cost": lambda led: led.cost,
}


_cpu = [0.0, 0.0]  # (wall, CPU) seconds of the last timed() call


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes (garbage collected first, so earlier garbage is not billed)."""
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter_ns()
    fn()
    wall = (time.perf_counter_ns() - t0) / 1e9
    _cpu[:] = [wall, time.process_time() - c0]
    return wall


def busy() -> str:
    """A note when the last timed() call got much less CPU than wall time (a busy machine)."""
    wall, cpu = _cpu
    return f"CPU {cpu:,.2f} s of {wall:,.2f} s wall" if cpu < 0.8 * wall else ""


def record_all(ledger: Ledger, entries: list[Entry]) -> None:
    """Record every entry, one ``record`` call each."""
    record = ledger.record
    for e in entries:
        record(e)


def main(argv: list[str] | None = None) -> list[Row]:
    """Run benchmark 3 (or profile chainkit's side of it) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per in-memory aggregation")
    parser.add_argument("--profile", action="store_true", help="cProfile chainkit's side")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    n = args.entries
    SCRATCH.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="ledger-", dir=SCRATCH))
    try:
        if args.profile:
            run_profiles(directory, min(n, 200_000))
            return []
        return run(args, n, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(args: argparse.Namespace, n: int, directory: Path) -> list[Row]:
    """Benchmark 3 proper."""
    b = "3. ledger"
    rows: list[Row] = []
    built = timed(lambda: make_entries(min(n, 200_000)))
    rows.append(
        Row(b, "building Entry objects (not in the figures below)", min(n, 200_000) / built, "/s")
    )
    entries = make_entries(n)
    rows += in_memory(entries, args.repeat)

    small = entries[: min(n, 20_000)]
    one = SQLiteLedger(directory / "batch1.db")
    secs1 = timed(lambda: (record_all(one, small), one.close()))
    path = directory / "ledger.db"
    sqlite = SQLiteLedger(path, batch_size=1000)
    secs = timed(lambda: (record_all(sqlite, entries), sqlite.flush()))
    note = busy()
    sql_rows = [
        Row(
            b,
            f"SQLiteLedger(batch_size=1000).record, {n:,} entries",
            n / secs,
            "/s",
            ">= 50,000/s",
            n / secs >= 50_000,
            note,
        ),
        Row(
            b,
            f"SQLiteLedger(batch_size=1) (default), {len(small):,} entries",
            len(small) / secs1,
            "/s",
        ),
        Row(b, "SQLite file size", path.stat().st_size / 2**20, "MB"),
    ]
    print_rows("3b. SQLite writes", sql_rows)
    rows += sql_rows
    entries.clear()
    small.clear()
    gc.collect()

    sql_agg: list[Row] = []
    print_rows(f"3d. aggregations, SQLite ledger (median of {args.repeat})", [])
    for label, fn in AGGREGATIONS.items():
        runs = []
        for _ in range(args.repeat):
            runs.append((timed(lambda fn=fn: fn(sqlite)), busy()))  # type: ignore[misc]
        secs, note = sorted(runs)[len(runs) // 2]
        sql_agg.append(
            Row(b, f"SQLite, {label} over {n:,}", secs * 1000, "ms", "< 1 s", secs < 1, note)
        )
        print_rows("", sql_agg[-1:])
    sqlite.close()
    rows += sql_agg
    write_json(args.json, rows, {"details": {"entries": n, "sqlite_batch_size": 1000}})
    return rows


def in_memory(entries: list[Entry], repeat: int) -> list[Row]:
    """In-memory write throughput, then each aggregation over the filled ledger."""
    b, n = "3. ledger", len(entries)
    memory = Ledger()
    secs = timed(lambda: record_all(memory, entries))
    rate = n / secs
    figure = f"in-memory Ledger.record, {n:,} entries"
    writes = [Row(b, figure, rate, "/s", ">= 200,000/s", rate >= 2e5, busy())]
    print_rows("3a. in-memory writes", writes)
    aggregations: list[Row] = []
    for label, fn in AGGREGATIONS.items():
        runs = []
        for _ in range(repeat):
            runs.append((timed(lambda fn=fn: fn(memory)), busy()))  # type: ignore[misc]
        med, note = sorted(runs)[len(runs) // 2]
        aggregations.append(
            Row(b, f"in memory, {label} over {n:,}", med * 1000, "ms", "< 1 s", med < 1, note)
        )
    print_rows(f"3c. aggregations, in-memory ledger (median of {repeat})", aggregations)
    return writes + aggregations


def run_profiles(directory: Path, n: int) -> None:
    """Profile the chainkit side of benchmark 3 on ``n`` entries."""
    entries = make_entries(n)
    memory = Ledger()
    profile(lambda: record_all(memory, entries), f"in-memory record, {n:,} entries", per=n)
    sqlite = SQLiteLedger(directory / "p.db", batch_size=1000)
    profile(
        lambda: (record_all(sqlite, entries), sqlite.flush()),
        f"SQLite record (batch_size=1000), {n:,} entries",
        per=n,
    )
    profile(memory.by_stage, f"in-memory by_stage over {n:,}")
    profile(memory.by_day, f"in-memory by_day over {n:,}")
    profile(sqlite.by_stage, f"SQLite by_stage over {n:,}")
    sqlite.close()


if __name__ == "__main__":
    main()
