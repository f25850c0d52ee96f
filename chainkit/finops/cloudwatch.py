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
entries without it, or without a model, are published as ``none``.

The metrics:

==================== ======= ===========================================================
``Spend``            None    USD of the entries whose cost is known
``UnknownCostCalls`` Count   entries whose cost is unknown (``None``): alarm on it
``Calls``            Count   entries (stage runs)
``Answered``         Count   entries that answered their request
``Deflections``      Count   answered without the final model: a free stage (canned,
                             precomputed, lookup) or one that recorded an avoided cost
``AvoidedCost``      None    USD the final model would have cost, where it is known
``Requests``         Count   distinct request ids
==================== ======= ===========================================================

``Deflections / Answered`` (CloudWatch metric math) is the deflection rate. CloudWatch stores
values as binary floating point: the ledger's exact decimals are rounded to the nearest double on
the way (a relative error below 1e-15); the ledger stays the exact record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Literal

from chainkit.errors import ConfigError
from chainkit.ledger.core import Ledger
from chainkit.money import CONTEXT
from chainkit.records import Entry

__all__ = [
    "DEFAULT_ROLLUPS",
    "METRICS",
    "MetricPoint",
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
_NONE = "none"


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
    requests: set[str] = field(default_factory=set)

    def values(self) -> dict[str, Decimal]:
        return {
            "Spend": self.spend,
            "UnknownCostCalls": Decimal(self.unknown),
            "Calls": Decimal(self.calls),
            "Answered": Decimal(self.answered),
            "Deflections": Decimal(self.deflections),
            "AvoidedCost": self.avoided,
            "Requests": Decimal(len(self.requests)),
        }


def _bucket(when: datetime, resolution: Resolution) -> datetime:
    utc = when.astimezone(UTC)
    if resolution == "hour":
        return utc.replace(minute=0, second=0, microsecond=0)
    return utc.replace(second=0, microsecond=0)


def _dimension(e: Entry, name: Dimension, tenant_tag: str) -> str:
    if name == "Stage":
        return e.stage
    if name == "Model":
        return e.model or _NONE
    return e.tags.get(tenant_tag) or _NONE


def is_deflection(e: Entry) -> bool:
    """Whether ``e`` answered its request without the pipeline's final model."""
    return e.outcome == "answered" and (e.model is None or e.avoided_cost != 0)


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
    with localcontext(CONTEXT):
        for e in source:
            if (since is not None and e.time < since) or (until is not None and e.time >= until):
                continue
            bucket = _bucket(e.time, resolution)
            for names in sets:
                key = (bucket, tuple((str(n), _dimension(e, n, tenant_tag)) for n in names))
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
                s.requests.add(e.request_id)
    points = []
    for (bucket, dims), sums_of in sorted(sums.items(), key=lambda kv: kv[0]):
        for name, value in sums_of.values().items():
            points.append(MetricPoint(name, dims, bucket, value, METRICS[name]))
    return points


def publish_metrics(
    entries: Iterable[Entry] | Ledger,
    client: Any,
    *,
    namespace: str = "chainkit",
    **options: Any,
) -> int:
    """Send the metrics of ``entries`` to CloudWatch with PutMetricData; return how many values.

    ``client`` is a boto3 ``cloudwatch`` client; ``options`` are :func:`metric_points`'s. A
    refusal from AWS (an access error, a timestamp older than two weeks) raises botocore's
    ``ClientError``, after the batches before it were sent.
    """
    _check_namespace(namespace)
    data = [p.as_datum() for p in metric_points(entries, **options)]
    for start in range(0, len(data), _BATCH):
        client.put_metric_data(Namespace=namespace, MetricData=data[start : start + _BATCH])
    return len(data)


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
