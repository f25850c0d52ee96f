"""What the recipes share: output options and where their ledger lives."""

from __future__ import annotations

import argparse
from pathlib import Path

from chainkit import ConfigError, Ledger, Report, SQLiteLedger


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--format`` and ``--ledger`` to a recipe's parser."""
    parser.add_argument(
        "--format",
        choices=["table", "json", "markdown"],
        default="table",
        help="how to print the report (default: table)",
    )
    parser.add_argument(
        "--ledger",
        type=Path,
        default=None,
        help="also keep every entry in this new SQLite file (read it back with `chainkit report`)",
    )


def open_ledger(path: Path | None) -> Ledger:
    """An in-memory ledger, or a new SQLite ledger at ``path``."""
    if path is None:
        return Ledger()
    if path.exists():
        raise ConfigError(
            f"{path} already exists; a recipe writes a fresh ledger. Remove it or choose another "
            "path (`chainkit report` reads an existing one)."
        )
    return SQLiteLedger(path, batch_size=500)


def render(report: Report, fmt: str) -> str:
    """The report in the chosen format."""
    if fmt == "json":
        return report.to_json()
    if fmt == "markdown":
        return report.to_markdown()
    return report.to_table()
