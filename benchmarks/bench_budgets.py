"""Benchmark: what a budget costs: one reservation, and a pipeline's throughput with one.

Committed results (``benchmarks/results/budgets.md`` and ``.json``) come from::

    CHAINKIT_PG_DSN=$(scripts/postgres) .venv/bin/python benchmarks/bench_budgets.py
        --json benchmarks/results/budgets.json --markdown benchmarks/results/budgets.md

1. Reservation: ``reserve`` of one call, one thread, median of 3 runs of 1,000 (memory, SQLite,
   PostgreSQL on 127.0.0.1 when ``CHAINKIT_PG_DSN`` is set). In SQLite and
   PostgreSQL each is a committed transaction under the store's write lock, as it must be for
   other processes and hosts to see it.
2. Throughput: ``run_batch`` of 4,000 requests, 32 at a time, through ``Generate`` on a
   zero-latency ``OfflineModel`` into a fresh ledger, with a budget too large to refuse anything
   and without one; the two interleaved 3 times (A, B, A, B, ...), medians, and the ratio. Every
   call reserves, calls, and settles its hold in the same transaction as its entry. The same on
   SQLite with a model taking 20 ms a call, 1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from chainkit import (
    Budget,
    Catalogue,
    Generate,
    Ledger,
    OfflineModel,
    Pipeline,
    PostgresLedger,
    Request,
    SQLiteLedger,
)

SCRATCH = Path("/tmp/bench")
MODEL = "amazon.nova-micro-v1:0"


def reservation_s(make: Callable[[], Any], n: int = 1000) -> float:
    """Seconds per reservation of one call (its release not timed), median of 3 fresh runs."""
    runs = []
    for _ in range(3):
        ledger = make()
        holds = []
        t0 = time.perf_counter()
        for _ in range(n):
            holds.append(ledger.reserve(Decimal("0.0001"), {"tenant": "acme"}, stage="generate"))
        runs.append((time.perf_counter() - t0) / n)
        for hold in holds:
            ledger.release(hold)
        ledger.close()
    return statistics.median(runs)


def throughput(make: Callable[[], Any], requests: int = 4000, latency_s: float = 0.0) -> float:
    """Calls per second of the pipeline into a fresh ledger made by ``make``."""
    model = OfflineModel(model_id=MODEL, latency_s=latency_s)
    bot = Pipeline([Generate(model=model, max_tokens=100)])
    batch = [
        Request(f"Where is my order {i}? 注文 🚚", tags={"tenant": "acme"}) for i in range(requests)
    ]
    ledger = make()
    t0 = time.perf_counter()
    bot.run_batch(batch, ledger, concurrency=32, progress=False)
    secs = time.perf_counter() - t0
    ledger.close()
    return requests / secs


def main(argv: list[str] | None = None) -> None:
    """Run both benchmarks and print (and write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    Catalogue.load()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="budgets-", dir=SCRATCH))
    dsn = os.environ.get("CHAINKIT_PG_DSN")
    schemas: list[str] = []
    counter = iter(range(10**9))
    huge = [Budget(10**9, name="roomy")]

    def sqlite(budgets: Any) -> Callable[[], Any]:
        return lambda: SQLiteLedger(directory / f"l{next(counter)}.db", budgets=budgets)

    def postgres(budgets: Any) -> Callable[[], Any]:
        def make() -> Any:
            schemas.append(f"bench_{uuid.uuid4().hex[:10]}")
            return PostgresLedger(dsn or "", schema=schemas[-1], budgets=budgets)

        return make

    rows: list[tuple[str, float, str, str]] = []
    load = os.getloadavg()[0]
    try:
        kinds: dict[str, Callable[[Any], Callable[[], Any]]] = {
            "memory": lambda b: lambda: Ledger(b),
            "SQLite": sqlite,
        }
        if dsn:
            kinds["PostgreSQL"] = postgres
        for kind, make in kinds.items():
            secs = reservation_s(make(huge))
            target = "< 1 ms" if kind == "PostgreSQL" else ""
            met = ("met" if secs < 0.001 else "MISSED") if target else ""
            rows.append((f"reserve one call, {kind}", secs * 1e6, "µs", f"{target} {met}"))
            print(rows[-1], flush=True)
        for kind in [k for k in kinds if k != "memory"]:
            with_b, without = [], []
            for _ in range(3):
                with_b.append(throughput(kinds[kind](huge)))
                without.append(throughput(kinds[kind](())))
            a, b = statistics.median(with_b), statistics.median(without)
            loss = 1 - a / b
            rows.append((f"run_batch x32 into {kind}, with a budget", a, "calls/s", ""))
            rows.append((f"run_batch x32 into {kind}, without", b, "calls/s", ""))
            target = "< 10%" if kind == "SQLite" else ""
            met = ("met" if loss < 0.10 else "MISSED") if target else ""
            rows.append((f"  throughput lost to the budget, {kind}", loss * 100, "%",
                         f"{target} {met}"))  # fmt: skip
            for row in rows[-3:]:
                print(row, flush=True)
        # With a model that takes time, as real ones do, the same comparison.
        slow_with = statistics.median(
            throughput(sqlite(huge), 1000, latency_s=0.02) for _ in range(3)
        )
        slow_without = statistics.median(
            throughput(sqlite(()), 1000, latency_s=0.02) for _ in range(3)
        )
        rows.append(("run_batch x32 into SQLite, 20 ms model, with a budget", slow_with,
                     "calls/s", ""))  # fmt: skip
        rows.append(("run_batch x32 into SQLite, 20 ms model, without", slow_without,
                     "calls/s", ""))  # fmt: skip
        rows.append(("  throughput lost to the budget, SQLite, 20 ms model",
                     (1 - slow_with / slow_without) * 100, "%", ""))  # fmt: skip
        for row in rows[-3:]:
            print(row, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if dsn and schemas:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    header = {
        "command": "CHAINKIT_PG_DSN=$(scripts/postgres) .venv/bin/python "
        "benchmarks/bench_budgets.py",
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    **header,
                    "rows": [
                        dict(zip(["figure", "value", "unit", "target"], r, strict=True))
                        for r in rows
                    ],
                },
                indent=1,
            )
            + "\n"
        )
    if args.markdown:
        lines = [
            "# Budgets: cost of a reservation\n",
            *(f"- {k}: {v}" for k, v in header.items()),
            "",
            "| figure | value | unit | target |",
            "| --- | ---: | --- | --- |",
        ]
        lines += [f"| {f} | {v:,.1f} | {u} | {t.strip()} |" for f, v, u, t in rows]
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
