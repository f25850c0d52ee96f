"""Reconcile the ledger with what AWS recorded: Bedrock invocation logs and the bill.

Two sources, two questions:

- **Invocation logs** (:func:`read_invocation_logs`, :func:`reconcile_invocations`): did every
  model call chainkit made reach Bedrock once, with the tokens the ledger recorded, and did
  Bedrock log calls chainkit never recorded? Bedrock's model invocation logging writes JSON Lines,
  gzip-compressed, under ``<prefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>/...``;
  each record has ``requestId``, ``timestamp``, ``modelId``, ``operation``,
  ``input.inputTokenCount``, ``input.cacheReadInputTokenCount``,
  ``input.cacheWriteInputTokenCount``, ``output.outputTokenCount`` and the ``requestMetadata``
  the caller sent ("Monitor model invocation using CloudWatch Logs and Amazon S3",
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-invocation-logging.html). chainkit
  sends ``stage`` and ``request_id`` (and the tags not marked private) as ``requestMetadata``,
  escaped by :func:`chainkit.providers.bedrock.encode_metadata`; the join decodes them and pairs
  a log record with the ledger entry of the same request id and stage (and model).
- **The bill** (:func:`read_bill`, :func:`reconcile_bill`): does AWS's Cost and Usage Report 2.0
  or FOCUS 1.2 export from AWS Data Exports (CSV or Parquet, on S3 or on disk) bill, per UTC day,
  model and token class, what the ledger recorded? Columns read: CUR 2.0
  ``line_item_usage_start_date``, ``line_item_usage_end_date``, ``line_item_product_code``,
  ``line_item_line_item_type``, ``line_item_usage_type``, ``line_item_usage_amount``,
  ``pricing_unit``, ``line_item_unblended_cost``, ``line_item_resource_id`` and
  ``product_servicecode``/``product_product_name`` or their keys in the ``product`` map ("Cost and
  Usage Report (CUR) 2.0" data dictionary,
  https://docs.aws.amazon.com/cur/latest/userguide/table-dictionary-cur2.html); FOCUS 1.2
  ``ChargePeriodStart``, ``ChargePeriodEnd``, ``ChargeCategory``, ``ServiceName``,
  ``x_ServiceCode``, ``x_UsageType``, ``PricingQuantity``/``PricingUnit`` (or
  ``ConsumedQuantity``/``ConsumedUnit``), ``BilledCost`` and ``ResourceId`` ("FOCUS 1.2 with AWS
  columns",
  https://docs.aws.amazon.com/cur/latest/userguide/table-dictionary-focus-1-2-aws-columns.html).
  Bedrock bills each token class under its own usage type (``*-input-tokens``,
  ``*-output-tokens``, ``*-cache-read-input-token-count``, ``*-cache-write-input-token-count``;
  Anthropic's models as ``MP:..._InputTokenCount-Units`` and the like, named by the product)
  ("Understanding your Amazon Bedrock Cost and Usage Report data",
  https://docs.aws.amazon.com/bedrock/latest/userguide/cost-mgmt-understanding-cur-data.html).

Money is ``Decimal``, summed exactly. A ledger entry whose cost is unknown (``None``) is never
counted as $0: the day and model it falls in shows the ledger's cost as unknown, and the row is
listed whenever AWS billed anything there, so the bill tells what the call really cost. A known
cost no token class can hold (no usage recorded, a model the catalogue cannot price) is counted
in its day and model's ``unclassified`` row. Token differences are listed whatever they cost.
"""

from __future__ import annotations

import argparse
import csv
import decimal
import functools
import hashlib
import io
import json
import re
import sys
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Literal

from chainkit.errors import ConfigError
from chainkit.money import CONTEXT, ROUNDING, from_units, to_units, usd
from chainkit.outfiles import csv_safe
from chainkit.pricing import Catalogue, base_model_id
from chainkit.providers.bedrock import decode_metadata
from chainkit.records import Entry, Usage
from chainkit.report import money

__all__ = [
    "CSV_COLUMNS",
    "TOKEN_CLASSES",
    "BillExport",
    "BillLine",
    "BillReconciliation",
    "BillRow",
    "Invocation",
    "InvocationDifference",
    "InvocationLogs",
    "InvocationReconciliation",
    "Problem",
    "add_command",
    "parse_invocation",
    "read_bill",
    "read_invocation_logs",
    "reconcile_bill",
    "reconcile_invocations",
    "render",
    "usage_class",
]

TOKEN_CLASSES = ("input", "output", "cache_read", "cache_write")
"""The token classes Bedrock bills apart, as the bill's rows name them."""

Format = Literal["table", "markdown", "json", "csv"]
DiffKind = Literal["missing_in_ledger", "missing_in_logs", "mismatch"]

# Bill amounts are summed exactly: a cost is refused at reading if it has more digits than any
# bill carries, so 300 digits hold any sum of them.
_EXACT = decimal.Context(
    prec=300, traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Overflow]
)
_SLACK = timedelta(minutes=5)  # a ledger entry's time is taken before the call is sent
_BILLABLE = frozenset({"answered", "passed"})


@dataclass(frozen=True, slots=True)
class Problem:
    """A log record or bill line that could not be read, and where it is."""

    source: str
    reason: str


# -- reading objects from S3 or disk ------------------------------------------------------------


def _is_s3(where: str | Path) -> bool:
    return isinstance(where, str) and where.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket: give s3://bucket/prefix.")
    return bucket, prefix


def _sources(
    where: str | Path, suffixes: tuple[str, ...], s3_client: Any | None
) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
    """``(name, open)`` for every object or file under ``where`` whose name ends in a suffix."""
    if _is_s3(where):
        assert isinstance(where, str)
        bucket, prefix = _split_s3(where)
        client = s3_client if s3_client is not None else _s3()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", ()))
        if not keys:
            raise ConfigError(
                f"Nothing under {where}: check the bucket and prefix (for invocation logs, the "
                "prefix set in Bedrock's logging settings; for a bill, the export's S3 path)."
            )
        for key in sorted(keys):
            if key.lower().endswith(suffixes):

                def read(key: str = key) -> BinaryIO:
                    # The object as stored (compressed): its decompressed lines are streamed.
                    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    return io.BytesIO(body)

                yield f"s3://{bucket}/{key}", read
        return
    path = Path(where)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: give a file, a folder or an s3:// URI.")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_file() or file.name.lower().endswith(suffixes):

            def opened(file: Path = file) -> BinaryIO:
                return file.open("rb")

            yield str(file), opened


def _s3() -> Any:
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("Reading from S3 needs boto3: pip install 'chainkit[bedrock]'.") from exc
    return boto3.client("s3")


_CHUNK = 1 << 16
LINE_LIMIT = 1 << 20
"""The longest bill line or log record read (bytes); a longer one is reported, not read.

A Bedrock bill line is a few kilobytes and a log record stores bodies over 100 KB apart, so a
longer line is damage or a decompression bomb: reading stays within this much memory.
"""


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """``stream`` a chunk at a time, gunzipped if it starts with gzip's magic bytes.

    Decompressed here rather than by ``gzip.GzipFile``, which loses what it decompressed in a
    read that meets the end of a stream cut short: every byte before the break is yielded, then
    ``EOFError``. Each chunk is at most 64 KiB, whatever the compression ratio.
    """
    head = stream.read(2)
    stream.seek(0)
    if head != b"\x1f\x8b":
        while chunk := stream.read(_CHUNK):
            yield chunk
        return
    inflate = zlib.decompressobj(31)
    fresh = True
    pending = b""
    while True:
        if not pending:
            pending = stream.read(_CHUNK)
            if not pending:
                break
        fresh = False
        out = inflate.decompress(pending, _CHUNK)
        if inflate.eof:  # a member ends; concatenated members follow (gzip allows it)
            pending = inflate.unused_data
            inflate, fresh = zlib.decompressobj(31), True
        else:
            pending = inflate.unconsumed_tail
        if out:
            yield out
    if not fresh and not inflate.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


def _lines(
    name: str, stream: BinaryIO, problems: list[Problem], limit: int = LINE_LIMIT
) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines of ``stream`` (gunzipped if gzip), read a chunk at a time.

    A line longer than ``limit`` bytes is reported and yielded as ``None`` without being held
    in memory; a gzip stream cut short keeps the lines before the break and reports the rest.
    """
    number = 0
    pending = bytearray()
    skipping = False

    def finish(tail: bytes) -> tuple[int, bytes | None]:
        nonlocal skipping
        if skipping or len(pending) + len(tail) > limit:
            skipping = False
            problems.append(
                Problem(f"{name}:{number}", f"line longer than {limit:,} bytes: not read")
            )
            return number, None
        line = bytes(pending) + tail
        return number, line[:-1] if line.endswith(b"\r") else line

    with stream:
        try:
            for chunk in _chunks(stream):
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    number += 1
                    yield finish(chunk[start:end])
                    pending.clear()
                    start = end + 1
                if not skipping:
                    pending += chunk[start:]
                    if len(pending) > limit:
                        skipping = True  # the rest of this line is dropped as it arrives
                        pending.clear()
        except (EOFError, OSError, zlib.error) as exc:
            # Records before the break were read; the rest of the object is lost.
            problems.append(
                Problem(name, f"gzip stream broken after line {number} ({exc}); the rest is unread")
            )
            return
    if pending or skipping:
        number += 1
        yield finish(b"")


# -- invocation logs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One model invocation as Bedrock's invocation log recorded it.

    ``metadata`` is the ``requestMetadata`` decoded (:func:`decode_metadata`); ``usage`` follows
    chainkit's convention (input excludes cache reads and writes, as Converse reports it).
    """

    aws_request_id: str
    time: datetime
    model_id: str
    usage: Usage
    metadata: Mapping[str, str]
    operation: str | None = None
    error_code: str | None = None
    source: str = ""

    @property
    def request_id(self) -> str | None:
        """The request id chainkit sent, if chainkit made this call."""
        return self.metadata.get("request_id")

    @property
    def stage(self) -> str | None:
        """The stage name chainkit sent, if chainkit made this call."""
        return self.metadata.get("stage")


@dataclass(frozen=True, slots=True)
class InvocationLogs:
    """Every invocation read from a set of log objects, and what could not be read."""

    invocations: tuple[Invocation, ...]
    problems: tuple[Problem, ...]
    files: int


def _token(record: Mapping[str, Any], part: str, name: str, *, required: bool) -> int:
    section = record.get(part)
    value = section.get(name) if isinstance(section, Mapping) else None
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{part}.{name} is {value!r}, not a token count")
    return value


def _timestamp(value: object, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is {value!r}, not a time")
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _decode_pairs(raw: object) -> dict[str, str]:
    """``requestMetadata`` decoded; chainkit's own keys must decode, others are kept as sent."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"requestMetadata is {type(raw).__name__}, not an object")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"requestMetadata pair {key!r}: {value!r} is not text")
        if "=" not in key and "=" not in value:  # nothing escaped: the text as it is
            out[key] = value
            continue
        try:
            name, text = decode_metadata(key), decode_metadata(value)
        except (ValueError, UnicodeDecodeError) as exc:
            if key in ("request_id", "stage"):
                raise ValueError(f"requestMetadata {key!r} does not decode: {exc}") from None
            name, text = key, value  # another application's metadata, not escaped by chainkit
        out[name] = text
    return out


def parse_invocation(record: object, source: str) -> Invocation:
    """One invocation log record as an :class:`Invocation`; ``ValueError`` if it is malformed."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
    missing = [k for k in ("requestId", "timestamp", "modelId") if not record.get(k)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    error = record.get("errorCode")
    # A failed invocation may have no output section: its counts are what was logged, or 0.
    required = error is None
    usage = Usage(
        input_tokens=_token(record, "input", "inputTokenCount", required=required),
        output_tokens=_token(record, "output", "outputTokenCount", required=required),
        cache_read_tokens=_token(record, "input", "cacheReadInputTokenCount", required=False),
        cache_write_tokens=_token(record, "input", "cacheWriteInputTokenCount", required=False),
    )
    return Invocation(
        aws_request_id=str(record["requestId"]),
        time=_timestamp(record["timestamp"], "timestamp"),
        model_id=str(record["modelId"]),
        usage=usage,
        metadata=_decode_pairs(record.get("requestMetadata")),
        operation=record.get("operation") if isinstance(record.get("operation"), str) else None,
        error_code=str(error) if error is not None else None,
        source=source,
    )


def read_invocation_logs(where: str | Path, *, s3_client: Any | None = None) -> InvocationLogs:
    """Read Bedrock model invocation logs from ``s3://bucket/prefix``, a folder or a file.

    Every ``.json.gz`` and ``.json`` object under the prefix is read (gzip is recognised by its
    magic bytes); a line that is not JSON, lacks ``requestId``, ``timestamp`` or ``modelId``, has
    token counts that are not counts, or a chainkit metadata value that does not decode, is
    reported as a :class:`Problem` with its file and line, and reading goes on. A gzip object cut
    short keeps the records before the break and reports the rest as unread.
    """
    invocations: list[Invocation] = []
    problems: list[Problem] = []
    files = 0
    for name, read in _sources(where, (".json.gz", ".json", ".jsonl", ".jsonl.gz"), s3_client):
        files += 1
        for number, raw in _lines(name, read(), problems):
            if raw is None or not raw.strip():
                continue
            source = f"{name}:{number}"
            try:
                record = json.loads(raw)
                invocations.append(parse_invocation(record, source))
            except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
                problems.append(Problem(source, str(exc)[:300]))
    if not files:
        raise ConfigError(
            f"No invocation log objects (.json.gz) under {where}: check the prefix Bedrock's "
            "model invocation logging writes to (it adds AWSLogs/<account>/"
            "BedrockModelInvocationLogs/)."
        )
    return InvocationLogs(tuple(invocations), tuple(problems), files)


@dataclass(frozen=True, slots=True)
class InvocationDifference:
    """One call the ledger and the logs disagree on.

    ``kind``: ``missing_in_ledger`` (AWS logged a call chainkit made, by its metadata, but the
    ledger has no entry for it), ``missing_in_logs`` (the ledger has a billable call AWS did not
    log) or ``mismatch`` (both have it, with different tokens or model; ``fields`` names them).
    """

    kind: DiffKind
    request_id: str | None
    stage: str | None
    model: str | None
    time: datetime | None
    ledger: Usage | None
    logged: Usage | None
    aws_request_id: str | None = None
    entry_id: str | None = None
    fields: tuple[str, ...] = ()
    note: str = ""


def _same_model(a: str, b: str) -> bool:
    # An application inference profile's ARN does not say which model it routes to (chainkit
    # records the model it was told to price it as): such a pair cannot be told apart.
    if "application-inference-profile/" in a or "application-inference-profile/" in b:
        return True
    return _model_key(a) == _model_key(b)


@functools.lru_cache(maxsize=4096)  # a run has a handful of model ids, seen once per call
def _model_key(model_id: str) -> str:
    # An ARN names the model (or profile) after its last '/'; profiles price as their base model.
    tail = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    return base_model_id(tail)


_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def _differing(ledger: Usage | None, logged: Usage) -> tuple[str, ...]:
    if ledger is None:
        return ("usage",)
    return tuple(f for f in _USAGE_FIELDS if getattr(ledger, f) != getattr(logged, f))


def _default_where(catalogue: Catalogue) -> Callable[[Entry], bool]:
    def bedrock(entry: Entry) -> bool:
        # A model the catalogue lacks (a new one) is still a Bedrock call when it is spelled as
        # one: leaving it out would show its day as $0 in the ledger.
        return entry.model is not None and (entry.model in catalogue or _bedrock_like(entry.model))

    return bedrock


@dataclass(frozen=True)
class InvocationReconciliation:
    """The ledger joined to the invocation logs: what matched, what differs, what was unread."""

    matched: int
    differences: tuple[InvocationDifference, ...]
    ledger_entries: int
    invocations: int
    not_chainkit: int
    problems: tuple[Problem, ...]
    since: datetime | None
    until: datetime | None
    duplicates: tuple[Problem, ...] = ()
    """Records whose AWS ``requestId`` was read before (delivered twice): counted once."""
    failed_attempts: int = 0
    """Records of failed attempts (``errorCode``: throttled, refused) of calls the ledger has:
    AWS does not bill them, and the ledger's entry for the call stands for them."""

    @property
    def ok(self) -> bool:
        """No differences and nothing unreadable."""
        return not self.differences and not self.problems

    def to_rows(self) -> list[dict[str, str]]:
        """One row per difference and per unreadable record (the CSV columns)."""
        rows = []
        for d in self.differences:
            rows.append(
                _row(
                    section="invocations",
                    kind=d.kind,
                    when=d.time.isoformat() if d.time else "",
                    request_id=d.request_id or "",
                    stage=d.stage or "",
                    model=d.model or "",
                    usage_type=",".join(d.fields),
                    **_usage_cells("ledger", d.ledger),
                    **_usage_cells("aws", d.logged),
                    aws_id=d.aws_request_id or "",
                    entry_id=d.entry_id or "",
                    note=d.note,
                )
            )
        rows.extend(
            _row(section="invocations", kind="unreadable", source=p.source, note=p.reason)
            for p in self.problems
        )
        rows.extend(
            _row(section="invocations", kind="duplicate", source=p.source, note=p.reason)
            for p in self.duplicates
        )
        return rows

    def to_json_data(self) -> dict[str, Any]:
        """The result as JSON-ready data (times ISO 8601, usage as token counts)."""
        return {
            "matched": self.matched,
            "ledger_entries": self.ledger_entries,
            "invocations": self.invocations,
            "not_chainkit": self.not_chainkit,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "differences": [
                {
                    "kind": d.kind,
                    "request_id": d.request_id,
                    "stage": d.stage,
                    "model": d.model,
                    "time": d.time.isoformat() if d.time else None,
                    "ledger": _usage_json(d.ledger),
                    "logged": _usage_json(d.logged),
                    "aws_request_id": d.aws_request_id,
                    "entry_id": d.entry_id,
                    "fields": list(d.fields),
                    "note": d.note,
                }
                for d in self.differences
            ],
            "problems": [{"source": p.source, "reason": p.reason} for p in self.problems],
            "duplicates": [{"source": p.source, "reason": p.reason} for p in self.duplicates],
            "failed_attempts": self.failed_attempts,
        }

    def summary(self) -> str:
        """One line: how many calls matched and how many differ."""
        kinds: dict[str, int] = defaultdict(int)
        for d in self.differences:
            kinds[d.kind] += 1
        window = (
            f" between {self.since:%Y-%m-%d %H:%M} and {self.until:%Y-%m-%d %H:%M} UTC"
            if self.since and self.until
            else ""
        )
        return (
            f"Invocation logs: {self.invocations} records ({self.not_chainkit} not from chainkit), "
            f"{self.ledger_entries} ledger calls{window}; {self.matched} matched, "
            f"{kinds['missing_in_ledger']} logged but not in the ledger, "
            f"{kinds['missing_in_logs']} in the ledger but not logged, {kinds['mismatch']} "
            f"with different tokens; {len(self.problems)} unreadable records"
            + (
                f"; {self.failed_attempts} failed attempts (not billed)"
                if self.failed_attempts
                else ""
            )
            + (f"; {len(self.duplicates)} duplicate records ignored" if self.duplicates else "")
            + "."
        )


def _usage_cells(side: str, usage: Usage | None) -> dict[str, str]:
    """A call's token counts as the CSV's numeric columns (``ledger_input_tokens``...)."""
    if usage is None:
        return {}
    return {f"{side}_{f}": str(getattr(usage, f)) for f in _USAGE_FIELDS}


def _usage_text(usage: Usage | None) -> str:
    if usage is None:
        return ""
    return (
        f"in {usage.input_tokens} out {usage.output_tokens} "
        f"cache r {usage.cache_read_tokens} w {usage.cache_write_tokens}"
    )


def _usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {f: getattr(usage, f) for f in _USAGE_FIELDS}


def reconcile_invocations(
    ledger: Iterable[Entry] | Any,
    logs: InvocationLogs | Iterable[Invocation],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    where: Callable[[Entry], bool] | None = None,
    catalogue: Catalogue | None = None,
) -> InvocationReconciliation:
    """Join ledger entries to invocation log records by the ``request_id`` and ``stage`` sent.

    Args:
        ledger: any chainkit ledger (read with ``iter_entries``) or entries.
        logs: what :func:`read_invocation_logs` read, or invocations.
        since: compare calls from this time on; by default from the first logged call (less five
            minutes: an entry's time is taken just before its call is sent).
        until: and up to this time; by default the last logged call (plus five minutes).
        where: which entries are Bedrock calls; by default those whose model the Bedrock
            catalogue knows.
        catalogue: the catalogue ``where`` consults (default: the current Bedrock one).

    An entry the logs should show is a call that was answered or passed on; a ``failed`` entry of
    unknown cost (the call may have run) is matched if a record has it, and a match is reported
    with the logged tokens, but its absence is not a difference. Log records without chainkit's
    ``request_id`` come from other applications: counted in ``not_chainkit``, never a difference.
    Within one request id and stage, entries and records are paired so that the pairs differ
    least (model, then tokens, then time: :func:`_pair`); failed attempts (``errorCode``) pair
    only with failed entries, and are otherwise counted in ``failed_attempts`` when the ledger
    has the call. A record whose AWS ``requestId`` was read before is counted once
    (``duplicates``). Entries of models the catalogue lacks are joined when a record names them.
    Entries of Bedrock batch jobs (tagged ``tier=batch``) are left out: a batch record is sent
    without ``requestMetadata``, so nothing joins it; the bill still counts them.
    """
    problems = logs.problems if isinstance(logs, InvocationLogs) else ()
    invocations = []
    duplicates = []
    first_seen: dict[str, Invocation] = {}
    for inv in logs.invocations if isinstance(logs, InvocationLogs) else logs:
        # Log delivery can repeat an object (or a record): one requestId is one invocation.
        before = first_seen.get(inv.aws_request_id)
        if before is None:
            first_seen[inv.aws_request_id] = inv
        else:
            same = (before.usage, before.model_id, before.metadata) == (
                inv.usage,
                inv.model_id,
                inv.metadata,
            )
            duplicates.append(
                Problem(
                    inv.source or inv.aws_request_id,
                    f"requestId {inv.aws_request_id} already read at {before.source}"
                    + ("" if same else " with other contents")
                    + ": counted once",
                )
            )
            continue
        invocations.append(inv)
    where = where or _default_where(catalogue or Catalogue.load())
    if invocations:
        since = since or min(i.time for i in invocations) - _SLACK
        until = until or max(i.time for i in invocations) + _SLACK
    # Both sides are read a little beyond the window, so that a call at its edge still finds its
    # record (an entry's time is taken before the call is sent); only what falls inside it is
    # reported.
    low = since - _SLACK if since else None
    high = until + _SLACK if until else None

    def inside(when: datetime, lo: datetime | None, hi: datetime | None) -> bool:
        return (lo is None or when >= lo) and (hi is None or when <= hi)

    ours: dict[tuple[str, str], list[Invocation]] = defaultdict(list)
    not_chainkit = 0
    invocations = [i for i in invocations if inside(i.time, low, high)]
    for inv in invocations:
        if inv.request_id is None or inv.stage is None:
            not_chainkit += 1
            continue
        ours[(inv.request_id, inv.stage)].append(inv)

    entries: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    counted = 0
    for entry in _entries(ledger):
        # A batch job's records carry no requestMetadata (chainkit tags their entries
        # tier=batch): no log record can be joined to them. An entry a record names by its
        # request id and stage is a Bedrock call whatever its model.
        key = (entry.request_id, entry.stage)
        if entry.tags.get("tier") == "batch" or not (where(entry) or key in ours):
            continue
        if not inside(entry.time, low, high):
            continue
        billable = entry.outcome in _BILLABLE
        maybe = entry.outcome == "failed" and entry.cost is None
        if billable or maybe:
            entries[key].append(entry)
            # Counted over the window reported, not the margin read around it.
            counted += billable and inside(entry.time, since, until)

    differences: list[InvocationDifference] = []
    matched = 0
    failed_attempts = 0
    for key in sorted(set(ours) | set(entries)):
        logged = sorted(ours.get(key, ()), key=lambda i: i.time)
        recorded = sorted(entries.get(key, ()), key=lambda e: e.time)
        for maybe_entry, rec in _pair(recorded, logged):
            if rec is None:
                if maybe_entry is None:  # pragma: no cover - _pair never yields two Nones
                    continue
                entry = maybe_entry
                if entry.outcome in _BILLABLE:
                    differences.append(
                        InvocationDifference(
                            "missing_in_logs",
                            entry.request_id,
                            entry.stage,
                            entry.model,
                            entry.time,
                            entry.usage,
                            None,
                            entry_id=entry.id,
                            note="the ledger has this call; no log record carries its metadata",
                        )
                    )
                continue
            if maybe_entry is None:
                if rec.error_code is not None and recorded:
                    # A throttled or refused attempt of a call the ledger has: not billed, and
                    # the ledger's entry (with its attempts) stands for the call.
                    failed_attempts += inside(rec.time, since, until)
                    continue
                differences.append(
                    InvocationDifference(
                        "missing_in_ledger",
                        rec.request_id,
                        rec.stage,
                        rec.model_id,
                        rec.time,
                        None,
                        rec.usage,
                        aws_request_id=rec.aws_request_id,
                        note=f"logged at {rec.source}"
                        + (f" with error {rec.error_code}" if rec.error_code else ""),
                    )
                )
                continue
            matched += 1
            entry = maybe_entry
            assert entry is not None and entry.model is not None
            if rec.error_code is not None:
                continue  # a failed entry and a failed attempt: both say the call failed
            fields = _differing(entry.usage, rec.usage)
            if not _same_model(entry.model, rec.model_id):
                fields = ("model", *fields)
            if fields:
                note = (
                    "the ledger's cost is unknown; AWS logged these tokens"
                    if entry.usage is None
                    else f"logged at {rec.source}"
                )
                differences.append(
                    InvocationDifference(
                        "mismatch",
                        entry.request_id,
                        entry.stage,
                        entry.model
                        if "model" not in fields
                        else f"{entry.model} (logged {rec.model_id})",
                        entry.time,
                        entry.usage,
                        rec.usage,
                        aws_request_id=rec.aws_request_id,
                        entry_id=entry.id,
                        fields=fields,
                        note=note,
                    )
                )
    return InvocationReconciliation(
        matched=matched,
        differences=tuple(d for d in differences if d.time is None or inside(d.time, since, until)),
        ledger_entries=counted,
        invocations=len(invocations),
        not_chainkit=not_chainkit,
        problems=tuple(problems),
        since=since,
        until=until,
        duplicates=tuple(duplicates),
        failed_attempts=failed_attempts,
    )


def _entries(ledger: Iterable[Entry] | Any) -> Iterator[Entry]:
    reader = getattr(ledger, "iter_entries", None)
    return iter(reader() if reader is not None else ledger)


def _pair(
    entries: Sequence[Entry], logged: Sequence[Invocation]
) -> Iterator[tuple[Entry | None, Invocation | None]]:
    """Pair entries with records of one request id and stage; leftovers pair with ``None``.

    Successful records are paired first, as many as can be, choosing the pairing that differs
    least: in model first, then in tokens, then in time (a rerun or a retry puts several calls
    under one key, and a long call's record can come after a later short one's). Failed
    attempts (``errorCode``) are then paired only with failed entries: a throttled attempt is
    never the record of a call that was answered.
    """
    succeeded = [i for i in logged if i.error_code is None]
    attempts = [i for i in logged if i.error_code is not None]
    pairs = _assign(entries, succeeded)
    left = [e for n, e in enumerate(entries) if n not in pairs]
    failed = [e for e in left if e.outcome == "failed"]
    second = _assign(failed, attempts)
    used = set(pairs.values())
    for n, entry in enumerate(entries):
        if n in pairs:
            yield entry, succeeded[pairs[n]]
    for n, entry in enumerate(failed):
        if n in second:
            yield entry, attempts[second[n]]
    paired_failed = {id(failed[n]) for n in second}
    for entry in left:
        if id(entry) not in paired_failed:
            yield entry, None
    for n, inv in enumerate(succeeded):
        if n not in used:
            yield None, inv
    used_attempts = set(second.values())
    for n, inv in enumerate(attempts):
        if n not in used_attempts:
            yield None, inv


_ASSIGN_LIMIT = 40_000  # entries x records under one key: beyond it, a cheaper pairing
_INFINITE = 1 << 400  # above any pairing's cost (a cost is under 2**202)


def _cost(entry: Entry, inv: Invocation) -> int:
    """How much pairing ``entry`` with ``inv`` differs: model, then tokens, then time (ms)."""
    assert entry.model is not None
    model = 0 if _same_model(entry.model, inv.model_id) else 1
    usage = entry.usage
    tokens = (
        1 << 62
        if usage is None
        else sum(abs(getattr(usage, f) - getattr(inv.usage, f)) for f in _USAGE_FIELDS)
    )
    ms = int(abs((inv.time - entry.time).total_seconds()) * 1000)
    return (model << 200) + (min(tokens, (1 << 62)) << 100) + min(ms, 1 << 90)


def _assign(entries: Sequence[Entry], logged: Sequence[Invocation]) -> dict[int, int]:
    """The pairing of entries to records (indices) of least total :func:`_cost`, as many as can be.

    The Hungarian method (exact) up to :data:`_ASSIGN_LIMIT` candidate pairs; past it, calls
    with identical model and tokens pair in time order, the rest in time order.
    """
    if not entries or not logged:
        return {}
    if len(entries) == 1 and len(logged) == 1:
        return {0: 0}  # the common case: one call, one record
    if len(entries) * len(logged) > _ASSIGN_LIMIT:
        return _assign_large(entries, logged)
    if len(entries) <= len(logged):
        rows = _hungarian([[_cost(e, i) for i in logged] for e in entries])
        return {r: c for r, c in enumerate(rows)}
    cols = _hungarian([[_cost(e, i) for e in entries] for i in logged])
    return {c: r for r, c in enumerate(cols)}


def _hungarian(cost: list[list[int]]) -> list[int]:
    """For an n x m matrix (n <= m), the column of each row in a least-cost assignment."""
    n, m = len(cost), len(cost[0])
    u, v = [0] * (n + 1), [0] * (m + 1)
    way, match = [0] * (m + 1), [0] * (m + 1)  # match[j]: the row (1-based) column j holds
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        least = [_INFINITE] * (m + 1)
        done = [False] * (m + 1)
        while True:
            done[j0] = True
            i0, delta, j1 = match[j0], _INFINITE, 0
            for j in range(1, m + 1):
                if done[j]:
                    continue
                cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                if cur < least[j]:
                    least[j], way[j] = cur, j0
                if least[j] < delta:
                    delta, j1 = least[j], j
            for j in range(m + 1):
                if done[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    out = [0] * n
    for j in range(1, m + 1):
        if match[j]:
            out[match[j] - 1] = j - 1
    return out


def _assign_large(entries: Sequence[Entry], logged: Sequence[Invocation]) -> dict[int, int]:
    buckets: dict[tuple[str, Usage | None], list[int]] = defaultdict(list)
    for n in sorted(range(len(logged)), key=lambda n: logged[n].time):
        buckets[(_model_key(logged[n].model_id), logged[n].usage)].append(n)
    pairs: dict[int, int] = {}
    order = sorted(range(len(entries)), key=lambda n: entries[n].time)
    for n in order:
        model = entries[n].model
        bucket = buckets.get((_model_key(model or ""), entries[n].usage))
        if bucket:
            pairs[n] = bucket.pop(0)
    rest = sorted({k for b in buckets.values() for k in b}, key=lambda k: logged[k].time)
    for n, k in zip((n for n in order if n not in pairs), rest, strict=False):
        pairs[n] = k
    return pairs


# -- the bill -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillLine:
    """One Bedrock usage line of a bill, read into chainkit's terms.

    ``usage_type`` is the token class (:data:`TOKEN_CLASSES`) or, for anything else Bedrock
    bills (images, provisioned throughput), the raw usage type. ``tokens`` is ``None`` when the
    line's pricing unit is not a count of tokens chainkit recognises.
    """

    day: date
    model: str
    usage_type: str
    raw_usage_type: str
    tokens: int | None
    cost: Decimal
    mapped: bool
    source: str


@dataclass(frozen=True)
class BillExport:
    """The Bedrock usage lines of a CUR 2.0 or FOCUS 1.2 export, and what was left out."""

    kind: Literal["cur2", "focus"]
    lines: tuple[BillLine, ...]
    first_day: date | None
    last_day: date | None
    skipped: Mapping[str, int]
    problems: tuple[Problem, ...]
    files: int
    duplicates: tuple[Problem, ...] = ()
    """Lines identical to one read before (the same export under two prefixes): ignored."""


_CUR_COLUMNS = {
    "start": ("line_item_usage_start_date",),
    "end": ("line_item_usage_end_date",),
    "service": ("line_item_product_code", "product_servicecode", "product.servicecode"),
    "name": ("product_product_name", "product.product_name", "product_name"),
    "type": ("line_item_line_item_type",),
    "usage_type": ("line_item_usage_type",),
    "amount": ("line_item_usage_amount",),
    "unit": ("pricing_unit",),
    "cost": ("line_item_unblended_cost",),
    "resource": ("line_item_resource_id",),
    "currency": ("line_item_currency_code",),
}
_FOCUS_COLUMNS = {
    "start": ("ChargePeriodStart",),
    "end": ("ChargePeriodEnd",),
    "service": ("x_ServiceCode",),
    "name": ("ServiceName",),
    "type": ("ChargeCategory",),
    "usage_type": ("x_UsageType",),
    "amount": ("PricingQuantity", "ConsumedQuantity"),
    "unit": ("PricingUnit", "ConsumedUnit"),
    "cost": ("BilledCost",),
    "resource": ("ResourceId",),
    "currency": ("BillingCurrency",),
}
# CUR line item types that are usage (the rest are credits, taxes, fees, refunds...).
_CUR_USAGE = frozenset({"Usage", "DiscountedUsage", "SavingsPlanCoveredUsage"})
_UNIT = re.compile(r"^\s*(?:(\d+)\s*([kKmM])?\s+)?tokens?\s*$", re.IGNORECASE)
_MODEL_IN_USAGE_TYPE = re.compile(
    r"^(?:[A-Z]{2,4}\d?-)?(?P<model>.+?)-(?:mantle-)?(?:input|output|cache-read|cache-write)",
    re.IGNORECASE,
)
_EDITION = re.compile(r"\s*\(amazon bedrock edition\)\s*$", re.IGNORECASE)


def usage_class(usage_type: str) -> str | None:
    """The token class a Bedrock usage type bills, or ``None`` if it bills no tokens.

    >>> usage_class("USE1-NovaMicro-input-tokens"), usage_class("USE1-MP:USE1_OutputTokenCount-Units")
    ('input', 'output')
    >>> usage_class("USE1-Claude4.5Sonnet-cache-read-input-token-count")
    'cache_read'
    """  # noqa: E501
    text = usage_type.lower().replace("_", "-")
    if "cache-read" in text or "cacheread" in text:
        return "cache_read"
    if "cache-write" in text or "cachewrite" in text:
        return "cache_write"
    if "output" in text:
        return "output"
    if "input" in text:
        return "input"
    return None


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", _EDITION.sub("", text).lower())


class _Models:
    """Resolves a bill's model label (usage type, product name, resource id) to a catalogue id."""

    def __init__(self, catalogue: Catalogue, model_map: Mapping[str, str]) -> None:
        self.catalogue = catalogue
        self.explicit = {_norm(k): v for k, v in model_map.items()}
        index: dict[str, set[str]] = defaultdict(set)
        for card in catalogue:
            _, _, rest = base_model_id(card.id).partition(".")
            stem = re.sub(r"-v\d+(?::\d+)?$|:\d+$", "", rest)
            names = {
                card.name,
                re.sub(r"^(amazon|anthropic|meta|mistral)\s+", "", card.name, flags=re.I),
            }
            for key in (card.id, *card.aliases, rest, stem, *names):
                if key:
                    index[_norm(key)].add(card.id)
        # A name two models share (after normalising) resolves to neither.
        self.index = {k: next(iter(v)) for k, v in index.items() if len(v) == 1}

    def canonical(self, model_id: str) -> str:
        key = _model_key(model_id)
        if key in self.catalogue:
            return self.catalogue.card(key).id
        return key

    def resolve(self, usage_type: str, name: str, resource: str) -> tuple[str, bool]:
        match = _MODEL_IN_USAGE_TYPE.match(usage_type)
        label = match.group("model") if match and ":" not in match.group("model") else ""
        for candidate in (label, name, resource):
            if candidate and _norm(candidate) in self.explicit:
                return self.canonical(self.explicit[_norm(candidate)]), True
        for marker in ("foundation-model/", "inference-profile/"):
            if marker in resource:
                model = resource.split(marker, 1)[1]
                if model in self.catalogue:
                    return self.canonical(model), True
        for candidate in (label, name):
            if candidate:
                if candidate in self.catalogue:
                    return self.canonical(candidate), True
                found = self.index.get(_norm(candidate))
                if found is not None:
                    return found, True
        return label or _EDITION.sub("", name) or resource or usage_type, False


def _cell(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if "." in name:
            column, _, key = name.partition(".")
            nested = row.get(column)
            if isinstance(nested, str) and nested.startswith("{"):
                try:
                    nested = json.loads(nested)  # CUR 2.0 CSV writes map columns as JSON
                except ValueError:
                    nested = None
            if isinstance(nested, list):  # Parquet maps arrive as (key, value) pairs
                nested = dict(nested)
            value = nested.get(key) if isinstance(nested, Mapping) else None
        else:
            value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{what} is {value!r}, not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # Parquet stores doubles: their shortest repr is the figure AWS wrote.
        return Decimal(repr(value))
    try:
        number = Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError(f"{what} is {value!r}, not a number") from None
    if not number.is_finite():
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return number


def _bill_amount(value: object) -> Decimal:
    """A bill line's cost; more digits than a bill carries is damage, not money."""
    cost = _decimal(value, "cost")
    exponent = cost.as_tuple().exponent
    if cost and (cost.adjusted() > 14 or (isinstance(exponent, int) and exponent < -40)):
        raise ValueError(f"cost is {value!r}: not an amount a bill carries")
    return cost


def _tokens(amount: Decimal, unit: object) -> int | None:
    match = _UNIT.match(str(unit or ""))
    if match is None:
        return None
    scale = (
        int(match.group(1) or 1)
        * {"": 1, "k": 1000, "m": 1_000_000}[(match.group(2) or "").lower()]
    )
    with decimal.localcontext(ROUNDING):
        return int((amount * scale).to_integral_value())


def _rows(
    name: str, stream: BinaryIO, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line or row number, row)`` of a CSV (gzip or not) or Parquet bill, streamed.

    A CSV line that is not UTF-8, is longer than :data:`LINE_LIMIT`, has a field over the csv
    module's limit or a number of fields other than the header's is reported with its line and
    the rest is read; a Parquet file is read a batch of rows at a time.
    """
    if name.lower().endswith(".parquet"):
        yield from _parquet_rows(name, stream, problems)
        return

    def text(lines: Iterator[tuple[int, bytes | None]]) -> Iterator[str]:
        for number, raw in lines:
            if raw is None:
                yield "\n"  # reported by _lines; an empty line is skipped below
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    Problem(f"{name}:{number}", f"not UTF-8 (byte {exc.start + 1}): not read")
                )
                yield "\n"
                continue
            yield (line.removeprefix("\ufeff") if number == 1 else line) + "\n"

    reader = csv.reader(text(_lines(name, stream, problems)))
    header: list[str] | None = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(Problem(f"{name}:{reader.line_num}", f"unreadable CSV: {exc}"[:300]))
            continue
        if not fields:
            continue
        if header is None:
            header = fields
        elif len(fields) != len(header):
            problems.append(
                Problem(
                    f"{name}:{reader.line_num}",
                    f"{len(fields)} fields where the header has {len(header)}: not read",
                )
            )
        else:
            yield reader.line_num, dict(zip(header, fields, strict=True))


def _parquet_rows(
    name: str, stream: BinaryIO, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"{name} is Parquet, which needs pyarrow: pip install 'chainkit[finops]' (or "
            "export the bill as CSV)."
        ) from exc
    number = 0
    with stream:
        try:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=10_000):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except Exception as exc:  # pyarrow's errors: not a Parquet file, truncated
            if type(exc).__module__.split(".")[0] != "pyarrow":
                raise
            where = name if not number else f"{name} after row {number}"
            problems.append(Problem(where, f"unreadable Parquet: {exc}"[:300]))


def read_bill(
    where: str | Path,
    *,
    s3_client: Any | None = None,
    catalogue: Catalogue | None = None,
    model_map: Mapping[str, str] | None = None,
) -> BillExport:
    """Read the Bedrock usage lines of a CUR 2.0 or FOCUS 1.2 export (CSV, CSV.gz or Parquet).

    ``where`` is a file, a folder or ``s3://bucket/prefix`` (every ``.csv``, ``.csv.gz`` and
    ``.parquet`` object under it; manifests are skipped). The format is told by the columns.
    Only usage lines of Amazon Bedrock count (CUR: line item types Usage, DiscountedUsage and
    SavingsPlanCoveredUsage; FOCUS: ChargeCategory Usage); credits, taxes and other services are
    counted in ``skipped``. Each line's model is found from ``model_map`` (a usage-type model
    label, product name or resource id to a model id), the resource id's model ARN, or the
    catalogue's ids and names; a line no rule maps keeps its label and is marked unmapped. An
    export whose lines span more than a day (monthly granularity) is refused: reconciling needs
    DAILY or HOURLY.
    """
    catalogue = catalogue or Catalogue.load()
    models = _Models(catalogue, model_map or {})
    lines: list[BillLine] = []
    problems: list[Problem] = []
    skipped: dict[str, int] = defaultdict(int)
    first: date | None = None
    last: date | None = None
    kind: Literal["cur2", "focus"] | None = None
    files = 0
    seen: dict[str, str] = {}
    duplicates: list[Problem] = []
    for name, read in _sources(where, (".csv", ".csv.gz", ".parquet", ".gz"), s3_client):
        files += 1
        columns: Mapping[str, tuple[str, ...]] | None = None
        for number, row in _rows(name, read(), problems):
            if columns is None:
                this = _kind(row, name)
                if kind is not None and this != kind:
                    raise ConfigError(
                        f"{name} is a {this} export but earlier files were {kind}: point --bill "
                        "at one export's folder."
                    )
                kind = this
                columns = _CUR_COLUMNS if kind == "cur2" else _FOCUS_COLUMNS
            source = f"{name}:{number}"
            try:
                start = _timestamp(_cell(row, columns["start"]), "usage start")
                end_value = _cell(row, columns["end"])
                if end_value is not None:
                    span = _timestamp(end_value, "usage end") - start
                    if span > timedelta(days=1):
                        raise ConfigError(
                            f"{source}: a line spans {span} ({start:%Y-%m-%d} on): the export "
                            "is monthly. Reconciling needs an export with TIME_GRANULARITY "
                            "DAILY or HOURLY."
                        )
                day = start.astimezone(UTC).date()
                first = day if first is None or day < first else first
                last = day if last is None or day > last else last
                service = str(_cell(row, columns["service"]) or "")
                product = str(_cell(row, columns["name"]) or "")
                if "bedrock" not in f"{service} {product}".lower():
                    skipped["other services"] += 1
                    continue
                line_type = str(_cell(row, columns["type"]) or "")
                if (kind == "cur2" and line_type not in _CUR_USAGE) or (
                    kind == "focus" and line_type != "Usage"
                ):
                    skipped[f"Bedrock {line_type or 'untyped'} lines"] += 1
                    continue
                currency = str(_cell(row, columns["currency"]) or "USD").strip().upper()
                if currency != "USD":
                    # The ledger is in USD; a rate chainkit guessed would be a wrong amount.
                    raise ConfigError(
                        f"{source}: the bill's costs are in {currency}, the ledger's in USD; "
                        "chainkit converts no currency. Reconcile an export whose costs are in "
                        f"USD ({columns['currency'][0]} USD)."
                    )
                raw_type = str(_cell(row, columns["usage_type"]) or "")
                cost = _bill_amount(_cell(row, columns["cost"]))
                amount = _cell(row, columns["amount"])
                tokens = (
                    None
                    if amount is None
                    else _tokens(_decimal(amount, "usage amount"), _cell(row, columns["unit"]))
                )
                model, mapped = models.resolve(
                    raw_type, product, str(_cell(row, columns["resource"]) or "")
                )
            except ConfigError:
                raise
            except ValueError as exc:
                problems.append(Problem(source, str(exc)[:300]))
                continue
            # The same export under two prefixes (or delivered twice) would bill its lines twice:
            # a line identical in every column to one read before is a duplicate.
            digest = hashlib.blake2b(
                json.dumps(row, sort_keys=True, default=str).encode(), digest_size=16
            ).hexdigest()
            if digest in seen:
                duplicates.append(Problem(source, f"identical to {seen[digest]}: not counted"))
                continue
            seen[digest] = source
            cls = usage_class(raw_type)
            lines.append(
                BillLine(
                    day=day,
                    model=model,
                    usage_type=cls or raw_type,
                    raw_usage_type=raw_type,
                    tokens=tokens if cls is not None else None,
                    cost=cost,
                    mapped=mapped,
                    source=source,
                )
            )
    if not files:
        raise ConfigError(
            f"No bill files (.csv, .csv.gz, .parquet) under {where}: point --bill at the "
            "export's S3 path or a downloaded file."
        )
    return BillExport(
        kind=kind or "cur2",
        lines=tuple(lines),
        first_day=first,
        last_day=last,
        skipped=dict(skipped),
        problems=tuple(problems),
        files=files,
        duplicates=tuple(duplicates),
    )


def _kind(row: Mapping[str, Any], name: str) -> Literal["cur2", "focus"]:
    if "line_item_usage_type" in row:
        return "cur2"
    if "ChargePeriodStart" in row:
        return "focus"
    # The columns are not named: a file without a header would show its first record's values.
    raise ConfigError(
        f"{name} is neither a CUR 2.0 export (no line_item_usage_type column) nor a FOCUS 1.2 "
        f"one (no ChargePeriodStart column) among its {len(row)} columns. Export CUR 2.0 or "
        "FOCUS 1.2 from AWS Data Exports."
    )


@dataclass(frozen=True, slots=True)
class BillRow:
    """One UTC day, model and token class: what the ledger recorded and what AWS billed.

    ``ledger_cost`` is the ledger's cost of those tokens: each entry's cost shared among its
    token classes in proportion to the catalogue's rates (in whole 1e-24 USD, so a day's rows add
    up to exactly what its entries cost). An entry whose cost cannot be shared (it has no token
    usage, or its model is not in the catalogue) has its cost in the day and model's
    ``unclassified`` row. ``ledger_cost`` is ``None`` when an entry of that day and model has an
    unknown cost, or when the bill's model label is not placed (``mapped`` false): chainkit then
    does not know what the ledger holds against it. ``ledger_tokens`` is ``None`` when unknown
    (an unplaced label, the ``unclassified`` row). ``difference`` is billed less ledger
    (``None`` when the ledger's cost is unknown).
    """

    day: date
    model: str
    usage_type: str
    ledger_tokens: int | None
    billed_tokens: int | None
    ledger_cost: Decimal | None
    billed_cost: Decimal
    unknown_entries: int = 0
    mapped: bool = True
    billed_lines: int = 0
    unclassified_entries: int = 0
    no_usage_entries: int = 0

    @property
    def difference(self) -> Decimal | None:
        """Billed less recorded; ``None`` when the ledger's cost is unknown."""
        if self.ledger_cost is None:
            return None
        with decimal.localcontext(_EXACT):
            return self.billed_cost - self.ledger_cost

    @property
    def token_difference(self) -> int | None:
        """Billed less recorded tokens; ``None`` when either count is unknown."""
        if self.ledger_tokens is None or self.billed_tokens is None:
            return None
        return self.billed_tokens - self.ledger_tokens

    def note(self) -> str:
        """Why the row is listed, for people."""
        parts = []
        if not self.mapped:
            parts.append(
                f"model label {self.model!r} is not in the catalogue: map it with --model-map "
                f"'{self.model}=<model id>'; the ledger's side is unknown"
            )
        if self.unknown_entries:
            parts.append(
                f"{self.unknown_entries} ledger entries of unknown cost on this day and model; "
                f"AWS billed {usd(self.billed_cost)}"
            )
        if self.usage_type == "unclassified":
            parts.append(
                f"{self.unclassified_entries} ledger entries whose cost cannot be placed in a "
                "token class (no token usage, or a model the catalogue cannot price): compare "
                "this model's day as a whole"
            )
        elif self.unclassified_entries:
            parts.append(
                f"{self.unclassified_entries} entries of this day and model are in its "
                "'unclassified' row"
            )
        if self.no_usage_entries and self.usage_type != "unclassified":
            parts.append(
                f"{self.no_usage_entries} entries of this day and model recorded no token "
                "usage: the ledger's tokens are a lower bound"
            )
        diff = self.token_difference
        if diff:
            parts.append(f"tokens differ by {diff:+,}")
        return "; ".join(parts)


BillDiffKind = Literal["unknown", "difference", "tokens"]


@dataclass(frozen=True)
class BillReconciliation:
    """The ledger compared with a bill per day, model and token class."""

    rows: tuple[BillRow, ...]
    threshold: Decimal
    kind: str
    first_day: date | None
    last_day: date | None
    skipped: Mapping[str, int]
    problems: tuple[Problem, ...]
    ledger_cost: Decimal | None
    billed_cost: Decimal
    duplicates: tuple[Problem, ...] = ()

    def kind_of(self, row: BillRow) -> BillDiffKind | None:
        """Why ``row`` is listed, or ``None`` if it is not.

        ``unknown``: the ledger's cost is unknown and AWS billed a line there (or the tokens
        differ); ``difference``: the costs differ by more than the threshold; ``tokens``: the
        token counts differ (whatever the costs do: tokens billed at no extra cost are still
        tokens the ledger did not record).
        """
        diff = row.difference
        tokens = row.token_difference
        if diff is None:
            return "unknown" if row.billed_lines or tokens else None
        if abs(diff) > self.threshold:
            return "difference"
        if tokens:
            return "tokens"
        return None

    @property
    def discrepancies(self) -> tuple[BillRow, ...]:
        """Rows listed: see :meth:`kind_of`."""
        return tuple(row for row in self.rows if self.kind_of(row) is not None)

    @property
    def ok(self) -> bool:
        """No discrepancy and nothing unreadable."""
        return not self.discrepancies and not self.problems

    def summary(self) -> str:
        """One line: the period, the totals and how many rows differ."""
        period = (
            f"{self.first_day} to {self.last_day}"
            if self.first_day and self.last_day
            else "no days"
        )
        kinds: dict[str, int] = defaultdict(int)
        for row in self.rows:
            kinds[str(self.kind_of(row))] += 1
        dupes = f"; {len(self.duplicates)} duplicate lines ignored" if self.duplicates else ""
        return (
            f"Bill ({self.kind}, {period}): AWS billed {usd(self.billed_cost)} for Bedrock, the "
            f"ledger recorded {usd(self.ledger_cost)}; of {len(self.rows)} day x model x usage "
            f"rows, {kinds['difference']} differ by more than {usd(self.threshold)}, "
            f"{kinds['tokens']} in tokens only, {kinds['unknown']} with the ledger's cost "
            f"unknown; {len(self.problems)} unreadable lines{dupes}."
        )

    def to_rows(self) -> list[dict[str, str]]:
        """One row per discrepancy, unreadable and duplicate line (the CSV columns)."""
        rows = [
            _row(
                section="bill",
                kind=str(self.kind_of(r)),
                when=r.day.isoformat(),
                model=r.model,
                usage_type=r.usage_type,
                ledger_tokens="" if r.ledger_tokens is None else str(r.ledger_tokens),
                aws_tokens="" if r.billed_tokens is None else str(r.billed_tokens),
                ledger_cost=_exact(r.ledger_cost),
                aws_cost=_exact(r.billed_cost),
                difference=_exact(r.difference),
                note=r.note(),
            )
            for r in self.discrepancies
        ]
        rows.extend(
            _row(section="bill", kind="unreadable", source=p.source, note=p.reason)
            for p in self.problems
        )
        rows.extend(
            _row(section="bill", kind="duplicate", source=p.source, note=p.reason)
            for p in self.duplicates
        )
        return rows

    def to_json_data(self) -> dict[str, Any]:
        """The result as JSON-ready data; money as exact decimal strings."""

        def row(r: BillRow) -> dict[str, Any]:
            return {
                "day": r.day.isoformat(),
                "model": r.model,
                "usage_type": r.usage_type,
                "kind": self.kind_of(r),
                "ledger_tokens": r.ledger_tokens,
                "billed_tokens": r.billed_tokens,
                "ledger_cost": _exact(r.ledger_cost) or None,
                "billed_cost": _exact(r.billed_cost),
                "difference": _exact(r.difference) or None,
                "unknown_entries": r.unknown_entries,
                "mapped": r.mapped,
                "note": r.note(),
            }

        return {
            "format": self.kind,
            "first_day": self.first_day.isoformat() if self.first_day else None,
            "last_day": self.last_day.isoformat() if self.last_day else None,
            "threshold": _exact(self.threshold),
            "ledger_cost": _exact(self.ledger_cost) or None,
            "billed_cost": _exact(self.billed_cost),
            "skipped": dict(self.skipped),
            "discrepancies": [row(r) for r in self.discrepancies],
            "rows": [row(r) for r in self.rows],
            "problems": [{"source": p.source, "reason": p.reason} for p in self.problems],
            "duplicates": [{"source": p.source, "reason": p.reason} for p in self.duplicates],
        }


def _exact(amount: Decimal | None) -> str:
    return money(amount) or ""


def _class_tokens(usage: Usage) -> dict[str, int]:
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_read": usage.cache_read_tokens,
        "cache_write": usage.cache_write_tokens,
    }


def _int_rates(catalogue: Catalogue, model: str) -> dict[str, int] | None:
    """The catalogue's per-class rates of ``model`` as integers in one common scale.

    Shares are proportional to tokens x rate: scaling every rate alike changes no share, and
    integers make the split exact and fast. ``None`` if the catalogue has no price for it.
    """
    try:
        price = catalogue.price(model)
    except ConfigError:
        return None
    rates = {
        "input": price.input,
        "output": price.output,
        "cache_read": price.cache_read if price.cache_read is not None else price.input,
        "cache_write": price.cache_write if price.cache_write is not None else price.input,
    }
    places = max(-min(0, int(r.as_tuple().exponent)) for r in rates.values())
    return {c: int(r.scaleb(places, CONTEXT)) for c, r in rates.items()}


def _split_units(
    entry: Entry, catalogue: Catalogue, cache: dict[str, dict[str, int] | None] | None = None
) -> dict[str, int] | None:
    """``entry.cost`` in whole 1e-24 USD shared among its token classes by their list cost.

    ``None`` when it cannot be shared: no usage, no priced tokens, or no catalogue price.
    Every class but the heaviest takes the floor of its exact share and the heaviest the rest,
    so the shares are never negative and add up to the entry's cost exactly.
    """
    assert entry.cost is not None and entry.model is not None
    if entry.usage is None:
        return None
    cache = {} if cache is None else cache
    if entry.model not in cache:
        cache[entry.model] = _int_rates(catalogue, entry.model)
    rates = cache[entry.model]
    if rates is None:
        return None
    units = to_units(entry.cost)
    tokens = _class_tokens(entry.usage)
    weights = {c: tokens[c] * rates[c] for c in TOKEN_CLASSES if tokens[c]}
    total = sum(weights.values())
    if not total:
        return None
    heaviest = max(weights, key=lambda c: weights[c])
    shares = {c: int(units * w // total) for c, w in weights.items() if c != heaviest}
    shares[heaviest] = units - sum(shares.values())
    return shares


def _bedrock_like(model: str) -> bool:
    """Whether ``model`` is spelled as a Bedrock model id or ARN (``provider.name...``).

    >>> [_bedrock_like(m) for m in ("amazon.nova-9-v1:0", "eu.ai21.jamba-2", "gpt-4.1")]
    [True, True, False]
    >>> [_bedrock_like(m) for m in ("llama3.2", "claude-3-haiku", "qwen2.5:7b")]
    [False, False, False]
    """
    return bool(_BEDROCK_ID.match(model))


# A Bedrock model id is "<provider>.<name>", maybe behind a geography prefix ("us.", "global.")
# or inside an ARN; "gpt-4.1", "claude-3-haiku" (other vendors' own APIs) and "llama3.2" (a
# local model's tag) are not.
_BEDROCK_ID = re.compile(r"^(?:arn:aws[\w-]*:bedrock:|(?:[a-z]{2,6}\.)?[a-z][a-z0-9]+\.[a-z])")


def reconcile_bill(
    ledger: Iterable[Entry] | Any,
    export: BillExport,
    threshold: Decimal | str = Decimal("0.01"),
    *,
    since: date | None = None,
    until: date | None = None,
    where: Callable[[Entry], bool] | None = None,
    catalogue: Catalogue | None = None,
) -> BillReconciliation:
    """Compare the ledger with a bill per UTC day, model and token class.

    Args:
        ledger: any chainkit ledger (read with ``iter_entries``) or entries.
        export: what :func:`read_bill` read.
        threshold: list rows whose billed and recorded costs differ by more than this (USD);
            rows whose token counts differ, or whose ledger cost is unknown where AWS billed,
            are listed whatever the threshold.
        since: first day compared; by default the export's first day (any service's).
        until: last day compared; by default the export's last day: AWS bills a day late, so
            later entries are not yet on the bill.
        where: which entries are Bedrock calls; by default those whose model the Bedrock
            catalogue knows or whose id is spelled as a Bedrock model id.
        catalogue: resolves model ids and shares an entry's cost among its token classes.
    """
    threshold = _decimal(threshold, "threshold")
    if threshold < 0:
        raise ConfigError(f"threshold {threshold} is negative; give an amount in USD such as 0.01.")
    catalogue = catalogue or Catalogue.load()
    models = _Models(catalogue, {})
    where = where or _default_where(catalogue)
    first = since or export.first_day
    last = until or export.last_day
    tokens: dict[tuple[date, str, str], int] = defaultdict(int)
    units: dict[tuple[date, str, str], int] = defaultdict(int)
    unknown: dict[tuple[date, str], int] = defaultdict(int)
    unclassified: dict[tuple[date, str], int] = defaultdict(int)
    no_usage: dict[tuple[date, str], int] = defaultdict(int)
    ledger_units = 0
    ledger_unknown = False
    rate_cache: dict[str, dict[str, int] | None] = {}
    for entry in _entries(ledger):
        if entry.model is None or not where(entry):
            continue
        day = entry.time.astimezone(UTC).date()
        if (first and day < first) or (last and day > last):
            continue
        model = models.canonical(entry.model)
        if entry.usage is None:
            no_usage[(day, model)] += 1
        else:
            for cls, count in _class_tokens(entry.usage).items():
                if count:
                    tokens[(day, model, cls)] += count
        if entry.cost is None:
            unknown[(day, model)] += 1
            ledger_unknown = True
            continue
        ledger_units += to_units(entry.cost)
        if not entry.cost:
            continue
        shares = _split_units(entry, catalogue, rate_cache)
        if shares is None:
            # Counted, never dropped: the cost is the ledger's even where no class can hold it.
            unclassified[(day, model)] += 1
            units[(day, model, "unclassified")] += to_units(entry.cost)
            continue
        for cls, share in shares.items():
            units[(day, model, cls)] += share
    billed_tokens: dict[tuple[date, str, str], int | None] = {}
    billed: dict[tuple[date, str, str], Decimal] = defaultdict(Decimal)
    lines: dict[tuple[date, str, str], int] = defaultdict(int)
    mapped: dict[tuple[date, str, str], bool] = {}
    for line in export.lines:
        if (first and line.day < first) or (last and line.day > last):
            continue
        key = (line.day, line.model, line.usage_type)
        with decimal.localcontext(_EXACT):
            billed[key] += line.cost
        lines[key] += 1
        before = billed_tokens.get(key, 0)
        billed_tokens[key] = None if before is None or line.tokens is None else before + line.tokens
        mapped[key] = line.mapped
    keys = sorted(set(tokens) | set(units) | set(billed))
    rows = []
    for key in keys:
        day, model, cls = key
        n_unknown = unknown.get((day, model), 0)
        placed = mapped.get(key, True)
        known_side = placed or key in tokens or key in units
        ledger_tokens: int | None = tokens.get(key, 0)
        if cls == "unclassified" or not known_side:
            ledger_tokens = None
        rows.append(
            BillRow(
                day=day,
                model=model,
                usage_type=cls,
                ledger_tokens=ledger_tokens,
                billed_tokens=billed_tokens.get(key, 0 if key not in billed else None),
                ledger_cost=None if n_unknown or not known_side else from_units(units.get(key, 0)),
                billed_cost=billed.get(key, Decimal(0)),
                unknown_entries=n_unknown,
                mapped=placed,
                billed_lines=lines.get(key, 0),
                unclassified_entries=unclassified.get((day, model), 0),
                no_usage_entries=no_usage.get((day, model), 0),
            )
        )
    with decimal.localcontext(_EXACT):
        billed_total = sum((r.billed_cost for r in rows), Decimal(0))
    return BillReconciliation(
        rows=tuple(rows),
        threshold=threshold,
        kind=export.kind,
        first_day=first,
        last_day=last,
        skipped=export.skipped,
        problems=export.problems,
        ledger_cost=None if ledger_unknown else from_units(ledger_units),
        billed_cost=billed_total,
        duplicates=export.duplicates,
    )


# -- rendering and the command line -------------------------------------------------------------

CSV_COLUMNS = (
    "section",
    "kind",
    "when",
    "request_id",
    "stage",
    "model",
    "usage_type",
    "ledger_tokens",
    "aws_tokens",
    "ledger_input_tokens",
    "ledger_output_tokens",
    "ledger_cache_read_tokens",
    "ledger_cache_write_tokens",
    "aws_input_tokens",
    "aws_output_tokens",
    "aws_cache_read_tokens",
    "aws_cache_write_tokens",
    "ledger_cost",
    "aws_cost",
    "difference",
    "aws_id",
    "entry_id",
    "source",
    "note",
)
"""The columns of ``chainkit reconcile --format csv``: one row per difference found.

Token counts are numbers: ``ledger_tokens``/``aws_tokens`` for a bill row's token class,
``ledger_input_tokens``... ``aws_cache_write_tokens`` for a call of the invocation logs.
"""


def _row(**cells: str) -> dict[str, str]:
    return {column: csv_safe(cells.get(column, "")) for column in CSV_COLUMNS}


def render(
    invocations: InvocationReconciliation | None,
    bill: BillReconciliation | None,
    fmt: Format = "table",
) -> str:
    """The reconciliation for people (``table``, ``markdown``) or programs (``json``, ``csv``)."""
    if fmt == "json":
        return json.dumps(
            {
                "invocations": invocations.to_json_data() if invocations else None,
                "bill": bill.to_json_data() if bill else None,
                "ok": all(r is None or r.ok for r in (invocations, bill)),
            },
            ensure_ascii=False,
            indent=2,
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for result in (invocations, bill):
            if result is not None:
                writer.writerows(result.to_rows())
        return out.getvalue().rstrip("\n")
    markdown = fmt == "markdown"
    parts: list[str] = []
    if invocations is not None:
        head: tuple[str, ...] = (
            "kind",
            "request",
            "stage",
            "model",
            "time",
            "ledger",
            "logged",
            "note",
        )
        cells: list[tuple[str, ...]] = [
            (
                d.kind,
                d.request_id or "",
                d.stage or "",
                d.model or "",
                f"{d.time:%Y-%m-%d %H:%M:%S}" if d.time else "",
                _usage_text(d.ledger) or "-",
                _usage_text(d.logged) or "-",
                d.note,
            )
            for d in invocations.differences
        ]
        cells += [
            ("unreadable", "", "", "", "", "", "", f"{p.source}: {p.reason}")
            for p in invocations.problems
        ]
        parts.append(_table(invocations.summary(), head, cells, markdown))
    if bill is not None:
        head = (
            "day",
            "model",
            "usage",
            "ledger tok",
            "billed tok",
            "ledger",
            "billed",
            "diff",
            "note",
        )
        cells = [
            (
                r.day.isoformat(),
                r.model,
                r.usage_type,
                "unknown" if r.ledger_tokens is None else f"{r.ledger_tokens:,}",
                "unknown" if r.billed_tokens is None else f"{r.billed_tokens:,}",
                usd(r.ledger_cost),
                usd(r.billed_cost),
                usd(r.difference),
                r.note(),
            )
            for r in bill.discrepancies
        ]
        cells += [
            ("unreadable", "", "", "", "", "", "", "", f"{p.source}: {p.reason}")
            for p in bill.problems
        ]
        parts.append(_table(bill.summary(), head, cells, markdown))
    return "\n\n".join(parts)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _table(title: str, head: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool) -> str:
    if not cells:
        return f"{title}\nNo differences."
    # Ids, stages and notes come from the ledger and the logs: a newline in one would forge rows.
    cells = [[c.translate(_CONTROL) for c in row] for row in cells]
    if markdown:

        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [title, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    lines = [title]
    for row in (head, *cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# -- the command line -------------------------------------------------------------------------


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a date: give YYYY-MM-DD (UTC).") from None


def _mapping(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        label, sep, model = pair.partition("=")
        if not sep or not label.strip() or not model.strip():
            raise ConfigError(
                f"--model-map {pair!r} is not LABEL=MODEL_ID: give the bill's model label and "
                "the catalogue id, e.g. --model-map 'NovaMicro=amazon.nova-micro-v1:0'."
            )
        out[label.strip()] = model.strip()
    return out


def _run(args: argparse.Namespace) -> tuple[str, int]:
    """``chainkit reconcile``: the report, and exit status 1 if anything differs (else 0)."""
    if not args.invocation_logs and not args.bill:
        raise ConfigError(
            "Nothing to reconcile with: give --invocation-logs s3://bucket/prefix (or a folder), "
            "--bill s3://bucket/export (or a file), or both."
        )
    try:
        threshold = _decimal(args.threshold, "--threshold")
    except ValueError as exc:
        raise ConfigError(f"{exc}: give an amount in USD, such as --threshold 0.01.") from None
    since = _day(args.since, "--since") if args.since else None
    until = _day(args.until, "--until") if args.until else None
    if since and until and since > until:
        raise ConfigError(
            f"--since {since} is after --until {until}: give the first day, then the last."
        )
    catalogue = Catalogue.load(args.catalogue) if args.catalogue else Catalogue.load()
    try:
        return _reconcile(args, since, until, threshold, catalogue)
    except Exception as exc:
        boto = sys.modules.get("botocore.exceptions")
        if boto is not None and isinstance(
            exc, boto.NoCredentialsError | boto.PartialCredentialsError
        ):
            raise ConfigError(
                f"No AWS credentials to read from S3 ({exc}): set AWS_PROFILE to a configured "
                "profile, run `aws configure` or `aws sso login`, or download the objects "
                "(aws s3 cp --recursive) and give their local folder."
            ) from exc
        raise


def _reconcile(
    args: argparse.Namespace,
    since: date | None,
    until: date | None,
    threshold: Decimal,
    catalogue: Catalogue,
) -> tuple[str, int]:
    invocations = bill = None
    from chainkit.finops.commands import open_ledger

    with open_ledger(args.ledger, args.schema) as ledger:
        if args.invocation_logs:
            logs = read_invocation_logs(args.invocation_logs)
            start = datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None
            end = (
                datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
                if until
                else None
            )
            invocations = reconcile_invocations(
                ledger, logs, since=start, until=end, catalogue=catalogue
            )
        if args.bill:
            export = read_bill(args.bill, catalogue=catalogue, model_map=_mapping(args.model_map))
            bill = reconcile_bill(
                ledger, export, threshold, since=since, until=until, catalogue=catalogue
            )
    ok = all(r is None or r.ok for r in (invocations, bill))
    return render(invocations, bill, args.format), 0 if ok else 1


def add_command(sub: Any) -> None:
    """Register ``chainkit reconcile`` on the ``chainkit`` command's subparsers."""
    cmd = sub.add_parser(
        "reconcile",
        help="compare a ledger with Bedrock's invocation logs and the AWS bill",
        description="Join a ledger to Bedrock model invocation logs (by the request_id and stage "
        "chainkit sends as requestMetadata) and compare it with a CUR 2.0 or FOCUS 1.2 export "
        "per day, model and token class. Exit status: 0 nothing differs, 1 differences found, "
        "2 a mistake in the arguments or input.",
    )
    cmd.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN; only read")
    cmd.add_argument("--schema", default="chainkit", help="PostgreSQL: the ledger's schema")
    cmd.add_argument(
        "--invocation-logs",
        metavar="WHERE",
        help="s3://bucket/prefix of Bedrock's invocation logs, or a local folder or file",
    )
    cmd.add_argument(
        "--bill",
        metavar="WHERE",
        help="s3://bucket/prefix of a CUR 2.0 or FOCUS 1.2 export, or a file",
    )
    cmd.add_argument(
        "--threshold", default="0.01", help="list bill rows differing by more than this (USD)"
    )
    cmd.add_argument("--since", help="first UTC day compared (YYYY-MM-DD)")
    cmd.add_argument("--until", help="last UTC day compared (YYYY-MM-DD)")
    cmd.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="LABEL=MODEL_ID",
        help="the model a bill's label names (repeatable), e.g. 'NovaMicro=amazon.nova-micro-v1:0'",
    )
    cmd.add_argument("--catalogue", default=None, help="price catalogue (default: current Bedrock)")
    cmd.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    cmd.set_defaults(run=_run)
