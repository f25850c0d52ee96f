"""How long the HTML report takes on an SQLite ledger, and how big the page is.

Committed results (``benchmarks/results/html.md``) come from::

    .venv/bin/python benchmarks/bench_html.py --out benchmarks/results/html.md

A year of entries (365 UTC days, 20 tenants, 2 variants, five stages, three models) in an
``SQLiteLedger`` file, at 10,000 and 100,000 entries; each size twice: every cost known, and
with one entry in 1,000 of unknown cost (with a bound), which makes the report read every entry
once more for the known part of each sum. ``html_report`` is timed (median of 3 runs, the
ledger opened read-only, as ``chainkit report`` opens it); the page's size is in bytes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from chainkit import Entry, SQLiteLedger, Usage
from chainkit.finops.html import html_report

STAGES = ("intent_scan", "canned", "precomputed", "summarise", "generate")
MODELS = ("amazon.nova-micro-v1:0", "amazon.nova-lite-v1:0", "anthropic.claude-sonnet-4")


def build(path: Path, n: int, unknown_every: int | None) -> None:
    rng = random.Random(n)
    start = datetime(2025, 11, 1, tzinfo=UTC)
    entries = []
    for i in range(n):
        stage = STAGES[i % len(STAGES)]
        paid = stage in ("summarise", "generate")
        unknown = unknown_every is not None and i % unknown_every == 0 and paid
        entries.append(
            Entry(
                request_id=f"r{i // 3}",
                stage=stage,
                outcome="answered" if stage in ("canned", "generate") else "passed",
                model=rng.choice(MODELS) if paid else None,
                usage=Usage(800, 200) if paid else None,
                cost=None
                if unknown
                else (Decimal(rng.randrange(1, 9000)) / 10**6 if paid else Decimal(0)),
                bound=Decimal("0.01") if unknown else None,
                avoided_cost=Decimal("0.008") if stage == "canned" else Decimal(0),
                tags={"tenant": f"tenant-{rng.randrange(20)}", "variant": "ab"[i % 2]},
                time=start + timedelta(seconds=rng.randrange(365 * 86_400)),
            )
        )
    with SQLiteLedger(path) as ledger:
        ledger.record_many(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "# HTML report: time and size",
        "",
        "`.venv/bin/python benchmarks/bench_html.py --out benchmarks/results/html.md`",
        "",
        "| entries | unknown costs | html_report (median of 3) | page |",
        "| ---: | --- | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(s) for s in args.sizes.split(",")):
            for unknown_every in (None, 1000):
                path = Path(folder) / f"l{n}-{unknown_every}.db"
                build(path, n, unknown_every)
                times, page = [], ""
                for _ in range(3):
                    with SQLiteLedger(path, read_only=True) as ledger:
                        began = time.perf_counter()
                        page = html_report(ledger)
                        times.append(time.perf_counter() - began)
                unknown = "none" if unknown_every is None else f"1 in {unknown_every}"
                line = (
                    f"| {n:,} | {unknown} | {statistics.median(times):.2f} s | "
                    f"{len(page.encode('utf-8')) / 1024:.0f} KB |"
                )
                print(line, flush=True)
                lines.append(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
