"""Commitments and pricing options: what the ledger's traffic would cost each way, per month.

For each model the ledger called (after any ``--swap``), the traffic profile is read from the
entries' times: tokens per minute over the ledger's span (first to last minute, idle minutes
included), its mean, p95 and busiest minute, the p95 of the busy minutes (those with calls: the
peak capacity must serve, which idle minutes would hide in a burst), and the mean by hour of day
(UTC). Prompt tokens
(input, cache read and cache write) and output tokens are kept apart, as a model unit's capacity
is stated for each.

The options, per model and per month (730 hours, AWS's convention for a month):

- on-demand, batch, flex and priority: the ledger repriced at that tier
  (:func:`chainkit.finops.reprice.reprice`, exact per entry) and scaled from its span to a month.
  A tier the catalogue has no price for is unknown, never $0.
- Bedrock Provisioned Throughput: model units x hourly price x 730, for each commitment term
  (none, 1-month, 6-month) with a price in ``chainkit/data/provisioned``, each dated and sourced.
  A model without a sourced price is reported as "no PT price". AWS does not publish how many
  tokens per minute a model unit serves, so capacity is an input (``input_tpm_per_unit`` and
  ``output_tpm_per_unit``, from the AWS account team); without it units cannot be sized and the
  peak cannot be checked, and the report says so.

Break-even: at the same traffic shape scaled by ``k``, on-demand costs ``k`` times what it costs
now, and one model unit costs its monthly price. PT breaks even at ``k = unit price / on-demand
monthly cost``; the break-even traffic is ``k`` times the mean tokens per minute. When capacity
is known, that is only reachable if one unit serves the busy minutes' p95 of the scaled
traffic; if not, provisioned throughput never pays off for this traffic shape, and the report
says so plainly. A
provisioned model past its capacity throttles requests (they do not spill over to on-demand),
so a busiest minute above capacity is reported too.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chainkit.errors import ConfigError
from chainkit.finops.reprice import (
    Swap,
    _grid,
    _markdown,
    _SafeWriter,
    _swap_for,
    _swaps,
    check_format,
    reprice,
    tagged,
)
from chainkit.ledger.core import Ledger
from chainkit.money import exact_sum, usd
from chainkit.pricing import DEFAULT_CATALOGUE, Catalogue, Tier, base_model_id
from chainkit.records import Entry
from chainkit.report import QUOTIENT, money

__all__ = [
    "Commitments",
    "ModelOptions",
    "Option",
    "ProvisionedPrice",
    "TrafficProfile",
    "commitments",
    "provisioned_prices",
    "traffic_profile",
]

Term = Literal["none", "1-month", "6-month"]
HOURS_PER_MONTH = 730
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60
SHORT_SPAN_MINUTES = 24 * 60  # under a day, a month's figures rest on one stretch of traffic
TIER_OPTIONS: tuple[Tier, ...] = ("on_demand", "batch", "flex", "priority")


@dataclass(frozen=True, slots=True)
class ProvisionedPrice:
    """USD per model unit per hour for one model, region and commitment term, with its source."""

    model_id: str
    region: str
    term: Term
    hourly: Decimal
    source_url: str
    effective_date: date
    note: str = ""


class _PriceRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str
    term: Term
    hourly: Decimal = Field(gt=0)
    source_url: str = Field(pattern=r"^https?://")
    effective_date: date
    note: str = ""


class _ModelRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    aliases: list[str] = []
    prices: list[_PriceRow]


class _PTFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    capacity_source: str
    hours_per_month: int = Field(gt=0)
    models: list[_ModelRow]


def provisioned_prices(path: str | Path | None = None) -> dict[str, list[ProvisionedPrice]]:
    """Provisioned Throughput prices by model id (and alias), from the bundled file or ``path``."""
    try:
        if path is None:
            text = (
                resources.files("chainkit")
                .joinpath("data", "provisioned", "bedrock-pt.json")
                .read_text(encoding="utf-8")
            )
        else:
            text = Path(path).read_text(encoding="utf-8")
        parsed = _PTFile.model_validate(json.loads(text))
    except FileNotFoundError as exc:
        raise ConfigError(f"Provisioned Throughput price file {path} does not exist.") from exc
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[:3]
        raise ConfigError(
            f"Malformed Provisioned Throughput price file {path or 'bedrock-pt.json'}: "
            f"{' '.join(first)}. Each price needs region, term (none, 1-month, 6-month), "
            "hourly, source_url and effective_date."
        ) from exc
    found: dict[str, list[ProvisionedPrice]] = {}
    for row in parsed.models:
        prices = [
            ProvisionedPrice(
                row.id, p.region, p.term, p.hourly, p.source_url, p.effective_date, p.note
            )
            for p in row.prices
        ]
        for key in (row.id, *row.aliases):
            found[key] = prices
    return found


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """Tokens per minute of one model over the ledger's span (idle minutes included)."""

    model: str
    start: datetime | None
    minutes: int
    prompt_tokens: int
    output_tokens: int
    mean_tpm: Decimal
    p95_tpm: int
    max_tpm: int
    p95_prompt_tpm: int
    p95_output_tpm: int
    max_prompt_tpm: int
    max_output_tpm: int
    by_hour: Mapping[int, Decimal]
    active_minutes: int = 0
    """Minutes with at least one call."""
    p95_active_prompt_tpm: int = 0
    """The p95 of prompt tokens per minute over the active minutes only: the peak to serve.

    Over the whole span a bursty profile's p95 is 0 (most minutes idle); capacity must still
    serve the busy minutes, so units are sized and checked against this.
    """
    p95_active_output_tpm: int = 0
    """The p95 of output tokens per minute over the active minutes."""

    @property
    def tokens(self) -> int:
        """Prompt and output tokens together."""
        return self.prompt_tokens + self.output_tokens


def traffic_profile(model: str, usage_at: Iterable[tuple[datetime, int, int]]) -> TrafficProfile:
    """The profile of ``(time, prompt tokens, output tokens)`` calls of ``model``."""
    prompt: dict[datetime, int] = defaultdict(int)
    output: dict[datetime, int] = defaultdict(int)
    for when, p, o in usage_at:
        key = _utc_minute(when)
        prompt[key] += p
        output[key] += o
    if not prompt:
        zero = Decimal(0)
        return TrafficProfile(model, None, 0, 0, 0, zero, 0, 0, 0, 0, 0, 0, {})
    first, last = min(prompt), max(prompt)
    minutes = int((last - first) / timedelta(minutes=1)) + 1
    totals = {k: prompt[k] + output[k] for k in prompt}
    by_hour_tokens: dict[int, int] = defaultdict(int)
    for k, tokens in totals.items():
        by_hour_tokens[k.hour] += tokens
    by_hour_minutes: dict[int, int] = defaultdict(int)
    # Minutes of the span in each hour of day, counted an hour at a time (a month is 730 steps).
    cursor = first
    while cursor <= last:
        hour_end = cursor.replace(minute=0) + timedelta(hours=1)
        upto = min(hour_end, last + timedelta(minutes=1))
        by_hour_minutes[cursor.hour] += int((upto - cursor) / timedelta(minutes=1))
        cursor = hour_end
    with localcontext(QUOTIENT):
        by_hour = {
            h: Decimal(by_hour_tokens[h]) / by_hour_minutes[h] for h in sorted(by_hour_minutes)
        }
        mean = Decimal(sum(totals.values())) / minutes
    return TrafficProfile(
        model=model,
        start=first,
        minutes=minutes,
        prompt_tokens=sum(prompt.values()),
        output_tokens=sum(output.values()),
        mean_tpm=+mean,
        p95_tpm=_p95(totals.values(), minutes),
        max_tpm=max(totals.values()),
        p95_prompt_tpm=_p95(prompt.values(), minutes),
        p95_output_tpm=_p95(output.values(), minutes),
        max_prompt_tpm=max(prompt.values()),
        max_output_tpm=max(output.values()),
        by_hour=by_hour,
        active_minutes=len(totals),
        p95_active_prompt_tpm=_p95(prompt.values(), len(prompt)),
        p95_active_output_tpm=_p95(output.values(), len(output)),
    )


def _utc_minute(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(second=0, microsecond=0)


def _p95(busy: Iterable[int], minutes: int) -> int:
    """Nearest-rank 95th percentile of per-minute counts; minutes not listed count as 0."""
    values = sorted(busy)
    rank = math.ceil(0.95 * minutes)
    zeros = minutes - len(values)
    return 0 if rank <= zeros else values[rank - zeros - 1]


@dataclass(frozen=True, slots=True)
class Option:
    """One way to pay for a model's traffic, per month; ``monthly`` ``None`` when unknown."""

    name: str
    monthly: Decimal | None
    note: str = ""
    units: int | None = None
    hourly: Decimal | None = None
    break_even_tpm: Decimal | None = None
    serves_peak: bool | None = None
    source_url: str = ""
    effective_date: date | None = None


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """A model's traffic profile and what it would cost per month under each option."""

    model: str
    profile: TrafficProfile
    options: tuple[Option, ...]
    estimated: bool = False

    @property
    def on_demand(self) -> Decimal | None:
        """The on-demand monthly cost (the baseline the others are compared with)."""
        return self.options[0].monthly


@dataclass(frozen=True, slots=True)
class Commitments:
    """Every model's options, with the prices and capacity they rest on."""

    catalogue: str
    region: str | None
    models: tuple[ModelOptions, ...]
    input_tpm_per_unit: int | None
    output_tpm_per_unit: int | None
    units: int | None
    swaps: tuple[Swap, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every figure; money and rates as exact decimal strings."""
        return {
            "catalogue": self.catalogue,
            "region": self.region,
            "hours_per_month": HOURS_PER_MONTH,
            "input_tpm_per_unit": self.input_tpm_per_unit,
            "output_tpm_per_unit": self.output_tpm_per_unit,
            "units": self.units,
            "warnings": self.warnings,
            "swaps": [
                {"old": s.old, "new": s.new, "token_ratio": str(s.ratio)} for s in self.swaps
            ],
            "models": [
                {
                    "model": m.model,
                    "estimated": m.estimated,
                    "profile": {
                        "start": None if m.profile.start is None else m.profile.start.isoformat(),
                        "minutes": m.profile.minutes,
                        "prompt_tokens": m.profile.prompt_tokens,
                        "output_tokens": m.profile.output_tokens,
                        "mean_tpm": str(m.profile.mean_tpm),
                        "p95_tpm": m.profile.p95_tpm,
                        "max_tpm": m.profile.max_tpm,
                        "p95_prompt_tpm": m.profile.p95_prompt_tpm,
                        "p95_output_tpm": m.profile.p95_output_tpm,
                        "active_minutes": m.profile.active_minutes,
                        "p95_active_prompt_tpm": m.profile.p95_active_prompt_tpm,
                        "p95_active_output_tpm": m.profile.p95_active_output_tpm,
                        "max_prompt_tpm": m.profile.max_prompt_tpm,
                        "max_output_tpm": m.profile.max_output_tpm,
                        "mean_tpm_by_hour_utc": {
                            str(h): str(v) for h, v in m.profile.by_hour.items()
                        },
                    },
                    "options": [
                        {
                            "option": o.name,
                            "monthly": money(o.monthly),
                            "units": o.units,
                            "hourly_per_unit": money(o.hourly),
                            "break_even_mean_tpm": None
                            if o.break_even_tpm is None
                            else str(o.break_even_tpm),
                            "serves_peak": o.serves_peak,
                            "source_url": o.source_url or None,
                            "effective_date": None
                            if o.effective_date is None
                            else o.effective_date.isoformat(),
                            "note": o.note,
                        }
                        for o in m.options
                    ],
                }
                for m in self.models
            ],
        }

    def to_json(self) -> str:
        """The figures as JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def _cells(self, m: ModelOptions) -> tuple[list[str], list[list[str]]]:
        head = ["option", "per month", "vs on-demand", "units", "break-even mean TPM", "note"]
        rows = []
        for o in m.options:
            vs = "-"
            if o.serves_peak is False:
                vs = "cannot serve"  # a saving the units cannot deliver is no saving
            elif o.monthly is not None and m.on_demand:
                with localcontext(QUOTIENT):
                    vs = f"{100 * (o.monthly - m.on_demand) / m.on_demand:+.1f}%"
            rows.append(
                [
                    o.name,
                    usd(o.monthly),
                    vs,
                    "-" if o.units is None else str(o.units),
                    "-" if o.break_even_tpm is None else f"{o.break_even_tpm:,.0f}",
                    o.note,
                ]
            )
        return head, rows

    def _profile_line(self, m: ModelOptions) -> str:
        p = m.profile
        peak_hours = sorted(p.by_hour.items(), key=lambda kv: -kv[1])[:3]
        hours = ", ".join(f"{h:02d}h {v:,.0f}" for h, v in peak_hours)
        return (
            f"{m.model}{' (estimated tokens)' if m.estimated else ''}: {p.minutes:,} min from "
            f"{p.start:%Y-%m-%d %H:%M} UTC ({p.active_minutes:,} with calls); tokens/min mean "
            f"{p.mean_tpm:,.1f}, p95 {p.p95_tpm:,}, p95 of the busy minutes prompt "
            f"{p.p95_active_prompt_tpm:,} output {p.p95_active_output_tpm:,}, busiest minute "
            f"{p.max_tpm:,}; busiest hours of day (mean TPM): {hours}"
            if p.start is not None
            else f"{m.model}: no calls"
        )

    @property
    def warnings(self) -> list[str]:
        """What makes the monthly figures rough: a ledger spanning less than a day."""
        short = [m for m in self.models if 0 < m.profile.minutes < SHORT_SPAN_MINUTES]
        if not short:
            return []
        spans = ", ".join(f"{m.model} {m.profile.minutes:,} min" for m in short)
        return [
            f"WARNING: the ledger spans less than a day ({spans}): scaling it to a month "
            "assumes that stretch repeats all month; record a day or more of traffic."
        ]

    def _legend(self) -> list[str]:
        out = self.warnings
        if self.input_tpm_per_unit is None:
            what = (
                "PT rows show the price of one unit."
                if self.units is None
                else f"PT rows price the {self.units} unit(s) given, unchecked."
            )
            return [
                *out,
                "Model-unit capacity: not given. AWS does not publish the tokens per minute a "
                "model unit serves; give --input-tpm-per-unit and --output-tpm-per-unit (from "
                f"your AWS account team) to size units and check the peak. {what}",
            ]
        return [
            *out,
            f"Model-unit capacity (given): {self.input_tpm_per_unit:,} prompt and "
            f"{self.output_tpm_per_unit:,} output tokens per minute; units are sized for the p95 "
            "of the busy minutes (minutes with calls).",
        ]

    def to_table(self) -> str:
        """A table per model, its profile above it."""
        where = self.region or "us-east-1 (default)"
        out = [f"Pricing options per month ({HOURS_PER_MONTH} h) at {self.catalogue}, {where}"]
        for m in self.models:
            head, rows = self._cells(m)
            out += ["", self._profile_line(m), _grid(head, rows)]
        return "\n".join([*out, "", *self._legend()])

    def to_markdown(self) -> str:
        """The same tables in Markdown."""
        where = self.region or "us-east-1 (default)"
        out = [f"**Pricing options per month ({HOURS_PER_MONTH} h) at {self.catalogue}, {where}**"]
        for m in self.models:
            head, rows = self._cells(m)
            out += ["", self._profile_line(m), "", _markdown(head, rows)]
        return "\n".join([*out, "", *self._legend()])

    def to_csv(self) -> str:
        """A row per model and option; money as exact decimal strings."""
        out = io.StringIO()
        writer = _SafeWriter(out)
        writer.writerow(
            [
                "model",
                "option",
                "monthly",
                "units",
                "hourly_per_unit",
                "break_even_mean_tpm",
                "serves_peak",
                "mean_tpm",
                "p95_tpm",
                "max_tpm",
                "source_url",
                "effective_date",
                "note",
            ]
        )
        for m in self.models:
            for o in m.options:
                writer.writerow(
                    [
                        m.model,
                        o.name,
                        money(o.monthly) or "",
                        "" if o.units is None else o.units,
                        money(o.hourly) or "",
                        "" if o.break_even_tpm is None else str(o.break_even_tpm),
                        "" if o.serves_peak is None else o.serves_peak,
                        str(m.profile.mean_tpm),
                        m.profile.p95_tpm,
                        m.profile.max_tpm,
                        o.source_url,
                        "" if o.effective_date is None else o.effective_date.isoformat(),
                        o.note,
                    ]
                )
        return out.getvalue().rstrip("\n")

    def render(self, fmt: str) -> str:
        """The report as ``table``, ``markdown``, ``json`` or ``csv``."""
        return {
            "table": self.to_table,
            "markdown": self.to_markdown,
            "json": self.to_json,
            "csv": self.to_csv,
        }[check_format(fmt)]()


def commitments(
    ledger: Ledger | Iterable[Entry],
    *,
    catalogue: Catalogue | str = DEFAULT_CATALOGUE,
    region: str | None = None,
    swaps: Mapping[str, str] | Sequence[Swap] = (),
    corpus: tuple[str, Sequence[str]] | None = None,
    input_tpm_per_unit: int | None = None,
    output_tpm_per_unit: int | None = None,
    units: int | None = None,
    pt_prices: Mapping[str, Sequence[ProvisionedPrice]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Commitments:
    """Compare on-demand, batch, flex, priority and Provisioned Throughput for ``ledger``'s traffic.

    Args:
        ledger: any ledger (in memory, SQLite, PostgreSQL) or entries.
        catalogue: the per-token price catalogue (a :class:`Catalogue` or its name).
        region: the AWS region to price in (``None``: us-east-1 first, as the catalogue does).
        swaps: ``{old: new}``: price and profile ``old``'s traffic as ``new``'s (estimated).
        corpus: the texts swap ratios are measured on (see :func:`reprice`).
        input_tpm_per_unit: prompt tokens per minute one model unit serves (AWS account team).
        output_tpm_per_unit: output tokens per minute one model unit serves.
        units: model units to buy; ``None`` sizes them for the p95 peak (needs the capacity).
        pt_prices: Provisioned Throughput prices by model id (the bundled file by default).
        tags: only the entries carrying all these tags (e.g. ``{"variant": "prescan-local"}``).
    """
    if (input_tpm_per_unit is None) != (output_tpm_per_unit is None):
        raise ConfigError(
            "Give both --input-tpm-per-unit and --output-tpm-per-unit (a model unit's capacity "
            "is stated for prompt and output tokens apart), or neither."
        )
    for name, value in (
        ("input_tpm_per_unit", input_tpm_per_unit),
        ("output_tpm_per_unit", output_tpm_per_unit),
        ("units", units),
    ):
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"{name} must be a whole number of 1 or more, got {value!r}.")
    cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue.load(catalogue)
    measured = _swaps(cat, swaps, corpus)
    entries = list(tagged(ledger, tags))
    prices = provisioned_prices() if pt_prices is None else pt_prices
    calls: dict[str, list[tuple[datetime, int, int]]] = defaultdict(list)
    swapped: set[str] = set()
    for e in entries:
        if e.model is None or e.usage is None:
            continue
        swap = _swap_for(e.model, measured, cat)
        usage = e.usage if swap is None else swap.scale(e.usage)
        model = e.model if swap is None else swap.new
        if swap is not None:
            swapped.add(model)
        prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        calls[model].append((e.time, prompt, usage.output_tokens))
    tier_costs: dict[Tier, dict[str, tuple[Decimal | None, str]]] = {}
    for tier in TIER_OPTIONS:
        repriced = reprice(entries, catalogue=cat, region=region, tier=tier, swaps=measured)
        per_model: dict[str, tuple[Decimal | None, str]] = {}
        for row in repriced.rows:
            if row.priced_as is None or row.priced_as not in calls:
                continue
            cost, why = per_model.get(row.priced_as, (Decimal(0), ""))
            if cost is None or row.cost is None:
                per_model[row.priced_as] = (None, why or " ".join(row.reasons))
            else:
                # A sum of money: exact (chainkit's context), never rounded to a quotient's digits.
                per_model[row.priced_as] = (exact_sum((cost, row.cost)), "")
        tier_costs[tier] = per_model
    models = []
    for model in sorted(calls):
        profile = traffic_profile(model, calls[model])
        options = []
        for tier in TIER_OPTIONS:
            cost, why = tier_costs[tier].get(model, (None, "no priced calls"))
            monthly = None if cost is None else _per_month(cost, profile.minutes)
            note = ""
            if monthly is None:
                name = tier.replace("_", "-")
                note = f"no {name} price in {cat.name}" if "has no" in why else _short(why)
            options.append(Option(tier.replace("_", "-"), monthly, note))
        on_demand = options[0].monthly
        options += _provisioned(
            model,
            region,
            profile,
            on_demand,
            prices,
            input_tpm_per_unit,
            output_tpm_per_unit,
            units,
        )
        models.append(ModelOptions(model, profile, tuple(options), model in swapped))
    return Commitments(
        cat.name,
        region,
        tuple(models),
        input_tpm_per_unit,
        output_tpm_per_unit,
        units,
        measured,
    )


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _per_month(cost: Decimal, minutes: int) -> Decimal:
    with localcontext(QUOTIENT):
        return +(cost * MINUTES_PER_MONTH / minutes)


def _provisioned(
    model: str,
    region: str | None,
    profile: TrafficProfile,
    on_demand: Decimal | None,
    prices: Mapping[str, Sequence[ProvisionedPrice]],
    in_cap: int | None,
    out_cap: int | None,
    units: int | None,
) -> list[Option]:
    found = prices.get(model) or prices.get(base_model_id(model))
    if not found:
        return [Option("provisioned", None, "no PT price: no sourced price for this model")]
    want = region or "us-east-1"
    mine = [p for p in found if p.region == want]
    if not mine:
        where = sorted({p.region for p in found})
        return [Option("provisioned", None, f"no PT price in {want}; priced in {where}")]
    options = []
    for price in sorted(mine, key=lambda p: ("none", "1-month", "6-month").index(p.term)):
        with localcontext(QUOTIENT):
            unit_month = price.hourly * HOURS_PER_MONTH
        count, serves, notes = _size(profile, in_cap, out_cap, units)
        monthly = None if count is None else unit_month * count
        if count is None:
            notes.insert(0, f"one unit {usd(unit_month)}/month")
        break_even = None
        if on_demand is not None and on_demand > 0 and profile.mean_tpm > 0:
            with localcontext(QUOTIENT):
                scale = unit_month / on_demand
                break_even = +(scale * profile.mean_tpm)
            if in_cap is not None and out_cap is not None:
                need = max(
                    scale * profile.p95_active_prompt_tpm / in_cap,
                    scale * profile.p95_active_output_tpm / out_cap,
                )
                if need > 1:
                    notes.append(
                        "never pays off for this traffic shape: at break-even one unit cannot "
                        "serve the p95 of the busy minutes"
                    )
        elif on_demand is None:
            notes.append("on-demand cost unknown: no break-even")
        options.append(
            Option(
                "PT no commitment" if price.term == "none" else f"PT {price.term} commitment",
                monthly,
                "; ".join(notes),
                count,
                price.hourly,
                break_even,
                serves,
                price.source_url,
                price.effective_date,
            )
        )
    return options


def _size(
    profile: TrafficProfile, in_cap: int | None, out_cap: int | None, units: int | None
) -> tuple[int | None, bool | None, list[str]]:
    """Units to buy, whether they serve the p95 peak, and what to say about it.

    The peak is the p95 of the active minutes (minutes with calls): idle minutes need no
    capacity, and counting them would let a burst's p95 fall to 0.
    """
    if in_cap is None or out_cap is None:
        if units is None:
            return None, None, ["capacity not given: units not sized, peak not checked"]
        return (
            units,
            None,
            [f"capacity not given: whether {units} unit(s) serve the peak is unknown"],
        )
    peak_prompt, peak_output = profile.p95_active_prompt_tpm, profile.p95_active_output_tpm
    needed = max(1, math.ceil(peak_prompt / in_cap), math.ceil(peak_output / out_cap))
    count = needed if units is None else units
    notes = []
    serves = count * in_cap >= peak_prompt and count * out_cap >= peak_output
    if not serves:
        notes.append(
            f"CANNOT serve the p95 peak: {count} unit(s) give {count * in_cap:,} prompt and "
            f"{count * out_cap:,} output TPM; the p95 of the busy minutes is {peak_prompt:,} "
            f"prompt and {peak_output:,} output TPM; {needed} unit(s) needed"
        )
    elif count * in_cap < profile.max_prompt_tpm or count * out_cap < profile.max_output_tpm:
        notes.append(
            f"serves the p95 peak, not the busiest minute ({profile.max_prompt_tpm:,} prompt, "
            f"{profile.max_output_tpm:,} output TPM): requests over capacity are throttled"
        )
    return count, serves, notes


# -- the command line ----------------------------------------------------------------------


def _run(args: Any) -> str:
    from chainkit.finops.commands import open_ledger
    from chainkit.finops.reprice import corpus_of, swaps_of, tags_of

    swaps = swaps_of(args)
    corpus = corpus_of(args, swaps)
    with open_ledger(args.ledger, args.schema) as ledger:
        result = commitments(
            ledger,
            catalogue=args.catalogue,
            region=args.region,
            swaps=swaps,
            corpus=corpus,
            input_tpm_per_unit=args.input_tpm_per_unit,
            output_tpm_per_unit=args.output_tpm_per_unit,
            units=args.units,
            pt_prices=None if args.pt_prices is None else provisioned_prices(args.pt_prices),
            tags=tags_of(args),
        )
    return result.render(args.format)


def add_command(sub: Any) -> None:
    """Register ``chainkit commitments`` on the ``chainkit`` command's subparsers."""
    from chainkit.cli import count
    from chainkit.finops.reprice import add_ledger_arguments

    parser = sub.add_parser(
        "commitments",
        help="on-demand, batch, flex/priority and Provisioned Throughput, per month",
        description="From the ledger's traffic profile (tokens per minute: mean, p95, by hour "
        "of day), the monthly cost of each pricing option per model and the traffic at which "
        "Provisioned Throughput breaks even. The ledger is only read.",
    )
    add_ledger_arguments(parser)
    parser.add_argument(
        "--input-tpm-per-unit",
        type=count,
        default=None,
        help="prompt tokens per minute one model unit serves (AWS does not publish it: ask "
        "your AWS account team)",
    )
    parser.add_argument(
        "--output-tpm-per-unit",
        type=count,
        default=None,
        help="output tokens per minute one model unit serves",
    )
    parser.add_argument(
        "--units", type=count, default=None, help="model units to buy (default: sized for p95)"
    )
    parser.add_argument(
        "--pt-prices",
        default=None,
        help="a Provisioned Throughput price file (default: the bundled bedrock-pt.json)",
    )
    parser.set_defaults(run=_run)
