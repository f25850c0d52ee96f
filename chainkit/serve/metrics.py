"""Prometheus text exposition (format 0.0.4) of a ledger and of a service's latencies.

Spend, calls, tokens and avoided cost come from the ledger's own aggregations (roll-up cells in
SQLite and PostgreSQL), so every process sharing the ledger reports the same, exact totals and a
restart loses nothing. Latencies are this process's observations (a histogram per stage, and per
answer path of an HTTP request), as Prometheus histograms are meant to be: each replica exports
its own and the server adds them up.

An unknown cost is never reported as 0: a stage or tenant with entries of unknown cost has no
``chainkit_spend_usd_total`` sample; ``chainkit_spend_upper_bound_usd_total`` (known costs plus
the bounds of the unknown ones) and ``chainkit_unknown_cost_calls_total`` say how much it could
be.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from chainkit.ledger import Ledger, Totals
from chainkit.money import from_units, to_units

__all__ = ["CONTENT_TYPE", "Histogram", "escape_label", "ledger_metrics", "sample"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: a free stage takes microseconds, a model call a fraction of a second to minutes.
BUCKETS = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


def escape_label(value: str) -> str:
    r"""A label value as the exposition format writes it: backslash, quote and newline escaped.

    >>> escape_label('a"b\\c\nd')
    'a\\"b\\\\c\\nd'
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int | Decimal) -> str:
    if isinstance(value, Decimal):
        # Exact, in plain notation (no exponent): Prometheus parses it as a float.
        return format(from_units(to_units(value)), "f")
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


def sample(name: str, labels: Mapping[str, str], value: float | int | Decimal) -> str:
    """One sample line: ``name{label="value",...} value``."""
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {_number(value)}"


class Histogram:
    """A thread-safe Prometheus histogram with labels (cumulative buckets, sum and count)."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = BUCKETS) -> None:
        """A histogram called ``name``; ``buckets`` are the upper bounds, in increasing order."""
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation of ``value`` under ``labels``."""
        key = tuple(sorted(labels.items()))
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                # Per bucket counts (not cumulative), then +Inf, then sum and count.
                series = self._series[key] = [0.0] * (len(self.buckets) + 3)
            series[index] += 1
            series[-2] += value
            series[-1] += 1

    def lines(self) -> list[str]:
        """The histogram in exposition format, with its HELP and TYPE lines."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            series = {k: list(v) for k, v in sorted(self._series.items())}
        for key, counts in series.items():
            labels = dict(key)
            running = 0.0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=False):
                running += count
                le = "+Inf" if math.isinf(bound) else repr(bound)
                out.append(sample(f"{self.name}_bucket", {**labels, "le": le}, int(running)))
            out.append(sample(f"{self.name}_sum", labels, counts[-2]))
            out.append(sample(f"{self.name}_count", labels, int(counts[-1])))
        return out


def _family(
    name: str, kind: str, help_text: str, rows: Iterable[tuple[dict[str, str], object]]
) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in rows:
        if isinstance(value, int | float | Decimal):
            out.append(sample(name, labels, value))
    return out


def ledger_metrics(ledger: Ledger, *, tenant_tag: str = "tenant") -> list[str]:
    """Spend, calls, tokens and avoided cost by stage and by tenant, from the ledger's totals.

    Every phase is counted (start-up spend such as precomputed replies is spend too); cost is
    exact (a decimal, printed in full).
    """
    by_stage = sorted(ledger.by_stage().items())
    by_tenant = sorted(
        ((k, v) for k, v in ledger.by_tag(tenant_tag).items() if k is not None),
        key=lambda kv: str(kv[0]),
    )
    groups: list[tuple[dict[str, str], Totals]] = [({"stage": k}, v) for k, v in by_stage]
    tenants: list[tuple[dict[str, str], Totals]] = [({"tenant": str(k)}, v) for k, v in by_tenant]
    out: list[str] = []
    for suffix, rows in (("", groups), ("_by_tenant", tenants)):
        out += _family(
            f"chainkit_spend{suffix}_usd_total",
            "counter",
            "What the calls cost, in USD (left out where some cost is unknown).",
            ((labels, t.cost) for labels, t in rows if t.cost is not None),
        )
        out += _family(
            f"chainkit_spend_upper_bound{suffix}_usd_total",
            "counter",
            "Known costs plus the bounds of the unknown ones, in USD (left out if a bound is "
            "unknown).",
            ((labels, t.cost_bound) for labels, t in rows if t.cost_bound is not None),
        )
        out += _family(
            f"chainkit_unknown_cost_calls{suffix}_total",
            "counter",
            "Entries whose cost is unknown (a call that failed after it was sent).",
            ((labels, t.unknown) for labels, t in rows),
        )
        out += _family(
            f"chainkit_calls{suffix}_total",
            "counter",
            "Ledger entries (one per stage a request went through).",
            ((labels, t.calls) for labels, t in rows),
        )
        out += _family(
            f"chainkit_avoided{suffix}_usd_total",
            "counter",
            "What the final model would have cost where a stage answered instead, in USD.",
            ((labels, t.avoided_cost) for labels, t in rows if t.avoided_cost is not None),
        )
    for kind in ("input", "output"):
        out += _family(
            f"chainkit_{kind}_tokens_total",
            "counter",
            f"{kind.capitalize()} tokens of the model calls.",
            ((labels, getattr(t, f"{kind}_tokens")) for labels, t in groups),
        )
    return out
