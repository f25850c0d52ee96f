"""Evaluation: forecast coverage (rolling origin) and anomaly precision/recall on simulated traffic.

Committed results (``benchmarks/results/finops.md`` and ``.json``) come from::

    .venv/bin/python benchmarks/eval_finops.py --json benchmarks/results/finops.json
        --markdown benchmarks/results/finops.md

(about 5 minutes on 2 shared cores; ``--quick`` for a smoke run). Every series is the project's
own simulated support traffic (``chainkit.finops.simulate``): daily interactions with weekly
seasonality (weekends at 55%), growth, log-normal day noise and Poisson counts, each
interaction recorded as the entries of a deflecting support bot (intent scan, canned 12%,
precomputed 35%, generator priced as Nova Micro), three tenants 50/30/20.

1. Forecast. For 12 series of 122 days (1 September to 31 December; growth 0%, 1% and 2% a
   day; 4 seeds each, 400 interactions a day at the start), from every third day with at
   least 28 days of history the model is fitted on the past only and forecasts the next 7
   days: the share of actual days inside the 80% and 95% bands is the coverage, reported for
   1 day ahead and 1-7 days ahead, with the mid line's mean absolute percentage error.
   Month-end totals: from every third day of November and December, the forecast month-end
   band is checked against the actual month total.
2. Anomalies. 60-day series at 300 interactions a day (growth 1%), one injection per series on
   a day drawn from days 30-59: a tenant's traffic spike, a deflection collapse of the
   precomputed stage, or the generator's cost per call jumping, each at sizes 1.5x, 2x, 3x and
   4x, 8 seeds each; plus 16 clean series for false alarms. Recall: the injection's kind found
   on its day. Precision: detections on an injected day over all detections (clean series
   included). Default thresholds (``Thresholds()``: z 4, minimum changes 30% / 25% / 30%);
   also the same detections at z 3, 3.5 and 5 (found once at z 3; a higher z drops those
   scored below it).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from chainkit.finops import (
    Anomaly,
    Injection,
    Thresholds,
    Traffic,
    anomalies_of,
    backtest,
    forecast_series,
    score_detections,
    synthetic_entries,
)
from chainkit.finops.series import daily_spend

ROOT = Path(__file__).resolve().parents[1]


def month_end_coverage(series: dict[date, Decimal | None], levels: tuple[float, ...]) -> list[bool]:
    """From every third day of months 3 and 4, is the month total inside each level's band."""
    days = sorted(series)
    hits: list[bool] = []
    months = sorted({(d.year, d.month) for d in days})[2:4]
    for year, month in months:
        in_month = [d for d in days if (d.year, d.month) == (year, month)]
        if len(in_month) != calendar.monthrange(year, month)[1]:
            continue  # only whole months have a total to check
        actual = sum((series[d] or Decimal(0)) for d in in_month)
        for d in in_month[:-1:3]:
            history = {k: v for k, v in series.items() if k <= d}
            for level in levels:
                f = forecast_series(history, level=level, paths=2000)
                hits.append(f.month_end.low <= actual <= f.month_end.high)
    return hits


def forecast_eval(quick: bool) -> dict[str, Any]:
    levels = (0.8, 0.95)
    rows = []
    month_hits: dict[float, list[bool]] = {lv: [] for lv in levels}
    seeds = range(2 if quick else 4)
    for growth in (0.0, 0.01, 0.02):
        for seed in seeds:
            traffic = Traffic(days=122, per_day=400, growth=growth, seed=seed)  # Sep-Dec
            series = daily_spend(synthetic_entries(traffic, seed=seed))["all"]
            for h_lo, h_hi in ((1, 1), (1, 7)):
                bt = _backtest_h(series, levels, h_lo, h_hi, step=6 if quick else 3)
                rows.append({"growth": growth, "seed": seed, "horizon": f"{h_lo}-{h_hi}", **bt})
            hits = month_end_coverage(series, levels)
            for i, level in enumerate(levels):
                month_hits[level] += hits[i :: len(levels)]
    summary: dict[str, Any] = {}
    for horizon in ("1-1", "1-7"):
        mine = [r for r in rows if r["horizon"] == horizon]
        n = sum(r["forecasts"] for r in mine)
        summary[horizon] = {
            "forecasts": n,
            **{str(lv): sum(r[str(lv)] * r["forecasts"] for r in mine) / n for lv in levels},
            "mape": sum(r["mape"] * r["forecasts"] for r in mine) / n,
        }
    summary["month_end"] = {
        "forecasts": len(month_hits[levels[0]]),
        **{str(lv): float(np.mean(month_hits[lv])) for lv in levels},
    }
    by_growth = {}
    for growth in (0.0, 0.01, 0.02):
        mine = [r for r in rows if r["horizon"] == "1-7" and r["growth"] == growth]
        n = sum(r["forecasts"] for r in mine)
        by_growth[str(growth)] = {
            str(lv): sum(r[str(lv)] * r["forecasts"] for r in mine) / n for lv in levels
        }
    return {"summary": summary, "by_growth_1_7": by_growth}


def _backtest_h(
    series: dict[date, Decimal | None], levels: tuple[float, ...], lo: int, hi: int, step: int
) -> dict[str, float]:
    if lo == 1 and hi == 7:
        return backtest(series, levels=levels, min_history=28, horizon=7, step=step)
    # Horizon 1 only: the same rolling origins, one day ahead.
    return backtest(series, levels=levels, min_history=28, horizon=1, step=step)


ZS = (3.0, 3.5, 4.0, 5.0)


def anomaly_eval(quick: bool) -> dict[str, Any]:
    sizes = (1.5, 2.0, 3.0, 4.0)
    kinds = ("spike", "deflection_drop", "unit_cost_jump")
    seeds = range(3 if quick else 8)
    rng = random.Random(7)
    # Found once at the lowest z: a higher z only drops the detections scored below it.
    low = Thresholds(z=min(ZS))
    injected: list[tuple[str, list[tuple[date, str]], list[Anomaly]]] = []
    for kind in kinds:
        for size in sizes:
            for seed in seeds:
                traffic = Traffic(days=60, per_day=300, seed=1000 + seed)
                inj = Injection(
                    kind,
                    day=rng.randint(30, 59),
                    size=size,
                    tenant=rng.choice(["acme", "globex", "initech"]),
                )
                found = anomalies_of(synthetic_entries(traffic, [inj], seed=seed), thresholds=low)
                when = traffic.start + timedelta(days=inj.day)
                injected.append((f"{kind} x{size}", [(when, kind)], found))
    clean: list[tuple[list[tuple[date, str]], list[Anomaly]]] = []
    for seed in range(6 if quick else 16):
        traffic = Traffic(days=60, per_day=300, seed=2000 + seed)
        clean.append(([], anomalies_of(synthetic_entries(traffic, seed=seed), thresholds=low)))

    def at(z: float, found: list[Anomaly]) -> list[Anomaly]:
        return [a for a in found if a.score >= z]

    by_z = {}
    for z in ZS:
        cases = [(i, at(z, f)) for _, i, f in injected] + [(i, at(z, f)) for i, f in clean]
        by_z[str(z)] = {
            **score_detections(cases),
            "false_alarms_per_clean_series": sum(len(at(z, f)) for _, f in clean) / len(clean),
        }
    default = Thresholds().z
    cells = {}
    for name in dict.fromkeys(n for n, _, _ in injected):
        cells[name] = score_detections([(i, at(default, f)) for n, i, f in injected if n == name])
    return {
        "cells": cells,
        "overall": by_z[str(default)],
        "by_z": by_z,
        "clean_series": len(clean),
        "false_alarms_per_clean_series": by_z[str(default)]["false_alarms_per_clean_series"],
        "judged_days_per_clean_series": 60 - 14,
    }


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def markdown(result: dict[str, Any]) -> str:
    f, a = result["forecast"], result["anomalies"]
    out = [
        "# FinOps: forecast coverage and anomaly precision/recall on simulated traffic",
        "",
        f"- command: {result['command']}",
        f"- commit: {result['commit']}",
        f"- date: {result['date']}",
        f"- machine: {result['machine']}",
        f"- run time: {result['seconds']:.0f} s",
        "",
        "## Forecast: rolling-origin back-test (fitted on the past only)",
        "",
        "| horizon | forecasts | inside 80% band | inside 95% band | MAPE of mid |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for h in ("1-1", "1-7"):
        s = f["summary"][h]
        out.append(
            f"| {h} days | {s['forecasts']:.0f} | {s['0.8']:.1%} | {s['0.95']:.1%} | "
            f"{s['mape']:.1%} |"
        )
    m = f["summary"]["month_end"]
    out.append(f"| month-end total | {m['forecasts']} | {m['0.8']:.1%} | {m['0.95']:.1%} | |")
    out += [
        "",
        "Coverage 1-7 days ahead by growth per day:",
        "",
        "| growth | 80% band | 95% band |",
        "| --- | ---: | ---: |",
    ]
    for g, s in f["by_growth_1_7"].items():
        out.append(f"| {float(g):.0%} | {s['0.8']:.1%} | {s['0.95']:.1%} |")
    o = a["overall"]
    out += [
        "",
        "## Anomalies: precision and recall with injected anomalies",
        "",
        f"Overall: precision {o['precision']:.1%} ({o['true_detections']:.0f} of "
        f"{o['detections']:.0f} detections on an injected day), recall {o['recall']:.1%} "
        f"({o['recalled']:.0f} of {o['injections']:.0f} injections). Clean series: "
        f"{a['false_alarms_per_clean_series']:.2f} false alarms per 60-day series "
        f"({a['clean_series']} series).",
    ]
    out += [
        "",
        "The same detections at other score thresholds (z):",
        "",
        "| z | precision | recall | false alarms per clean series |",
        "| --- | ---: | ---: | ---: |",
    ]
    for z, s in a["by_z"].items():
        out.append(
            f"| {z} | {s['precision']:.1%} | {s['recall']:.1%} | "
            f"{s['false_alarms_per_clean_series']:.2f} |"
        )
    out += [
        "",
        "Per injection at the default z = 4:",
        "",
        "| injection | series | recall | precision | detections |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in a["cells"].items():
        prec = "n/a" if s["detections"] == 0 else f"{s['precision']:.0%}"
        out.append(
            f"| {name} | {s['injections']:.0f} | {s['recall']:.0%} | {prec} | "
            f"{s['detections']:.0f} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer series: a smoke run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    forecast = forecast_eval(args.quick)
    print(json.dumps(forecast["summary"], indent=1), flush=True)
    anomalies = anomaly_eval(args.quick)
    print(json.dumps(anomalies["overall"], indent=1), flush=True)
    result = {
        "command": ".venv/bin/python benchmarks/eval_finops.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}",
        "seconds": time.perf_counter() - start,
        "forecast": forecast,
        "anomalies": anomalies,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
