"""CloudWatch metrics of a ledger: spend, calls, avoided cost, deflection by stage, model, tenant.

Two ways out, the same numbers:

- :func:`publish_metrics` sends them with ``PutMetricData`` (a boto3 ``cloudwatch`` client you
  pass in; batches of at most 1,000 values, as the API allows).
- :func:`emf_records` gives them as CloudWatch embedded metric format objects: print them as JSON
  lines to a log group (Lambda, ECS and the CloudWatch agent turn them into metrics).

Every metric is published per time bucket (a minute by default) for each *rollup*, a set of
dimensions: the whole application (no dimension), and each of ``Stage``, ``Model`` and
``Tenant`` alone, so an alarm on one tenant's spend or one stage's deflections needs no metric
math. ``Tenant`` is the value of a tag (``tenant`` unless ``tenant_tag`` says otherwise);
entries without it, or without a model, are published as ``=none`` (which no value can be:
see :func:`dimension_value`).

CloudWatch takes dimension values of 1 to 1,024 printable ASCII characters, not all
whitespace, and refuses a whole PutMetricData batch for one that is not. :func:`dimension_value`
makes every value valid, deterministically: printable ASCII stays as it is, except ``=``; every
other character (and ``=``, and the spaces of an all-space value) becomes ``=XX`` per UTF-8
byte, the escape of Bedrock's ``requestMetadata`` (``chainkit.providers.bedrock.decode_metadata``
reads it back). A value still longer than 1,024 characters is cut and ends in ``~`` and 16 hex
digits of its SHA-256, so two long values stay apart (that one is not reversible).

The metrics:

==================== ======= ===========================================================
``Spend``            None    USD of the entries whose cost is known
``UnknownCostCalls`` Count   entries whose cost is unknown (``None``): alarm on it
``Calls``            Count   entries (stage runs)
``Answered``         Count   entries that answered their request
``Deflections``      Count   answered without the final model: a free stage (canned,
                             precomputed, lookup) or one that recorded an avoided cost
                             (an unknown avoided cost is not one)
``AvoidedCost``      None    USD the final model would have cost, where it is known
``Requests``         Count   distinct request ids, each counted once, in the bucket of its
                             first entry (of that dimension value)
==================== ======= ===========================================================

``Deflections / Answered`` (CloudWatch metric math) is the deflection rate. CloudWatch stores
values as binary floating point: the ledger's exact decimals are rounded to the nearest double on
the way (a relative error below 1e-15); the ledger stays the exact record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, Literal

from chainkit.errors import ChainkitError, ConfigError
from chainkit.ledger.core import Ledger
from chainkit.money import CONTEXT
from chainkit.records import Entry

__all__ = [
    "DEFAULT_ROLLUPS",
    "METRICS",
    "MetricPoint",
    "PartialPublish",
    "dimension_value",
    "emf_records",
    "is_deflection",
    "metric_points",
    "publish_metrics",
    "write_emf",
]

Resolution = Literal["minute", "hour"]
Dimension = Literal["Stage", "Model", "Tenant"]

METRICS: dict[str, str] = {
    "Spend": "None",
    "UnknownCostCalls": "Count",
    "Calls": "Count",
    "Answered": "Count",
    "Deflections": "Count",
    "AvoidedCost": "None",
    "Requests": "Count",
}
"""Metric name -> CloudWatch unit (USD has no unit of its own in CloudWatch)."""

DEFAULT_ROLLUPS: tuple[tuple[Dimension, ...], ...] = ((), ("Stage",), ("Model",), ("Tenant",))
"""Dimension sets published by default: the whole app, and each dimension alone."""

_BATCH = 1000  # PutMetricData takes at most 1,000 values per call
# No value encodes to it: every "=" of a value is escaped, and "no" is not hex.
_NONE = "=none"
_MAX_VALUE = 1024
_ESCAPE = re.compile(r"[^\x21-\x3c\x3e-\x7e ]")  # all but printable ASCII (and "=")
# CloudWatch refuses timestamps more than two weeks old; a few minutes' margin for the call.
_MAX_AGE = timedelta(days=14) - timedelta(minutes=5)


def _escape(match: re.Match[str]) -> str:
    return "".join(f"={b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def dimension_value(text: str) -> str:
    """``text`` as a valid CloudWatch dimension value, reversibly where it fits (see module doc).

    >>> [dimension_value(text) for text in ("acme", "日本", "a=b", " ")]
    ['acme', '=E6=97=A5=E6=9C=AC', 'a=3Db', '=20']
    """
    value = _ESCAPE.sub(_escape, text)
    if not value.strip(" "):
        value = "=20" * len(value) if value else _NONE
    if len(value) > _MAX_VALUE:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        head = value[: _MAX_VALUE - 17]
        # Never cut an escape in two: drop a partial "=X" at the end.
        cut = head.rfind("=", len(head) - 2)
        value = (head[:cut] if cut >= 0 else head) + "~" + digest
    return value


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value of one metric, for one time bucket and one set of dimension values."""

    name: str
    dimensions: tuple[tuple[str, str], ...]
    timestamp: datetime
    value: Decimal
    unit: str

    def as_datum(self) -> dict[str, Any]:
        """The point as a PutMetricData ``MetricData`` item."""
        return {
            "MetricName": self.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
            "Timestamp": self.timestamp,
            "Value": float(self.value),
            "Unit": self.unit,
        }


@dataclass(slots=True)
class _Sums:
    spend: Decimal = Decimal(0)
    unknown: int = 0
    calls: int = 0
    answered: int = 0
    deflections: int = 0
    avoided: Decimal = Decimal(0)
    requests: int = 0

    def values(self) -> dict[str, Decimal]:
        return {
            "Spend": self.spend,
            "UnknownCostCalls": Decimal(self.unknown),
            "Calls": Decimal(self.calls),
            "Answered": Decimal(self.answered),
            "Deflections": Decimal(self.deflections),
            "AvoidedCost": self.avoided,
            "Requests": Decimal(self.requests),
        }


def _bucket(when: datetime, resolution: Resolution) -> datetime:
    utc = when.astimezone(UTC)
    if resolution == "hour":
        return utc.replace(minute=0, second=0, microsecond=0)
    return utc.replace(second=0, microsecond=0)


def _dimension(e: Entry, name: Dimension, tenant_tag: str) -> str:
    if name == "Stage":
        return dimension_value(e.stage)
    value = e.model if name == "Model" else e.tags.get(tenant_tag)
    return dimension_value(value) if value else _NONE


def is_deflection(e: Entry) -> bool:
    """Whether ``e`` answered its request without the pipeline's final model."""
    if e.outcome != "answered":
        return False
    # A model's answer deflects only when it recorded what the final model would have cost: an
    # unknown avoided cost (None) is no evidence of one.
    return e.model is None or (e.avoided_cost is not None and e.avoided_cost != 0)


def metric_points(
    entries: Iterable[Entry] | Ledger,
    *,
    tenant_tag: str = "tenant",
    rollups: Sequence[Sequence[Dimension]] = DEFAULT_ROLLUPS,
    resolution: Resolution = "minute",
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[MetricPoint]:
    """The metric values of the entries recorded in ``[since, until)``, oldest bucket first.

    Args:
        entries: a ledger (in memory, SQLite or PostgreSQL) or its entries.
        tenant_tag: the tag whose value is the ``Tenant`` dimension.
        rollups: the dimension sets to publish each metric under.
        resolution: the time bucket, ``minute`` or ``hour`` (UTC).
        since: only entries at or after this time (to publish what is new since the last run).
        until: only entries before this time.
    """
    if resolution not in ("minute", "hour"):
        raise ConfigError(f"resolution {resolution!r} is not 'minute' or 'hour'.")
    sets: list[tuple[Dimension, ...]] = []
    for rollup in rollups:
        names = tuple(rollup)
        bad = [n for n in names if n not in ("Stage", "Model", "Tenant")]
        if bad or len(set(names)) != len(names):
            raise ConfigError(
                f"rollup {names!r} must name each of 'Stage', 'Model', 'Tenant' at most once."
            )
        sets.append(names)
    for what, when in (("since", since), ("until", until)):
        if when is not None and when.utcoffset() is None:
            raise ConfigError(f"{what} {when!r} must be timezone-aware (UTC).")
    source = entries.iter_entries() if isinstance(entries, Ledger) else entries
    sums: dict[tuple[datetime, tuple[tuple[str, str], ...]], _Sums] = {}
    # (dimensions, request id) -> the time of the request's first entry: a request is counted
    # once, in that entry's bucket, however many buckets its entries span. Entries outside
    # [since, until) count here too, so a request begun before ``since`` is not counted again.
    first: dict[tuple[tuple[tuple[str, str], ...], str], datetime] = {}
    with localcontext(CONTEXT):
        for e in source:
            inside = not (
                (since is not None and e.time < since) or (until is not None and e.time >= until)
            )
            bucket = _bucket(e.time, resolution)
            for names in sets:
                dims = tuple((str(n), _dimension(e, n, tenant_tag)) for n in names)
                seen = first.get((dims, e.request_id))
                if seen is None or e.time < seen:
                    first[(dims, e.request_id)] = e.time
                if not inside:
                    continue
                key = (bucket, dims)
                s = sums.get(key)
                if s is None:
                    s = sums[key] = _Sums()
                s.calls += 1
                if e.cost is None:
                    s.unknown += 1
                else:
                    s.spend += e.cost
                if e.outcome == "answered":
                    s.answered += 1
                    s.deflections += is_deflection(e)
                if e.avoided_cost is not None:
                    s.avoided += e.avoided_cost
    for (dims, _), when in first.items():
        if (since is None or when >= since) and (until is None or when < until):
            sums[(_bucket(when, resolution), dims)].requests += 1
    points = []
    for (bucket, dims), sums_of in sorted(sums.items(), key=lambda kv: kv[0]):
        for name, value in sums_of.values().items():
            points.append(MetricPoint(name, dims, bucket, value, METRICS[name]))
    return points


class PartialPublish(ChainkitError):
    """CloudWatch refused a PutMetricData batch after earlier ones were accepted.

    ``sent`` values (buckets up to ``last``) are in CloudWatch; ``resume`` is the ``--since``
    that sends the rest without sending any of them again.
    """

    def __init__(self, message: str, *, sent: int, last: datetime, resume: datetime) -> None:
        super().__init__(message)
        self.sent = sent
        self.last = last
        self.resume = resume

    def as_dict(self) -> dict[str, Any]:
        """What was published and where to resume, for the command's summary."""
        return {
            "published_through": f"{self.last:%Y-%m-%dT%H:%M}Z",
            "resume_since": f"{self.resume:%Y-%m-%dT%H:%M}Z",
        }


def _batches(points: list[MetricPoint]) -> list[list[MetricPoint]]:
    """Batches of at most 1,000 points that never split a bucket unless it alone is larger.

    A refused batch then starts at a bucket boundary: ``--since`` that bucket resends nothing
    CloudWatch already has (PutMetricData adds; a value sent twice counts twice).
    """
    batches: list[list[MetricPoint]] = []
    current: list[MetricPoint] = []
    i = 0
    while i < len(points):
        j = i
        while j < len(points) and points[j].timestamp == points[i].timestamp:
            j += 1
        bucket = points[i:j]
        if current and len(current) + len(bucket) > _BATCH:
            batches.append(current)
            current = []
        for start in range(0, len(bucket), _BATCH):
            part = bucket[start : start + _BATCH]
            if current and len(current) + len(part) > _BATCH:
                batches.append(current)
                current = []
            current.extend(part)
        i = j
    if current:
        batches.append(current)
    return batches


def publish_metrics(
    entries: Iterable[Entry] | Ledger,
    client: Any,
    *,
    namespace: str = "chainkit",
    now: datetime | None = None,
    notes: Callable[[str], None] | None = None,
    **options: Any,
) -> int:
    """Send the metrics of ``entries`` to CloudWatch with PutMetricData; return how many values.

    ``client`` is a boto3 ``cloudwatch`` client; ``options`` are :func:`metric_points`'s. Values
    older than two weeks (before ``now`` minus 14 days: CloudWatch refuses them) are skipped,
    and ``notes`` (if given) is told how many. A refusal of the first batch is a ConfigError
    (nothing was published); of a later one, :class:`PartialPublish`, saying what was
    published and the ``since`` to resume with.
    """
    _check_namespace(namespace)
    points = metric_points(entries, **options)
    oldest = (now or datetime.now(UTC)) - _MAX_AGE
    old = [p for p in points if p.timestamp < oldest]
    if old:
        points = [p for p in points if p.timestamp >= oldest]
        if notes is not None:
            since = _bucket(oldest, "hour") + timedelta(hours=1)
            first = f"{old[0].timestamp:%Y-%m-%d %H:%M}"
            notes(
                f"skipped {len(old)} values older than two weeks (from {first} UTC; CloudWatch "
                f"refuses them): publish with --since {since:%Y-%m-%dT%H:%M}Z to leave them out."
            )
    sent = 0
    batches = _batches(points)
    for number, batch in enumerate(batches, 1):
        try:
            client.put_metric_data(Namespace=namespace, MetricData=[p.as_datum() for p in batch])
        except Exception as exc:
            if not sent and not isinstance(getattr(exc, "response", None), dict):
                raise  # not a refusal (no credentials, no network): the caller explains it
            raise _refused(exc, number, len(batches), sent, batch, points) from exc
        sent += len(batch)
    return sent


def _refused(
    exc: Exception,
    number: int,
    total: int,
    sent: int,
    batch: list[MetricPoint],
    points: list[MetricPoint],
) -> ChainkitError:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        why = f"{error.get('Code', '?')}: {error.get('Message', exc)}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    if not sent:
        return ConfigError(
            f"CloudWatch refused PutMetricData ({why}); nothing was published. Check --region, "
            "--namespace and that your credentials may call cloudwatch:PutMetricData."
        )
    start = batch[0].timestamp
    last = points[sent - 1].timestamp
    # A bucket larger than one batch may have been split: its accepted part cannot be resent.
    resume, lost = start, ""
    if last == start:
        later = [p.timestamp for p in points[sent:] if p.timestamp > start]
        resume = later[0] if later else start
        lost = (
            f" The bucket {start:%Y-%m-%d %H:%M} UTC was split across batches and only partly "
            "published: its other values are not in CloudWatch and resending it would count "
            "the published ones twice."
        )
    return PartialPublish(
        f"CloudWatch refused PutMetricData batch {number} of {total} ({why}) after {sent} "
        f"values were published, through the bucket of {last:%Y-%m-%d %H:%M} UTC. Do not send "
        f"those again: fix the cause and resume with --since {resume:%Y-%m-%dT%H:%M}Z (and the "
        f"same --resolution).{lost}",
        sent=sent,
        last=last,
        resume=resume,
    )


def emf_records(
    entries: Iterable[Entry] | Ledger,
    *,
    namespace: str = "chainkit",
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """The metrics as CloudWatch embedded metric format objects, one per bucket and dimension set.

    Write each as one JSON line to a log stream CloudWatch Logs reads; ``options`` are
    :func:`metric_points`'s.
    """
    _check_namespace(namespace)
    grouped: dict[tuple[datetime, tuple[tuple[str, str], ...]], dict[str, MetricPoint]] = {}
    for p in metric_points(entries, **options):
        grouped.setdefault((p.timestamp, p.dimensions), {})[p.name] = p
    for (bucket, dims), points in grouped.items():
        record: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(bucket.timestamp() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [[k for k, _ in dims]],
                        "Metrics": [{"Name": n, "Unit": p.unit} for n, p in points.items()],
                    }
                ],
            },
        }
        record.update(dims)
        record.update({n: float(p.value) for n, p in points.items()})
        yield record


def write_emf(entries: Iterable[Entry] | Ledger, out: Any, **options: Any) -> int:
    """Write :func:`emf_records` as JSON lines to the text stream ``out``; return how many."""
    count = 0
    for record in emf_records(entries, **options):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _check_namespace(namespace: str) -> None:
    # CloudWatch's rule: 1-255 characters, not starting with "AWS/" (reserved for AWS).
    if not isinstance(namespace, str) or not 0 < len(namespace) <= 255:
        raise ConfigError(f"CloudWatch namespace {namespace!r} must have 1 to 255 characters.")
    if namespace.startswith("AWS/") or ":" in namespace:
        raise ConfigError(
            f"CloudWatch namespace {namespace!r} is not allowed: 'AWS/' is reserved and ':' is "
            "refused. Use your application's name, such as 'chainkit' or 'support-bot'."
        )
