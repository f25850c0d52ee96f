"""FOCUS export speed: entries per second, from an SQLite ledger to CSV and Parquet.

The committed result (``benchmarks/results/focus.md``) came from::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_focus.py --entries 100000 \
        --out benchmarks/results/focus.md

on the shared 2-core test machine: wall time depends on what else runs; CPU time less so.

The entries are a support flow's: per request an intent scan on Nova Micro, then a canned reply
(free, with its avoided cost) or Claude 3.5 Sonnet with prompt caching, one in ten through the
batch tier; 20 tenants (some Japanese), 7 days. Every cost is priced from the default
catalogue, so the export explains each one by a catalogue price (the common case); the check
that BilledCost sums to the ledger's total is part of the run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from chainkit import Catalogue, Entry, SQLiteLedger, Usage
from chainkit.finops.focus import write_focus

SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
NOVA = "amazon.nova-micro-v1:0"


def entries(n: int) -> list[Entry]:
    """About ``n`` entries of the support flow, priced from the default catalogue."""
    rng = random.Random(7)
    cat = Catalogue.load()
    start = datetime(2026, 11, 1, tzinfo=UTC)
    tenants = [f"tenant-{i}" for i in range(17)] + ["日本の店", "店🚚", "acme"]
    out: list[Entry] = []
    r = 0
    while len(out) < n:
        r += 1
        when = start + timedelta(seconds=rng.randrange(7 * 86400))
        tags = {"tenant": rng.choice(tenants), "variant": "prescan"}
        scan = Usage(rng.randrange(40, 400), rng.randrange(2, 8))
        out.append(Entry(f"r{r}", "intent", "passed", cat.cost(NOVA, scan), model=NOVA,
                         usage=scan, tags=tags, time=when))  # fmt: skip
        if rng.random() < 0.4:
            out.append(Entry(f"r{r}", "canned", "answered", Decimal(0), tags=tags, time=when,
                             avoided_cost=Decimal("0.0042")))  # fmt: skip
            continue
        tier = "batch" if rng.random() < 0.1 else "on_demand"
        cached = tier == "on_demand"
        use = Usage(
            rng.randrange(100, 3000),
            rng.randrange(50, 600),
            rng.randrange(0, 4000) if cached else 0,
            rng.randrange(0, 500) if cached else 0,
        )
        out.append(Entry(f"r{r}", "generate", "answered", cat.cost(SONNET, use, tier=tier),
                         model=SONNET, usage=use, tags=tags, time=when))  # fmt: skip
    return out


def main() -> None:
    """Record the entries in an SQLite ledger, export them, and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown result here")
    args = parser.parse_args()
    made = entries(args.entries)
    lines = [f"# FOCUS export: {len(made):,} entries from an SQLite ledger", ""]
    lines += [
        "| file | rows | seconds | CPU seconds | entries/s (CPU) | BilledCost | ledger total |",
        "|" + " --- |" * 7,
    ]
    with tempfile.TemporaryDirectory() as tmp, SQLiteLedger(Path(tmp) / "l.db") as ledger:
        ledger.record_many(made)
        total = ledger.cost
        began, cpu = time.perf_counter(), time.process_time()
        read = sum(1 for _ in ledger.iter_entries())
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
        lines.append(f"| (reading the entries alone) | {read:,} | {took:.2f} | {cpu:.2f} | "
                     f"{read / cpu:,.0f} | | |")  # fmt: skip
        for name in ("focus.csv", "focus.parquet"):
            began, cpu = time.perf_counter(), time.process_time()
            summary = write_focus(ledger, Path(tmp) / name)
            took, cpu = time.perf_counter() - began, time.process_time() - cpu
            assert summary.billed_cost == total, (summary.billed_cost, total)
            lines.append(
                f"| {name} | {summary.rows:,} | {took:.2f} | {cpu:.2f} | {len(made) / cpu:,.0f} | "
                f"${summary.billed_cost} | ${total} |"
            )
    lines += ["", "Command: `PYTHONPATH=. .venv/bin/python benchmarks/bench_focus.py "
              f"--entries {args.entries} --out benchmarks/results/focus.md`"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
