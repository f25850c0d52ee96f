"""The ``chainkit`` command: list prices, report on a saved ledger."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chainkit.errors import ChainkitError
from chainkit.ledger import PostgresLedger, SQLiteLedger
from chainkit.ledger.sql import SQLLedger
from chainkit.pricing import (
    DEFAULT_CATALOGUE,
    UNKNOWN_CONTEXT_WINDOW,
    Catalogue,
    ModelCard,
    Price,
)
from chainkit.report import Report, money

__all__ = ["main"]


_HEAD = (
    "model id",
    "region",
    "tier",
    "in $/Mtok",
    "out $/Mtok",
    "cache r/w/1h",
    "context",
    "date",
    "conf",
    "source",
)


def _cards(args: argparse.Namespace) -> tuple[Catalogue, list[ModelCard]]:
    catalogue = Catalogue.load(args.catalogue)
    cards = list(catalogue)
    if args.provider:
        wanted = args.provider.lower()
        cards = [
            c
            for c in cards
            if c.provider.lower() == wanted or c.id.lower().startswith((wanted + ":", wanted + "."))
        ]
        if not cards:
            providers = sorted({c.provider for c in catalogue})
            raise ChainkitError(
                f"No model of provider {args.provider!r} in catalogue {catalogue.name!r}; its "
                f"providers: {', '.join(providers)}."
            )
    return catalogue, cards


def _price_json(p: Price) -> dict[str, object]:
    row: dict[str, object] = {
        "region": p.region,
        "tier": p.tier,
        "input_per_mtok": money(p.input),
        "output_per_mtok": money(p.output),
        "cache_read_per_mtok": money(p.cache_read),
        "cache_write_per_mtok": money(p.cache_write),
        "cache_write_1h_per_mtok": money(p.cache_write_1h),
        "per_1k_queries": money(p.per_1k_queries),
        "per_1k_requests": money(p.per_1k_requests),
        "source_url": p.source_url,
        "effective_date": p.effective_date.isoformat(),
        "confidence": p.confidence,
        "note": p.note,
    }
    if p.tiers:
        row["tiers"] = [
            {"above_prompt_tokens": threshold, **_price_json(tier)} for threshold, tier in p.tiers
        ]
    return row


def _price_cells(card: ModelCard, p: Price) -> tuple[str, ...]:
    cache = "/".join(money(v) or "-" for v in (p.cache_read, p.cache_write, p.cache_write_1h))
    extra = "".join(
        f" +${money(v)}/1k {what}"
        for v, what in ((p.per_1k_queries, "queries"), (p.per_1k_requests, "requests"))
        if v is not None
    )
    tiers = f" (+{len(p.tiers)} long-context tier{'s' if len(p.tiers) > 1 else ''})"
    return (
        card.id,
        p.region,
        p.tier,
        money(p.input) or "",
        (money(p.output) or "") + extra + (tiers if p.tiers else ""),
        cache,
        "?" if card.context_window == UNKNOWN_CONTEXT_WINDOW else f"{card.context_window:,}",
        p.effective_date.isoformat(),
        "low" if p.confidence == "low" else "",
        p.source_url,
    )


def _prices(args: argparse.Namespace) -> str:
    catalogue, cards = _cards(args)
    if args.format == "json":
        rows = [
            {
                "id": card.id,
                "name": card.name,
                "provider": card.provider,
                "aliases": list(card.aliases),
                "context_window": card.context_window,
                "notes": card.notes,
                "prices": [_price_json(p) for p in card.prices],
            }
            for card in cards
        ]
        return json.dumps(
            {"catalogue": catalogue.name, "description": catalogue.description, "models": rows},
            indent=2,
        )
    cells = [_price_cells(card, p) for card in cards for p in card.prices]
    if args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_HEAD)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    low = sum(1 for c in cells if c[8])
    legend = (
        f"{low} row(s) marked low: undated or unchecked transcriptions, or prices derived by "
        "rule; see each row's note (--format json)."
    )
    title = f"catalogue {catalogue.name}: {len(cards)} models. {catalogue.description}"
    if args.format == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(_HEAD) + " |"]
        lines.append("|" + "|".join(" --- " for _ in _HEAD) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join([*lines, "", legend])
    widths = [max(len(r[i]) for r in (_HEAD, *cells)) for i in range(len(_HEAD))]
    lines = [title]
    for r in (_HEAD, *cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join([*lines, legend])


def _report(args: argparse.Namespace) -> str:
    path = Path(args.ledger)
    # Read-only: a report never changes the file (nor creates one at a mistyped path).
    with SQLiteLedger(path, read_only=True) as ledger:
        report = Report.from_ledger(
            ledger, tag=args.variant_tag, traffic_per_day=args.traffic, baseline=args.baseline
        )
    return report.to_json() if args.format == "json" else report.to_table()


def _open_writable(where: str, schema: str) -> SQLLedger:
    if where.startswith(("postgresql://", "postgres://")):
        # Refuse a schema that holds no ledger (a typo) rather than create an empty one.
        PostgresLedger(where, schema=schema, read_only=True).close()
        return PostgresLedger(where, schema=schema)
    path = Path(where)
    if not path.exists():
        raise ChainkitError(f"No ledger at {path}: give the path of an existing ledger file.")
    return SQLiteLedger(path)


def _purge(args: argparse.Namespace) -> str:
    try:
        before = datetime.fromisoformat(args.before)
    except ValueError:
        raise ChainkitError(
            f"--before {args.before!r} is not a date: give YYYY-MM-DD (UTC midnight) or an "
            "ISO 8601 time such as 2026-11-01T12:00+00:00."
        ) from None
    if before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    with _open_writable(args.ledger, args.schema) as ledger:
        progress, replies = ledger.purge(before)
    rows = {"before": before.isoformat(), "progress": progress, "replies": replies}
    if args.format == "json":
        return json.dumps(rows)
    if args.format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows), lineterminator="\n")
        writer.writeheader()
        writer.writerow(rows)
        return out.getvalue().rstrip("\n")
    if args.format == "markdown":
        return "\n".join(
            [
                "| before | saved progress removed | saved replies removed |",
                "| --- | ---: | ---: |",
                f"| {rows['before']} | {progress} | {replies} |",
            ]
        )
    return (
        f"Removed from {args.ledger}: {progress} requests' saved progress and {replies} saved "
        f"replies written before {rows['before']} (entries are kept)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chainkit`` command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="chainkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prices = sub.add_parser("prices", help="list the models and prices of a catalogue")
    prices.add_argument(
        "--catalogue",
        default=DEFAULT_CATALOGUE,
        help=f"bundled name ({', '.join(Catalogue.names())}) or a JSON file",
    )
    prices.add_argument("--provider", help="only this provider's models (e.g. openai, Anthropic)")
    prices.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    prices.set_defaults(run=_prices)
    report = sub.add_parser("report", help="report on a saved SQLite ledger")
    report.add_argument("ledger", help="path of a ledger database (SQLiteLedger)")
    report.add_argument("--traffic", type=int, default=None, help="requests per day to project")
    report.add_argument("--variant-tag", default="variant", help="tag that names the variants")
    report.add_argument(
        "--baseline",
        default=None,
        help="the variant savings are measured against (default: the first one served)",
    )
    report.add_argument("--format", choices=["table", "json"], default="table")
    report.set_defaults(run=_report)
    ledger = sub.add_parser("ledger", help="look after a ledger's saved texts")
    ledger_sub = ledger.add_subparsers(dest="action", required=True)
    purge = ledger_sub.add_parser(
        "purge",
        help="delete saved progress and replies (customers' texts) written before a date",
        description="Delete what resumable runs saved (progress, model replies) before a date. "
        "Entries, which hold no text, are kept.",
    )
    purge.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN")
    purge.add_argument("--before", required=True, help="YYYY-MM-DD (UTC) or an ISO 8601 time")
    purge.add_argument(
        "--schema", default="chainkit", help="PostgreSQL: the ledger's schema (default chainkit)"
    )
    purge.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    purge.set_defaults(run=_purge)
    args = parser.parse_args(argv)
    try:
        print(args.run(args))
    except ChainkitError as exc:
        print(f"chainkit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
