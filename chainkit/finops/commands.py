"""The FinOps commands of ``chainkit``: ``report --by``, ``forecast`` and ``anomalies``.

:func:`add_commands` registers ``forecast`` and ``anomalies`` on the ``chainkit`` parser;
:func:`report_by` is ``chainkit report LEDGER --by TAG``. Each reads an SQLite file or a
``postgresql://`` ledger and prints a table, Markdown, JSON (exact decimal strings) or CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError
from chainkit.finops.allocation import Allocation, allocate
from chainkit.finops.anomalies import TAGS, Anomaly, Thresholds, detect, recorded
from chainkit.finops.forecast import Forecast, forecast, forecast_budgets, forecast_by
from chainkit.ledger import PostgresLedger, SQLiteLedger
from chainkit.ledger.sql import SQLLedger
from chainkit.money import usd
from chainkit.outfiles import csv_safe

__all__ = ["add_commands", "open_ledger", "report_by"]

FORMATS = ["table", "markdown", "json", "csv"]


def open_ledger(where: str, schema: str = "chainkit", *, writable: bool = False) -> SQLLedger:
    """An existing ledger: an SQLite file or a ``postgresql://`` DSN (read-only unless asked)."""
    if where.startswith(("postgresql://", "postgres://")):
        if writable:
            # Refuse a schema that holds no ledger (a typo) rather than create an empty one.
            PostgresLedger(where, schema=schema, read_only=True).close()
        return PostgresLedger(where, schema=schema, read_only=not writable)
    path = Path(where)
    if not path.is_file():
        raise ConfigError(
            f"No ledger at {path}: give the path of a ledger file a recipe wrote with --ledger, "
            "or a postgresql:// DSN."
        )
    return SQLiteLedger(path, read_only=not writable)


def _render(head: Sequence[str], rows: Sequence[Sequence[str]], fmt: str, title: str) -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_safe(c) for c in head])
        writer.writerows([csv_safe(c) for c in r] for r in rows)
        return out.getvalue().rstrip("\n")
    # One line per row: a newline (or tab) in a tag value is shown escaped, not obeyed.
    rows = [
        [c.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") for c in r] for r in rows
    ]
    if fmt == "markdown":

        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        return "\n".join(
            [
                f"**{title}**",
                "",
                "| " + " | ".join(head) + " |",
                "| " + " | ".join("---" for _ in head) + " |",
                *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [title]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


UNTAGGED = "\u2014untagged\u2014"
"""How a table shows an entry without the tag (JSON: null): never mistaken for a value."""


def _tags(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ConfigError(
            f"--by {text!r} names no tag; give one such as tenant, or tenant,feature."
        )
    return keys


def render_allocation(a: Allocation, fmt: str) -> str:
    """An allocation as a table, Markdown, JSON or CSV (exact money in JSON and CSV)."""
    if fmt == "json":
        return json.dumps(a.to_dict(), ensure_ascii=False, indent=2)
    exact = fmt == "csv"

    def m(v: Any) -> str:
        if exact:
            return "" if v is None else str(v)
        return usd(v)

    head = [
        *a.by,
        "requests",
        "direct",
        "amortised",
        "cost",
        "per request",
        "per conversation",
        "per resolved",
        "per 1K tokens",
        "unknown",
    ]
    rows = [
        [
            *(UNTAGGED if k is None else k for k in r.key),
            str(r.requests),
            m(r.direct),
            m(r.amortised),
            m(r.cost),
            m(r.per_request),
            m(r.per_conversation),
            m(r.per_resolved),
            m(r.per_1k_tokens) if r.tokens or r.cost is None else "n/a",
            str(r.unknown),
        ]
        for r in a.rows
    ]
    title = (
        f"Cost by {', '.join(a.by)}: one-off spend {m(a.setup)} amortised over the requests it "
        f"served, {m(a.unallocated)} unallocated; total {m(a.total)}"
    )
    return _render(head, rows, fmt, title)


def report_by(args: argparse.Namespace) -> str:
    """``chainkit report LEDGER --by TAG``: showback by tag, with unit costs."""
    with open_ledger(args.ledger, getattr(args, "schema", "chainkit")) as ledger:
        a = allocate(ledger, _tags(args.by))
        skipped: list[str] = []
        found = recorded(ledger, skipped=skipped)
    # A tag no entry carries is a typo far more often than a question (every row "(none)").
    absent = [key for i, key in enumerate(a.by) if a.rows and all(r.key[i] is None for r in a.rows)]
    if absent:
        raise ConfigError(
            f"--by {args.by!r}: no entry in the ledger has the tag {absent[0]!r}. Give a tag key "
            "the entries carry (e.g. tenant), or conversation or turn for cost per conversation."
        )
    # The anomalies recorded in the ledger (chainkit anomalies) are part of its report.
    if args.format == "json":
        return json.dumps(
            {**a.to_dict(), "anomalies": [x.to_dict() for x in found]},
            ensure_ascii=False,
            indent=2,
        )
    text = render_allocation(a, args.format)
    if (found or skipped) and args.format in ("table", "markdown"):
        text += "\n\n" + render_anomalies(found, args.format, "Anomalies recorded", skipped)
    return text


def render_forecasts(forecasts: Sequence[Forecast], fmt: str) -> str:
    """Forecasts as a table or Markdown (month totals), JSON (everything) or CSV (every day)."""
    if fmt == "json":
        return json.dumps([f.to_dict() for f in forecasts], ensure_ascii=False, indent=2)

    def name(f: Forecast) -> str:
        return "all" if f.scope is None else f"{f.scope[0]}={f.scope[1]}"

    if fmt == "csv":
        rows = []
        for f in forecasts:
            rows += [
                [name(f), d.isoformat(), "observed", "" if v is None else str(v), "", ""]
                for d, v in f.observed
            ]
            rows += [
                [name(f), b.day.isoformat(), "forecast", str(b.mid), str(b.low), str(b.high)]
                for b in f.bands
            ]
            rows += [
                [name(f), b.day.isoformat(), which, str(b.mid), str(b.low), str(b.high)]
                for which, b in (("month_end", f.month_end), ("next_month", f.next_month))
            ]
        return _render(["scope", "date", "kind", "usd", "low", "high"], rows, fmt, "")
    level = forecasts[0].level if forecasts else 0.8
    head = [
        "scope",
        "month end",
        "mid",
        f"{level:.0%} band",
        "next month",
        f"{level:.0%} band",
        "limit",
        "P(over)",
    ]

    def limit(f: Forecast) -> str:
        if f.limit is None:
            return ""
        per = {"month": "/month", "day": "/day"}.get(f.period or "", " all-time")
        return usd(f.limit) + per

    def p_over(f: Forecast) -> str:
        if f.limit is None:
            return ""
        return "unknown" if f.p_over_limit is None else f"{f.p_over_limit:.0%}"

    rows = [
        [
            name(f),
            f.month_end.day.isoformat(),
            # Unknown spend with no bound this month: the known part is only a floor.
            (">= " if f.lower_bound else "") + usd(f.month_end.mid),
            f"{usd(f.month_end.low)} - {usd(f.month_end.high)}",
            usd(f.next_month.mid),
            f"{usd(f.next_month.low)} - {usd(f.next_month.high)}",
            limit(f),
            p_over(f),
        ]
        for f in forecasts
    ]
    methods = sorted({f.method for f in forecasts})
    method = "; ".join(methods) if methods else "no series with 3 known days"
    text = _render(head, rows, fmt, f"Spend forecast ({method})")
    notes = sorted({n for f in forecasts for n in f.notes})
    if notes:
        text += "\n" + "\n".join(f"note: {n}" for n in notes)
    return text


def _forecast(args: argparse.Namespace) -> str:
    level = _level(args.level)
    through = None
    if args.through is not None:
        try:
            through = date.fromisoformat(args.through)
        except ValueError:
            raise ConfigError(
                f"--through {args.through!r} is not a date: give YYYY-MM-DD (the last complete "
                "UTC day)."
            ) from None
    with open_ledger(args.ledger, args.schema) as ledger:
        if args.by is not None:
            out = list(forecast_by(ledger, args.by, level=level, through=through).values())
        elif args.budgets:
            out = list(forecast_budgets(ledger, level=level, through=through).values())
        elif args.tag is not None:
            key, sep, value = args.tag.partition("=")
            if not sep or not key:
                raise ConfigError(f"--tag {args.tag!r}: give KEY=VALUE, e.g. tenant=acme.")
            out = [forecast(ledger, tag=(key, value), level=level, through=through)]
        else:
            out = [forecast(ledger, level=level, through=through)]
    return render_forecasts(out, args.format)


def _level(text: str) -> float:
    try:
        level = float(text)
    except ValueError:
        level = -1.0
    if not 0 < level < 1:
        raise ConfigError(f"--level {text!r} is not a share in (0, 1); try 0.8 or 0.95.")
    return level


def render_anomalies(
    found: Sequence[Anomaly], fmt: str, title: str, skipped: Sequence[str] = ()
) -> str:
    """Anomalies as a table, Markdown, JSON or CSV (``skipped``: unreadable events' keys)."""
    note = (
        f"note: {len(skipped)} recorded event(s) under anomaly: are not readable anomalies and "
        f"were skipped ({', '.join(repr(k) for k in skipped[:3])}"
        f"{', ...' if len(skipped) > 3 else ''}); remove them if another program wrote them."
    )
    if fmt == "json":
        if skipped:
            return json.dumps(
                {"anomalies": [a.to_dict() for a in found], "skipped": list(skipped)},
                ensure_ascii=False,
                indent=2,
            )
        return json.dumps([a.to_dict() for a in found], ensure_ascii=False, indent=2)
    head = ["when", "scope", "kind", "observed", "expected", "score"]
    rows = [
        [
            a.when.isoformat(),
            f"{a.scope[0]}={a.scope[1]}",
            a.kind,
            str(a.observed),
            str(a.expected),
            f"{a.score:.2f}",
        ]
        for a in found
    ]
    text = _render(head, rows, fmt, title)
    if skipped and fmt != "csv":
        text += "\n" + note
    return text


def _anomalies(args: argparse.Namespace) -> str:
    if args.recorded:
        skipped: list[str] = []
        with open_ledger(args.ledger, args.schema) as ledger:
            found = recorded(ledger, skipped=skipped)
        return render_anomalies(found, args.format, "Anomalies recorded", skipped)
    try:
        z = float(args.z)
    except ValueError:
        z = -1.0
    if not z > 0:
        raise ConfigError(f"--z {args.z!r} is not a positive number of deviations; try 4.")
    tags = _tags(args.tags) if args.tags else list(TAGS)
    with open_ledger(args.ledger, args.schema, writable=not args.no_record) as ledger:
        found = detect(
            ledger,
            every=args.every,
            tags=tags,
            thresholds=Thresholds(z=z),
            record=not args.no_record,
        )
    kept = "" if args.no_record else " (recorded in the ledger)"
    return render_anomalies(found, args.format, f"Anomalies per {args.every}{kept}")


def add_commands(sub: Any) -> None:
    """Register ``forecast`` and ``anomalies`` on the ``chainkit`` subcommand parsers."""
    fc = sub.add_parser(
        "forecast",
        help="forecast month-end and next-month spend from a ledger",
        description="Month-end and next-month spend from the ledger's daily series, with a "
        "prediction interval: the whole ledger, one tag value, each value of a tag, or each "
        "budget. The ledger is only read.",
    )
    fc.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN")
    fc.add_argument("--tag", default=None, help="only entries with this tag, KEY=VALUE")
    fc.add_argument("--by", default=None, help="a forecast per value of this tag (e.g. tenant)")
    fc.add_argument("--budgets", action="store_true", help="a forecast per budget")
    fc.add_argument("--level", default="0.8", help="the interval's coverage (default 0.8)")
    fc.add_argument("--through", default=None, help="last complete UTC day, YYYY-MM-DD")
    fc.add_argument("--schema", default="chainkit", help="PostgreSQL: the ledger's schema")
    fc.add_argument("--format", choices=FORMATS, default="table")
    fc.set_defaults(run=_forecast)
    an = sub.add_parser(
        "anomalies",
        help="find spend anomalies (spikes, deflection drops, unit-cost jumps) and record them",
        description="Find spend spikes per tag, stages whose deflection collapses and models "
        "whose cost per call jumps, per day or hour; record each as a ledger event.",
    )
    an.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN")
    an.add_argument("--every", choices=["day", "hour"], default="day")
    an.add_argument(
        "--tags", default=None, help=f"tags whose spend to watch (default {','.join(TAGS)})"
    )
    an.add_argument("--z", default="4", help="robust deviations that make an anomaly (4)")
    an.add_argument(
        "--no-record", action="store_true", help="only print; open the ledger read-only"
    )
    an.add_argument("--recorded", action="store_true", help="list the anomalies recorded")
    an.add_argument("--schema", default="chainkit", help="PostgreSQL: the ledger's schema")
    an.add_argument("--format", choices=FORMATS, default="table")
    an.set_defaults(run=_anomalies)
