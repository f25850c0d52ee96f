"""Plots of a report: what each variant costs a month, and which stage answers the traffic.

Needs matplotlib (``pip install 'chainkit[plots]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chainkit.report import Report

__all__ = ["plot_cost_vs_length", "plot_report"]


def plot_report(report: Report, path: str | Path | None = None) -> Any:
    """Draw cost per variant (left) and the share of traffic each stage answered (right).

    Returns the matplotlib figure; with ``path``, also saves it there (PNG, SVG, PDF by suffix).
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    names = [v.name for v in report.variants]
    monthly = report.traffic_per_day is not None
    known = [v.monthly_cost if monthly else v.cost_per_request for v in report.variants]
    # An unknown cost is drawn as no bar and labelled, never as $0.
    costs = [float(c) if c is not None else float("nan") for c in known]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    bars = left.bar(names, costs, color="#4C72B0")
    if any(c > 0 for c in costs):
        left.set_yscale("log")
    left.set_ylabel(
        f"USD per month at {report.traffic_per_day:,} requests/day" if monthly else "USD/request"
    )
    left.set_title("Cost by variant (log scale)")
    for bar, cost, v in zip(bars, costs, report.variants, strict=True):
        if cost != cost:  # NaN: unknown
            left.annotate("unknown", (bar.get_x() + bar.get_width() / 2, 0), ha="center")
            continue
        label = f"${cost:,.2f}" if monthly else f"${cost:.6f}"
        if v.savings_pct is not None and v is not report.variants[0]:
            label += f"\n-{v.savings_pct}%"
        left.annotate(label, (bar.get_x() + bar.get_width() / 2, cost), ha="center", va="bottom")
    left.tick_params(axis="x", rotation=15)

    stages: list[str] = []
    for v in report.variants:
        for line in v.by_stage:
            if line.answered and line.stage not in stages:
                stages.append(line.stage)
    bottom = [0.0] * len(names)
    for stage in stages:
        shares = [
            100 * next((s.share for s in v.by_stage if s.stage == stage), 0.0)
            for v in report.variants
        ]
        right.bar(names, shares, bottom=bottom, label=stage)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    right.set_ylabel("% of requests answered")
    right.set_ylim(0, 100)
    right.set_title("Deflection: which stage answered")
    right.legend(loc="lower right", fontsize="small")
    right.tick_params(axis="x", rotation=15)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_cost_vs_length(
    points: Mapping[str, Sequence[tuple[int, float]]], path: str | Path | None = None
) -> Any:
    """Scatter each variant's cost per document against the document's length in tokens."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for name, pts in points.items():
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax.scatter(xs, ys, s=12, label=name, alpha=0.75)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("cost per document (USD)")
    ax.set_title("Cost per document against length")
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
