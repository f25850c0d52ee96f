"""Days of simulated support-bot traffic in a ledger, then its showback, forecast and anomalies.

``python -m recipes.support_bot --days 60 --ledger run.db --data-dir ../shared/data`` runs the
deployed variant of the support bot (local intent scan, canned and precomputed replies, shop
lookup, small-model responder; offline models) over 60 days of traffic: weekday volume growing
1% a day, weekends at 55%, three tenants, entry times spread over each day's hours. On one day
(``--anomaly-day``, default three quarters through) tenant ``acme``'s precomputed replies are
lost (an emptied reply store), so its requests go to the generator: the injected anomaly.

Each distinct message is run through the real pipeline once (per pipeline) and its entries are
replayed, with new ids, times and tags, for every interaction that repeats it: the offline
models are deterministic, so a repeat would record the same usage and cost. That keeps 2,000
interactions a day for 60 days to about a minute on one core (see ``--per-day``).

The report: cost by tenant (precompute spend amortised over the requests it answered), the
month-end and next-month forecast, the anomalies found (recorded in the ledger), and a closing
note with the forecast's back-tested coverage on this run's own series and the detector's
precision and recall on this run and on synthetic series with injected anomalies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from chainkit import Catalogue, Ledger, Pipeline, Precomputed, ReplyStore, Request, precompute
from chainkit.cli import count, run_command
from chainkit.finops import (
    Allocation,
    Anomaly,
    Forecast,
    Injection,
    Traffic,
    allocate,
    backtest,
    detect,
    forecast,
    score_detections,
    synthetic_entries,
    times_in_day,
)
from chainkit.finops.anomalies import anomalies_of
from chainkit.finops.commitments import Commitments, commitments
from chainkit.finops.html import html_report
from chainkit.finops.reprice import Repricing, reprice
from chainkit.finops.series import daily_spend
from chainkit.ledger.sql import SQLLedger
from chainkit.money import usd
from chainkit.outfiles import refuse_ledger_as_out, write_atomically
from chainkit.records import Entry, new_entry_id
from recipes.common import REPLY_TOKENS, SMALL, STRONG, folder, make_model, open_ledger
from recipes.common import recipe_parser as _parser

TENANTS = (("acme", 0.5), ("globex", 0.3), ("initech", 0.2))


@dataclass(frozen=True)
class SimulatedRun:
    """What the simulation did and what the analysis found."""

    traffic: Traffic
    interactions: int
    distinct_runs: int
    anomaly_day: date
    anomaly_tenant: str
    allocation: Allocation
    forecast: Forecast
    anomalies: tuple[Anomaly, ...]
    coverage: dict[str, float]
    run_precision: float | None
    run_recall: float
    synthetic: dict[str, float]
    repricing: Repricing
    options: Commitments

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: money as exact strings."""
        return {
            "traffic": {
                "days": self.traffic.days,
                "per_day": self.traffic.per_day,
                "growth": self.traffic.growth,
                "weekend": self.traffic.weekend,
                "start": self.traffic.start.isoformat(),
                "interactions": self.interactions,
                "pipeline_runs": self.distinct_runs,
            },
            "injected": {
                "day": self.anomaly_day.isoformat(),
                "tenant": self.anomaly_tenant,
                "kind": "deflection_drop (emptied precomputed store)",
            },
            "allocation": self.allocation.to_dict(),
            "forecast": self.forecast.to_dict(),
            "anomalies": [a.to_dict() for a in self.anomalies],
            "forecast_coverage": self.coverage,
            "run_precision": self.run_precision,
            "run_recall": self.run_recall,
            "synthetic_detection": self.synthetic,
            "repricing_batch": self.repricing.to_dict(),
            "commitments": self.options.to_dict(),
        }


def _pipelines(data_dir: Path, tmp: Path, ledger: Ledger) -> tuple[Pipeline, Pipeline]:
    """The deployed variant, and the same with an emptied precomputed store (the anomaly)."""
    from recipes import support_bot as bot
    from recipes.shop import build_shop
    from recipes.support_data import OUT_OF_SCOPE, SMALL_TALK, bitext

    catalogue = Catalogue.load()
    routing = bot.train_classifier(data_dir)
    labels = tuple(sorted({u.intent for u in bitext(data_dir, "train")} | set(SMALL_TALK)))
    orders = {u.order_id for split in ("train", "dev", "test") for u in bitext(data_dir, split)}
    shop = build_shop(tmp / "shop.db", order_ids=[o for o in orders if o is not None])
    store = ReplyStore(tmp / "replies")
    small = make_model("offline", SMALL, None, output_tokens=REPLY_TOKENS)
    setup = bot.Setup(
        shop=shop,
        store=store,
        routing=routing,
        strong=make_model("offline", STRONG, None, output_tokens=REPLY_TOKENS),
        small=small,
        intent_model=bot.stand_in_label((*labels, OUT_OF_SCOPE)),
        labels=labels,
        catalogue=catalogue,
    )
    # The one-off spend the allocation amortises: the small model writes the precomputed replies.
    questions = {i: f"A customer asks about: {i.replace('_', ' ')}." for i in bot.PRECOMPUTED}
    precompute(store, questions, model=small, ledger=ledger, catalogue=catalogue)
    good = bot.variants(setup)["prescan-local"]
    empty = ReplyStore(tmp / "lost-replies")
    stages = [
        Precomputed(store=empty, keys=dict.fromkeys(bot.PRECOMPUTED, ()))
        if isinstance(s, Precomputed)
        else s
        for s in good.stages
    ]
    return good, Pipeline(stages, name="prescan-local")


def simulate(
    data_dir: Path,
    ledger: Ledger,
    traffic: Traffic,
    *,
    anomaly_day: int | None = None,
    anomaly_tenant: str = "acme",
    progress: bool = False,
) -> tuple[int, int, date]:
    """Record ``traffic`` of the support bot in ``ledger``; return interactions, runs, anomaly day.

    The setup spend (precomputing replies) is dated the first day, before any traffic.
    """
    from recipes.support_data import traffic as messages_of

    day_index = round(traffic.days * 0.75) if anomaly_day is None else anomaly_day
    if not 0 <= day_index < traffic.days:
        raise ValueError(f"anomaly day {day_index} is outside the {traffic.days} days")
    messages = messages_of(data_dir)
    rng = random.Random(traffic.seed)
    templates: dict[tuple[int, str], list[Entry]] = {}
    runs = 0
    total = 0
    with tempfile.TemporaryDirectory(prefix="chainkit-traffic-") as tmp:
        scratch = Ledger()
        good, broken = _pipelines(data_dir, Path(tmp), scratch)
        first = traffic.start
        start_of_run = first - timedelta(days=1)
        setup = [
            dataclasses.replace(
                e,
                time=e.time.replace(
                    year=start_of_run.year, month=start_of_run.month, day=start_of_run.day
                ),
            )
            for e in scratch.entries()
        ]
        ledger.record_many(setup)
        for i, (day, n) in enumerate(zip(traffic.dates(), traffic.volumes(), strict=True)):
            picks = rng.choices(messages, k=n)
            tenants = rng.choices([t for t, _ in TENANTS], weights=[w for _, w in TENANTS], k=n)
            times = times_in_day(day, n, rng)
            batch: list[Entry] = []
            for j, (u, tenant, when) in enumerate(zip(picks, tenants, times, strict=True)):
                which = 1 if (i == day_index and tenant == anomaly_tenant) else 0
                key = (which, u.text)
                entries = templates.get(key)
                if entries is None:
                    scratch = Ledger()
                    pipeline = broken if which else good
                    pipeline.run(Request(u.text, id=f"t{runs}"), scratch)
                    entries = templates[key] = scratch.entries()
                    runs += 1
                rid = f"{day.isoformat()}-{j}"
                base = entries[0].time
                batch += [
                    dataclasses.replace(
                        e,
                        id=new_entry_id(),
                        request_id=rid,
                        time=when + (e.time - base),
                        tags={**e.tags, "tenant": tenant},
                    )
                    for e in entries
                ]
            ledger.record_many(batch)
            total += n
            if progress:
                print(f"day {i + 1}/{traffic.days}: {n} interactions", file=sys.stderr)
    return total, runs, traffic.start + timedelta(days=day_index)


def run(
    data_dir: Path,
    ledger: Ledger,
    traffic: Traffic,
    *,
    anomaly_day: int | None = None,
    progress: bool = False,
    synthetic_seeds: int = 2,
) -> SimulatedRun:
    """Simulate, then allocate, forecast and detect on the ledger; measure both on the way."""
    interactions, runs, injected = simulate(
        data_dir, ledger, traffic, anomaly_day=anomaly_day, progress=progress
    )
    allocation = allocate(ledger, "tenant")
    outlook = forecast(ledger, level=0.8)
    found = detect(ledger)
    # The recurring spend is what the forecast models: the setup day would be an outlier.
    series = daily_spend(ledger, lambda e: "serve" if e.phase == "serve" else None).get("serve", {})
    coverage = backtest(series, levels=(0.8, 0.95), min_history=21, horizon=7)
    hits = [a for a in found if a.when == injected]
    precision = None if not found else len(hits) / len(found)
    recall = 1.0 if any(a.kind == "deflection_drop" for a in hits) else 0.0
    synthetic = _synthetic_scores(synthetic_seeds)
    # The same recorded usage at batch prices, and what the traffic would cost on each pricing
    # option (Provisioned Throughput only where a sourced price exists).
    what_if = reprice(ledger, tier="batch")
    options = commitments(ledger)
    return SimulatedRun(
        traffic=traffic,
        interactions=interactions,
        distinct_runs=runs,
        anomaly_day=injected,
        anomaly_tenant="acme",
        allocation=allocation,
        forecast=outlook,
        anomalies=tuple(found),
        coverage=coverage,
        run_precision=precision,
        run_recall=recall,
        synthetic=synthetic,
        repricing=what_if,
        options=options,
    )


def _synthetic_scores(n: int) -> dict[str, float]:
    """Precision and recall on synthetic series: each kind at 2x and 3x, ``n`` seeds each.

    The series are 45 days of 300 interactions a day (``chainkit.finops.synthetic_entries``),
    whatever the run's own traffic, so the figure is comparable between runs.
    """
    cases = []
    for seed in range(n):
        for kind in ("spike", "deflection_drop", "unit_cost_jump"):
            for size in (2.0, 3.0):
                t = Traffic(days=45, per_day=300, seed=100 + seed)
                injection = Injection(kind, day=30 + (seed * 5) % 15, size=size)
                when = t.start + timedelta(days=injection.day)
                found = anomalies_of(synthetic_entries(t, [injection], seed=seed))
                cases.append(([(when, kind)], found))
    return score_detections(cases)


def render(result: SimulatedRun, fmt: str) -> str:
    """The run's report as a table, Markdown, JSON or CSV."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2)
    alloc = result.allocation
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        rows = [r.to_dict(alloc.by) for r in alloc.rows]
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["tenant"])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    md = fmt == "markdown"
    f = result.forecast
    lines = [
        f"{result.interactions:,} interactions over {result.traffic.days} days "
        f"({result.distinct_runs:,} pipeline runs, the rest replayed)",
        "",
        "Cost by tenant (precompute spend amortised over the requests it answered)",
    ]
    lines += _table(
        ["tenant", "requests", "direct", "amortised", "cost", "per request", "per 1K tokens"],
        [
            [
                str(r.key[0]),
                f"{r.requests:,}",
                usd(r.direct),
                usd(r.amortised),
                usd(r.cost),
                usd(r.per_request),
                usd(r.per_1k_tokens),
            ]
            for r in alloc.rows
        ],
        md,
    )
    pct = round(f.level * 100)
    lines += [
        "",
        f"Forecast ({pct}% interval; {f.method})",
        f"  month to {f.month_end.day}: {usd(f.month_end.mid)} "
        f"({usd(f.month_end.low)} - {usd(f.month_end.high)})",
        f"  next month to {f.next_month.day}: {usd(f.next_month.mid)} "
        f"({usd(f.next_month.low)} - {usd(f.next_month.high)})",
        "",
        f"Anomalies (recorded in the ledger; injected: {result.anomaly_day}, tenant "
        f"{result.anomaly_tenant}'s precomputed replies lost)",
    ]
    lines += _table(
        ["when", "scope", "kind", "observed", "expected", "score"],
        [
            [
                a.when.isoformat(),
                f"{a.scope[0]}={a.scope[1]}",
                a.kind,
                str(a.observed),
                str(a.expected),
                f"{a.score:.1f}",
            ]
            for a in result.anomalies
        ],
        md,
    )
    lines += ["", "What if: the same recorded usage at batch prices"]
    lines += (result.repricing.to_markdown() if md else result.repricing.to_table()).split("\n")
    lines += [""]
    lines += (result.options.to_markdown() if md else result.options.to_table()).split("\n")
    cov = result.coverage
    syn = result.synthetic
    prec = "n/a" if result.run_precision is None else f"{result.run_precision:.2f}"
    lines += [
        "",
        "Note: forecast coverage, back-tested by rolling origin on this run's daily spend "
        f"(1-7 days ahead, {int(cov['forecasts'])} forecasts): {cov['0.8']:.0%} inside the 80% "
        f"band, {cov['0.95']:.0%} inside the 95% band. Anomalies on this run: precision {prec}, "
        f"recall {result.run_recall:.2f} (the injected day found). On "
        f"{int(syn['injections'])} synthetic series (each kind at 2x and 3x): "
        f"precision {syn['precision']:.2f}, recall {syn['recall']:.2f} "
        "(benchmarks/results/finops.md has the full sweep).",
    ]
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]], md: bool) -> list[str]:
    if md:
        return [
            "| " + " | ".join(head) + " |",
            "| " + " | ".join("---" for _ in head) + " |",
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recipes.support_bot --days N``: simulate, record, analyse; exit status."""
    parser: argparse.ArgumentParser = _parser("python -m recipes.support_bot", __doc__)
    parser.add_argument("--days", type=count, required=True, help="days of traffic to simulate")
    parser.add_argument(
        "--per-day", type=count, default=2000, help="weekday interactions on the first day"
    )
    parser.add_argument(
        "--data-dir",
        type=folder,
        default=Path("../shared/data"),
        help="folder with bitext_customer_support/ and clinc150/ (default ../shared/data)",
    )
    parser.add_argument(
        "--anomaly-day", type=int, default=None, help="day index of the injected anomaly"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the traffic")
    parser.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    parser.add_argument("--ledger", default=None, help="a new SQLite file or postgresql:// URI")
    parser.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="also write the HTML report (spend, forecast band, anomalies marked) to FILE",
    )
    args = parser.parse_args(argv)

    def work() -> int:
        if args.days < 28:
            parser.error(
                f"--days {args.days}: anomalies are judged after 14 days and the forecast is "
                "back-tested after 21; give at least 28 days"
            )
        traffic = Traffic(days=args.days, per_day=args.per_day, seed=args.seed)
        ledger = open_ledger(args.ledger)
        try:
            result = run(
                args.data_dir,
                ledger,
                traffic,
                anomaly_day=args.anomaly_day,
                progress=sys.stderr.isatty(),
            )
            if args.html is not None:
                page = html_report(
                    ledger,
                    forecast=result.forecast,
                    anomalies=result.anomalies,
                    title=f"Support bot, {args.days} simulated days",
                    source=args.ledger or "in memory",
                )
                if args.ledger is not None:
                    refuse_ledger_as_out(args.ledger, args.html)
                with write_atomically(args.html, binary=True) as file:
                    file.write(page.encode("utf-8"))
                print(f"Wrote {args.html} ({len(page.encode()):,} bytes).", file=sys.stderr)
        finally:
            if isinstance(ledger, SQLLedger):
                ledger.close()
        print(render(result, args.format))
        return 0

    return run_command(work, prog="python -m recipes.support_bot", debug=False)


__all__ = ["SimulatedRun", "main", "render", "run", "simulate"]
