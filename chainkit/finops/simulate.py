"""Simulated support traffic: daily volumes with weekly seasonality and growth, and anomalies.

:class:`Traffic` gives each day's number of interactions: a weekday level that grows by
``growth`` a day, weekends at ``weekend`` of it, day-to-day noise (log-normal) and Poisson
counts. :func:`times_in_day` spreads a day's interactions over its hours (busy office hours,
quiet nights). :func:`synthetic_entries` builds the entries a deflecting support bot would
record (intent scan, canned, precomputed, generator) without running one, fast enough to make
hundreds of series for the anomaly benchmark, with :class:`Injection` s of each kind; the
support-bot recipe (``python -m recipes.support_bot --days 60``) records real runs instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from chainkit.errors import ConfigError
from chainkit.records import Entry, Usage

__all__ = ["Injection", "Traffic", "synthetic_entries", "times_in_day"]

# Relative traffic per UTC hour: low at night, high in office hours.
_HOURLY = (1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 10, 9, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)


@dataclass(frozen=True, slots=True)
class Traffic:
    """How many interactions each day brings.

    Args:
        days: how many days.
        per_day: mean weekday interactions on the first day.
        growth: growth per day (0.01: +1% a day, about +35% a month).
        weekend: weekend volume as a share of the weekday level.
        noise: day-to-day log-normal noise (standard deviation of the log).
        start: the first day (UTC).
        seed: seeds the noise and the counts.
    """

    days: int = 60
    per_day: int = 200
    growth: float = 0.01
    weekend: float = 0.55
    noise: float = 0.08
    start: date = date(2026, 9, 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.days < 1 or self.per_day < 1:
            raise ConfigError(
                f"Traffic needs days >= 1 and per_day >= 1, got days={self.days}, "
                f"per_day={self.per_day}."
            )
        if not 0 < self.weekend <= 5 or self.noise < 0 or self.growth <= -1:
            raise ConfigError(
                f"Traffic weekend={self.weekend}, noise={self.noise}, growth={self.growth}: "
                "weekend must be in (0, 5], noise >= 0, growth > -1."
            )

    def dates(self) -> list[date]:
        """The days, in order."""
        return [self.start + timedelta(days=i) for i in range(self.days)]

    def means(self) -> list[float]:
        """Each day's expected volume (before noise)."""
        return [
            self.per_day * (1 + self.growth) ** i * (self.weekend if d.weekday() >= 5 else 1.0)
            for i, d in enumerate(self.dates())
        ]

    def volumes(self) -> list[int]:
        """Each day's number of interactions: the mean, log-normal noise, a Poisson count."""
        rng = random.Random(self.seed)
        out = []
        for mean in self.means():
            lam = mean * math.exp(rng.gauss(0.0, self.noise) - self.noise**2 / 2)
            out.append(_poisson(rng, lam))
        return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam < 30:
        # Knuth's method: exact for small means.
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def times_in_day(day: date, n: int, rng: random.Random) -> list[datetime]:
    """``n`` sorted times within ``day`` (UTC), more in office hours than at night."""
    hours = rng.choices(range(24), weights=_HOURLY, k=n)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return sorted(start + timedelta(hours=h, seconds=rng.uniform(0, 3599)) for h in hours)


@dataclass(frozen=True, slots=True)
class Injection:
    """An anomaly put into simulated traffic on ``day`` (an index into the traffic's days).

    ``spike``: tenant ``tenant`` sends ``size`` times its usual traffic. ``deflection_drop``:
    the precomputed stage answers ``1 / size`` of what it usually does (the rest goes to the
    generator). ``unit_cost_jump``: the generator's calls read and write ``size`` times the
    tokens, so each costs ``size`` times as much (a prompt template that grew, a cache that
    stopped hitting).
    """

    kind: str
    day: int
    size: float
    tenant: str = "acme"

    def __post_init__(self) -> None:
        if self.kind not in ("spike", "deflection_drop", "unit_cost_jump") or self.size <= 1:
            raise ConfigError(
                f"Injection kind={self.kind!r} size={self.size}: kind must be spike, "
                "deflection_drop or unit_cost_jump and size > 1."
            )


@dataclass(slots=True)
class _Mix:
    tenants: Sequence[tuple[str, float]] = (("acme", 0.5), ("globex", 0.3), ("initech", 0.2))
    canned: float = 0.12
    precomputed: float = 0.35
    model: str = "amazon.nova-micro-v1:0"
    price_in: Decimal = Decimal("0.035")  # USD per million input tokens
    price_out: Decimal = Decimal("0.14")
    extra: dict[str, float] = field(default_factory=dict)


def synthetic_entries(
    traffic: Traffic, injections: Sequence[Injection] = (), *, seed: int = 0
) -> list[Entry]:
    """The entries a deflecting support bot records over ``traffic``, with ``injections``.

    Each interaction gets an intent-scan entry (free, local classifier), then is answered by
    the canned stage (12%), the precomputed stage (35%), or the generator (a model call of
    about 900 input and 150 output tokens, priced as Nova Micro). Tenants share the traffic
    50/30/20. Costs are exact decimals.
    """
    mix = _Mix()
    rng = random.Random(seed * 7919 + traffic.seed)
    volumes = traffic.volumes()
    out: list[Entry] = []
    million = Decimal(1_000_000)
    for i, (day, n) in enumerate(zip(traffic.dates(), volumes, strict=True)):
        here = [x for x in injections if x.day == i]
        tenants = list(mix.tenants)
        for x in here:
            if x.kind == "spike":
                tenants = [(t, w * x.size if t == x.tenant else w) for t, w in tenants]
        boost = sum(w for _, w in tenants) / sum(w for _, w in mix.tenants)
        count = round(n * boost)
        precomputed = mix.precomputed
        cost_factor = 1.0
        for x in here:
            if x.kind == "deflection_drop":
                precomputed /= x.size
            if x.kind == "unit_cost_jump":
                cost_factor *= x.size
        names = rng.choices([t for t, _ in tenants], weights=[w for _, w in tenants], k=count)
        for j, (when, tenant) in enumerate(zip(times_in_day(day, count, rng), names, strict=True)):
            rid = f"d{i}r{j}"
            tags = {"tenant": tenant}
            roll = rng.random()
            out.append(
                Entry(
                    request_id=rid,
                    stage="intent_scan",
                    outcome="passed",
                    cost=Decimal(0),
                    avoided_cost=Decimal(0),
                    tags=tags,
                    time=when,
                )
            )
            if roll < mix.canned:
                out.append(_answered(rid, "canned", tags, when))
            elif roll < mix.canned + precomputed:
                out.append(_answered(rid, "precomputed", tags, when))
            else:
                inp = max(1, round(rng.gauss(900, 120) * cost_factor))
                outp = max(1, round(rng.gauss(150, 40) * cost_factor))
                cost = (inp * mix.price_in + outp * mix.price_out) / million
                out.append(
                    Entry(
                        request_id=rid,
                        stage="generate",
                        outcome="answered",
                        model=mix.model,
                        usage=Usage(input_tokens=inp, output_tokens=outp),
                        cost=cost,
                        avoided_cost=Decimal(0),
                        tags=tags,
                        time=when + timedelta(seconds=1),
                    )
                )
    return out


def _answered(rid: str, stage: str, tags: dict[str, str], when: datetime) -> Entry:
    return Entry(
        request_id=rid,
        stage=stage,
        outcome="answered",
        cost=Decimal(0),
        avoided_cost=Decimal(0),
        tags=tags,
        time=when,
    )
