"""Spend anomalies per day (or hour) and per tag, stage and model, kept as ledger events.

Three kinds, each judged against what the days (hours) before it lead one to expect:

- ``spike``: a tag value's spend (or the total's) well above its expected spend. Per day the
  expectation is :mod:`chainkit.finops.series`' model (line plus weekday effects, robust) fitted
  on the six weeks before; the score is the log-scale residual in robust standard deviations.
- ``deflection_drop``: a stage that answers requests before the generator (canned,
  precomputed...) answering a much smaller share of them, so the generator's calls jump.
- ``unit_cost_jump``: a model whose cost per call is much higher than usual (a price change,
  a prompt that grew, a cache that stopped hitting).

Shares and unit costs are judged against the median of the 14 days before (per hour: the same
hour of the 7 days before), with a robust spread of at least 5% of the median, so a perfectly
steady series does not make every small wobble an anomaly. A point is an anomaly when its
score reaches ``z`` *and* its change reaches the kind's minimum relative size: both, so that
neither a noisy series nor a tiny one raises alarms.

:func:`detect` records each anomaly in the ledger (``Ledger.record_event``, key ``anomaly:...``,
so running it twice keeps one event) and calls ``on_anomaly`` once per anomaly not recorded
before; :func:`recorded` reads them back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

import numpy as np

from chainkit.errors import ConfigError
from chainkit.finops.series import fit, spend_of
from chainkit.ledger import Ledger
from chainkit.records import Entry

__all__ = [
    "Anomaly",
    "Thresholds",
    "anomalies_of",
    "detect",
    "recorded",
    "score_detections",
]

_log = logging.getLogger("chainkit")

Kind = Literal["spike", "deflection_drop", "unit_cost_jump"]
KINDS: tuple[str, ...] = ("spike", "deflection_drop", "unit_cost_jump")
TAGS = ("tenant", "feature", "team", "environment")
"""The tags whose values' spend is watched by default (ids such as ``user`` would be noise)."""
_MONEY = Decimal("1E-9")


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly: when, in what scope, of which kind, what was seen against what was expected.

    ``scope`` is ``("tenant", "acme")``, ``("stage", "precomputed")``, ``("model", id)`` or
    ``("total", "all")``. ``observed`` and ``expected`` are spend in USD (spike), a share of
    requests (deflection_drop) or USD per call (unit_cost_jump). ``score`` is in robust
    standard deviations.
    """

    when: date | datetime
    scope: tuple[str, str]
    kind: str
    observed: Decimal
    expected: Decimal
    score: float

    def __post_init__(self) -> None:
        # Three decimals: what is recorded reads back equal to what was found.
        object.__setattr__(self, "score", round(float(self.score), 3))

    @property
    def key(self) -> str:
        """The event key it is recorded under: one event per kind, scope and time.

        The scope is JSON, so no tag value can make two scopes one key (``tenant`` = ``a=b``
        and ``tenant=a`` = ``b``; a user tag ``total`` = ``all`` and the overall total).
        """
        scope = json.dumps(list(self.scope), ensure_ascii=True, separators=(",", ":"))
        return f"anomaly:{self.when.isoformat()}:{self.kind}:{scope}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: decimals as exact strings."""
        return {
            "when": self.when.isoformat(),
            "scope": list(self.scope),
            "kind": self.kind,
            "observed": str(self.observed),
            "expected": str(self.expected),
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, row: dict[str, object]) -> Anomaly:
        """Back from :meth:`to_dict` (as recorded in a ledger)."""
        text = str(row["when"])
        when: date | datetime = (
            datetime.fromisoformat(text) if "T" in text else date.fromisoformat(text)
        )
        scope = row["scope"]
        if not isinstance(scope, list) or len(scope) != 2:
            raise ConfigError(f"Anomaly scope {scope!r} is not a [kind, name] pair.")
        return cls(
            when=when,
            scope=(str(scope[0]), str(scope[1])),
            kind=str(row["kind"]),
            observed=Decimal(str(row["observed"])),
            expected=Decimal(str(row["expected"])),
            score=float(str(row["score"])),
        )


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a point is an anomaly: score at least ``z`` and a change at least the minimum.

    ``spike``: observed at least ``spike_ratio`` times expected and ``min_usd`` more.
    ``deflection_drop``: share at most ``1 - drop_share`` of expected, on a day (hour) with
    at least ``min_requests`` requests. ``unit_cost_jump``: cost per call at least
    ``cost_ratio`` times expected, on at least ``min_calls`` calls.
    """

    z: float = 4.0
    spike_ratio: float = 1.3
    min_usd: Decimal = Decimal(0)
    drop_share: float = 0.25
    min_requests: int = 20
    cost_ratio: float = 1.3
    min_calls: int = 5
    history: int = 14  # days (or hours x 24) needed before a point is judged

    def __post_init__(self) -> None:
        if not self.z > 0 or self.spike_ratio < 1 or self.cost_ratio < 1:
            raise ConfigError(
                f"Thresholds z={self.z}, spike_ratio={self.spike_ratio}, cost_ratio="
                f"{self.cost_ratio}: z must be > 0 and the ratios >= 1."
            )
        if not 0 < self.drop_share < 1 or self.history < 7:
            raise ConfigError(
                f"Thresholds drop_share={self.drop_share}, history={self.history}: drop_share "
                "must be in (0, 1) and history at least 7 days."
            )


@dataclass(slots=True)
class _Bucket:
    spend: dict[tuple[str, str], float] = field(default_factory=dict)
    requests: set[str] = field(default_factory=set)
    answered: dict[str, set[str]] = field(default_factory=dict)  # stage -> requests
    model_cost: dict[str, float] = field(default_factory=dict)
    model_calls: dict[str, int] = field(default_factory=dict)
    model_cost_sq: dict[str, float] = field(default_factory=dict)


def _money(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(_MONEY)


def _share(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(Decimal("0.0001"))


def _robust(history: Sequence[float], sampling: float = 0.0) -> tuple[float, float]:
    """Median and robust spread of ``history``: 1.4826 MAD, at least 5% of the median.

    ``sampling`` is the standard error the point judged has from its own sample size (a share
    of 40 requests wobbles more than one of 4,000); the spread is never below it.
    """
    h = np.asarray(history, dtype=np.float64)
    med = float(np.median(h))
    spread = 1.4826 * float(np.median(np.abs(h - med)))
    return med, max(spread, 0.05 * abs(med), sampling, 1e-12)


def _daily_spike(
    y: float, history: Sequence[float], times: Sequence[datetime], i: int
) -> tuple[float, float] | None:
    """Expected spend of day ``i`` (spend ``y``) and its score against the days before it.

    Days far from the history's median (on the log scale, beyond 3.5 robust deviations and
    3x) are left out of the baseline first, so one big day neither drags the line nor widens
    the spread and hides a later spike. A history with over a quarter of its days at $0 is
    intermittent: a log model of it is mostly noise, so the day is judged against the median
    of the days with spend (spread: their MAD, at least 30% of that median). ``None``: too
    few days with spend to judge.
    """
    days = [times[i - len(history) + k].date() for k in range(len(history))]
    h = np.asarray(history, dtype=np.float64)
    positive = h[h > 0]
    if len(positive) < 3:
        return None
    if (h <= 0).sum() > 0.25 * len(h):
        med = float(np.median(positive))
        spread = max(1.4826 * float(np.median(np.abs(positive - med))), 0.3 * med, 1e-12)
        return med, (y - med) / spread
    c = 0.01 * float(np.median(positive))
    lz = np.log(h + c)
    dev = np.abs(lz - float(np.median(lz)))
    keep = dev <= max(3.5 * 1.4826 * float(np.median(dev)), float(np.log(3.0)))
    kept = {d: Decimal(repr(float(v))) for d, v, k in zip(days, h, keep, strict=True) if k}
    if len(kept) < 3:
        return None
    f = fit(kept, window=42)
    today = [times[i].date()]
    mean = float(f.predict(today)[0])
    sd = float(f.prediction_sd(today)[0])
    return max(float(np.exp(mean)) - f.offset, 0.0), (float(np.log(y + f.offset)) - mean) / sd


def anomalies_of(
    entries: Iterable[Entry],
    *,
    every: Literal["day", "hour"] = "day",
    tags: Sequence[str] = TAGS,
    thresholds: Thresholds | None = None,
    kinds: Sequence[str] = KINDS,
) -> list[Anomaly]:
    """Find anomalies in ``entries`` without recording them (see :func:`detect`)."""
    th = thresholds or Thresholds()
    if every not in ("day", "hour"):
        raise ConfigError(f"every={every!r}: anomalies are found per 'day' or per 'hour'.")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"Unknown anomaly kinds {sorted(unknown)}; known: {list(KINDS)}.")
    if "total" in tags:
        raise ConfigError(
            "tags include 'total', the name of the overall total's scope ('total', 'all'): "
            "its anomalies would merge with the total's. Watch the other tags."
        )
    buckets: dict[datetime, _Bucket] = {}
    paid: dict[tuple[str, str], tuple[float, int]] = {}  # scope -> (spend, paid entries)
    for e in entries:
        t = e.time.astimezone(UTC)
        at = (
            datetime(t.year, t.month, t.day, tzinfo=UTC)
            if every == "day"
            else t.replace(minute=0, second=0, microsecond=0)
        )
        b = buckets.get(at)
        if b is None:
            b = buckets[at] = _Bucket()
        spend = spend_of(e)
        # One-off (setup) spend is paid once by design: not a spike, and not a baseline.
        amount = 0.0 if spend is None or e.phase != "serve" else float(spend)
        scopes = [("total", "all")] + [(k, e.tags[k]) for k in tags if k in e.tags]
        for s in scopes:
            b.spend[s] = b.spend.get(s, 0.0) + amount
            if amount > 0:
                total, n = paid.get(s, (0.0, 0))
                paid[s] = (total + amount, n + 1)
        if e.phase != "serve":
            continue
        b.requests.add(e.request_id)
        if e.outcome == "answered":
            b.answered.setdefault(e.stage, set()).add(e.request_id)
        if e.model is not None and e.cost is not None:
            b.model_cost[e.model] = b.model_cost.get(e.model, 0.0) + float(e.cost)
            b.model_calls[e.model] = b.model_calls.get(e.model, 0) + 1
            b.model_cost_sq[e.model] = b.model_cost_sq.get(e.model, 0.0) + float(e.cost) ** 2
    if not buckets:
        return []
    step = timedelta(days=1) if every == "day" else timedelta(hours=1)
    first, last = min(buckets), max(buckets)
    times = [first + i * step for i in range(int((last - first) / step) + 1)]
    rows = [buckets.get(t, _Bucket()) for t in times]
    need = th.history if every == "day" else th.history * 24
    found: list[Anomaly] = []

    def when(i: int) -> date | datetime:
        return times[i].date() if every == "day" else times[i]

    def past(i: int) -> list[int]:
        if every == "day":
            return list(range(max(0, i - th.history), i))
        return [i - 24 * k for k in range(1, 8) if i - 24 * k >= 0]

    if "spike" in kinds:
        scopes = sorted({s for r in rows for s in r.spend})
        typical = {s: paid[s][0] / paid[s][1] if paid.get(s, (0, 0))[1] else 0.0 for s in scopes}
        for s in scopes:
            series = [r.spend.get(s, 0.0) for r in rows]
            # A scope is judged from its first spend on: the days before it existed are not
            # days of no spend (they would make every new tenant look intermittent).
            start = next((j for j, v in enumerate(series) if v > 0), len(series))
            for i in range(start + need, len(rows)):
                y = series[i]
                if every == "day":
                    judged = _daily_spike(y, series[max(start, i - 42) : i], times, i)
                    if judged is None:
                        continue
                    expected, score = judged
                else:
                    hist = [series[j] for j in past(i)]
                    expected = float(np.mean(hist))
                    # Spend in an hour is a sum of few calls' costs (compound Poisson): its
                    # spread is at least that of one call more than the mean, whatever the
                    # MAD of seven hours says.
                    poisson = float(np.sqrt((expected + typical[s]) * typical[s]))
                    _, spread = _robust(hist, poisson)
                    score = (y - expected) / spread
                if (
                    score >= th.z
                    and y >= th.spike_ratio * expected
                    and y - expected >= float(th.min_usd)
                    and y > 0
                ):
                    found.append(Anomaly(when(i), s, "spike", _money(y), _money(expected), score))
    if "deflection_drop" in kinds:
        stages = sorted({st for r in rows for st in r.answered})
        for st in stages:
            shares = [
                len(r.answered.get(st, ())) / len(r.requests) if r.requests else None for r in rows
            ]
            for i in range(need, len(rows)):
                share = shares[i]
                if share is None or len(rows[i].requests) < th.min_requests:
                    continue
                hist = [v for j in past(i) if (v := shares[j]) is not None]
                if len(hist) < 3:
                    continue
                # A share of n requests wobbles by sqrt(p(1-p)/n) however steady the past was.
                p = min(max(float(np.median(hist)), 0.0), 1.0)
                med, spread = _robust(hist, float(np.sqrt(p * (1 - p) / len(rows[i].requests))))
                if med < 0.02:
                    continue  # a stage that hardly answers cannot collapse
                score = (med - share) / spread
                if score >= th.z and share <= (1 - th.drop_share) * med:
                    found.append(
                        Anomaly(
                            when(i),
                            ("stage", st),
                            "deflection_drop",
                            _share(share),
                            _share(med),
                            score,
                        )
                    )
    if "unit_cost_jump" in kinds:
        models = sorted({m for r in rows for m in r.model_calls})
        for m in models:
            unit = [
                r.model_cost.get(m, 0.0) / n if (n := r.model_calls.get(m, 0)) else None
                for r in rows
            ]
            for i in range(need, len(rows)):
                u = unit[i]
                if u is None or rows[i].model_calls.get(m, 0) < th.min_calls:
                    continue
                hist = [v for j in past(i) if (v := unit[j]) is not None]
                if len(hist) < 3:
                    continue
                calls = rows[i].model_calls[m]
                var = max(rows[i].model_cost_sq[m] / calls - u * u, 0.0)
                med, spread = _robust(hist, float(np.sqrt(var / calls)))
                score = (u - med) / spread
                if score >= th.z and u >= th.cost_ratio * med and med > 0:
                    found.append(
                        Anomaly(
                            when(i),
                            ("model", m),
                            "unit_cost_jump",
                            Decimal(repr(u)),
                            Decimal(repr(med)),
                            score,
                        )
                    )
    found.sort(key=lambda a: (a.when.isoformat(), a.kind, a.scope))
    return found


def detect(
    ledger: Ledger,
    *,
    every: Literal["day", "hour"] = "day",
    tags: Sequence[str] = TAGS,
    thresholds: Thresholds | None = None,
    kinds: Sequence[str] = KINDS,
    record: bool = True,
    on_anomaly: Callable[[Anomaly], object] | None = None,
) -> list[Anomaly]:
    """Find the ledger's anomalies; record each as a ledger event; tell ``on_anomaly`` of new ones.

    Returns every anomaly found, new or not. ``on_anomaly`` is called once per anomaly not
    recorded in the ledger before (with ``record=False``, for every anomaly found); a hook that
    raises is logged, not raised, like a budget's ``on_threshold``.
    """
    found = anomalies_of(
        ledger.iter_entries(), every=every, tags=tags, thresholds=thresholds, kinds=kinds
    )
    before = ledger.recorded_events("anomaly:") if record else {}
    new = [a for a in found if a.key not in before]
    if record:
        for a in new:
            ledger.record_event(a.key, json.dumps(a.to_dict(), ensure_ascii=False))
    if on_anomaly is not None:
        for a in new:
            try:
                on_anomaly(a)
            except Exception:
                _log.exception("on_anomaly hook failed on %s", a)
    return found


def recorded(ledger: Ledger, *, skipped: list[str] | None = None) -> list[Anomaly]:
    """The anomalies recorded in the ledger, oldest first.

    An event under the ``anomaly:`` prefix that is not a readable anomaly (written by another
    program or a newer version: a missing field, an unknown kind) is skipped with a warning on
    the ``chainkit`` logger, never fatal: one odd event must not break a report. Its key is
    appended to ``skipped`` when given, so a command can say so in its output.
    """
    out = []
    for key, body in ledger.recorded_events("anomaly:").items():
        try:
            row = json.loads(body)
            if not isinstance(row, dict):
                raise TypeError(f"a JSON {type(row).__name__}, not an object")
            anomaly = Anomaly.from_dict(row)
            if anomaly.kind not in KINDS:
                raise ValueError(f"kind {anomaly.kind!r} is not one of {list(KINDS)}")
        except (ValueError, KeyError, TypeError, ArithmeticError, ConfigError) as exc:
            _log.warning(
                "Ledger event %r is not a readable anomaly (%s: %s); skipped. Was it written by "
                "another program or a newer chainkit?",
                key,
                type(exc).__name__,
                exc,
            )
            if skipped is not None:
                skipped.append(key)
            continue
        out.append(anomaly)
    # Keys of older versions spelled the scope differently: one anomaly, once.
    out = list({(a.when.isoformat(), a.kind, a.scope): a for a in out}.values())
    out.sort(key=lambda a: (a.when.isoformat(), a.kind, a.scope))
    return out


def score_detections(
    cases: Iterable[tuple[Sequence[tuple[date, str]], Sequence[Anomaly]]],
) -> dict[str, float]:
    """Precision and recall of detections against injected anomalies.

    Each case is ``(injected, found)``: the injected anomalies as ``(day, kind)`` and what the
    detector found on that series. An injection is *recalled* if an anomaly of its kind was
    found on its day (any scope). A detection is *true* if it falls on an injected day, whatever
    its kind (a cost-per-call jump also spikes spend: both alarms point at the incident), and
    *false* otherwise. Clean series (no injection) count their detections as false.
    """
    recalled = injected_n = true = false = 0
    for injected, found in cases:
        days = {d for d, _ in injected}
        for d, kind in injected:
            injected_n += 1
            recalled += any(_day(a.when) == d and a.kind == kind for a in found)
        for a in found:
            if _day(a.when) in days:
                true += 1
            else:
                false += 1
    return {
        "injections": float(injected_n),
        "recalled": float(recalled),
        "detections": float(true + false),
        "true_detections": float(true),
        "false_detections": float(false),
        "precision": true / (true + false) if true + false else float("nan"),
        "recall": recalled / injected_n if injected_n else float("nan"),
    }


def _day(when: date | datetime) -> date:
    return when.astimezone(UTC).date() if isinstance(when, datetime) else when
