"""Plots of a report: what each variant costs, and which stage answers or spends.

Needs matplotlib (``pip install 'chainkit[plots]'``). Money axes are labelled in dollars with
the digits a tick needs ($0.02, $1,800), never in scientific notation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError
from chainkit.money import ROUNDING, usd
from chainkit.report import Report, VariantReport

__all__ = ["plot_cost_vs_length", "plot_report"]

# Above this ratio between the dearest and the cheapest variant, bars share a log scale.
LOG_SCALE_RATIO = 20


def _pyplot(to_file: bool) -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "Plots need matplotlib, which is not installed: pip install 'chainkit[plots]'."
        ) from exc
    if to_file:
        matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _dollars(value: float, _position: object = None) -> str:
    """A money tick: dollars with at most three significant digits, never scientific notation.

    >>> [_dollars(v) for v in (1800.0, 50.0, 2.5, 0.02, 0.011, 3e-05, 0.0)]
    ['$1,800', '$50', '$2.50', '$0.02', '$0.011', '$0.00003', '$0']
    """
    if value == 0 or not math.isfinite(value):
        return "$0" if value == 0 else ""
    sign = "-" if value < 0 else ""
    whole, _, frac = f"{Decimal(f'{abs(value):.3g}'):f}".partition(".")
    frac = frac.rstrip("0")
    if frac and abs(value) >= 0.01:
        frac = frac.ljust(2, "0")  # cents: $2.50, not $2.5
    return f"{sign}${int(whole):,}" + (f".{frac}" if frac else "")


def _money_axis(ax: Any, values: Sequence[float]) -> bool:
    """Dollar ticks on the y axis, on a log scale when the values span more than 20 times."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]  # NaN (unknown) compares false
    log = bool(positive) and max(positive) / min(positive) > LOG_SCALE_RATIO
    if log:
        low, high = min(positive), max(positive)
        ax.set_yscale("log")
        # 1-2-5 ticks over a few decades; one tick a decade when the span is wider.
        subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 3 else (1.0,)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(low / 2, high * 2)  # room for the labels above the bars
    else:
        ax.set_ylim(0, 1.2 * max(positive) if positive else 1)
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    return log


def _answering_stages(report: Report) -> list[str]:
    stages: list[str] = []
    for v in report.variants:
        for line in v.by_stage:
            if line.answered and line.stage not in stages:
                stages.append(line.stage)
    return stages


def _cost_shares(v: VariantReport, stages: Sequence[str]) -> list[float] | None:
    """Each stage's share of the variant's cost, in percent; ``None`` if a cost is unknown."""
    costs = {line.stage: line.cost for line in v.by_stage}
    if any(c is None for c in costs.values()):
        return None
    total = sum((c for c in costs.values() if c is not None), Decimal(0))
    if total == 0:
        return [0.0] * len(stages)
    with localcontext(ROUNDING):
        return [float(100 * (costs.get(stage) or 0) / total) for stage in stages]


def plot_report(report: Report, path: str | Path | None = None) -> Any:
    """Draw cost per variant (left) and which stage answered the traffic (right).

    When a single stage answers every request of every variant (a summarisation chain, where
    only the last stage answers), that panel would say nothing, so the right one shows instead
    where each variant's money goes: its cost by stage, in percent.

    Returns the matplotlib figure; with ``path``, also saves it there (PNG, SVG, PDF by suffix).
    """
    plt = _pyplot(path is not None)
    from matplotlib.ticker import PercentFormatter

    names = [v.name for v in report.variants]
    monthly = report.traffic_per_day is not None
    known = [v.monthly_cost if monthly else v.cost_per_request for v in report.variants]
    # An unknown cost is drawn as no bar and labelled, never as $0.
    costs = [float(c) if c is not None else float("nan") for c in known]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    bars = left.bar(names, costs, color="#4C72B0")
    log = _money_axis(left, costs)
    left.set_ylabel(
        f"cost per month at {report.traffic_per_day:,} requests/day"
        if monthly
        else "cost per request"
    )
    left.set_title("Cost by variant" + (" (log scale)" if log else ""))
    for bar, cost, v in zip(bars, known, report.variants, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        if cost is None:
            left.annotate("unknown", (x, left.get_ylim()[0]), ha="center", va="bottom")
            continue
        label = usd(cost, digits=3)
        if v.savings_pct is not None and v is not report.variants[0]:
            label += f"\n-{v.savings_pct}%"
        left.annotate(label, (x, float(cost)), ha="center", va="bottom")
    left.tick_params(axis="x", rotation=15)

    answering = _answering_stages(report)
    if len(answering) > 1:
        stages, ylabel, title = answering, "requests answered", "Deflection: which stage answered"
        table = [
            [100 * next((s.share for s in v.by_stage if s.stage == stage), 0.0) for stage in stages]
            for v in report.variants
        ]
    else:
        stages = []
        # Stage order from the longest chain, so the stacks read in pipeline order.
        for v in sorted(report.variants, key=lambda v: -len(v.by_stage)):
            for line in v.by_stage:
                if line.cost and line.stage not in stages:
                    stages.append(line.stage)
        ylabel, title = "share of the variant's cost", "Where the money goes: cost by stage"
        shares = [_cost_shares(v, stages) for v in report.variants]
        for i, share in enumerate(shares):
            if share is None:
                right.annotate("unknown", (i, 0), ha="center", va="bottom")
        table = [share or [0.0] * len(stages) for share in shares]
    bottom = [0.0] * len(names)
    for j, stage in enumerate(stages):
        column = [row[j] for row in table]
        right.bar(names, column, bottom=bottom, label=stage)
        bottom = [b + s for b, s in zip(bottom, column, strict=True)]
    right.set_ylabel(ylabel)
    right.set_ylim(0, 100)
    right.yaxis.set_major_formatter(PercentFormatter(100))
    right.set_title(title)
    if stages:
        right.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    right.tick_params(axis="x", rotation=15)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_cost_vs_length(
    points: Mapping[str, Sequence[tuple[int, float]]], path: str | Path | None = None
) -> Any:
    """Scatter each variant's cost per document against the document's length in tokens."""
    plt = _pyplot(path is not None)
    from matplotlib.ticker import FuncFormatter, StrMethodFormatter

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for name, pts in points.items():
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax.scatter(xs, ys, s=12, label=name, alpha=0.75)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(_dollars))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("cost per document")
    ax.set_title("Cost per document against length")
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
