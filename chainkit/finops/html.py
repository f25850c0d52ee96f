"""An HTML report of a ledger: one self-contained file a person opens in a browser.

Spend over time (with a forecast band when one is given), cost by stage, model and tag, what
each stage saved (avoided cost), budgets with their thresholds and crossings, the variant
comparison of :class:`chainkit.Report`, and anomalies marked on the spend chart and listed.

The file needs nothing else: charts are inline SVG drawn here, the stylesheet and the one small
script (sortable tables) are inline, and a Content-Security-Policy allows only those two (by
hash), so the page can load nothing from a network and no text from the ledger can run as a
script even if it were not escaped (it is: every tag, stage, model and name goes through
:func:`_text`).

Unknown costs are never drawn as $0: a bar or day whose cost is unknown is solid up to what its
known entries cost and hatched from there up to its bound (the most it can have cost); without a
bound it says so. Finding the known part takes one more pass over the entries, made only when
some cost is unknown (:class:`Totals` keeps no known part).

Forecasts and anomalies come from elsewhere (``chainkit.finops.forecast`` and ``anomalies``);
anything shaped like :class:`ForecastLike` and :class:`AnomalyLike` plugs in.

>>> from chainkit import Entry, Ledger
>>> ledger = Ledger()
>>> ledger.record(Entry(request_id="r1", stage="generate", outcome="answered", cost=Decimal(1)))
>>> page = html_report(ledger)
>>> page.startswith("<!doctype html>") and "cost by stage" in page.lower()
True
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Protocol, runtime_checkable

from chainkit.errors import ConfigError
from chainkit.ledger import BudgetEvent, BudgetState, Ledger, Totals
from chainkit.money import CONTEXT, ROUNDING, usd
from chainkit.report import Report, VariantReport, money

__all__ = ["AnomalyLike", "ForecastLike", "html_report"]

MAX_BARS = 12
"""A breakdown chart shows at most this many bars: the dearest, then one for all the others."""

HOURLY_UP_TO_DAYS = 2
"""A ledger spanning this many UTC days or fewer is charted by hour (one bar a day says little)."""


@runtime_checkable
class ForecastLike(Protocol):
    """A daily spend forecast: the series it was fitted on and a band for each future day."""

    @property
    def observed(self) -> Sequence[tuple[date, Decimal]]:
        """Observed daily spend, oldest first."""

    @property
    def band(self) -> Sequence[tuple[date, Decimal, Decimal, Decimal]]:
        """(day, low, mid, high) for each forecast day, oldest first."""

    @property
    def level(self) -> float:
        """The interval's coverage, 0 < level < 1 (0.8: an 80% interval)."""


@runtime_checkable
class AnomalyLike(Protocol):
    """One unusual spend: when, where (a scope such as ``("tenant", "acme")``), how unusual."""

    @property
    def when(self) -> date | datetime:
        """The day (or hour) of the unusual spend."""

    @property
    def scope(self) -> tuple[str, ...]:
        """What was unusual: ``("total",)``, ``("tenant", "acme")``, ``("stage", "generate")``."""

    @property
    def kind(self) -> str:
        """What kind of anomaly: ``"spike"``, ``"drop"``, ``"level shift"``..."""

    @property
    def observed(self) -> Decimal:
        """The spend seen."""

    @property
    def expected(self) -> Decimal:
        """The spend expected."""

    @property
    def score(self) -> float:
        """How unusual (larger is more)."""


# -- text -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text(value: object) -> str:
    r"""``value`` as HTML text: escaped, lone surrogates and control characters as U+FFFD.

    >>> _text('<script>"x"</script>'), _text("日本 🚚")
    ('&lt;script&gt;&quot;x&quot;&lt;/script&gt;', '日本 🚚')
    >>> _text("\ud800 ok\x07") == "\ufffd ok\ufffd"
    True
    """
    text = str(value)
    if not text.isascii():
        # A lone surrogate cannot be written as UTF-8: show the replacement character instead.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return html.escape(_CONTROL.sub("\ufffd", text), quote=True)


def _short(value: str, limit: int = 26) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _f(value: float) -> str:
    """A coordinate for SVG: two decimals at most, no exponent."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _axis_money(value: float) -> str:
    """An axis tick in dollars, without cents that say nothing ($1,000, $0.50, $0.0025)."""
    label = usd(Decimal(f"{value:.12g}"))
    return label[:-3] if label.endswith(".00") and label != "$0.00" else label


def _exact(amount: Decimal | None) -> str:
    shown = money(amount)
    return "unknown" if shown is None else f"${shown}"


def _pct(part: Decimal, whole: Decimal) -> str:
    if whole == 0:
        return "-"
    with localcontext(ROUNDING):
        return f"{(part / whole * 100).quantize(Decimal('0.1'))}%"


def _ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


# -- amounts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Amount:
    """What a chart needs of a sum: the cost (``None`` if unknown), its known part and bound.

    ``known`` is what the entries of known cost add up to (the whole cost when none is
    unknown); ``bound`` the most the sum can be (``None`` if an unknown cost has no bound).
    """

    cost: Decimal | None
    known: Decimal
    bound: Decimal | None
    unknown: int = 0

    @classmethod
    def of(cls, t: Totals, known: Decimal | None = None) -> _Amount:
        if t.cost is not None:
            return cls(t.cost, t.cost, t.cost, 0)
        return cls(None, Decimal(0) if known is None else known, t.cost_bound, t.unknown)

    @classmethod
    def exact(cls, amount: Decimal | None) -> _Amount:
        """A figure that is known or not, with nothing known of it when not (avoided cost)."""
        if amount is None:
            return cls(None, Decimal(0), None, 1)
        return cls(amount, amount, amount, 0)

    @property
    def solid(self) -> float:
        """What to draw as known."""
        return float(self.known)

    @property
    def height(self) -> float:
        """What to draw in all: the cost, else up to its bound, else its known part."""
        if self.cost is not None:
            return float(self.cost)
        return float(self.bound if self.bound is not None else self.known)

    def label(self) -> str:
        if self.cost is not None:
            return usd(self.cost)
        if self.bound is None and not self.known:
            return "unknown"
        unknown = f"{self.unknown:,} unknown"
        if self.bound is not None:
            return f"{usd(self.known)} to {usd(self.bound)} ({unknown})"
        return f"at least {usd(self.known)} ({unknown}, no bound)"


@dataclass(frozen=True, slots=True)
class _Bucket:
    start: datetime
    label: str
    amount: _Amount
    future: tuple[Decimal, Decimal, Decimal] | None = None  # a forecast band: low, mid, high


class _HourSum:
    """Sums one hour's entries as :class:`Totals` would: unknown makes the cost unknown."""

    __slots__ = ("bound", "cost", "unknown")

    def __init__(self) -> None:
        self.cost = Decimal(0)
        self.bound: Decimal | None = Decimal(0)
        self.unknown = 0

    def add(self, cost: Decimal | None, bound: Decimal | None) -> None:
        with localcontext(CONTEXT):
            if cost is None:
                self.unknown += 1
                self.bound = None if bound is None or self.bound is None else self.bound + bound
            else:
                self.cost += cost
                if self.bound is not None:
                    self.bound += cost

    def amount(self) -> _Amount:
        return _Amount(None if self.unknown else self.cost, self.cost, self.bound, self.unknown)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _known_parts(ledger: Ledger, tags: Sequence[str]) -> dict[str, dict[object, Decimal]]:
    """The known part of each day's, stage's, model's and tag value's cost, in one pass.

    Read only when some cost is unknown: :class:`Totals` then has no cost, only a bound, and a
    chart should still show what is known (solid) below what may be (hatched).
    """
    out: dict[str, dict[object, Decimal]] = {name: {} for name in ("day", "stage", "model")}
    out.update({f"tag:{key}": {} for key in tags})
    with localcontext(CONTEXT):
        for e in ledger.iter_entries():
            if not e.cost:
                continue
            keys = [("day", e.time.astimezone(UTC).date()), ("stage", e.stage), ("model", e.model)]
            keys += [(f"tag:{key}", e.tags.get(key)) for key in tags]
            for name, key in keys:
                sums = out[name]
                sums[key] = sums.get(key, Decimal(0)) + e.cost
    return out


def _series(
    ledger: Ledger,
    days: Mapping[date, Totals],
    forecast: ForecastLike | None,
    known: Mapping[object, Decimal],
) -> tuple[str, list[_Bucket]]:
    """Spend per UTC day (or hour, for a short ledger without a forecast), gaps filled with $0."""
    band = {d: (lo, mid, hi) for d, lo, mid, hi in forecast.band} if forecast else {}
    if forecast is None and days and (max(days) - min(days)).days < HOURLY_UP_TO_DAYS:
        hours: dict[datetime, _HourSum] = {}
        for e in ledger.iter_entries():
            hour = e.time.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            hours.setdefault(hour, _HourSum()).add(e.cost, e.bound)
        if hours:
            first, last = min(hours), max(hours)
            out, at = [], first
            while at <= last:
                label = at.strftime("%H:00") if at.hour else at.strftime("%b %d")
                out.append(_Bucket(at, label, hours.get(at, _HourSum()).amount()))
                at += timedelta(hours=1)
            return "hour", out
    seen = set(days) | set(band) | ({d for d, _ in forecast.observed} if forecast else set())
    if not seen:
        return "day", []
    out = []
    day, last_day = min(seen), max(seen)
    zero = _Amount.exact(Decimal(0))
    while day <= last_day:
        t = days.get(day)
        amount = _Amount.of(t, known.get(day)) if t is not None else zero
        out.append(_Bucket(_day_start(day), day.strftime("%b %d"), amount, band.get(day)))
        day += timedelta(days=1)
    return "day", out


# -- SVG ------------------------------------------------------------------------------------------

SPEND = "#2f6db5"
SAVED = "#23966b"
BAND = "#e8a33d"
ANOMALY = "#d03b3b"
GRID = "#e3e7ee"
OTHERS = "#9aa4b2"
INK = "#1d2433"
MUTED = "#667085"


def _hatch(uid: str, colour: str) -> str:
    return (
        f'<pattern id="{uid}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{colour}" stroke-width="3"/></pattern>'
    )


def _time_chart(
    uid: str,
    unit: str,
    buckets: Sequence[_Bucket],
    marks: Mapping[int, list[AnomalyLike]],
    level: float | None,
) -> str:
    """Spend per bucket as columns; a forecast band and its middle; anomaly rings above bars."""
    width, height, left, right, top, bottom = 1000, 300, 74, 16, 18, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(
        [b.amount.height for b in buckets] + [float(b.future[2]) for b in buckets if b.future],
        default=0.0,
    )
    ticks = _ticks(peak)
    ymax = ticks[-1]
    n = max(len(buckets), 1)
    slot = plot_w / n
    bar = max(1.0, slot * 0.72)

    def y(value: float) -> float:
        return top + plot_h - (value / ymax) * plot_h

    title = f"Spend per {unit}"
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{uid}-t {uid}-d" '
        f'class="chart-svg" data-chart="{uid}">',
        f'<title id="{uid}-t">{title}</title>',
        f'<desc id="{uid}-d">{len(buckets)} {unit}s; the table below has every figure.</desc>',
        f"<defs>{_hatch(uid + '-h', '#9aa4b2')}</defs>",
    ]
    for t in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_f(y(t))}" y2="{_f(y(t))}" '
            f'stroke="{GRID}"/><text x="{left - 8}" y="{_f(y(t) + 4)}" text-anchor="end" '
            f'class="tick">{_axis_money(t)}</text>'
        )
    every = max(1, math.ceil(n / 12))
    band_pts: list[tuple[float, float, float, float]] = []
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar) / 2
        cx = left + (i + 0.5) * slot
        if i % every == 0:
            parts.append(
                f'<text x="{_f(cx)}" y="{height - bottom + 18}" text-anchor="middle" '
                f'class="tick">{_text(b.label)}</text>'
            )
        when = b.start.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")
        a = b.amount
        tip = f"<title>{when}: {_text(a.label())}</title>"
        if a.height > a.solid:  # unknown costs: hatched from the known part up to the bound
            parts.append(
                f'<rect class="bar" x="{_f(x)}" y="{_f(y(a.height))}" width="{_f(bar)}" '
                f'height="{_f(y(a.solid) - y(a.height))}" fill="url(#{uid}-h)">{tip}</rect>'
            )
        if a.solid > 0:
            parts.append(
                f'<rect class="bar" x="{_f(x)}" y="{_f(y(a.solid))}" width="{_f(bar)}" '
                f'height="{_f(y(0) - y(a.solid))}" fill="{SPEND}">{tip}</rect>'
            )
        if a.cost is None and a.bound is None:
            parts.append(
                f'<text x="{_f(cx)}" y="{_f(y(0) - 4)}" text-anchor="middle" class="unknown">?'
                f"<title>{when}: cost unknown, no bound</title></text>"
            )
        if b.future is not None:
            lo, mid, hi = (float(v) for v in b.future)
            band_pts.append((cx, y(lo), y(mid), y(hi)))
    if band_pts:
        # Where the forecast starts: a dashed rule at the edge of its first day.
        edge = band_pts[0][0] - slot / 2
        parts.append(
            f'<line x1="{_f(edge)}" x2="{_f(edge)}" y1="{top}" y2="{_f(y(0))}" stroke="{MUTED}" '
            f'stroke-dasharray="3 3"/><text x="{_f(edge + 6)}" y="{top + 10}" class="tick">'
            "forecast</text>"
        )
        upper = " ".join(f"{_f(x)},{_f(hi)}" for x, _, _, hi in band_pts)
        lower = " ".join(f"{_f(x)},{_f(lo)}" for x, lo, _, _ in reversed(band_pts))
        middle = " ".join(f"{_f(x)},{_f(mid)}" for x, _, mid, _ in band_pts)
        shown = "" if level is None else f"{round(level * 100)}% "
        parts.append(
            f'<polygon class="band" points="{upper} {lower}" fill="{BAND}" fill-opacity="0.28">'
            f"<title>forecast, {shown}interval</title></polygon>"
            f'<polyline class="forecast" points="{middle}" fill="none" stroke="{BAND}" '
            f'stroke-width="2.5" stroke-dasharray="6 4"/>'
        )
        for x, _, mid, _ in band_pts:
            parts.append(f'<circle cx="{_f(x)}" cy="{_f(mid)}" r="2.5" fill="{BAND}"/>')
    for i, group in sorted(marks.items()):
        cx = left + (i + 0.5) * slot
        value = buckets[i].amount.height  # over the bar, whatever scope was unusual
        tips = "; ".join(
            f"{' '.join(a.scope)}: {a.kind}, {usd(a.observed)} vs {usd(a.expected)} expected"
            for a in group
        )
        parts.append(
            f'<g class="anomaly"><circle cx="{_f(cx)}" cy="{_f(y(value) - 9)}" r="7" '
            f'fill="#fff" stroke="{ANOMALY}" stroke-width="2.5"/><text x="{_f(cx)}" '
            f'y="{_f(y(value) - 5)}" text-anchor="middle" class="mark">!</text>'
            f"<title>{_text(tips)}</title></g>"
        )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{_f(y(0))}" y2="{_f(y(0))}" '
        f'stroke="{MUTED}"/></svg>'
    )
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class _Row:
    label: str
    amount: _Amount
    note: str = ""
    colour: str | None = None  # the chart's colour unless given


def _bar_chart(uid: str, title: str, rows: Sequence[_Row], colour: str, *, width: int = 560) -> str:
    """Horizontal bars, largest first, each labelled with its amount and share."""
    label_w, value_w, row_h = 170 if width < 800 else 220, 190, 26
    height = max(1, len(rows)) * row_h + 8
    peak = max((r.amount.height for r in rows), default=0.0) or 1.0
    span = width - label_w - value_w
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{uid}-t" '
        f'class="chart-svg" data-chart="{uid}"><title id="{uid}-t">{_text(title)}</title>'
        f"<defs>{_hatch(uid + '-h', colour)}</defs>"
    ]
    for i, r in enumerate(rows):
        y = 4 + i * row_h
        a = r.amount
        w, solid = span * a.height / peak, span * a.solid / peak
        value = a.label() + (f" · {r.note}" if r.note else "")
        tip = f"<title>{_text(r.label)}: {_text(value)}</title>"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">'
            f"{_text(_short(r.label, 22 if width < 800 else 34))}{tip}</text>"
        )
        if w > solid:  # unknown costs: hatched from the known part up to the bound
            parts.append(
                f'<rect class="bar" x="{_f(label_w + solid)}" y="{y + 4}" '
                f'width="{_f(w - solid)}" height="{row_h - 8}" fill="url(#{uid}-h)">{tip}</rect>'
            )
        if solid > 0:
            parts.append(
                f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{_f(max(solid, 1.5))}" '
                f'height="{row_h - 8}" rx="2" fill="{r.colour or colour}">{tip}</rect>'
            )
        parts.append(
            f'<text x="{_f(label_w + max(w, 0) + 6)}" y="{y + 17}" class="value">'
            f"{_text(value)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# -- tables ---------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str = "") -> str:
    """A table whose cells are escaped here; columns after the first are right-aligned."""
    cap = f"<caption>{_text(caption)}</caption>" if caption else ""
    th = "".join(f'<th scope="col">{_text(h)}</th>' for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            (f'<th scope="row">{_text(c)}</th>' if i == 0 else f'<td class="num">{_text(c)}</td>')
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="sortable">{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _details(summary: str, content: str, *, open_: bool = False) -> str:
    return (
        f"<details{' open' if open_ else ''}><summary>{_text(summary)}</summary>"
        f'<div class="scroll">{content}</div></details>'
    )


def _figure(
    uid: str, heading: str, svg: str, caption: str, table: str, *, open_: bool = False
) -> str:
    return (
        f'<figure class="chart" id="{uid}"><figcaption><h3>{_text(heading)}</h3>'
        f"<p>{caption}</p></figcaption>{svg}"
        f"{_details('Data table (exact figures)', table, open_=open_)}</figure>"
    )


def _breakdown_rows(
    groups: Mapping[str | None, Totals], missing: str, known: Mapping[object, Decimal]
) -> list[tuple[_Row, Totals]]:
    with localcontext(CONTEXT):
        total = sum((t.cost for t in groups.values() if t.cost is not None), Decimal(0))
    rows = []
    for key, t in groups.items():
        a = _Amount.of(t, known.get(key))
        note = _pct(t.cost, total) if t.cost is not None and total else ""
        rows.append((_Row(missing if key is None else key, a, note), t))
    return sorted(rows, key=lambda r: (-r[0].amount.height, r[0].label))


def _others(rows: Sequence[_Row]) -> _Row:
    """The rows a chart has no room for, as one bar (the table keeps each of them)."""
    with localcontext(CONTEXT):
        known = sum((r.amount.known for r in rows), Decimal(0))
        costs = [r.amount.cost for r in rows]
        bounds = [r.amount.bound for r in rows]
        cost = None if None in costs else sum((c for c in costs if c is not None), Decimal(0))
        bound = None if None in bounds else sum((b for b in bounds if b is not None), Decimal(0))
    unknown = sum(r.amount.unknown for r in rows)
    return _Row(f"{len(rows):,} others", _Amount(cost, known, bound, unknown), colour=OTHERS)


def _breakdown(
    uid: str,
    heading: str,
    groups: Mapping[str | None, Totals],
    missing: str,
    what: str,
    known: Mapping[object, Decimal],
) -> str:
    rows = _breakdown_rows(groups, missing, known)
    bars = [r for r, _ in rows]
    if len(bars) > MAX_BARS:
        bars = [*bars[: MAX_BARS - 1], _others(bars[MAX_BARS - 1 :])]
    svg = _bar_chart(uid, heading, bars, SPEND)
    table = _table(
        [what, "calls", "requests", "input tokens", "output tokens", "cost", "unknown-cost calls"],
        (
            [
                r.label,
                f"{t.calls:,}",
                f"{t.requests:,}",
                f"{t.input_tokens:,}",
                f"{t.output_tokens:,}",
                _exact(t.cost),
                f"{t.unknown:,}",
            ]
            for r, t in rows
        ),
    )
    shown = "" if len(bars) == len(rows) else f" (the chart shows the {MAX_BARS - 1} dearest)"
    caption = (
        f"{len(rows):,} {what}{'' if len(rows) == 1 else 's'}{shown}, dearest first; share of "
        "known spend."
    )
    return _figure(uid, heading, svg, _text(caption), table)


# -- sections -------------------------------------------------------------------------------------


def _kpis(
    t: Totals, spend: str, days: int, budgets: Sequence[BudgetState], n_anomalies: int
) -> str:
    cards = [
        ("Spend", spend, f"{_calls(t.calls)} over {days} day{'s' * (days != 1)}"),
        ("Avoided", usd(t.avoided_cost), "what the final model would have cost"),
        ("Requests", f"{t.requests:,}", _per_request(t)),
    ]
    if t.cost is not None and t.avoided_cost is not None and t.cost + t.avoided_cost:
        cards.append(
            ("Saved", _pct(t.avoided_cost, t.cost + t.avoided_cost), "of what it would have cost")
        )
    cards.append(
        (
            "Unknown cost",
            _calls(t.unknown),
            "none: every cost is known"
            if not t.unknown
            else ("no bound" if t.cost_bound is None else f"spend at most {usd(t.cost_bound)}"),
        )
    )
    over = sum(1 for s in budgets if s.spent + s.held >= s.budget.limit)
    if budgets:
        cards.append(("Budgets", f"{over} of {len(budgets)} at limit", "this period"))
    if n_anomalies:
        cards.append(("Anomalies", f"{n_anomalies:,}", "marked on the spend chart"))
    return (
        '<section class="kpis" aria-label="Summary">'
        + "".join(
            f'<div class="kpi"><div class="kpi-name">{_text(name)}</div><div class="kpi-value">'
            f'{_text(value)}</div><div class="kpi-note">{_text(note)}</div></div>'
            for name, value, note in cards
        )
        + "</section>"
    )


def _calls(n: int) -> str:
    return f"{n:,} call{'' if n == 1 else 's'}"


def _per_request(t: Totals) -> str:
    if t.cost is None or not t.requests:
        return "cost per request unknown" if t.requests else "no requests"
    with localcontext(ROUNDING):
        return f"{usd(t.cost / t.requests)} per request"


def _anomaly_slots(
    unit: str, buckets: Sequence[_Bucket], anomalies: Sequence[AnomalyLike]
) -> dict[int, list[AnomalyLike]]:
    index = {b.start: i for i, b in enumerate(buckets)}
    marks: dict[int, list[AnomalyLike]] = {}
    for a in anomalies:
        when = a.when
        if isinstance(when, datetime):
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            start = when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            if unit == "day":
                start = start.replace(hour=0)
        else:
            start = _day_start(when)
        if start in index:
            marks.setdefault(index[start], []).append(a)
    return marks


def _spend_section(
    ledger: Ledger,
    days: Mapping[date, Totals],
    forecast: ForecastLike | None,
    anomalies: Sequence[AnomalyLike],
    known: Mapping[object, Decimal],
) -> str:
    unit, buckets = _series(ledger, days, forecast, known)
    if not buckets:
        return (
            '<section id="spend"><h2>Spend over time</h2><p class="empty">No entries.</p></section>'
        )
    marks = _anomaly_slots(unit, buckets, anomalies)
    svg = _time_chart("spend", unit, buckets, marks, forecast.level if forecast else None)
    legend = [f'<span class="key" data-c="spend"></span>spend per {unit} (UTC)']
    if any(b.amount.cost is None for b in buckets):
        legend.append('<span class="key" data-c="unknown"></span>unknown cost, up to its bound')
    if forecast is not None:
        legend.append(
            f'<span class="key" data-c="band"></span>forecast, {round(forecast.level * 100)}% '
            "interval and middle"
        )
    if marks:
        legend.append('<span class="key" data-c="anomaly"></span>anomaly')
    rows = []
    for b in buckets:
        when = b.start.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")
        lo, mid, hi = (_exact(v) for v in b.future) if b.future else ("", "", "")
        if b.future is not None and (not days or b.start.date() > max(days)):
            # A day still to come has no spend yet: not $0.
            rows.append([when, "\u2014", "\u2014", lo, mid, hi])
            continue
        rows.append([when, _exact(b.amount.cost), _exact(b.amount.bound), lo, mid, hi])
    head = [unit + " (UTC)", "spend", "at most", "forecast low", "forecast mid", "forecast high"]
    table = _table(head, rows)
    extra = ""
    if forecast is not None and forecast.band:
        with localcontext(CONTEXT):
            mids = sum((m for _, _, m, _ in forecast.band), Decimal(0))
        first, last = forecast.band[0][0], forecast.band[-1][0]
        extra = (
            f" Forecast {first.isoformat()} to {last.isoformat()}: {usd(mids)} (sum of the "
            "daily middles)."
        )
    caption = " ".join(legend) + (f"<br>{_text(extra.strip())}" if extra else "")
    return (
        '<section id="spend"><h2>Spend over time</h2>'
        + _figure("chart-spend", f"Spend per {unit}", svg, caption, table)
        + "</section>"
    )


def _savings_section(stages: Mapping[str, Totals], total: Totals, spent: str) -> str:
    rows = [_Row(name, _Amount.exact(t.avoided_cost)) for name, t in stages.items()]
    rows = sorted(
        (r for r in rows if r.amount.height or r.amount.cost is None),
        key=lambda r: (-r.amount.height, r.label),
    )
    if not rows:
        return (
            '<figure class="chart" id="chart-savings"><figcaption><h3>Savings by stage</h3>'
            '<p class="empty">No stage avoided a model call.</p></figcaption></figure>'
        )
    svg = _bar_chart("savings", "Avoided cost by stage", rows, SAVED)
    table = _table(
        ["stage", "calls", "avoided cost", "cost"],
        (
            [
                r.label,
                f"{stages[r.label].calls:,}",
                _exact(r.amount.cost),
                _exact(stages[r.label].cost),
            ]
            for r in rows
        ),
    )
    caption = (
        "What the final model would have cost for the requests each stage answered without it: "
        f"{usd(total.avoided_cost)} in all, against {spent} spent."
    )
    return _figure("chart-savings", "Savings by stage (avoided cost)", svg, _text(caption), table)


def _budget_bar(state: BudgetState) -> str:
    width, height, left, right = 520, 34, 4, 4
    span = width - left - right
    limit = state.budget.limit
    full = max(float(limit), float(state.spent + state.held)) or 1.0

    def x(value: float) -> float:
        return left + span * value / full

    spent, held = float(state.spent), float(state.held)
    share = (state.spent + state.held) / limit if limit else Decimal(1)
    # Red at the limit, amber once past the last threshold below it, green before.
    below = [t for t in state.budget.thresholds if t < 1]
    colour = ANOMALY if share >= 1 else (BAND if below and share >= max(below) else SAVED)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" class="chart-svg budget-svg" '
        f'data-chart="budget"><title>{_text(state.budget.name)}: {usd(state.spent)} spent, '
        f"{usd(state.held)} held of {usd(limit)}</title>"
        f'<rect x="{left}" y="8" width="{_f(x(float(limit)) - left)}" height="16" rx="3" '
        f'fill="{GRID}"/>',
        f'<rect class="bar" x="{left}" y="8" width="{_f(x(spent) - left)}" height="16" rx="3" '
        f'fill="{colour}"/>',
    ]
    if held:
        parts.append(
            f'<rect x="{_f(x(spent))}" y="8" width="{_f(x(spent + held) - x(spent))}" '
            f'height="16" fill="{colour}" fill-opacity="0.4"/>'
        )
    for t in state.budget.thresholds:
        tx = x(float(limit * t))
        parts.append(
            f'<line class="threshold" x1="{_f(tx)}" x2="{_f(tx)}" y1="3" y2="29" stroke="{INK}" '
            f'stroke-width="1.5"><title>{_pct(t, Decimal(1))} threshold: '
            f"{usd(limit * t)}</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _budgets_section(states: Sequence[BudgetState], events: Sequence[BudgetEvent]) -> str:
    if not states and not events:
        return (
            '<section id="budgets"><h2>Budgets</h2><p class="empty">No budgets are defined in '
            "this ledger.</p></section>"
        )
    cards = []
    for s in states:
        b = s.budget
        scope = "whole ledger" if b.tag is None else f"{b.tag[0]} = {b.tag[1]}"
        period = "all time" if b.period is None else f"{b.period} {s.period}"
        thresholds = ", ".join(_pct(t, Decimal(1)) for t in b.thresholds)
        cards.append(
            f'<div class="budget"><div class="budget-head"><strong>{_text(b.name)}</strong>'
            f'<span class="muted">{_text(scope)} · {_text(period)}</span></div>'
            f"{_budget_bar(s)}"
            f'<div class="budget-foot">{_text(usd(s.spent))} spent'
            f"{'' if not s.held else ' + ' + _text(usd(s.held)) + ' held'} of "
            f"{_text(usd(b.limit))} ({_pct(s.spent + s.held, b.limit)}); thresholds at "
            f"{_text(thresholds)}</div></div>"
        )
    table = _table(
        ["budget", "period", "threshold", "spent then", "limit", "time (UTC)"],
        (
            [
                e.budget,
                e.period,
                _pct(e.threshold, Decimal(1)),
                _exact(e.spent),
                _exact(e.limit),
                e.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            ]
            for e in events
        ),
        caption=f"Threshold crossings recorded ({len(events)})",
    )
    return (
        '<section id="budgets"><h2>Budgets and thresholds</h2>'
        '<p class="muted">Spend in each budget\'s current period (unknown costs counted at their '
        "bound), money held for calls under way, and the thresholds whose crossing is recorded."
        f'</p><div class="budgets">{"".join(cards)}</div>'
        + (table if events else '<p class="muted">No threshold crossing is recorded.</p>')
        + "</section>"
    )


def _variants_section(report: Report, unknown: Mapping[str, int]) -> str:
    variants = report.variants
    if not variants:
        return ""

    def note(v: VariantReport) -> str:
        if v.cost_per_request is None and unknown.get(v.name):
            return f"{_calls(unknown[v.name])} of unknown cost"
        return "" if v.savings_pct is None or v is variants[0] else f"{v.savings_pct}% saved"

    rows = [_Row(v.name, _Amount.exact(v.cost_per_request), note(v)) for v in variants]
    svg = _bar_chart("variants", "Cost per request by variant", rows, SPEND, width=1000)
    head = ["variant", "requests", "total", "per request", "p50", "p90"]
    if report.traffic_per_day is not None:
        head.append(f"per month @ {report.traffic_per_day:,}/day")
    head += ["savings", "setup"]
    table_rows = []
    for v in variants:
        # Quotients have no exact form: per request and per month to 6 significant digits.
        row = [
            v.name,
            f"{v.requests:,}",
            _exact(v.total_cost),
            usd(v.cost_per_request, digits=6),
            _exact(v.cost_p50),
            _exact(v.cost_p90),
        ]
        if report.traffic_per_day is not None:
            row.append(usd(v.monthly_cost, digits=6))
        row += ["-" if v.savings_pct is None else f"{v.savings_pct}%", _exact(v.setup_cost)]
        table_rows.append(row)
    stage_tables = "".join(_details(f"{v.name}: stages", _stage_table(v)) for v in variants)
    baseline = f"Savings are against the first variant, {variants[0].name}."
    heading = "Variant comparison" if len(variants) > 1 else "Pipeline"
    return (
        f'<section id="variants"><h2>{heading}</h2>'
        + _figure(
            "chart-variants",
            "Cost per request",
            svg,
            _text(baseline),
            _table(head, table_rows),
            open_=True,
        )
        + stage_tables
        + "</section>"
    )


def _stage_table(v: VariantReport) -> str:
    return _table(
        [
            "stage",
            "calls",
            "answered",
            "share",
            "input tokens",
            "output tokens",
            "cost",
            "avoided",
            "p50 ms",
        ],
        (
            [
                s.stage,
                f"{s.calls:,}",
                f"{s.answered:,}",
                f"{100 * s.share:.1f}%",
                f"{s.input_tokens:,}",
                f"{s.output_tokens:,}",
                _exact(s.cost),
                _exact(s.avoided_cost),
                f"{s.latency_ms_p50:.3f}",
            ]
            for s in v.by_stage
        ),
    )


def _anomalies_section(anomalies: Sequence[AnomalyLike]) -> str:
    if not anomalies:
        return ""
    ordered = sorted(anomalies, key=lambda a: -a.score)
    rows = [
        [
            a.when.isoformat() if isinstance(a.when, date) else str(a.when),
            " = ".join(a.scope),
            a.kind,
            _exact(a.observed),
            _exact(a.expected),
            f"{a.score:.2f}",
        ]
        for a in ordered
    ]
    return (
        '<section id="anomalies"><h2>Anomalies</h2><p class="muted">Most unusual first; those on '
        "the chart's days are marked on it.</p>"
        + _table(["when", "scope", "kind", "observed", "expected", "score"], rows)
        + "</section>"
    )


# -- the page -------------------------------------------------------------------------------------

_STYLE = """
:root{--ink:#1d2433;--muted:#667085;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;--spend:#2f6db5;
--saved:#23966b;--band:#e8a33d;--anomaly:#d03b3b}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK JP",sans-serif}
header{background:#1d2433;color:#fff;padding:22px 32px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header p{margin:0;color:#c5cbd6}
main{max-width:1120px;margin:0 auto;padding:20px 24px 40px}
h2{font-size:17px;margin:28px 0 10px}
h3{font-size:15px;margin:0}
section{margin-bottom:8px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.kpi,.chart,.budget{background:var(--card);border:1px solid var(--line);border-radius:8px}
.kpi{padding:12px 14px}
.kpi-name{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.kpi-value{font-size:21px;font-weight:600;margin:2px 0}
.kpi-note{color:var(--muted);font-size:12px}
.chart{margin:0 0 14px;padding:14px 16px}
.chart figcaption p{margin:2px 0 8px;color:var(--muted)}
.chart-svg{display:block;width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}
.grid .chart{margin:0}
text{font-family:inherit;fill:var(--ink)}
.tick{font-size:11px;fill:var(--muted)}
.label,.value{font-size:12px}
.value{fill:var(--muted)}
.mark{font-size:11px;font-weight:700;fill:var(--anomaly)}
.unknown{font-size:13px;font-weight:700;fill:var(--muted)}
.key{display:inline-block;width:11px;height:11px;border-radius:2px;margin:0 5px 0 12px;
vertical-align:-1px}
.key[data-c=spend]{background:var(--spend)}
.key[data-c=band]{background:var(--band)}
.key[data-c=anomaly]{border:2px solid var(--anomaly);border-radius:50%}
.key[data-c=unknown]{background:repeating-linear-gradient(45deg,#9aa4b2 0 3px,#fff 3px 6px)}
.budgets{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px;
margin-bottom:12px}
.budget{padding:12px 14px}
.budget-head{display:flex;justify-content:space-between;gap:8px;flex-wrap:wrap}
.budget-foot{color:var(--muted);font-size:12px}
.muted,.empty{color:var(--muted)}
details{margin-top:6px}
summary{cursor:pointer;color:var(--spend);font-size:13px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;margin:8px 0;background:var(--card);font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#eef1f6;cursor:pointer;user-select:none}
thead th[aria-sort=ascending]::after{content:" \\25B2"}
thead th[aria-sort=descending]::after{content:" \\25BC"}
footer{max-width:1120px;margin:0 auto;padding:0 24px 32px;color:var(--muted);font-size:12px}
@media print{details{display:none}body{background:#fff}}
"""

# Click a column heading to sort by it: amounts ("$1,234.5", "12%") by value, before text.
_SCRIPT = """
(function(){
  function key(cell){
    var t=cell.textContent.trim(), c=t.replace(/[$,%]/g,""), n=c===""?NaN:Number(c);
    return isNaN(n)?t.toLowerCase():n;
  }
  document.querySelectorAll("table.sortable thead th").forEach(function(th, col){
    th.addEventListener("click", function(){
      var table=th.closest("table"), body=table.tBodies[0];
      var up=th.getAttribute("aria-sort")!=="ascending";
      table.querySelectorAll("thead th").forEach(function(h){h.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort", up?"ascending":"descending");
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=key(a.cells[col]), y=key(b.cells[col]);
        var order=typeof x!==typeof y?(typeof x==="number"?-1:1):(x<y?-1:x>y?1:0);
        return order*(up?1:-1);
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  document.documentElement.setAttribute("data-ready","1");
})();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


CSP = (
    f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)
"""Only the page's own stylesheet and script may run: nothing is fetched, nothing injected runs."""


def html_report(
    ledger: Ledger,
    *,
    report: Report | None = None,
    forecast: ForecastLike | None = None,
    anomalies: Iterable[AnomalyLike] = (),
    tags: Sequence[str] = ("tenant",),
    variant_tag: str = "variant",
    title: str = "chainkit cost report",
    source: str = "",
    generated: datetime | None = None,
) -> str:
    """The ledger as one self-contained HTML page (a ``str``; write it as UTF-8).

    Args:
        ledger: any ledger (in memory, SQLite, PostgreSQL). It is only read, but for what its
            ``status()`` does on a writable ledger: holds whose lease ended become entries.
        report: the variant comparison to show; by default ``Report.from_ledger`` on
            ``variant_tag``.
        forecast: a daily forecast to draw as a band after the observed spend.
        anomalies: unusual spends to mark on the spend chart and list.
        tags: tag keys to chart cost by (one chart each), tenant by default.
        variant_tag: the tag that names variants, when ``report`` is not given.
        title: the page's heading.
        source: where the ledger is (a path), shown under the heading.
        generated: the time to show as the report's (now by default).
    """
    if forecast is not None and not isinstance(forecast, ForecastLike):
        raise ConfigError(
            f"forecast must have observed, band and level (ForecastLike), got "
            f"{type(forecast).__name__}."
        )
    marks = list(anomalies)
    for a in marks:
        if not isinstance(a, AnomalyLike):
            raise ConfigError(
                f"each anomaly must have when, scope, kind, observed, expected and score "
                f"(AnomalyLike), got {type(a).__name__}."
            )
    if isinstance(tags, str):
        raise ConfigError(
            f"tags is a sequence of tag keys, got the string {tags!r}: use ({tags!r},)."
        )
    if report is None:
        report = Report.from_ledger(ledger, tag=variant_tag)
    total = ledger.totals()
    known = _known_parts(ledger, tags) if total.unknown else {}
    unknown_by_variant = (
        {"all" if k is None else k: t.unknown for k, t in ledger.by_tag(variant_tag).items()}
        if total.unknown
        else {}
    )
    days = ledger.by_day()
    states = ledger.status()
    events = ledger.events()
    stages = ledger.by_stage()
    span = f"{min(days).isoformat()} to {max(days).isoformat()} (UTC)" if days else "no entries yet"
    when = (generated or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    by_stage: dict[str | None, Totals] = {}
    by_stage.update(stages)
    breakdowns = [
        _breakdown(
            "chart-stage", "Cost by stage", by_stage, "(none)", "stage", known.get("stage", {})
        ),
        _breakdown(
            "chart-model",
            "Cost by model",
            ledger.by_model(),
            "(no model)",
            "model",
            known.get("model", {}),
        ),
    ]
    for i, key in enumerate(tags):
        try:
            per_value = ledger.by_tag(key)
        except UnicodeEncodeError as exc:
            # A tag value with a lone surrogate, stored by something other than chainkit (which
            # refuses them): the page leaves this breakdown out and says why, never a traceback.
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
            breakdowns.append(
                f"<article><h3>Cost by {_text(key)}</h3><p>Not shown: a stored {_text(key)} "
                f"value has a lone surrogate ({', '.join(f'U+{ord(c):04X}' for c in bad)}), "
                "written to the ledger by another program. Fix that value in the ledger (with "
                "U+FFFD in its place) to see this breakdown.</p></article>"
            )
            continue
        breakdowns.append(
            _breakdown(
                f"chart-tag-{i}",
                f"Cost by {key}",
                per_value,
                f"(no {key})",
                key,
                known.get(f"tag:{key}", {}),
            )
        )
    with localcontext(CONTEXT):
        known_total = sum(known.get("day", {}).values(), Decimal(0))
    spent = usd(total.cost) if total.cost is not None else f"at least {usd(known_total)}"
    body = [
        _kpis(total, spent, len(days), states, len(marks)),
        _spend_section(ledger, days, forecast, marks, known.get("day", {})),
        f'<section id="breakdown"><h2>Where the money goes</h2><div class="grid">'
        f"{''.join(breakdowns)}{_savings_section(stages, total, spent)}</div></section>",
        _budgets_section(states, events),
        _variants_section(report, unknown_by_variant),
        _anomalies_section(marks),
    ]
    unknown_note = (
        f"{total.unknown:,} calls have an unknown cost: every sum that includes one is shown as "
        "unknown (never $0); charts draw what is known solid and hatch the rest up to its bound, "
        "the most it can have cost."
        if total.unknown
        else "Every cost in this ledger is known."
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="generator" content="chainkit"><title>{_text(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>{_text(title)}</h1><p>{_text(source) + ' · ' if source else ''}"
        f"{_text(span)} · {total.calls:,} entries · generated {when}</p></header>"
        f"<main>{''.join(body)}</main>"
        f"<footer><p>{_text(unknown_note)} Days and hours are UTC. Money in USD; tables give "
        "exact figures, charts round for reading.</p></footer>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
