"""``chainkit export``: a saved ledger as a FOCUS 1.2 file, or as CloudWatch metrics.

::

    chainkit export ledger.db --format focus --out focus.csv          # or focus.parquet
    chainkit export ledger.db --format cloudwatch --namespace support-bot --region us-east-1
    chainkit export ledger.db --format emf --out metrics.jsonl        # embedded metric format

The ledger (an SQLite file or a ``postgresql://`` DSN) is only read. What was written is printed
as a summary, in ``--summary-format table|markdown|json|csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError
from chainkit.ledger.core import Ledger

__all__ = ["add_export_command"]

_FORMATS = ("table", "markdown", "json", "csv")


def add_export_command(sub: Any) -> None:
    """Register ``export`` on the ``chainkit`` command's subparsers."""
    export = sub.add_parser(
        "export",
        help="write a ledger as a FOCUS 1.2 file or as CloudWatch metrics",
        description="Write a saved ledger as a FOCUS 1.2 cost and usage file (CSV, or Parquet "
        "for a .parquet file name), publish its spend, calls, avoided cost and deflections to "
        "CloudWatch (PutMetricData), or write them as embedded metric format lines. The ledger "
        "is only read.",
    )
    export.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN")
    export.add_argument(
        "--format",
        required=True,
        choices=["focus", "cloudwatch", "emf"],
        help="focus: a FOCUS 1.2 dataset; cloudwatch: PutMetricData; emf: JSON lines",
    )
    export.add_argument("--out", help="the file to write (focus, emf)")
    export.add_argument(
        "--schema", default="chainkit", help="PostgreSQL: the ledger's schema (default chainkit)"
    )
    focus = export.add_argument_group("focus")
    focus.add_argument("--period", choices=["hour", "day"], default="hour", help="charge period")
    focus.add_argument(
        "--unknown",
        choices=["error", "omit", "bound"],
        default="error",
        help="entries of unknown cost: refuse (default), leave out, or write at their bound",
    )
    focus.add_argument(
        "--region",
        default=None,
        help="the AWS region the application called from (focus: where a price does not "
        "tell; cloudwatch: where to publish)",
    )
    focus.add_argument("--billing-account-id", default="chainkit", help="BillingAccountId")
    focus.add_argument(
        "--billing-account-name", default="chainkit ledger", help="BillingAccountName"
    )
    metrics = export.add_argument_group("cloudwatch, emf")
    metrics.add_argument("--namespace", default="chainkit", help="CloudWatch namespace")
    metrics.add_argument("--tenant-tag", default="tenant", help="tag whose value is Tenant")
    metrics.add_argument("--resolution", choices=["minute", "hour"], default="minute")
    metrics.add_argument("--since", default=None, help="only entries from this time (ISO 8601)")
    metrics.add_argument("--until", default=None, help="only entries before this time")
    export.add_argument(
        "--summary-format",
        choices=_FORMATS,
        default="table",
        help="how to print what was written (json: exact decimal strings)",
    )
    export.set_defaults(run=_export)


def _open(where: str, schema: str) -> Ledger:
    from chainkit.ledger import PostgresLedger, SQLiteLedger

    if where.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(where, schema=schema, read_only=True)
    path = Path(where)
    if not path.is_file():
        raise ConfigError(f"No ledger at {path}: give the path of an existing ledger file.")
    return SQLiteLedger(path, read_only=True)


def _time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a time: give YYYY-MM-DD (UTC midnight) or ISO 8601 such "
            "as 2026-11-01T12:00+00:00."
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _export(args: argparse.Namespace) -> str:
    if args.format in ("focus", "emf") and not args.out:
        raise ConfigError(f"--format {args.format} writes a file: pass --out FILE.")
    options = {
        "tenant_tag": args.tenant_tag,
        "resolution": args.resolution,
        "since": _time(args.since, "--since"),
        "until": _time(args.until, "--until"),
    }
    ledger = _open(args.ledger, args.schema)
    try:
        rows = _run(args, ledger, options)
    finally:
        ledger.close()
    return _render(rows, args.summary_format)


def _run(args: argparse.Namespace, ledger: Ledger, options: dict[str, Any]) -> dict[str, Any]:
    if args.format == "focus":
        from chainkit.finops.focus import write_focus

        summary = write_focus(
            ledger,
            args.out,
            period=args.period,
            unknown=args.unknown,
            region=args.region,
            billing_account_id=args.billing_account_id,
            billing_account_name=args.billing_account_name,
        )
        return {"file": args.out, **summary.as_dict()}
    if args.format == "emf":
        from chainkit.finops.cloudwatch import write_emf

        with open(args.out, "w", encoding="utf-8") as f:
            records = write_emf(ledger, f, namespace=args.namespace, **options)
        return {"file": args.out, "namespace": args.namespace, "records": records}
    from chainkit.finops.cloudwatch import publish_metrics

    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - boto3 is in the bedrock and dev extras
        raise ConfigError(
            "Publishing to CloudWatch needs boto3: pip install 'chainkit[bedrock]'."
        ) from exc
    client = boto3.client("cloudwatch", region_name=args.region)
    sent = publish_metrics(ledger, client, namespace=args.namespace, **options)
    return {"namespace": args.namespace, "region": client.meta.region_name, "values": sent}


def _render(rows: dict[str, Any], fmt: str) -> str:
    render: dict[str, Callable[[], str]] = {
        "json": lambda: json.dumps(rows, ensure_ascii=False),
        "csv": lambda: _csv(rows),
        "markdown": lambda: "\n".join(
            ["| what | value |", "| --- | --- |"]
            + [f"| {k} | {_cell(v)} |" for k, v in rows.items()]
        ),
        "table": lambda: "\n".join(
            f"{k:<{max(map(len, rows))}}  {_cell(v)}" for k, v in rows.items()
        ),
    }
    return render[fmt]()


def _cell(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _csv(rows: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerow(rows)
    return out.getvalue().rstrip("\n")
