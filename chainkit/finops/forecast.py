"""Month-end and next-month spend from a ledger's daily series, with a prediction interval.

The model is in :mod:`chainkit.finops.series`: log spend as a line plus weekday effects,
fitted robustly on the last eight weeks; bands are quantiles of simulated paths. Month-end is
the month-to-date spend (exact) plus the band of the days left. Per budget, the series is the
spend the budget counts (its tag), with the chance of ending the month over its limit.

By default the last complete UTC day is the ledger's last day if it is before today, else the
day before: today's spend so far is observed-to-date and the rest of the day is forecast (the
day ends at the larger of what was spent and the simulated day). Entries dated after now are
left out, with a note saying how many. A ``through`` after the last entry's day is refused.

Unknown costs count at their bound, as budgets count them; a day with an unknown cost and no
bound keeps its known part in the month to date but is left out of the fit, and the month's
total is then only a lower bound (``lower_bound``; ``p_over_limit`` is ``None``).

A series with fewer than 14 days of spend, or with more than a quarter of its days at $0
(intermittent spend), is not fitted on the log scale (the log of near-zero days extrapolates
wildly and a median of a log model of mostly-zero days is near $0): it is forecast as a mean
daily rate, each future day resampled from past days (of the same weekday when there are
three), times a per-path factor for the uncertainty of the mean. ``method`` says which.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np

from chainkit.errors import ConfigError
from chainkit.finops.series import WINDOW, DailySpend, Fit, daily_known, fit
from chainkit.ledger import Ledger
from chainkit.money import exact_sum
from chainkit.records import Entry

__all__ = [
    "Band",
    "Forecast",
    "backtest",
    "forecast",
    "forecast_budgets",
    "forecast_by",
    "forecast_series",
]

_MONEY = Decimal("1E-9")  # a billionth of a dollar: small daily spends keep their digits

MIN_TREND_DAYS = 14
"""Days of non-zero spend a log-scale trend needs; fewer: the mean-rate model."""

MAX_ZERO_SHARE = 0.25
"""Above this share of $0 days a series is intermittent: the mean-rate model."""


@dataclass(frozen=True, slots=True)
class Band:
    """A forecast for one day (or one month's total, dated its last day): low, mid, high."""

    day: date
    low: Decimal
    mid: Decimal
    high: Decimal

    def to_dict(self) -> dict[str, str]:
        """JSON-ready, money as exact decimal strings."""
        return {
            "date": self.day.isoformat(),
            "low": str(self.low),
            "mid": str(self.mid),
            "high": str(self.high),
        }


@dataclass(frozen=True, slots=True)
class Forecast:
    """A spend forecast: the observed daily series, a band per future day, month totals.

    ``month_end`` is the total of the month of the last observed day (observed days exact plus
    the band of the rest); ``next_month`` the whole next month's. ``level`` is the interval's
    nominal coverage (0.8: 10% of outcomes expected below ``low``, 10% above ``high``).
    """

    scope: tuple[str, str] | None
    observed: tuple[tuple[date, Decimal | None], ...]
    bands: tuple[Band, ...]
    month_end: Band
    next_month: Band
    level: float
    method: str
    limit: Decimal | None = None
    p_over_limit: float | None = None
    period: str | None = "month"
    lower_bound: bool = False
    notes: tuple[str, ...] = ()

    @property
    def band(self) -> tuple[tuple[date, Decimal, Decimal, Decimal], ...]:
        """``(day, low, mid, high)`` per future day: the shape the HTML report draws."""
        return tuple((b.day, b.low, b.mid, b.high) for b in self.bands)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: money as exact decimal strings, ``None`` for unknown."""
        return {
            "scope": None if self.scope is None else list(self.scope),
            "level": self.level,
            "method": self.method,
            "observed": [
                {"date": d.isoformat(), "spend": None if v is None else str(v)}
                for d, v in self.observed
            ],
            "bands": [b.to_dict() for b in self.bands],
            "month_end": self.month_end.to_dict(),
            "next_month": self.next_month.to_dict(),
            "limit": None if self.limit is None else str(self.limit),
            "period": self.period,
            "p_over_limit": self.p_over_limit,
            "lower_bound": self.lower_bound,
            "notes": list(self.notes),
        }


def _money(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(_MONEY)


def _month_end(d: date) -> date:
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def _method(f: Fit) -> str:
    parts = ["log-linear trend" if f.trend else "level"]
    if f.seasonal:
        parts.append("weekday effects")
    capped = ", growth capped at 2x a week" if f.capped else ""
    return f"{' + '.join(parts)} on {f.used} days (robust least squares, simulated paths{capped})"


def _known(series: Mapping[date, Decimal | None] | DailySpend | None) -> DailySpend:
    if series is None:
        return DailySpend({}, frozenset())
    if isinstance(series, DailySpend):
        return series
    return DailySpend(
        {d: Decimal(0) if v is None else v for d, v in series.items()},
        frozenset(d for d, v in series.items() if v is None),
    )


def _rate_paths(
    history: dict[date, Decimal | None], days: list[date], n: int, seed: int
) -> tuple[np.ndarray, str]:
    """Paths of a mean daily rate: days resampled from the past, times the mean's uncertainty."""
    known = sorted((d, float(v)) for d, v in history.items() if v is not None)[-WINDOW:]
    values = np.array([v for _, v in known], dtype=np.float64)
    rng = np.random.default_rng(seed)
    mean = float(values.mean())
    # The mean of k days is uncertain by its coefficient of variation over sqrt(k); at least
    # 30% either way, since few or intermittent days say little about next month.
    cv2 = float(values.var()) / mean**2 if mean > 0 else 0.0
    sigma = max(float(np.sqrt(np.log1p(cv2 / len(values)))), 0.3)
    factor = rng.lognormal(-(sigma**2) / 2, sigma, size=n)
    pools: dict[int, np.ndarray] = {}
    for wd in range(7):
        same = np.array([v for d, v in known if d.weekday() == wd], dtype=np.float64)
        pools[wd] = same if len(same) >= 3 else values
    out = np.empty((n, len(days)))
    for j, d in enumerate(days):
        out[:, j] = rng.choice(pools[d.weekday()], size=n)
    nonzero = int((values > 0).sum())
    method = (
        f"mean daily rate on {len(values)} days ({nonzero} with spend; resampled days, "
        "simulated paths)"
    )
    return out * factor[:, None], method


def forecast_series(
    series: Mapping[date, Decimal | None] | DailySpend,
    *,
    level: float = 0.8,
    through: date | None = None,
    scope: tuple[str, str] | None = None,
    limit: Decimal | None = None,
    one_off: Mapping[date, Decimal | None] | DailySpend | None = None,
    period: str | None = "month",
    notes: tuple[str, ...] = (),
    paths: int = 4000,
    seed: int = 0,
) -> Forecast:
    """Forecast a daily series of recurring spend (see :func:`forecast`).

    ``one_off`` is spend that will not recur (setup: precomputing, a batch's set-up): it is
    part of the observed days and of the month to date, but not of the fit. Days of the
    series after ``through`` (default: its last day) are partial: observed so far, their rest
    forecast. ``limit`` is compared per ``period``: "month" the month's total, "day" the next
    day's spend, ``None`` (all-time) everything observed plus the rest of the month.
    """
    if not 0 < level < 1:
        raise ConfigError(f"Forecast level {level!r} is not a share in (0, 1); try 0.8 or 0.95.")
    spend = _known(series)
    setup = _known(one_off)
    seen = max(spend.known, default=None)
    if through is not None and seen is not None and through > seen:
        raise ConfigError(
            f"--through {through.isoformat()} is after the ledger's last day with entries "
            f"({seen.isoformat()}): give a complete day on or before it."
        )
    if through is None:
        through = seen
    complete = {d: v for d, v in spend.series().items() if through is not None and d <= through}
    known = sum(v is not None for v in complete.values())
    if known < 3:
        raise ConfigError(
            f"A forecast needs at least 3 days of known spend; {_name(scope)} has {known}. "
            "Record more days of traffic first."
        )
    assert through is not None and seen is not None
    last = max(seen, through)  # the last day observed, complete or not
    partial = {d: spend.known[d] for d in spend.known if d > through}
    horizon_end = _month_end(_month_end(last) + timedelta(days=1))
    future = [through + timedelta(days=i) for i in range(1, (horizon_end - through).days + 1)]
    values = [v for v in complete.values() if v is not None][-WINDOW:]
    nonzero = sum(v > 0 for v in values)
    if nonzero < MIN_TREND_DAYS or (len(values) - nonzero) > MAX_ZERO_SHARE * len(values):
        sims, method = _rate_paths(complete, future, paths, seed)
    else:
        f = fit(complete)
        sims, method = f.paths(future, n=paths, seed=seed), _method(f)
    for j, d in enumerate(future):
        if d in partial:  # the day ends at what it spent so far, or more
            sims[:, j] = np.maximum(sims[:, j], float(partial[d]))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    lows, mids, highs = np.quantile(sims, [lo_q, 0.5, hi_q], axis=0)
    bands = tuple(
        Band(d, _money(lo), _money(mid), _money(hi))
        for d, lo, mid, hi in zip(future, lows, mids, highs, strict=True)
    )
    observed: dict[date, Decimal | None] = {}
    for d, v in spend.known.items():
        s = v + setup.known.get(d, Decimal(0))
        observed[d] = None if d in spend.unknown or d in setup.unknown else s
    for d, v in setup.known.items():
        if d not in observed and d <= last:
            observed[d] = None if d in setup.unknown else v
    this_end = _month_end(last)
    in_month = [f for f in future if f <= this_end]
    month_to_date = exact_sum(
        [
            *(v for d, v in spend.known.items() if d <= through and _same_month(d, last)),
            *(v for d, v in setup.known.items() if d <= last and _same_month(d, last)),
        ]
    )
    assert month_to_date is not None
    gaps = {d for d in spend.unknown | setup.unknown if d <= last}
    lower_bound = any(_same_month(d, last) for d in gaps)
    rest = sims[:, : len(in_month)].sum(axis=1)
    month_totals = float(month_to_date) + rest
    nxt = sims[:, len(in_month) :].sum(axis=1)

    def band(day: date, totals: np.ndarray, base: Decimal = Decimal(0)) -> Band:
        lo, mid, hi = np.quantile(totals, [lo_q, 0.5, hi_q])
        return Band(day, base + _money(lo), base + _money(mid), base + _money(hi))

    p_over: float | None = None
    if limit is not None:
        if period == "day":
            p_over = float(np.mean(sims[:, 0] > float(limit)))
        else:
            totals, uncertain = month_totals, lower_bound
            if period is None:  # all-time: everything so far plus the rest of this month
                before = exact_sum(
                    [
                        *(v for d, v in spend.known.items() if d <= through),
                        *(v for d, v in setup.known.items() if d <= last),
                    ]
                )
                assert before is not None
                totals, uncertain = float(before) + rest, bool(gaps)
            p_over = float(np.mean(totals > float(limit)))
            # Unknown spend only adds: over on the known part alone is over; else unknown.
            if uncertain and p_over < 1.0:
                p_over = None
    if lower_bound:
        notes = (
            *notes,
            "some days this month had spend of unknown cost and no bound: the month end is "
            "the known part only (a lower bound)",
        )
    return Forecast(
        scope=scope,
        observed=tuple(sorted(observed.items())),
        bands=bands,
        month_end=band(this_end, rest, month_to_date),
        next_month=band(horizon_end, nxt),
        level=level,
        method=method,
        limit=limit,
        p_over_limit=p_over,
        period=period,
        lower_bound=lower_bound,
        notes=notes,
    )


def _same_month(a: date, b: date) -> bool:
    return (a.year, a.month) == (b.year, b.month)


def _name(scope: tuple[str, str] | None) -> str:
    return "the ledger" if scope is None else f"{scope[0]}={scope[1]!r}"


def _complete(last: date | None, now: datetime) -> date | None:
    """The last complete UTC day: today is not complete until tomorrow."""
    if last is None:
        return None
    today = now.astimezone(UTC).date()
    return last if last < today else last - timedelta(days=1)


def _read(
    ledger: Ledger | Iterable[Entry],
    key: Callable[[Entry], Hashable | None],
    through: date | None,
    now: datetime | None,
) -> tuple[dict[Hashable, DailySpend], date | None, date | None, tuple[str, ...]]:
    """The ledger's daily spend per key, its last day, the last complete day and notes."""
    now = now or datetime.now(UTC)
    grouped, late = daily_known(ledger, key, until=now)
    last = max((max(v.known) for v in grouped.values() if v.known), default=None)
    notes: tuple[str, ...] = ()
    if late:
        notes = (
            f"{late} entr{'y' if late == 1 else 'ies'} dated after now "
            f"({now.isoformat(timespec='seconds')}) left out",
        )
    if through is not None and last is not None and through > last:
        raise ConfigError(
            f"--through {through.isoformat()} is after the ledger's last day with entries "
            f"({last.isoformat()}): give a complete day on or before it."
        )
    return grouped, last, through if through is not None else _complete(last, now), notes


def forecast(
    ledger: Ledger | Iterable[Entry],
    *,
    tag: tuple[str, str] | None = None,
    level: float = 0.8,
    through: date | None = None,
    now: datetime | None = None,
) -> Forecast:
    """Month-end and next-month spend of the ledger (or of the entries with ``tag``).

    Args:
        ledger: any ledger, or its entries.
        tag: ``(key, value)`` to forecast one tenant's (feature's...) spend only.
        level: the nominal coverage of the bands (0.8 or 0.95 are usual).
        through: the last complete day (default: the last day with entries, or the day before
            it when that is today and so incomplete).
        now: the time the ledger is read at (default: the clock); later entries are left out.
    """
    if tag is None:
        key: Callable[[Entry], Hashable | None] = _phase
    else:
        name, value = tag
        key = lambda e: _phase(e) if e.tags.get(name) == value else None  # noqa: E731
    grouped, _, day, notes = _read(ledger, key, through, now)
    return forecast_series(
        grouped.get("serve", DailySpend({}, frozenset())),
        level=level,
        through=day,
        scope=tag,
        one_off=grouped.get("setup"),
        notes=notes,
    )


def _phase(e: Entry) -> str:
    # Setup spend is one-off: counted in the month it was paid, never projected forward.
    return "setup" if e.phase == "setup" else "serve"


def forecast_by(
    ledger: Ledger | Iterable[Entry],
    tag: str,
    *,
    level: float = 0.8,
    through: date | None = None,
    min_days: int = 3,
    now: datetime | None = None,
) -> dict[str, Forecast]:
    """A forecast per value of tag ``tag`` (values with under ``min_days`` known days skipped).

    Each value's days start at its first entry: the days before a tenant existed are not days
    of no spend.
    """
    series, _, day, notes = _read(
        ledger, lambda e: None if (v := e.tags.get(tag)) is None else (v, _phase(e)), through, now
    )
    out: dict[str, Forecast] = {}
    values = sorted({str(k[0]) for k in series if isinstance(k, tuple)})
    for value in values:
        days = series.get((value, "serve"), DailySpend({}, frozenset()))
        n = sum(v is not None for d, v in days.series().items() if day is None or d <= day)
        if n >= max(min_days, 3):
            out[value] = forecast_series(
                days,
                level=level,
                through=day,
                scope=(tag, value),
                one_off=series.get((value, "setup")),
                notes=notes,
            )
    return out


def _merge(a: DailySpend, b: DailySpend) -> DailySpend:
    known = dict(a.known)
    for d, v in b.known.items():
        known[d] = known.get(d, Decimal(0)) + v
    return DailySpend(known, a.unknown | b.unknown)


def forecast_budgets(
    ledger: Ledger,
    *,
    level: float = 0.8,
    through: date | None = None,
    now: datetime | None = None,
) -> dict[str, Forecast]:
    """A forecast per budget of the ledger: the spend it counts, with ``p_over_limit``.

    Every budget is included (one whose tag has no spend: $0 a day). ``p_over_limit`` is the
    share of simulated paths over the limit: for a monthly budget the month's total, for a
    daily one the next day's spend, for an all-time one everything so far plus the rest of
    the month.
    """
    budgets = ledger.budgets
    if not budgets:
        return {}

    def key(e: Entry) -> Hashable:
        return (tuple(b.name for b in budgets if b.applies(e.tags)), _phase(e))

    grouped, last, day, notes = _read(ledger, key, through, now)
    if last is None:
        return {}
    first = min(min(v.known) for v in grouped.values() if v.known)
    # A budget nothing has spent against: $0 on each of the ledger's days.
    nothing = DailySpend(
        {first + timedelta(days=i): Decimal(0) for i in range((last - first).days + 1)},
        frozenset(),
    )
    out: dict[str, Forecast] = {}
    for b in budgets:
        parts = {"serve": nothing, "setup": DailySpend({}, frozenset())}
        for k, spend in grouped.items():
            assert isinstance(k, tuple)
            names, phase = k
            if b.name in names:
                parts[phase] = _merge(parts[phase], spend)
        out[b.name] = forecast_series(
            parts["serve"],
            level=level,
            through=day,
            scope=("budget", b.name),
            limit=b.limit,
            period=b.period,
            one_off=parts["setup"],
            notes=notes,
        )
    return out


def backtest(
    series: dict[date, Decimal | None],
    *,
    levels: tuple[float, ...] = (0.8, 0.95),
    min_history: int = 28,
    horizon: int = 7,
    step: int = 1,
    paths: int = 2000,
) -> dict[str, float]:
    """Rolling-origin back-test: how often the actual day fell inside each level's band.

    From every origin with at least ``min_history`` days before it (every ``step`` days), the
    model is fitted on the days up to the origin and forecasts the next ``horizon`` days; each
    known actual day is checked against each level's band. Returns the coverage per level
    (keys ``"0.8"``...), the number of day forecasts checked (``"forecasts"``) and the mean
    absolute percentage error of the mid line (``"mape"``).
    """
    days = sorted(series)
    inside = dict.fromkeys(levels, 0)
    checked = 0
    errors: list[float] = []
    for origin in range(min_history, len(days), step):
        history = {d: series[d] for d in days[:origin]}
        if sum(v is not None for v in history.values()) < 3:
            continue
        f = fit(history)
        ahead = days[origin : origin + horizon]
        sims = f.paths(ahead, n=paths, seed=origin)
        for k, d in enumerate(ahead):
            actual = series[d]
            if actual is None:
                continue
            checked += 1
            y = float(actual)
            mid = float(np.median(sims[:, k]))
            if y > 0:
                errors.append(abs(mid - y) / y)
            for level in levels:
                lo, hi = np.quantile(sims[:, k], [(1 - level) / 2, 1 - (1 - level) / 2])
                inside[level] += lo <= y <= hi
    out = {str(level): (inside[level] / checked if checked else float("nan")) for level in levels}
    out["forecasts"] = float(checked)
    out["mape"] = float(np.mean(errors)) if errors else float("nan")
    return out
