"""FOCUS export peak memory: a ledger whose entries make almost as many rows as entries.

The committed result (``benchmarks/results/focus_memory.md``) came from::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_focus_memory.py --entries 300000 \
        --out benchmarks/results/focus_memory.md

The entries are one call every 7 seconds over four models, 50 tenants and random token counts,
so most (hour, model, tenant, token class) groups hold one or two entries: the export's rows,
not the entries, are what it holds in memory. Each export runs in a child process, and its
peak resident set size (``ru_maxrss``) is what is reported.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chainkit import Catalogue, Entry, SQLiteLedger, Usage

MODELS = [
    "amazon.nova-micro-v1:0",
    "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "amazon.titan-text-express-v1",
]


def fill(path: Path, n: int) -> None:
    """Record ``n`` priced calls in an SQLite ledger at ``path``."""
    rng = random.Random(1)
    cat = Catalogue.load()
    start = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)
    with SQLiteLedger(path) as ledger:
        batch: list[Entry] = []
        for i in range(n):
            model = rng.choice(MODELS)
            usage = Usage(rng.randint(1, 5000), rng.randint(1, 800))
            batch.append(
                Entry(f"b{i}", "generate", "answered", cat.cost(model, usage), model=model,
                      usage=usage, tags={"tenant": f"t{i % 50}"},
                      time=start + timedelta(seconds=7 * i))
            )  # fmt: skip
            if len(batch) == 10_000:
                ledger.record_many(batch)
                batch = []
        ledger.record_many(batch)


def main() -> None:
    """Build the ledger, export it in a child process, print (and write) the peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ledger.db"
        fill(db, args.entries)
        lines = [
            f"# FOCUS export peak memory: {args.entries:,} entries from an SQLite ledger",
            "",
            "| file | rows | seconds | peak RSS (MB) |",
            "| --- | --- | --- | --- |",
        ]
        for name in ("focus.csv",):
            out = Path(tmp) / name
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "chainkit.cli", "export", str(db), "--format", "focus",
                 "--out", str(out), "--summary-format", "csv"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            seconds = time.perf_counter() - began
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            rows = done.stdout.splitlines()[1].split(",")[1]
            lines.append(f"| {name} | {int(rows):,} | {seconds:.1f} | {peak:.0f} |")
    lines += [
        "",
        "Before the rows were kept as tuples of interned values and written one at a time "
        "(commit d561bda, the same script and entries): 1,001 MB peak, 70.0 s.",
        "",
        f"Command: `PYTHONPATH=. .venv/bin/python benchmarks/bench_focus_memory.py --entries "
        f"{args.entries} --out benchmarks/results/focus_memory.md`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
