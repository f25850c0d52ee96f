"""What the recipes share: their command line, output options and where their ledger lives."""

from __future__ import annotations

import argparse
import math
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
from chainkit.cli import ArgumentParser, help_text

STRONG = "anthropic.claude-sonnet-4-20250514-v1:0"
SMALL = "amazon.nova-micro-v1:0"
REPLY_TOKENS = 150  # Bitext's reference replies run to a median of about 145 tokens


def recipe_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A recipe's parser: one-line errors, ``--debug``, its module docstring as description."""
    return ArgumentParser(
        prog=prog,
        description=help_text(doc),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def share(text: str) -> float:
    """An argparse type: a share of the whole, from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share: give a number from 0 to 1")
    return value


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a duration: give seconds, 0 or more")
    return value


def folder(text: str) -> Path:
    """An argparse type: an existing folder."""
    path = Path(text)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(
            f"{text} {what}: give the folder that holds the data sets (e.g. ../shared/data)"
        )
    return path


def check_bedrock(region: str | None) -> None:
    """Refuse ``--provider bedrock`` before any call (or ledger) if AWS has no region or keys."""
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            "--provider bedrock needs boto3: pip install 'chainkit[bedrock]'."
        ) from exc
    session = boto3.Session(region_name=region)
    if session.region_name is None:
        raise ConfigError(
            "--provider bedrock needs an AWS region and none is set: pass --region (e.g. "
            "--region us-east-1), or set AWS_DEFAULT_REGION or a region in your AWS profile."
        )
    if session.get_credentials() is None:
        raise ConfigError(
            "--provider bedrock found no AWS credentials (environment, AWS_PROFILE, ~/.aws, "
            "instance role): set AWS_PROFILE or run `aws configure` (or `aws sso login`); "
            "without --provider the recipe runs offline."
        )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--format``, ``--ledger`` and ``--resume`` to a recipe's parser."""
    parser.add_argument(
        "--format",
        choices=["table", "markdown", "json", "csv"],
        default="table",
        help="how to print the report: table (default), markdown (the same tables), json "
        "(exact figures, assumptions), csv (a row per variant and per stage)",
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
    if fmt == "csv":
        return report.to_csv()
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
