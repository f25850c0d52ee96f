"""Month-end and next-month spend from a ledger's daily series, with a prediction interval.

The model is in :mod:`chainkit.finops.series`: log spend as a line plus weekday effects,
fitted robustly on the last eight weeks; bands are quantiles of simulated paths. Month-end is
the month-to-date spend (exact) plus the band of the days left. Per budget, the series is the
spend the budget counts (its tag), with the chance of ending the month over its limit.

The last day in the ledger is taken as complete; pass ``through`` (the last complete day) when
it is not (a ledger read at noon). Unknown costs count at their bound, as budgets count them;
a day with an unknown cost and no bound is left out of the fit.
"""

from __future__ import annotations

import calendar
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import numpy as np

from chainkit.errors import ConfigError
from chainkit.finops.series import Fit, daily_spend, fit
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
            "p_over_limit": self.p_over_limit,
        }


def _money(x: float) -> Decimal:
    return Decimal(repr(float(x))).quantize(_MONEY)


def _month_end(d: date) -> date:
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def _method(f: Fit) -> str:
    parts = ["log-linear trend" if f.trend else "level"]
    if f.seasonal:
        parts.append("weekday effects")
    return f"{' + '.join(parts)} on {f.used} days (robust least squares, simulated paths)"


def forecast_series(
    series: dict[date, Decimal | None],
    *,
    level: float = 0.8,
    through: date | None = None,
    scope: tuple[str, str] | None = None,
    limit: Decimal | None = None,
    one_off: dict[date, Decimal | None] | None = None,
    paths: int = 4000,
    seed: int = 0,
) -> Forecast:
    """Forecast a daily series of recurring spend (see :func:`forecast`).

    ``one_off`` is spend that will not recur (setup: precomputing, a batch's set-up): it is
    part of the observed days and of the month to date, but not of the fit.
    """
    if not 0 < level < 1:
        raise ConfigError(f"Forecast level {level!r} is not a share in (0, 1); try 0.8 or 0.95.")
    if through is not None:
        series = {d: v for d, v in series.items() if d <= through}
        if series:
            last_seen = max(series)
            for i in range(1, (through - last_seen).days + 1):
                series[last_seen + timedelta(days=i)] = Decimal(0)
    known = sum(v is not None for v in series.values())
    if known < 3:
        raise ConfigError(
            f"A forecast needs at least 3 days of known spend; {_name(scope)} has {known}. "
            "Record more days of traffic first."
        )
    f = fit(series)
    last = max(series)
    extra = {d: v for d, v in (one_off or {}).items() if d <= last}
    observed = dict(series)
    for d, v in extra.items():
        before = observed.get(d, Decimal(0))
        observed[d] = None if before is None or v is None else before + v
    horizon_end = _month_end(_month_end(last) + timedelta(days=1))
    future = [last + timedelta(days=i) for i in range(1, (horizon_end - last).days + 1)]
    sims = f.paths(future, n=paths, seed=seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    lows, mids, highs = np.quantile(sims, [lo_q, 0.5, hi_q], axis=0)
    bands = tuple(
        Band(d, _money(lo), _money(mid), _money(hi))
        for d, lo, mid, hi in zip(future, lows, mids, highs, strict=True)
    )
    this_end = _month_end(last)
    n_rest = (this_end - last).days
    month_to_date = exact_sum(
        v if v is not None else Decimal(0)
        for d, v in observed.items()
        if (d.year, d.month) == (last.year, last.month)
    )
    assert month_to_date is not None
    rest = sims[:, :n_rest].sum(axis=1)
    month_totals = float(month_to_date) + rest
    nxt = sims[:, n_rest:].sum(axis=1)

    def band(day: date, totals: np.ndarray, base: Decimal = Decimal(0)) -> Band:
        lo, mid, hi = np.quantile(totals, [lo_q, 0.5, hi_q])
        return Band(day, base + _money(lo), base + _money(mid), base + _money(hi))

    p_over = None if limit is None else float(np.mean(month_totals > float(limit)))
    return Forecast(
        scope=scope,
        observed=tuple(sorted(observed.items())),
        bands=bands,
        month_end=band(this_end, rest, month_to_date),
        next_month=band(horizon_end, nxt),
        level=level,
        method=_method(f),
        limit=limit,
        p_over_limit=p_over,
    )


def _name(scope: tuple[str, str] | None) -> str:
    return "the ledger" if scope is None else f"{scope[0]}={scope[1]!r}"


def forecast(
    ledger: Ledger | Iterable[Entry],
    *,
    tag: tuple[str, str] | None = None,
    level: float = 0.8,
    through: date | None = None,
) -> Forecast:
    """Month-end and next-month spend of the ledger (or of the entries with ``tag``).

    Args:
        ledger: any ledger, or its entries.
        tag: ``(key, value)`` to forecast one tenant's (feature's...) spend only.
        level: the nominal coverage of the bands (0.8 or 0.95 are usual).
        through: the last complete day (default: the last day with entries).
    """
    if tag is None:
        grouped = daily_spend(ledger, _phase)
    else:
        key, value = tag
        grouped = daily_spend(ledger, lambda e: _phase(e) if e.tags.get(key) == value else None)
    return forecast_series(
        grouped.get("serve", {}),
        level=level,
        through=through,
        scope=tag,
        one_off=grouped.get("setup"),
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
) -> dict[str, Forecast]:
    """A forecast per value of tag ``tag`` (values with under ``min_days`` known days skipped)."""
    series = daily_spend(
        ledger, lambda e: None if (v := e.tags.get(tag)) is None else (v, _phase(e))
    )
    out: dict[str, Forecast] = {}
    values = sorted({str(k[0]) for k in series if isinstance(k, tuple)})
    for value in values:
        days = series.get((value, "serve"), {})
        if sum(v is not None for v in days.values()) >= max(min_days, 3):
            out[value] = forecast_series(
                days,
                level=level,
                through=through,
                scope=(tag, value),
                one_off=series.get((value, "setup")),
            )
    return out


def forecast_budgets(
    ledger: Ledger, *, level: float = 0.8, through: date | None = None
) -> dict[str, Forecast]:
    """A forecast per budget of the ledger: the spend it counts, with ``p_over_limit``.

    ``p_over_limit`` (the share of simulated months over the limit) is given for monthly
    budgets only; a daily or all-time budget's limit is not a month's.
    """
    budgets = ledger.budgets
    if not budgets:
        return {}

    def key(e: Entry) -> Hashable:
        return (tuple(b.name for b in budgets if b.applies(e.tags)), _phase(e))

    grouped = daily_spend(ledger, key)
    out: dict[str, Forecast] = {}
    for b in budgets:
        parts: dict[str, dict[date, Decimal | None]] = {"serve": {}, "setup": {}}
        for k, series in grouped.items():
            assert isinstance(k, tuple)
            names, phase = k
            if b.name in names:
                days = parts[phase]
                for d, v in series.items():
                    before = days.get(d, Decimal(0))
                    days[d] = None if before is None or v is None else before + v
        if sum(v is not None for v in parts["serve"].values()) < 3:
            continue
        out[b.name] = forecast_series(
            parts["serve"],
            level=level,
            through=through,
            scope=("budget", b.name),
            limit=b.limit if b.period == "month" else None,
            one_off=parts["setup"],
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
