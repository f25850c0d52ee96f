"""Reports: what each variant of a pipeline cost and saved, by stage, projected to a traffic level.

>>> from decimal import Decimal
>>> from chainkit import Entry, Ledger, Usage
>>> ledger = Ledger()
>>> ledger.record(Entry(request_id="r1", stage="generate", outcome="answered",
...                     model="generic.powerful", usage=Usage(50, 50), cost=Decimal("0.006")))
>>> report = Report.build([("single-llm", ledger)], traffic_per_day=10_000)
>>> report.variants[0].monthly_cost
Decimal('1800.000')
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.ledger.core import (
    VariantSums,
    cells_of,
    fold,
    latency_quantile,
    request_costs_of,
    variant_sums,
)
from chainkit.money import ROUNDING, usd
from chainkit.records import Entry

__all__ = ["Report", "StageLine", "VariantReport"]

DAYS_PER_MONTH = 30


@dataclass(frozen=True, slots=True)
class StageLine:
    """One stage of one variant: calls, answers, tokens, cost, avoided cost and latency.

    ``share`` is the fraction of the variant's requests this stage answered.
    """

    stage: str
    calls: int
    answered: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    avoided_cost: Decimal | None
    share: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_mean: float = 0.0


@dataclass(frozen=True, slots=True)
class VariantReport:
    """What one variant cost: per request, per day and month at the report's traffic, saved."""

    name: str
    requests: int
    total_cost: Decimal | None
    setup_cost: Decimal | None
    cost_per_request: Decimal | None
    daily_cost: Decimal | None
    monthly_cost: Decimal | None
    savings_pct: Decimal | None
    by_stage: tuple[StageLine, ...]
    quality: Mapping[str, Any] = field(default_factory=dict)
    cost_p50: Decimal | None = None
    cost_p90: Decimal | None = None


QUOTIENT = Context(prec=20, rounding=ROUND_HALF_EVEN)
"""Quotients (per request, per day, per month) keep 20 significant digits: a repeating decimal
has no exact form, and more digits than that say nothing (sums of entries stay exact)."""


def _divide(amount: Decimal | None, by: int) -> Decimal | None:
    if amount is None or by == 0:
        return None
    with localcontext(QUOTIENT):
        return amount / by


def _stage_lines(v: VariantSums, requests: int) -> tuple[StageLine, ...]:
    lines = []
    for stage, sums in v.stages.items():
        t = fold(sums.cells)
        histogram: dict[int, int] = {}
        for cell in sums.cells:
            for bucket, n in cell.histogram.items():
                histogram[bucket] = histogram.get(bucket, 0) + n
        lines.append(
            StageLine(
                stage,
                t.calls,
                sums.answered,
                t.input_tokens,
                t.output_tokens,
                t.cost,
                t.avoided_cost,
                share=sums.answered / requests if requests else 0.0,
                latency_ms_p50=1000 * latency_quantile(histogram, 0.5),
                latency_ms_mean=1000 * t.latency_s / t.calls if t.calls else 0.0,
            )
        )
    return tuple(lines)


def _savings(baseline: Decimal | None, cost: Decimal | None) -> Decimal | None:
    if baseline is None or cost is None or baseline == 0:
        return None
    with localcontext(ROUNDING):
        return ((baseline - cost) / baseline * 100).quantize(Decimal("0.1"), ROUND_HALF_EVEN)


def _variant(name: str, v: VariantSums, traffic: int | None) -> VariantReport:
    per_request = v.request_costs
    t = fold(v.serve_cells, len(per_request))
    cost = t.cost
    daily = monthly = None
    if traffic is not None and cost is not None and t.requests:
        # Multiply before dividing so that exact figures stay exact ($63, not $62.99999...).
        with localcontext(ROUNDING):
            daily_total, monthly_total = cost * traffic, cost * traffic * DAYS_PER_MONTH
        with localcontext(QUOTIENT):
            daily = daily_total / t.requests
            monthly = monthly_total / t.requests
    return VariantReport(
        name=name,
        requests=t.requests,
        total_cost=cost,
        setup_cost=fold(v.setup_cells).cost,
        cost_per_request=_divide(cost, t.requests),
        daily_cost=daily,
        monthly_cost=monthly,
        savings_pct=None,
        by_stage=_stage_lines(v, t.requests),
        cost_p50=per_request.percentile(50),
        cost_p90=per_request.percentile(90),
    )


def _sums_of(source: Ledger | Iterable[Entry]) -> VariantSums:
    """One variant's sums, from a ledger's aggregations or from entries."""
    if isinstance(source, Ledger):
        sums = source.variants(None)
    else:
        entries = list(source)
        sums = variant_sums(cells_of(entries), request_costs_of(entries, None), None)
    return sums.get("all", VariantSums())


def money(amount: Decimal | None) -> str | None:
    """``amount`` exactly, as a decimal string with at least two places (``None`` stays ``None``).

    Never rounded here: sums of entries are exact, and a quotient (cost per request, a
    projection) is shown with every digit it was computed to (:data:`QUOTIENT`: 20 significant
    digits).

    >>> money(Decimal("9.000000")), money(Decimal("0.02135")), money(Decimal("1800"))
    ('9.00', '0.02135', '1800.00')
    >>> money(Decimal("2.88E-5")), money(Decimal("0.0000014175"))
    ('0.0000288', '0.0000014175')
    """
    if amount is None:
        return None
    # Wide enough that neither step can round, whatever the amount's digits.
    exact = Context(prec=len(amount.as_tuple().digits) + 30)
    normal = amount.normalize(exact)
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        normal = normal.quantize(Decimal("0.01"), context=exact)
    return f"{normal:f}"


CSV_COLUMNS = (
    "variant",
    "stage",
    "requests",
    "calls",
    "answered",
    "share",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "avoided_usd",
    "cost_per_request_usd",
    "cost_per_request_p50_usd",
    "cost_per_request_p90_usd",
    "daily_cost_usd",
    "monthly_cost_usd",
    "savings_pct",
    "setup_cost_usd",
    "latency_ms_p50",
    "latency_ms_mean",
)
"""The columns of :meth:`Report.to_csv`, in order."""


@dataclass(frozen=True)
class Report:
    """Variants side by side; savings are against the first variant."""

    variants: tuple[VariantReport, ...]
    traffic_per_day: int | None = None
    assumptions: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_traffic(self.traffic_per_day)

    @classmethod
    def build(
        cls,
        variants: Iterable[tuple[str, Ledger | Iterable[Entry]]],
        *,
        traffic_per_day: int | None = None,
        assumptions: Mapping[str, Any] | None = None,
        notes: Iterable[str] = (),
    ) -> Report:
        """Build a report from ``(name, ledger or entries)`` pairs, the baseline first."""
        _check_traffic(traffic_per_day)
        built = [_variant(name, _sums_of(source), traffic_per_day) for name, source in variants]
        return cls._with_savings(built, traffic_per_day, assumptions or {}, notes)

    @classmethod
    def _with_savings(
        cls,
        built: list[VariantReport],
        traffic_per_day: int | None,
        assumptions: Mapping[str, Any],
        notes: Iterable[str],
    ) -> Report:
        if built:
            baseline = built[0].cost_per_request
            built = [
                dataclasses.replace(v, savings_pct=_savings(baseline, v.cost_per_request))
                for v in built
            ]
        return cls(tuple(built), traffic_per_day, dict(assumptions), tuple(notes))

    @classmethod
    def from_ledger(
        cls,
        ledger: Ledger,
        *,
        tag: str = "variant",
        variants: Sequence[str] | None = None,
        traffic_per_day: int | None = None,
        baseline: str | None = None,
    ) -> Report:
        """One variant per value of ``tag`` ("all" for entries without it).

        Variants come in the order given by ``variants``, or else in the order their first
        request was served (one-off setup such as precomputing comes before serving, and does
        not decide the order). Savings are against ``baseline`` (moved first), else against the
        first variant: never chosen by cost.
        """
        _check_traffic(traffic_per_day)
        sums = ledger.variants(tag)
        if variants is not None:
            order = list(variants)
        else:
            order = sorted(
                sums, key=lambda name: _first(sums[name].first_served)
            )  # sorted() is stable: never-served variants keep their order, last
        if baseline is not None:
            if baseline not in order:
                raise ConfigError(
                    f"No variant named {baseline!r} to be the baseline; the variants (tag "
                    f"{tag!r}) are: {', '.join(order) or 'none'}."
                )
            order.remove(baseline)
            order.insert(0, baseline)
        built = [_variant(name, sums.get(name, VariantSums()), traffic_per_day) for name in order]
        return cls._with_savings(built, traffic_per_day, {}, ())

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: money as exact decimal strings (see :func:`money`); ``None``: unknown."""
        variants = []
        for v in self.variants:
            row: dict[str, Any] = {
                "name": v.name,
                "requests": v.requests,
                "total_cost_usd": money(v.total_cost),
                "cost_per_request_usd": money(v.cost_per_request),
                "cost_per_request_p50_usd": money(v.cost_p50),
                "cost_per_request_p90_usd": money(v.cost_p90),
            }
            if self.traffic_per_day is not None:
                row["daily_cost_usd"] = money(v.daily_cost)
                row["monthly_cost_usd"] = money(v.monthly_cost)
            row["savings_pct"] = None if v.savings_pct is None else str(v.savings_pct)
            row["setup_cost_usd"] = money(v.setup_cost)
            row["by_stage"] = [
                {
                    "stage": s.stage,
                    "calls": s.calls,
                    "answered": s.answered,
                    "share": round(s.share, 4),
                    "input_tokens": s.input_tokens,
                    "output_tokens": s.output_tokens,
                    "cost_usd": money(s.cost),
                    "avoided_usd": money(s.avoided_cost),
                    "latency_ms_p50": round(s.latency_ms_p50, 4),
                    "latency_ms_mean": round(s.latency_ms_mean, 4),
                }
                for s in v.by_stage
            ]
            if v.quality:
                row["quality"] = dict(v.quality)
            variants.append(row)
        assumptions = dict(self.assumptions)
        if self.traffic_per_day is not None:
            assumptions.setdefault("traffic_per_day", self.traffic_per_day)
            assumptions.setdefault("days_per_month", DAYS_PER_MONTH)
        return {"variants": variants, "assumptions": assumptions, "notes": list(self.notes)}

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_csv(self) -> str:
        """The report as CSV: one row per variant, then one per stage of that variant.

        The columns are :data:`CSV_COLUMNS`. A variant's row has an empty ``stage`` and fills
        ``requests``, ``cost_usd`` (what serving its requests cost), per-request cost and its
        percentiles, the projections (with a traffic level), ``savings_pct`` and
        ``setup_cost_usd``. A stage row fills ``calls``, ``answered``, ``share``, tokens,
        ``cost_usd``, ``avoided_usd`` and latency; a variant's stage costs, setup stages
        included, add up to its ``cost_usd`` plus ``setup_cost_usd``. Money is exact, as in
        :meth:`to_dict`; an empty cell is unknown or does not apply to the row. Quality figures,
        assumptions and notes are in the JSON and Markdown.
        """
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for variant in self.to_dict()["variants"]:
            cells = {k: v for k, v in variant.items() if k in CSV_COLUMNS and k != "name"}
            cells["cost_usd"] = variant["total_cost_usd"]
            writer.writerow(_csv_cells({"variant": variant["name"], "stage": "", **cells}))
            for stage in variant["by_stage"]:
                writer.writerow(_csv_cells({"variant": variant["name"], **stage}))
        return out.getvalue().rstrip("\n")

    def to_table(self) -> str:
        """The report as plain-text tables for a terminal: variants, then each one's stages."""
        head, rows = self._summary()
        out = [_grid(head, rows)]
        for v in self.variants:
            out += ["", f"{v.name}{_setup(v)}"]
            head, rows = _stages(v)
            out.append(_grid(["  " + head[0], *head[1:]], [["  " + r[0], *r[1:]] for r in rows]))
            if v.quality:
                out.append("  quality: " + _qualities(v))
        if self.notes:
            out.append("")
            out.extend(f"* {note}" for note in self.notes)
        return "\n".join(out)

    def to_markdown(self) -> str:
        """The report as Markdown: every table :meth:`to_table` shows, then the notes."""
        head, rows = self._summary()
        out = [_markdown(head, rows)]
        for v in self.variants:
            out += ["", f"**{_md_cell(v.name)}**{_setup(v)}", ""]
            out.append(_markdown(*_stages(v)))
            if v.quality:
                out += ["", f"Quality: {_qualities(v)}."]
        if self.notes:
            out.append("")
            out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out)

    def _summary(self) -> tuple[list[str], list[list[str]]]:
        head = ["variant", "requests", "total", "per request"]
        if self.traffic_per_day is not None:
            head.append(f"per month @ {self.traffic_per_day:,}/day")
        head.append("savings")
        rows = []
        for v in self.variants:
            row = [v.name, f"{v.requests:,}", usd(v.total_cost), usd(v.cost_per_request)]
            if self.traffic_per_day is not None:
                row.append(usd(v.monthly_cost))
            row.append("-" if v.savings_pct is None else f"{v.savings_pct}%")
            rows.append(row)
        return head, rows


def _stages(v: VariantReport) -> tuple[list[str], list[list[str]]]:
    head = ["stage", "calls", "answered", "share", "input tok", "output tok", "cost", "avoided"]
    rows = [
        [
            s.stage,
            f"{s.calls:,}",
            f"{s.answered:,}",
            f"{100 * s.share:.1f}%",
            f"{s.input_tokens:,}",
            f"{s.output_tokens:,}",
            usd(s.cost),
            usd(s.avoided_cost),
            f"{s.latency_ms_p50:.3f}",
        ]
        for s in v.by_stage
    ]
    return [*head, "p50 ms"], rows


def _setup(v: VariantReport) -> str:
    return "" if v.setup_cost == 0 else f", one-off setup {usd(v.setup_cost)}"


def _qualities(v: VariantReport) -> str:
    return ", ".join(_quality(k, q) for k, q in v.quality.items())


def _csv_cells(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS}


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned, the figures right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_traffic(traffic: object) -> None:
    if traffic is not None and (
        isinstance(traffic, bool) or not isinstance(traffic, int) or traffic < 1
    ):
        raise ConfigError(
            f"traffic_per_day must be a whole number of requests of 1 or more (or None for no "
            f"projection), got {traffic!r}."
        )


def _first(index: int | None) -> float:
    return float("inf") if index is None else index


def _quality(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key.replace('_', ' ')} {value:.3f}"
    return f"{key.replace('_', ' ')} {value}"


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])
