"""What the recipes share: output options and where their ledger lives."""

from __future__ import annotations

import argparse
from pathlib import Path

from chainkit import (
    ConfigError,
    Ledger,
    Model,
    OfflineModel,
    PostgresLedger,
    Report,
    Resume,
    SQLiteLedger,
)

STRONG = "anthropic.claude-sonnet-4-20250514-v1:0"
SMALL = "amazon.nova-micro-v1:0"
REPLY_TOKENS = 150  # Bitext's reference replies run to a median of about 145 tokens


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--format``, ``--ledger`` and ``--resume`` to a recipe's parser."""
    parser.add_argument(
        "--format",
        choices=["table", "json", "markdown"],
        default="table",
        help="how to print the report (default: table)",
    )
    parser.add_argument(
        "--ledger",
        default=None,  # a str: a postgresql:// URI must keep its two slashes
        help="also keep every entry in this new SQLite file (read it back with `chainkit report`), "
        "or in a PostgreSQL database given as postgresql://...",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run kept in --ledger: what it paid for is not paid again",
    )


# The recipes score what the models wrote (ROUGE, intent accuracy), so a resumed run needs the
# texts back: they keep them in the ledger (`chainkit ledger purge` removes them). A service
# answering customers would keep the default: no texts at rest.
RESUME = Resume(keep_text=True)


def open_ledger(where: str | Path | None, *, resume: bool = False) -> Ledger:
    """An in-memory ledger, or an SQLite ledger at ``path`` (new, or continued with ``resume``).

    A ``postgresql://`` URI opens a PostgreSQL ledger instead (shared by every host).
    """
    if where is None:
        if resume:
            raise ConfigError("--resume needs --ledger PATH: the saved progress lives there.")
        return Ledger()
    if str(where).startswith(("postgresql://", "postgres://")):
        ledger = PostgresLedger(str(where))
        if not resume and len(ledger):
            ledger.close()
            raise ConfigError(
                f"{ledger.where} already holds a ledger; a recipe writes a fresh one. Pass "
                "--resume to continue the run it holds, or use another schema or database."
            )
        return ledger
    path = Path(where)
    if path.exists() and not resume:
        raise ConfigError(
            f"{path} already exists; a recipe writes a fresh ledger. Pass --resume to continue "
            "the run it holds, remove it, or choose another path (`chainkit report` reads it)."
        )
    # Every entry is committed before its result comes back (group commit across threads).
    return SQLiteLedger(path)


def render(report: Report, fmt: str) -> str:
    """The report in the chosen format."""
    if fmt == "json":
        return report.to_json()
    if fmt == "markdown":
        return report.to_markdown()
    return report.to_table()


def add_provider_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--provider`` and ``--region`` to a recipe's parser."""
    parser.add_argument(
        "--provider",
        choices=["offline", "bedrock"],
        default="offline",
        help="offline: the embedded stand-in model (default, no network); bedrock: the real "
        "models through Amazon Bedrock with your AWS credentials (costs money)",
    )
    parser.add_argument(
        "--region", default=None, help="AWS region for --provider bedrock (default: your profile's)"
    )


def make_model(
    provider: str,
    model_id: str,
    region: str | None = None,
    *,
    output_tokens: int | None = None,
    latency_s: float = 0.0,
) -> Model:
    """The model a recipe variant uses: the offline stand-in, or the real one on Bedrock.

    ``output_tokens`` and ``latency_s`` shape the stand-in's replies (a real model has its own).
    """
    if provider == "bedrock":
        from chainkit.providers.bedrock import BedrockModel

        return BedrockModel(model_id, region=region)
    return OfflineModel(
        model_id=model_id, region=region, output_tokens=output_tokens, latency_s=latency_s
    )
