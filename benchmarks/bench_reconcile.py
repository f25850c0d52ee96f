"""Reconciliation at scale: a month of Bedrock calls against their invocation logs and CUR bill.

Committed results (``benchmarks/results/reconcile.md``) come from::

    .venv/bin/python benchmarks/bench_reconcile.py --calls 100000 \
        --output benchmarks/results/reconcile.md

An SQLite ledger of ``--calls`` answered Bedrock calls (three models, 30 days, requests with
Japanese and emoji tags) is written first; then their invocation logs as Bedrock writes them (one
gzip JSON Lines object per hour, records with ``requestMetadata`` escaped as chainkit sends it)
and a CUR 2.0 CSV export (one line per hour, model and token class), both in a temporary folder.
Three differences are planted (a call only AWS logged, a token mismatch, a billed day that
differs) and the run must find exactly those. Timed: reading the logs, joining them to the ledger,
reading the bill and comparing it; peak RSS of the process is reported at the end.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from chainkit import Entry, SQLiteLedger, Usage
from chainkit.finops.reconcile import (
    read_bill,
    read_invocation_logs,
    reconcile_bill,
    reconcile_invocations,
)
from chainkit.pricing import Catalogue
from chainkit.providers.bedrock import request_metadata

MODELS = {
    "anthropic.claude-3-haiku-20240307-v1:0": ("MP", "Claude 3 Haiku (Amazon Bedrock Edition)"),
    "anthropic.claude-sonnet-4-20250514-v1:0": ("MP", "Claude Sonnet 4 (Amazon Bedrock Edition)"),
    "amazon.nova-micro-v1:0": ("NovaMicro", "Amazon Bedrock"),
}
START = datetime(2026, 10, 1, tzinfo=UTC)
T = TypeVar("T")


def usage_type(model: str, cls: str) -> str:
    label = MODELS[model][0]
    if label == "MP":
        name = {"input": "Input", "output": "Output", "cache_read": "CacheReadInput"}[cls]
        return f"USE1-MP:USE1_{name}TokenCount-Units"
    return f"USE1-{label}-{cls.replace('_', '-')}-tokens"


def build(n: int, folder: Path) -> tuple[Path, Path, Path, float]:
    """Write the ledger, the logs and the bill; return their paths and the ledger's build time."""
    catalogue = Catalogue.load()
    models = list(MODELS)
    entries = []
    for i in range(n):
        model = models[i % 3]
        when = START + timedelta(seconds=i * (30 * 86400 // n))
        cached = 2000 if model.startswith("anthropic.claude-sonnet") and i % 2 else 0
        usage = Usage(200 + i % 700, 20 + i % 300, cache_read_tokens=cached)
        tags = {"tenant": ["acme", "東京🚚", "globex"][i % 3], "feature": "support"}
        entries.append(
            Entry(
                f"req-{i}",
                "generate" if i % 4 else "intent",
                "answered",
                cost=catalogue.cost(model, usage, region="us-east-1"),
                model=model,
                usage=usage,
                tags=tags,
                time=when,
            )
        )
    db = folder / "run.db"
    started = time.perf_counter()
    with SQLiteLedger(db) as ledger:
        for chunk in range(0, n, 10_000):
            ledger.record_many(entries[chunk : chunk + 10_000])
    build_s = time.perf_counter() - started

    logs = folder / "logs"
    hours: dict[datetime, list[str]] = defaultdict(list)
    bill: dict[tuple[datetime, str, str], int] = defaultdict(int)
    for i, e in enumerate(entries):
        assert e.usage is not None and e.model is not None
        logged = Usage(e.usage.input_tokens, e.usage.output_tokens + (7 if i == 1234 else 0),
                       cache_read_tokens=e.usage.cache_read_tokens)  # fmt: skip
        meta = request_metadata({**e.tags, "stage": e.stage, "request_id": e.request_id})
        hour = e.time.replace(minute=0, second=0)
        hours[hour].append(record(e.model, e.time, f"aws-{i}", logged, meta))
        for cls, count in (("input", logged.input_tokens), ("output", logged.output_tokens),
                           ("cache_read", logged.cache_read_tokens)):  # fmt: skip
            if count:
                bill[(hour, e.model, cls)] += count
    # Planted: a call only AWS logged (its process died before recording), a billed day off.
    late = START + timedelta(days=12, hours=3)
    meta = request_metadata({"stage": "generate", "request_id": "req-lost"})
    hours[late].append(record(models[0], late, "aws-lost", Usage(300, 40), meta))
    bill[(late, models[0], "input")] += 300
    bill[(late, models[0], "output")] += 40
    bill[(START + timedelta(days=20, hours=9), models[1], "output")] += 100_000  # $1.50
    for hour, lines in hours.items():
        path = logs / f"{hour:%Y/%m/%d/%H}" / f"{hour:%Y%m%dT%H%MZ}_x.json.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))

    out = io.StringIO()
    columns = ["line_item_line_item_type", "line_item_usage_start_date", "line_item_usage_end_date",
               "line_item_product_code", "line_item_usage_type", "line_item_usage_amount",
               "pricing_unit", "line_item_unblended_cost", "product"]  # fmt: skip
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for (hour, model, cls), tokens in sorted(bill.items()):
        rate = getattr(catalogue.price(model, "us-east-1"), cls)
        code = "AmazonBedrock" if model.startswith("amazon.") else "AnthropicClaude"
        writer.writerow({
            "line_item_line_item_type": "Usage",
            "line_item_usage_start_date": f"{hour:%Y-%m-%dT%H:%M:%SZ}",
            "line_item_usage_end_date": f"{hour + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
            "line_item_product_code": code,
            "line_item_usage_type": usage_type(model, cls),
            "line_item_usage_amount": str(Decimal(tokens) / 1000),
            "pricing_unit": "1K tokens",
            "line_item_unblended_cost": str(tokens * rate / 1_000_000),
            "product": json.dumps({"servicecode": code, "product_name": MODELS[model][1]}),
        })  # fmt: skip
    cur = folder / "cur.csv.gz"
    cur.write_bytes(gzip.compress(out.getvalue().encode()))
    return db, logs, cur, build_s


def record(model: str, when: datetime, aws_id: str, usage: Usage, meta: dict[str, str]) -> str:
    return json.dumps({
        "schemaType": "ModelInvocationLog", "schemaVersion": "1.0",
        "timestamp": f"{when + timedelta(seconds=1):%Y-%m-%dT%H:%M:%SZ}",
        "accountId": "123456789012", "region": "us-east-1", "requestId": aws_id,
        "operation": "Converse", "modelId": model,
        "input": {"inputContentType": "application/json", "inputTokenCount": usage.input_tokens,
                  "cacheReadInputTokenCount": usage.cache_read_tokens,
                  "cacheWriteInputTokenCount": 0},
        "output": {"outputContentType": "application/json",
                   "outputTokenCount": usage.output_tokens},
        "requestMetadata": meta,
    })  # fmt: skip


def main() -> int:
    """Build, run, check and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chainkit-reconcile-") as tmp:
        db, logs, cur, build_s = build(args.calls, Path(tmp))
        timings: dict[str, tuple[float, float]] = {}

        def timed(step: str, work: Callable[[], T]) -> T:
            wall, cpu = time.perf_counter(), time.process_time()
            out = work()
            timings[step] = (time.perf_counter() - wall, time.process_time() - cpu)
            return out

        read = timed("read invocation logs", lambda: read_invocation_logs(logs))
        with SQLiteLedger(db, read_only=True) as ledger:
            joined = timed("join them to the ledger", lambda: reconcile_invocations(ledger, read))
            export = timed("read the CUR 2.0 export", lambda: read_bill(cur))
            bill = timed("compare it with the ledger", lambda: reconcile_bill(ledger, export))
        found = sorted((d.kind, d.request_id) for d in joined.differences)
        days = [(str(r.day), r.model, r.usage_type, r.difference) for r in bill.discrepancies]
        assert found == [("mismatch", "req-1234"), ("missing_in_ledger", "req-lost")], found
        assert days == [
            ("2026-10-21", "anthropic.claude-sonnet-4-20250514-v1:0", "output", Decimal("1.5"))
        ], days
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"# Reconciliation: {args.calls:,} calls over 30 days",
        "",
        f"`python benchmarks/bench_reconcile.py --calls {args.calls}` on {platform.machine()}, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}. Ledger written with "
        f"`record_many` in {build_s:.1f} s (not part of the figures below).",
        "",
        "| step | wall s | CPU s | CPU per call |",
        "| --- | ---: | ---: | ---: |",
    ]
    for step, (wall, cpu) in timings.items():
        lines.append(f"| {step} | {wall:.2f} | {cpu:.2f} | {cpu / args.calls * 1e6:.1f} µs |")
    lines += [
        "",
        f"{len(read.invocations):,} log records in {read.files} hourly objects; "
        f"{len(export.lines):,} bill lines; found exactly the planted differences: {found} and "
        f"{days}. Peak RSS of the process {rss_mb:,.0f} MB. Load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: where wall time exceeds CPU time "
        "the machine was busy with other work.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
