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
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from chainkit.errors import ConfigError
from chainkit.ledger.core import Ledger
from chainkit.money import usd
from chainkit.outfiles import refuse_ledger_as_out, write_atomically

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
    # Format-specific options default to None so that one given to the wrong format is refused
    # (see _DEFAULTS for the values they take when not given).
    focus.add_argument("--period", choices=["hour", "day"], default=None, help="charge period")
    focus.add_argument(
        "--unknown",
        choices=["error", "omit", "bound"],
        default=None,
        help="entries of unknown cost: refuse (default), leave out, or write at their bound",
    )
    focus.add_argument(
        "--region",
        default=None,
        help="the AWS region the application called from (focus: where a price does not "
        "tell; cloudwatch: where to publish)",
    )
    focus.add_argument("--billing-account-id", default=None, help="BillingAccountId")
    focus.add_argument("--billing-account-name", default=None, help="BillingAccountName")
    metrics = export.add_argument_group("cloudwatch, emf")
    metrics.add_argument("--namespace", default=None, help="CloudWatch namespace")
    metrics.add_argument("--tenant-tag", default=None, help="tag whose value is Tenant")
    metrics.add_argument("--resolution", choices=["minute", "hour"], default=None)
    export.add_argument("--since", default=None, help="only entries from this time (ISO 8601)")
    export.add_argument("--until", default=None, help="only entries before this time")
    export.add_argument(
        "--summary-format",
        choices=_FORMATS,
        default="table",
        help="how to print what was written (json: exact decimal strings)",
    )
    export.set_defaults(run=_export)


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


# Each format's own options, their defaults, and the formats they apply to.
_DEFAULTS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "period": ("hour", ("focus",)),
    "unknown": ("error", ("focus",)),
    "billing_account_id": ("chainkit", ("focus",)),
    "billing_account_name": ("chainkit ledger", ("focus",)),
    "namespace": ("chainkit", ("cloudwatch", "emf")),
    "tenant_tag": ("tenant", ("cloudwatch", "emf")),
    "resolution": ("minute", ("cloudwatch", "emf")),
    "out": (None, ("focus", "emf")),
    "region": (None, ("focus", "cloudwatch")),
}


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen format does not use; fill in the defaults of the others."""
    for name, (default, formats) in _DEFAULTS.items():
        value = getattr(args, name)
        if value is not None and args.format not in formats:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value!r} does not apply to --format {args.format} (only to "
                f"{' and '.join(formats)}): leave it out."
            )
        if value is None:
            setattr(args, name, default)


def _export(args: argparse.Namespace) -> tuple[str, int]:
    _check_options(args)
    if args.format in ("focus", "emf") and not args.out:
        raise ConfigError(f"--format {args.format} writes a file: pass --out FILE.")
    if args.out:
        refuse_ledger_as_out(args.ledger, args.out)
    if args.region is not None:
        from chainkit.finops.focus import check_region

        check_region(args.region)
    since = _time(args.since, "--since")
    until = _time(args.until, "--until")
    if since is not None and until is not None and since >= until:
        raise ConfigError(
            f"--since {args.since!r} is not before --until {args.until!r}: nothing would be "
            "exported; give a --since earlier than --until."
        )
    from chainkit.finops.commands import open_ledger

    ledger = open_ledger(args.ledger, args.schema)
    try:
        rows, status = _run(args, ledger, since, until)
    finally:
        ledger.close()
    return _render(rows, args.summary_format), status


def _run(
    args: argparse.Namespace, ledger: Ledger, since: datetime | None, until: datetime | None
) -> tuple[dict[str, Any], int]:
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
            since=since,
            until=until,
        )
        return {"file": args.out, **summary.as_dict()}, 0
    options = {
        "tenant_tag": args.tenant_tag,
        "resolution": args.resolution,
        "since": since,
        "until": until,
    }
    if args.format == "emf":
        from chainkit.finops.cloudwatch import write_emf

        with write_atomically(args.out) as f:
            records = write_emf(ledger, f, namespace=args.namespace, **options)
        return {"file": args.out, "namespace": args.namespace, "records": records}, 0
    from chainkit.finops.cloudwatch import PartialPublish, publish_metrics

    try:
        import boto3
        import botocore.exceptions
    except ImportError as exc:  # pragma: no cover - boto3 is in the bedrock and dev extras
        raise ConfigError(
            "Publishing to CloudWatch needs boto3: pip install 'chainkit[bedrock]'."
        ) from exc
    client = boto3.client("cloudwatch", region_name=args.region)
    region = client.meta.region_name
    notes: list[str] = []
    try:
        sent = publish_metrics(
            ledger, client, namespace=args.namespace, notes=notes.append, **options
        )
    except PartialPublish as partial:
        # What was published is the summary; the error and how to resume go to stderr, once.
        print(f"chainkit: {partial}", file=sys.stderr)
        done = {"namespace": args.namespace, "region": region, "values": partial.sent}
        return done | partial.as_dict(), 2
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        raise ConfigError(
            "No AWS credentials to publish to CloudWatch: set AWS_PROFILE to a configured "
            "profile, run `aws configure` or `aws sso login`, or write the metrics to a file "
            "instead (--format emf --out metrics.jsonl)."
        ) from None
    for note in notes:
        print(f"chainkit: {note}", file=sys.stderr)
    return {"namespace": args.namespace, "region": region, "values": sent}, 0


def _render(rows: dict[str, Any], fmt: str) -> str:
    render: dict[str, Callable[[], str]] = {
        "json": lambda: json.dumps(rows, ensure_ascii=False),
        "csv": lambda: _csv(rows),
        "markdown": lambda: "\n".join(
            ["| what | value |", "| --- | --- |"]
            + [f"| {k} | {_cell(k, v)} |" for k, v in rows.items()]
        ),
        "table": lambda: "\n".join(
            f"{k:<{max(map(len, rows))}}  {_cell(k, v)}" for k, v in rows.items()
        ),
    }
    return render[fmt]()


# Summary keys that are money: exact decimal strings in JSON and CSV, dollars for people.
_MONEY = frozenset({"billed_cost", "ledger_cost", "unknown_bound"})


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "unknown"
    if key in _MONEY:
        return usd(Decimal(value), digits=8)
    return str(value)


def _csv(rows: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerow(rows)
    return out.getvalue().rstrip("\n")
