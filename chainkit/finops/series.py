"""Daily and hourly spend series read from any ledger, and the model forecasts and anomalies share.

The model (documented in the README under "Allocation, forecast and anomalies"): the logarithm
of a day's spend is a straight line in time plus a weekday effect,
``log(y + c) = a + b*t + s[weekday] + e``, fitted by least squares on the last ``window`` days,
refitted once without the days whose residual is beyond 3.5 robust standard deviations (so a
past spike neither drags the line nor widens the band); the noise is the larger of the
refit's residual spread and the robust spread of every day's residual. ``c`` is 1% of the
mean daily spend, so a day of no spend has a finite logarithm. Intervals come from simulated
paths that carry both the noise and the uncertainty of the fitted line (a t-distributed
scale), so a month's total has an honest band, not a sum of daily bands.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from chainkit.ledger import Ledger
from chainkit.records import Entry

__all__ = ["DailySpend", "Fit", "daily_known", "daily_spend", "fit", "spend_of"]

Floats = npt.NDArray[np.float64]

WINDOW = 56
"""Days of history a fit uses (eight weeks: the weekday effect seen eight times)."""

MAX_WEEKLY_GROWTH = float(np.log(2.0))
"""The steepest trend a fit projects, on the log scale per week (doubling or halving weekly):
a line through a few noisy days would otherwise compound into absurd months."""


def spend_of(e: Entry) -> Decimal | None:
    """What an entry counts for in a spend series: its cost, else its bound (as budgets count)."""
    return e.cost if e.cost is not None else e.bound


def day_of(when: datetime) -> date:
    """The UTC day of a time."""
    return when.astimezone(UTC).date()


@dataclass(frozen=True, slots=True)
class DailySpend:
    """One key's spend per UTC day: the known part, and the days that also had unknown spend.

    ``known[d]`` is the spend of day ``d`` whose amount is known (costs, else bounds);
    ``unknown`` holds the days with an entry of unknown cost and no bound, so ``known[d]`` is
    only a lower bound on them. Days run from the key's first entry to the ledger's last day.
    """

    known: dict[date, Decimal]
    unknown: frozenset[date]

    def series(self) -> dict[date, Decimal | None]:
        """Spend per day with ``None`` for the days of unknown spend."""
        return {d: None if d in self.unknown else v for d, v in self.known.items()}


def daily_known(
    ledger: Ledger | Iterable[Entry],
    key: Callable[[Entry], Hashable | None] = lambda e: "all",
    *,
    until: datetime | None = None,
) -> tuple[dict[Hashable, DailySpend], int]:
    """Spend per UTC day per ``key(entry)`` (``None`` keys skipped), known part kept apart.

    Each key's days run from its own first entry (days before a tenant existed are not days of
    no spend) to the last day of any entry; days without spend in between are 0. Entries after
    ``until`` are left out; the second value is how many were.
    """
    known: dict[Hashable, dict[date, Decimal]] = {}
    unknown: dict[Hashable, set[date]] = {}
    last: date | None = None
    late = 0
    entries = ledger.iter_entries() if isinstance(ledger, Ledger) else ledger
    for e in entries:
        if until is not None and e.time > until:
            late += 1
            continue
        k = key(e)
        if k is None:
            continue
        d = day_of(e.time)
        last = d if last is None or d > last else last
        days = known.setdefault(k, {})
        spend = spend_of(e)
        days[d] = days.get(d, Decimal(0)) + (spend if spend is not None else Decimal(0))
        if spend is None:
            unknown.setdefault(k, set()).add(d)
    out: dict[Hashable, DailySpend] = {}
    for k, days in known.items():
        first = min(days)
        assert last is not None
        every = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        out[k] = DailySpend(
            {d: days.get(d, Decimal(0)) for d in every}, frozenset(unknown.get(k, ()))
        )
    return out, late


def daily_spend(
    ledger: Ledger | Iterable[Entry],
    key: Callable[[Entry], Hashable | None] = lambda e: "all",
) -> dict[Hashable, dict[date, Decimal | None]]:
    """Spend per UTC day per ``key(entry)`` (entries whose key is ``None`` are skipped).

    Days between a key's first entry and the ledger's last day with no spend are 0. A day with
    an unknown cost that has no bound is ``None``.
    """
    grouped, _ = daily_known(ledger, key)
    return {k: v.series() for k, v in grouped.items()}


@dataclass(frozen=True, slots=True)
class Fit:
    """A fitted line-plus-weekday model on log spend; ``predict``/``paths`` extend it."""

    beta: Floats
    cov_unscaled: Floats  # (X'X)^-1
    s2: float  # residual variance on the log scale
    df: int  # residual degrees of freedom
    offset: float  # c in log(y + c)
    start: date  # day of t = 0
    seasonal: int  # 0: none, 2: weekend vs weekday, 7: each weekday
    trend: bool
    used: int  # days the final fit used (outliers left out)
    capped: bool = False  # the trend was steeper than MAX_WEEKLY_GROWTH and was held to it

    def design(self, days: list[date]) -> Floats:
        """The model's regressors for ``days``."""
        return _design(days, self.start, self.seasonal, self.trend)

    def predict(self, days: list[date]) -> Floats:
        """The fitted log-scale mean on ``days``."""
        return self.design(days) @ self.beta

    def scale(self) -> float:
        """The residual standard deviation on the log scale (never 0: a floor of 1e-3)."""
        return max(float(np.sqrt(self.s2)), 1e-3)

    def prediction_sd(self, days: list[date]) -> Floats:
        """The standard deviation of a new day's log spend: noise plus the fit's uncertainty."""
        x = self.design(days)
        spread = np.einsum("ij,jk,ik->i", x, self.cov_unscaled, x)
        out: Floats = self.scale() * np.sqrt(1.0 + spread)
        return out

    def paths(self, days: list[date], n: int = 4000, seed: int = 0) -> Floats:
        """``n`` simulated spend paths over ``days`` (rows: paths), on the spend scale.

        Each path draws the noise scale (from its chi-squared law), the line (from its normal
        law given that scale) and each day's noise, so days of one path move together the way
        errors in a fitted trend make them.
        """
        rng = np.random.default_rng(seed)
        x = self.design(days)
        sigma2 = np.full(n, max(self.s2, 1e-6))
        if self.df > 0:
            sigma2 = sigma2 * self.df / rng.chisquare(self.df, size=n)
        p = len(self.beta)
        chol = np.linalg.cholesky(self.cov_unscaled + 1e-12 * np.eye(p))
        z = rng.standard_normal((n, p))
        betas = self.beta + (z @ chol.T) * np.sqrt(sigma2)[:, None]
        if self.trend:
            betas[:, 1] = np.clip(betas[:, 1], -MAX_WEEKLY_GROWTH, MAX_WEEKLY_GROWTH)
        noise = rng.standard_normal((n, len(days))) * np.sqrt(sigma2)[:, None]
        log_paths = betas @ x.T + noise
        # Bound the exponent: a path that explodes says nothing more past 50x the fitted mean.
        log_paths = np.minimum(log_paths, (x @ self.beta)[None, :] + np.log(50.0))
        out: Floats = np.maximum(np.exp(log_paths) - self.offset, 0.0)
        return out


def _design(days: list[date], start: date, seasonal: int, trend: bool) -> Floats:
    t = np.array([(d - start).days for d in days], dtype=np.float64)
    cols = [np.ones_like(t)]
    if trend:
        cols.append(t / 7.0)  # per week: keeps X'X well conditioned
    wd = np.array([d.weekday() for d in days])
    if seasonal == 7:
        cols += [(wd == k).astype(np.float64) for k in range(1, 7)]  # Monday is the base
    elif seasonal == 2:
        cols.append((wd >= 5).astype(np.float64))
    return np.column_stack(cols)


def fit(series: Mapping[date, Decimal | None], window: int = WINDOW) -> Fit:
    """Fit the model on the last ``window`` days of ``series`` (days of unknown spend left out).

    Needs at least 3 known days: fewer than 7 fit a level only; fewer than 14 a line without
    weekday effects; fewer than 42 a line with one weekend effect (four or five sightings of
    each weekday fit their noise as much as their pattern).
    """
    known = sorted((d, float(v)) for d, v in series.items() if v is not None)[-window:]
    if len(known) < 3:
        raise ValueError(f"need at least 3 days of known spend, got {len(known)}")
    days = [d for d, _ in known]
    y = np.array([v for _, v in known], dtype=np.float64)
    span = (days[-1] - days[0]).days + 1
    offset = max(0.01 * float(np.mean(y)), 1e-9)
    z = np.log(y + offset)
    trend = span >= 7
    seasonal = 7 if span >= 42 else 2 if span >= 14 else 0
    start = days[0]
    x = _design(days, start, seasonal, trend)
    # One trimming pass, judged by the spread of the first fit's residuals: trimming again by
    # the spread of what is left shrinks the spread each pass until normal days look like
    # outliers and the band is far too narrow.
    beta, *_ = np.linalg.lstsq(x, z, rcond=None)
    first = z - x @ beta
    robust = 1.4826 * float(np.median(np.abs(first - np.median(first))))
    keep = np.abs(first - np.median(first)) <= 3.5 * robust
    if robust <= 0 or keep.sum() < x.shape[1] + 2:
        keep = np.ones(len(days), dtype=bool)
    beta, *_ = np.linalg.lstsq(x[keep], z[keep], rcond=None)
    resid = z[keep] - x[keep] @ beta
    df = int(keep.sum()) - x.shape[1]
    s2 = float(resid @ resid / df) if df > 0 else float(np.var(z))
    # Never below the robust spread of all days: a lucky run of calm days is not a promise.
    s2 = max(s2, robust**2)
    cov = np.linalg.pinv(x[keep].T @ x[keep])
    capped = trend and abs(float(beta[1])) > MAX_WEEKLY_GROWTH
    if capped:
        # Hold the slope at the cap and refit the rest, so the level still matches the data.
        slope = float(np.sign(beta[1])) * MAX_WEEKLY_GROWTH
        rest = [i for i in range(x.shape[1]) if i != 1]
        sub, *_ = np.linalg.lstsq(x[keep][:, rest], z[keep] - slope * x[keep][:, 1], rcond=None)
        beta = beta.copy()
        beta[rest] = sub
        beta[1] = slope
    return Fit(beta, cov, s2, max(df, 0), offset, start, seasonal, trend, int(keep.sum()), capped)
