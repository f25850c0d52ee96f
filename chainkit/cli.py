"""The chainkit command: list prices, report on a saved ledger, look after its saved texts.

Also what every chainkit command line shares (the recipes' too): an argument parser whose errors
are one line, a type for counts, and :func:`run_command`, which turns the errors a user can fix
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from chainkit.errors import ChainkitError, ConfigError
from chainkit.finops.export_command import add_export_command
from chainkit.ledger.sql import SQLLedger
from chainkit.outfiles import refuse_ledger_as_out, write_atomically
from chainkit.pricing import (
    DEFAULT_CATALOGUE,
    UNKNOWN_CONTEXT_WINDOW,
    Catalogue,
    ModelCard,
    Price,
)
from chainkit.report import Report, money

__all__ = ["ArgumentParser", "count", "help_text", "main", "run_command"]

DEBUG_ENV = "CHAINKIT_DEBUG"
"""Set to 1 to see the traceback of an error instead of its one-line message."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with ``--debug`` and errors on one line (usage stays in ``--help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: given before or after a subcommand, neither parser's default hides it.
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"show the traceback of an error, not just its message (or set {DEBUG_ENV}=1)",
        )

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 and one line: what is wrong, and where help is."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def count(text: str) -> int:
    """An argparse type: a whole number of 1 or more (requests, documents, threads...)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a count: give a whole number of 1 or more")
    return value


def help_text(doc: str | None) -> str:
    r"""A module docstring as argparse shows it: without reStructuredText's markup.

    >>> help_text("Run ``lazy`` (the default)::\n\n    python -m x")
    'Run lazy (the default):\n\n    python -m x'
    """
    return re.sub(r"::$", ":", (doc or "").replace("``", ""), flags=re.M)


def run_command(work: Callable[[], int], *, prog: str, debug: bool = False) -> int:
    """Run a command's body and return its exit status.

    A :class:`ChainkitError`, a known AWS error (no credentials, no region, a refusal), an
    SQLite error or a file that cannot be read or written becomes one line on stderr, prefixed
    with ``prog``, and status 2; with ``debug`` (or ``CHAINKIT_DEBUG=1``) it is raised, with its
    traceback. Output cut short by its reader (``| head``) ends quietly, as Python's
    documentation of SIGPIPE recommends; Ctrl-C is one line too, status 130.
    """
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        status = work()
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        # Python flushes stdout again at exit: send what is left nowhere. (A stdout that is not
        # a file, captured in a test, has nothing to flush.)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as exc:
        if debug:
            raise
        # Ctrl-C is the user's own request: one line, and the shell's status for SIGINT. Its
        # notes say what the interrupt left (where a half-copied file's whole content is).
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
        print(f"{prog}: interrupted{notes}", file=sys.stderr)
        return 130
    except Exception as exc:
        message = explain(exc)
        if message is None or debug:
            raise
        print(f"{prog}: {' '.join(message.split())}", file=sys.stderr)
        return 2


def explain(exc: BaseException) -> str | None:
    """What the user can do about ``exc``, in one line; ``None`` for a bug (let it raise)."""
    if isinstance(exc, ChainkitError):
        return str(exc)
    # botocore is an optional extra: if it was never imported, none of its errors can be here.
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        if isinstance(exc, boto.NoRegionError):
            return (
                "No AWS region: pass --region (e.g. --region us-east-1), or set "
                "AWS_DEFAULT_REGION or a region in your AWS profile."
            )
        if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
            return (
                f"No AWS credentials ({exc}): set AWS_PROFILE to a configured profile, run "
                "`aws configure` or `aws sso login`, or run offline (--provider offline)."
            )
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            return (
                f"AWS refused {exc.operation_name}: {code}: {error.get('Message', exc)}. "
                f"{_AWS_HINTS.get(code, _AWS_HINT)}"
            )
        if isinstance(exc, boto.BotoCoreError):
            return f"AWS: {exc}. Check --region, your network and your AWS configuration."
    if isinstance(exc, sqlite3.Error):
        return (
            f"SQLite: {exc}. Check that the database file is the one meant (a chainkit ledger "
            "from --ledger), not damaged, and not locked by another program."
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}. Check the path and its permissions."
    return None


_AWS_HINT = "Check --region, the model id and your AWS permissions."
_AWS_HINTS = {
    "AccessDeniedException": (
        "Check that your credentials may call Bedrock and that access to the model is enabled "
        "in this region (Bedrock console, Model access)."
    ),
    "ExpiredTokenException": "Your AWS session has expired: log in again (aws sso login).",
    "UnrecognizedClientException": "Your AWS credentials are not valid: check AWS_PROFILE.",
    "ValidationException": "Check the model id and --region: not every model is in every region.",
}


def _version() -> str:
    try:
        return version("chainkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


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


# CSV keeps each price in a column of its own (the table folds them into a few for reading);
# the first five and last three columns match the table's.
_CSV_HEAD = (
    *_HEAD[:5],
    "cache read $/Mtok",
    "cache write $/Mtok",
    "cache write 1h $/Mtok",
    "$/1k queries",
    "$/1k requests",
    "long-context tiers",
    "context",
    *_HEAD[-3:],
)


def _csv_cells(card: ModelCard, p: Price) -> tuple[str, ...]:
    unknown = card.context_window == UNKNOWN_CONTEXT_WINDOW
    return (
        card.id,
        p.region,
        p.tier,
        *(
            money(v) or ""
            for v in (
                p.input,
                p.output,
                p.cache_read,
                p.cache_write,
                p.cache_write_1h,
                p.per_1k_queries,
                p.per_1k_requests,
            )
        ),
        str(len(p.tiers)),
        "" if unknown else str(card.context_window),
        p.effective_date.isoformat(),
        p.confidence,
        p.source_url,
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
    if args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_CSV_HEAD)
        writer.writerows(_csv_cells(card, p) for card in cards for p in card.prices)
        return out.getvalue().rstrip("\n")
    cells = [_price_cells(card, p) for card in cards for p in card.prices]
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
    if args.out is not None:
        refuse_ledger_as_out(args.ledger, args.out)
    text = _report_text(args)
    if args.out is None:
        return text
    data = (text if text.endswith("\n") else text + "\n").encode("utf-8")
    with write_atomically(args.out, binary=True) as file:
        file.write(data)
    return f"Wrote {args.out} ({len(data):,} bytes, {args.format})."


def _report_text(args: argparse.Namespace) -> str:
    if args.by is not None and args.format == "html":
        raise ConfigError(
            f"--by {args.by} prints tables (table, markdown, json or csv); the HTML report "
            "already charts cost by tag: use --format html with --by-tag KEY instead."
        )
    if args.by is not None and args.by not in ("conversation", "turn"):
        from chainkit.finops.commands import report_by

        return report_by(args)
    from chainkit.finops.commands import open_ledger

    # Read-only: a report never changes the ledger (nor creates a file at a mistyped path).
    try:
        with open_ledger(args.ledger, args.schema) as ledger:
            if args.by is not None:  # cost per conversation or per turn index
                from chainkit.finops.conversations import conversation_report

                return getattr(conversation_report(ledger), f"to_{args.format}")(args.by)  # type: ignore[no-any-return]
            report = Report.from_ledger(
                ledger, tag=args.variant_tag, traffic_per_day=args.traffic, baseline=args.baseline
            )
            if args.format == "html":
                from chainkit.finops.html import html_report

                outlook, marked = _outlook(ledger)
                return html_report(ledger, report=report, tags=args.by_tag or ["tenant"],
                                   source=ledger.where, forecast=outlook,
                                   anomalies=marked).rstrip("\n")  # fmt: skip
    except sqlite3.Error as exc:
        raise ChainkitError(
            f"Cannot read ledger {args.ledger}: SQLite says {exc}. Is it a ledger a recipe wrote "
            "with --ledger, and not damaged?"
        ) from exc
    render: dict[str, Callable[[], str]] = {
        "json": report.to_json,
        "markdown": report.to_markdown,
        "csv": report.to_csv,
        "table": report.to_table,
    }
    return render[args.format]()


def _outlook(ledger: SQLLedger) -> tuple[Any, list[Any]]:
    """The HTML report's forecast and the anomalies recorded in the ledger.

    The forecast is None for a ledger too short to fit one; ``chainkit anomalies`` records them.
    """
    from chainkit.finops.anomalies import recorded
    from chainkit.finops.forecast import forecast

    try:
        outlook: Any = forecast(ledger)
    except ConfigError:  # too few days of spend to fit: the page shows spend alone
        outlook = None
    return outlook, list(recorded(ledger))


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
    from chainkit.finops.commands import open_ledger
    from chainkit.ledger.conversations import conversations

    with open_ledger(args.ledger, args.schema, writable=True) as ledger:
        progress, replies = ledger.purge(before)
        texts = conversations(ledger).purge(before)
    rows = {"before": before.isoformat(), "progress": progress, "replies": replies,
            "conversation_texts": texts}  # fmt: skip
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
                "| before | saved progress removed | saved replies removed | conversation texts "
                "removed |",
                "| --- | ---: | ---: | ---: |",
                f"| {rows['before']} | {progress} | {replies} | {texts} |",
            ]
        )
    return (
        f"Removed from {args.ledger}: {progress} requests' saved progress, {replies} saved "
        f"replies and {texts} conversation texts written before {rows['before']} (entries "
        "and conversations' token counts are kept)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chainkit`` command line; return the exit status."""
    parser = ArgumentParser(
        prog="chainkit",
        description="List model prices, report on a saved ledger, look after its saved texts.",
    )
    parser.add_argument("--version", action="version", version=f"chainkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    prices = sub.add_parser(
        "prices",
        help="list the models and prices of a catalogue",
        description="List the models of a price catalogue with their prices per million "
        "tokens, by region and tier, each with its source and effective date.",
    )
    prices.add_argument(
        "--catalogue",
        default=DEFAULT_CATALOGUE,
        help=f"bundled name ({', '.join(Catalogue.names())}) or a JSON file",
    )
    prices.add_argument("--provider", help="only this provider's models (e.g. openai, Anthropic)")
    prices.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    prices.set_defaults(run=_prices)
    report = sub.add_parser(
        "report",
        help="report on a saved SQLite ledger",
        description="What each variant in a ledger cost and saved, by stage, as the recipe "
        "that wrote it printed it. The ledger is only read, never changed.",
    )
    report.add_argument("ledger", help="path of a ledger database (SQLiteLedger)")
    report.add_argument("--traffic", type=count, default=None, help="requests per day to project")
    report.add_argument("--variant-tag", default="variant", help="tag that names the variants")
    report.add_argument(
        "--baseline",
        default=None,
        help="the variant savings are measured against (default: the first one served)",
    )
    report.add_argument(
        "--format",
        choices=["table", "markdown", "json", "csv", "html"],
        default="table",
        help="table (default); markdown: the same tables to paste; json: exact figures; csv: "
        "a row per variant and per variant and stage; html: one self-contained page with charts "
        "(spend per day, cost by stage, model and tag, savings, budgets, variants)",
    )
    report.add_argument("--out", default=None, help="write the report to this file, not stdout")
    report.add_argument(
        "--by-tag",
        action="append",
        metavar="KEY",
        help="html: chart cost by this tag (repeat for several; default tenant)",
    )
    report.add_argument(
        "--by",
        default=None,
        help="conversation or turn: cost per conversation, or per turn index (turns the History "
        "stage recorded); a tag (e.g. tenant, or tenant,feature): showback, with one-off spend "
        "amortised, and unit costs",
    )
    report.add_argument("--schema", default="chainkit", help="PostgreSQL: the ledger's schema")
    report.set_defaults(run=_report)
    ledger = sub.add_parser(
        "ledger",
        help="look after a ledger's saved texts",
        description="Look after what a ledger keeps beside its entries.",
    )
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
    # FinOps commands register their own subcommands (by module path: the package may re-export
    # functions of the same names).
    for module in ("reprice", "commitments", "reconcile"):
        importlib.import_module(f"chainkit.finops.{module}").add_command(sub)
    add_export_command(sub)
    importlib.import_module("chainkit.finops.commands").add_commands(sub)  # forecast, anomalies
    importlib.import_module("chainkit.serve.command").add_command(sub)
    args = parser.parse_args(argv)

    def work() -> int:
        out = args.run(args)
        # A command may return (text, status): reconcile exits 1 when it finds differences.
        text, status = out if isinstance(out, tuple) else (out, 0)
        print(text)
        return int(status)

    return run_command(work, prog="chainkit", debug=getattr(args, "debug", False))


if __name__ == "__main__":
    raise SystemExit(main())
