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
apart).

SQLite: every ``record`` returns once its entry is committed (WAL; concurrent callers share a
transaction through the ledger's writer thread). Recording is measured from 32 threads and from
one, in bulk with ``record_many``, and through ``Pipeline.run_batch`` (the support flow, 32 at a
time, zero-latency models) against the same batch into an in-memory ledger. The 1,000,000-entry
file is then aggregated (each aggregation the median of 3) and reported: ``Report.from_ledger``
in a fresh process (time and peak RSS growth), beside the same report built from every entry
loaded into memory, which is what ``Report`` did before it read the ledger's aggregations. A
figure whose run got less than 80% of a core (other work on the machine) carries a note with its
CPU time.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import threading
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

    path = directory / "ledger.db"
    rows += sqlite_writes(entries, path, directory)
    entries.clear()
    gc.collect()
    sqlite = SQLiteLedger(path)
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
    rows += report_rows(path, n)
    write_json(args.json, rows, {"details": {"entries": n}})
    return rows


def sqlite_writes(entries: list[Entry], path: Path, directory: Path) -> list[Row]:
    """Fill ``path`` with ``entries``: from 32 threads, from one, then in bulk; and a pipeline."""
    b, n = "3. ledger", len(entries)
    threaded = entries[: min(n, 200_000)]
    ledger = SQLiteLedger(path)
    chunks = [threaded[i::32] for i in range(32)]
    workers = [threading.Thread(target=record_all, args=(ledger, c)) for c in chunks]

    def run_threads() -> None:
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    secs = timed(run_threads)
    rows = [
        Row(
            b,
            f"SQLiteLedger.record from 32 threads (group commit), {len(threaded):,} entries",
            len(threaded) / secs,
            "/s",
            note=busy() or "one commit wait per entry",
        )
    ]
    grouped = entries[len(threaded) : len(threaded) + min(n, 100_000)]
    requests = [grouped[i : i + 5] for i in range(0, len(grouped), 5)]
    workers = [
        threading.Thread(target=lambda part: [ledger.record_many(r) for r in part], args=(part,))
        for part in (requests[i::32] for i in range(32))
    ]
    secs = timed(run_threads)
    rows.append(
        Row(b, f"  record_many(5 entries, a request's) from 32 threads, {len(grouped):,} entries",
            len(grouped) / secs, "/s", ">= 50,000/s", len(grouped) / secs >= 50_000, busy())
    )  # fmt: skip
    single = entries[len(threaded) + len(grouped) : len(threaded) + len(grouped) + 10_000]
    bulk = entries[len(threaded) + len(grouped) + len(single) :]
    secs = timed(lambda: record_all(ledger, single))
    rows.append(
        Row(b, f"SQLiteLedger.record from 1 thread, {len(single):,} entries", len(single) / secs,
            "/s", note=busy())
    )  # fmt: skip
    if bulk:
        secs = timed(
            lambda: [ledger.record_many(bulk[i : i + 1000]) for i in range(0, len(bulk), 1000)]
        )
        rate = len(bulk) / secs
        rows.append(
            Row(b, f"SQLiteLedger.record_many(1,000 a call), {len(bulk):,} entries", rate, "/s",
                ">= 50,000/s", rate >= 50_000, busy())
        )  # fmt: skip
    ledger.close()
    rows.append(Row(b, f"SQLite file size, {n:,} entries", path.stat().st_size / 2**20, "MB"))
    rows += pipeline_writes(directory)
    print_rows("3b. SQLite writes (each committed before record returns)", rows)
    return rows


def pipeline_writes(directory: Path, requests: int = 20_000) -> list[Row]:
    """``run_batch`` of the support flow, 32 at a time, into SQLite and into memory, interleaved."""
    from bench_batch import _requests
    from bench_overhead import build_flow

    b = "3. ledger"
    flow = build_flow()
    try:
        rates: dict[str, list[float]] = {"SQLite": [], "memory": []}
        for r in range(3):
            for kind in ("SQLite", "memory") if r % 2 == 0 else ("memory", "SQLite"):
                ledger: Ledger = (
                    SQLiteLedger(directory / f"pipeline-{r}.db") if kind == "SQLite" else Ledger()
                )
                batch = list(_requests(requests))
                secs = timed(
                    lambda batch=batch, ledger=ledger: flow.pipeline.run_batch(  # type: ignore[misc]
                        batch, ledger, concurrency=32, progress=False
                    )
                )
                rates[kind].append(len(ledger) / secs)
                ledger.close()
        sql, mem = sorted(rates["SQLite"])[1], sorted(rates["memory"])[1]
        return [
            Row(b, f"run_batch(32 at a time) into SQLite, {requests:,} requests: entries", sql,
                "/s"),
            Row(b, "  same into an in-memory ledger: entries (the pipeline's own ceiling)", mem,
                "/s"),
            Row(b, "  SQLite / in-memory throughput", sql / mem, "x"),
        ]  # fmt: skip
    finally:
        flow.close()


REPORT_CHILD = """
import json, sys, time
from chainkit import Report, SQLiteLedger

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

path, how = sys.argv[1], sys.argv[2]
ledger = SQLiteLedger(path, read_only=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to what is resident now
before = status("VmRSS")
t0 = time.perf_counter()
c0 = time.process_time()
if how == "sql":
    report = Report.from_ledger(ledger, tag="tenant", traffic_per_day=10_000)
else:  # every entry loaded, as Report did before it read the ledger's aggregations
    entries = ledger.entries()
    groups = {}
    for e in entries:
        groups.setdefault(e.tags.get("tenant", "all"), []).append(e)
    report = Report.build(list(groups.items()), traffic_per_day=10_000)
secs = time.perf_counter() - t0
cpu = time.process_time() - c0
after = status("VmHWM")
print(json.dumps({"s": secs, "cpu": cpu, "mb": (after - before) / 1024,
                  "variants": len(report.variants), "total": str(report.variants[0].total_cost)}))
"""


def report_rows(path: Path, n: int) -> list[Row]:
    """Report.from_ledger on the file in a fresh process (time, peak RSS growth) vs loading all."""
    b = "3. ledger"

    def child(how: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", REPORT_CHILD, str(path), how],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    sql = child("sql")
    loaded = child("entries")
    if sql["total"] != loaded["total"]:
        raise SystemExit(f"the two reports disagree: {sql['total']} vs {loaded['total']}")
    note = f"CPU {sql['cpu']:.2f} s" if sql["cpu"] < 0.8 * sql["s"] else ""
    rows = [
        Row(b, f"Report.from_ledger(SQLite, by tenant) over {n:,}: time", sql["s"], "s", "< 2 s",
            sql["s"] < 2, note),
        Row(b, "  its peak memory growth", sql["mb"], "MB", "< 100 MB", sql["mb"] < 100),
        Row(b, "  same report from every entry loaded: time", loaded["s"], "s"),
        Row(b, "  from every entry loaded: peak memory growth", loaded["mb"], "MB"),
        Row(b, "  speed-up of reading the aggregations", loaded["s"] / sql["s"], "x"),
    ]  # fmt: skip
    print_rows("3e. report over the SQLite ledger (fresh process each)", rows)
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
    sqlite = SQLiteLedger(directory / "p.db")
    profile(
        lambda: [sqlite.record_many(entries[i : i + 1000]) for i in range(0, n, 1000)],
        f"SQLite record_many (1,000 a call), {n:,} entries",
        per=n,
    )
    profile(memory.by_stage, f"in-memory by_stage over {n:,}")
    profile(memory.by_day, f"in-memory by_day over {n:,}")
    profile(sqlite.by_stage, f"SQLite by_stage over {n:,}")
    sqlite.close()


if __name__ == "__main__":
    main()
