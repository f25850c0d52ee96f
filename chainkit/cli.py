"""The ``chainkit`` command: list prices, report on a saved ledger."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chainkit.errors import ChainkitError
from chainkit.ledger import SQLiteLedger
from chainkit.pricing import DEFAULT_CATALOGUE, Catalogue
from chainkit.report import Report, money

__all__ = ["main"]


def _prices(args: argparse.Namespace) -> str:
    catalogue = Catalogue.load(args.catalogue)
    if args.format == "json":
        rows = [
            {
                "id": card.id,
                "name": card.name,
                "provider": card.provider,
                "aliases": list(card.aliases),
                "context_window": card.context_window,
                "prices": [
                    {
                        "region": p.region,
                        "tier": p.tier,
                        "input_per_mtok": money(p.input),
                        "output_per_mtok": money(p.output),
                        "cache_read_per_mtok": money(p.cache_read),
                        "cache_write_per_mtok": money(p.cache_write),
                        "source_url": p.source_url,
                        "effective_date": p.effective_date.isoformat(),
                    }
                    for p in card.prices
                ],
            }
            for card in catalogue
        ]
        return json.dumps({"catalogue": catalogue.name, "models": rows}, indent=2)
    head = ("model id", "region", "tier", "in $/Mtok", "out $/Mtok", "cache r/w", "context")
    rows_t = [
        (
            card.id,
            p.region,
            p.tier,
            money(p.input) or "",
            money(p.output) or "",
            f"{money(p.cache_read) or '-'}/{money(p.cache_write) or '-'}",
            f"{card.context_window:,}",
        )
        for card in catalogue
        for p in card.prices
    ]
    widths = [max(len(r[i]) for r in (head, *rows_t)) for i in range(len(head))]
    lines = [f"catalogue {catalogue.name}: {len(catalogue)} models. {catalogue.description}"]
    for r in (head, *rows_t):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> str:
    path = Path(args.ledger)
    # Read-only: a report never changes the file (nor creates one at a mistyped path).
    with SQLiteLedger(path, read_only=True) as ledger:
        report = Report.from_ledger(ledger, tag=args.variant_tag, traffic_per_day=args.traffic)
    return report.to_json() if args.format == "json" else report.to_table()


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
    prices.add_argument("--format", choices=["table", "json"], default="table")
    prices.set_defaults(run=_prices)
    report = sub.add_parser("report", help="report on a saved SQLite ledger")
    report.add_argument("ledger", help="path of a ledger database (SQLiteLedger)")
    report.add_argument("--traffic", type=int, default=None, help="requests per day to project")
    report.add_argument("--variant-tag", default="variant", help="tag that names the variants")
    report.add_argument("--format", choices=["table", "json"], default="table")
    report.set_defaults(run=_report)
    args = parser.parse_args(argv)
    try:
        print(args.run(args))
    except ChainkitError as exc:
        print(f"chainkit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
