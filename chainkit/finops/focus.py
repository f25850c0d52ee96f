"""FOCUS 1.2 export: a ledger as a FinOps Open Cost and Usage Specification dataset.

One row per charge period (an hour, or a day) x provider x region x model x token class x
pricing tier x tag set x stage, with the columns FOCUS 1.2 requires of a Cost and Usage dataset
whose provider measures usage, prices by unit from a public price list, has several pricing
categories, regions and tags. chainkit's own facts (stage, avoided cost, calls, requests) are
``x_`` columns.

How each number is known:

- **Costs are the ledger's.** Every known cost is split across its token classes exactly: the
  export finds the catalogue price (model, region, tier) that reproduces the entry's cost to the
  last digit, and writes each class's tokens times that price. ``PricingQuantity x
  ListUnitPrice == ListCost`` holds exactly (in decimal) on every row, and BilledCost sums
  exactly to the ledger's total.
- **Region and tier are found from the cost.** An entry records its model id and cost, not the
  region or service tier it was priced for; the price that reproduces the cost tells the tier
  (batch, flex, priority are priced apart) and the region when regional prices differ. A
  ``region`` given to the export (the region the application calls from) settles the rest, as
  the pipeline's own pricing did; otherwise RegionId is the priced region, or empty when the
  price applies to many regions (``x_RegionSource`` says which).
- **Costs no catalogue reproduces** (another catalogue's prices, a custom price) are written per
  call: PricingUnit ``Requests``, one row per distinct cost, ListUnitPrice the cost of one call,
  ``x_CostSource`` ``ledger``. Still exact.
- **Unknown costs** (``None``: a failed call that may have been billed) are never written as $0.
  ``unknown="error"`` (the default) refuses to export them; ``"omit"`` leaves them out (BilledCost
  then sums to the ledger's known costs, and the summary counts what was left out); ``"bound"``
  writes them at their bound, the most they can have cost, flagged ``x_CostStatus=bound`` (the
  sum is then the ledger's ``cost_bound``).
- **Free stages** (canned and precomputed replies: no model) are rows of provider ``chainkit``
  at $0, PricingUnit ``Requests``, so their calls and avoided cost are in the file too.
- ``PricingCategory`` is ``Standard`` for every row (Bedrock's on-demand, batch, flex and
  priority prices are published rates); chainkit's own tier is ``x_PricingTier``. A commitment
  (provisioned throughput) is not visible in a token ledger, so ``Committed`` never appears.

The FinOps Foundation's validator (focus-validator 2.0.1, FOCUS 1.2 rules) accepts the files,
CSV and Parquet; a reader that multiplies the columns as binary floats may see the last digit
differ, so compare them as decimals.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import IO, Any, Literal

from chainkit.errors import ConfigError
from chainkit.ledger.core import Ledger
from chainkit.money import CONTEXT, exact_sum
from chainkit.outfiles import write_atomically
from chainkit.pricing import (
    ANY_REGION,
    DEFAULT_CATALOGUE,
    GLOBAL_REGION,
    Catalogue,
    ModelCard,
    Price,
    Tier,
    in_geography,
    profile_of,
)
from chainkit.records import Entry, Tags, Usage

__all__ = [
    "FOCUS_COLUMNS",
    "FocusSummary",
    "Period",
    "UnknownCosts",
    "check_region",
    "focus_rows",
    "write_focus",
]

Period = Literal["hour", "day"]
"""The length of a charge period."""

UnknownCosts = Literal["error", "omit", "bound"]
"""What to do with entries of unknown cost: refuse, leave out, or write at their bound."""

FOCUS_VERSION = "1.2"
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
_TIERS: tuple[Tier, ...] = ("on_demand", "batch", "flex", "priority")

# Token class -> SkuMeter, the name of what is metered.
_CLASSES: dict[str, str] = {
    "input": "Input Tokens",
    "output": "Output Tokens",
    "cache_read": "Cache Read Tokens",
    "cache_write": "Cache Write Tokens",
    "cache_write_1h": "Cache Write Tokens (1 hour)",
    "queries": "Queries",
    "requests": "Requests",
}

# Token class -> its unit, in FOCUS's UnitFormat (one plural noun; the class is in SkuMeter).
_UNITS = {klass: "Tokens" for klass in _CLASSES} | {"queries": "Queries", "requests": "Requests"}

# Regions AWS names (RegionName); an id not listed is its own name.
_REGION_NAMES = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "us-gov-east-1": "AWS GovCloud (US-East)",
    "us-gov-west-1": "AWS GovCloud (US-West)",
    "ca-central-1": "Canada (Central)",
    "ca-west-1": "Canada West (Calgary)",
    "sa-east-1": "South America (Sao Paulo)",
    "eu-central-1": "Europe (Frankfurt)",
    "eu-central-2": "Europe (Zurich)",
    "eu-west-1": "Europe (Ireland)",
    "eu-west-2": "Europe (London)",
    "eu-west-3": "Europe (Paris)",
    "eu-north-1": "Europe (Stockholm)",
    "eu-south-1": "Europe (Milan)",
    "eu-south-2": "Europe (Spain)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-south-2": "Asia Pacific (Hyderabad)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-northeast-3": "Asia Pacific (Osaka)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "ap-southeast-3": "Asia Pacific (Jakarta)",
    "ap-southeast-4": "Asia Pacific (Melbourne)",
    "ap-southeast-5": "Asia Pacific (Malaysia)",
    "ap-southeast-7": "Asia Pacific (Thailand)",
    "ap-east-2": "Asia Pacific (Taipei)",
    "me-central-1": "Middle East (UAE)",
    "il-central-1": "Israel (Tel Aviv)",
    "mx-central-1": "Mexico (Central)",
    "af-south-1": "Africa (Cape Town)",
    "ap-east-1": "Asia Pacific (Hong Kong)",
    "ap-southeast-6": "Asia Pacific (New Zealand)",
    "me-south-1": "Middle East (Bahrain)",
}
_REGION_SHAPE = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-\d")


def check_region(region: str) -> str:
    """``region`` if it is an AWS region chainkit knows (``eu-west-1``); else a ConfigError."""
    if not isinstance(region, str) or not _REGION_SHAPE.fullmatch(region):
        raise ConfigError(
            f"Region {region!r} is not an AWS region name: give one such as 'us-east-1' or "
            "'eu-west-1' (lower case; not a geography such as 'eu', nor 'global')."
        )
    if region not in _REGION_NAMES:
        raise ConfigError(
            f"Region {region!r} is not an AWS region chainkit knows; known regions: "
            f"{', '.join(sorted(_REGION_NAMES))}. Check the spelling."
        )
    return region


# Providers of genai-prices ids (``provider:model``) as they name themselves.
_PROVIDERS = {
    "openai": ("OpenAI", "OpenAI API"),
    "anthropic": ("Anthropic", "Claude API"),
    "google": ("Google", "Gemini API"),
    "google-vertex": ("Google Cloud", "Vertex AI"),
    "azure": ("Microsoft", "Azure OpenAI"),
    "mistral": ("Mistral AI", "Mistral API"),
    "aws": ("AWS", "Amazon Bedrock"),
    "bedrock": ("AWS", "Amazon Bedrock"),
}

FOCUS_COLUMNS = [
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountStatus",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "Tags",
    "x_Stage",
    "x_Phase",
    "x_Model",
    "x_TokenClass",
    "x_PricingTier",
    "x_RegionSource",
    "x_CostSource",
    "x_CostStatus",
    "x_Calls",
    "x_RequestCount",
    "x_Answered",
    "x_AvoidedCost",
    "x_AvoidedCostUnknown",
]
"""The columns written, in order: FOCUS 1.2's, then chainkit's own (``x_``)."""

_DECIMAL_COLUMNS = frozenset(
    {
        "BilledCost",
        "ConsumedQuantity",
        "ContractedCost",
        "ContractedUnitPrice",
        "EffectiveCost",
        "ListCost",
        "ListUnitPrice",
        "PricingCurrencyContractedUnitPrice",
        "PricingCurrencyEffectiveCost",
        "PricingCurrencyListUnitPrice",
        "PricingQuantity",
        "x_AvoidedCost",
    }
)
_INT_COLUMNS = frozenset({"x_Calls", "x_RequestCount", "x_Answered", "x_AvoidedCostUnknown"})
# Columns a row knows when it is made (the others are sums): kept per row as a tuple.
_FIXED_COLUMNS = tuple(
    c for c in FOCUS_COLUMNS if c not in _DECIMAL_COLUMNS | _INT_COLUMNS | {"BilledCost"}
)


_CONSUMED_UNIT = _FIXED_COLUMNS.index("ConsumedUnit")


def _pack(fixed: dict[str, Any]) -> tuple[Any, ...]:
    # Interned: many rows share a description, SKU or tag set, and 300,000 rows add up.
    return tuple(
        sys.intern(v) if isinstance(v, str) else v for v in (fixed[c] for c in _FIXED_COLUMNS)
    )


@dataclass(frozen=True, slots=True)
class _Pricing:
    """How one entry's cost is explained: the price that reproduces it, where and in what tier."""

    source: str  # the catalogue's name, or "ledger" (no catalogue price reproduces the cost)
    card: ModelCard | None
    price: Price | None
    region: str | None  # a region id, or None when unknown
    region_source: str  # "given", "price", "unknown", "conflict"
    tier: str | None
    threshold: int | None = None  # the long-context tier's prompt threshold, if one applied
    sku_region: str | None = None  # the region (or regions) of SkuId, when a price explains


@dataclass(slots=True)
class FocusRow:
    """One FOCUS row while it is summed: quantities, exact costs, facts for ``x_`` columns."""

    key: tuple[Any, ...]
    fixed: tuple[Any, ...]  # the values of _FIXED_COLUMNS: a tuple is a fifth of a dict's size
    unit_price: Decimal
    quantity: int = 0
    consumed: int = 0
    cost: Decimal = Decimal(0)
    calls: int = 0
    answered: int = 0
    avoided: Decimal = Decimal(0)
    avoided_unknown: int = 0
    requests: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        """The row as FOCUS column -> value (``Decimal``, ``int``, ``str`` or ``None``)."""
        row = dict(zip(_FIXED_COLUMNS, self.fixed, strict=True))
        cost = self.cost
        row.update(
            BilledCost=cost,
            EffectiveCost=cost,
            ListCost=cost,
            ContractedCost=cost,
            PricingCurrencyEffectiveCost=cost,
            ListUnitPrice=self.unit_price,
            ContractedUnitPrice=self.unit_price,
            PricingCurrencyListUnitPrice=self.unit_price,
            PricingCurrencyContractedUnitPrice=self.unit_price,
            PricingQuantity=Decimal(self.quantity),
            ConsumedQuantity=Decimal(self.consumed),
            x_Calls=self.calls,
            x_RequestCount=len(self.requests),
            x_Answered=self.answered,
            x_AvoidedCost=self.avoided,
            x_AvoidedCostUnknown=self.avoided_unknown,
        )
        return row


@dataclass(frozen=True, slots=True)
class FocusSummary:
    """What an export wrote: rows, entries, and the sums a reader can check the file against."""

    rows: int
    entries: int
    billed_cost: Decimal
    ledger_cost: Decimal | None
    unknown_entries: int
    unknown_bound: Decimal | None
    unknown_handling: UnknownCosts
    ledger_priced_entries: int

    def as_dict(self) -> dict[str, Any]:
        """The summary with money as exact decimal strings (JSON)."""
        return {
            "rows": self.rows,
            "entries": self.entries,
            "billed_cost": _money(self.billed_cost),
            "ledger_cost": _money(self.ledger_cost),
            "unknown_entries": self.unknown_entries,
            "unknown_bound": _money(self.unknown_bound),
            "unknown_handling": self.unknown_handling,
            "ledger_priced_entries": self.ledger_priced_entries,
        }


def _money(amount: Decimal | None) -> str | None:
    """An exact decimal string in plain notation (``0.00000049``, never ``4.9E-7``)."""
    return None if amount is None else format(amount, "f")


class _Resolver:
    """Finds, per entry, the catalogue price that reproduces its cost; remembers per model."""

    def __init__(self, catalogues: Sequence[Catalogue] | None, region: str | None) -> None:
        self._given = list(catalogues) if catalogues is not None else None
        self._loaded: list[Catalogue] | None = self._given
        self.region = region
        self._model = ""
        self._cards: dict[str, list[tuple[Catalogue, ModelCard]]] = {}
        self._first: dict[str, list[tuple[Catalogue, ModelCard, list[Price]]]] = {}
        self._same: dict[int, list[Price]] = {}

    def _catalogues(self) -> list[Catalogue]:
        if self._loaded is None:
            names = Catalogue.names()
            # The current Bedrock catalogue first, then older ones; genai-prices (slow to load)
            # only if the others know no model of an entry.
            others = (n for n in names if n not in (DEFAULT_CATALOGUE, "genai-prices"))
            ordered = [DEFAULT_CATALOGUE, *sorted(others, reverse=True)]
            self._loaded = [Catalogue.load(n) for n in ordered if n in names]
        return self._loaded

    def cards(self, model: str) -> list[tuple[Catalogue, ModelCard]]:
        found = self._cards.get(model)
        if found is None:
            found = [(c, c.card(model)) for c in self._catalogues() if model in c]
            if not found and self._given is None and ":" in model:
                try:
                    extra = Catalogue.load("genai-prices")
                except ConfigError:
                    extra = None
                if extra is not None and model in extra:
                    found = [(extra, extra.card(model))]
            self._cards[model] = found
        return found

    def resolve(self, e: Entry, cost: Decimal) -> _Pricing:
        model, usage = e.model, e.usage
        assert model is not None and usage is not None
        self._model = model
        for catalogue, card, first in self._candidates(model):
            # First what the pipeline itself would have priced (its region, each tier), then
            # every other price the card has.
            for price in first:
                match = _explains(price, usage, cost)
                if match is not None:
                    return self._pricing(catalogue, card, price, match, self._alike(card, price))
            matches = [(p, m) for p in card.prices if (m := _explains(p, usage, cost)) is not None]
            if matches:
                price, match = matches[0]
                return self._pricing(catalogue, card, price, match, [p for p, _ in matches])
        return self.unpriced()

    def _candidates(self, model: str) -> list[tuple[Catalogue, ModelCard, list[Price]]]:
        found = self._first.get(model)
        if found is None:
            found = []
            profile = profile_of(model)
            for catalogue, card in self.cards(model):
                first = []
                for tier in _TIERS:
                    try:
                        first.append(
                            card.price(self.region, tier, profile=profile or profile_of(card.id))
                        )
                    except ConfigError:
                        continue
                found.append((catalogue, card, first))
            self._first[model] = found
        return found

    def _alike(self, card: ModelCard, price: Price) -> list[Price]:
        """The card's prices that charge exactly what ``price`` charges, in its tier."""
        found = self._same.get(id(price))
        if found is None:
            found = [p for p in card.prices if p.tier == price.tier and p.same_rates(price)]
            self._same[id(price)] = found
        return found

    def unpriced(self) -> _Pricing:
        """An entry no catalogue price explains: in the given region, if any."""
        if self.region is None:
            return _Pricing("ledger", None, None, None, "unknown", None)
        return _Pricing("ledger", None, None, self.region, "given", None)

    def _pricing(
        self,
        catalogue: Catalogue,
        card: ModelCard,
        price: Price,
        applied: Price,
        alike: list[Price],
    ) -> _Pricing:
        threshold = next((t for t, p in price.tiers if p is applied), None)
        regions = sorted({p.region for p in alike})
        given = self.region
        # The price's own region when it is one region; else the region given, if a price that
        # reproduces the cost applies there. A given region no such price applies in contradicts
        # the cost: the price's region stays (or none), flagged "conflict", never the given one.
        only = regions[0] if len(regions) == 1 and _is_region(regions[0]) else None
        region: str | None
        if given is not None and any(_applies(r, given) for r in regions):
            region, source = given, "given"
        elif given is not None:
            region, source = only, "conflict"
        elif only is not None:
            region, source = only, "price"
        else:
            region, source = None, "unknown"
        if region is not None:
            sku_region = region
        elif (profile := profile_of(self._model)) is not None and profile in regions:
            sku_region = profile  # an eu. profile's price is the eu price, whatever else shares it
        else:
            sku_region = "+".join(regions)
        return _Pricing(
            catalogue.name, card, applied, region, source, price.tier, threshold, sku_region
        )


def _applies(price_region: str, region: str) -> bool:
    """Whether a price of ``price_region`` (region, geography, ``*``, global) holds there."""
    if price_region in (ANY_REGION, GLOBAL_REGION, region):
        return True
    return not _is_region(price_region) and in_geography(region, price_region)


def _is_region(region: str) -> bool:
    # Catalogue rows may be priced for a geography ("us", "eu"), everywhere ("*") or "global".
    return region not in (ANY_REGION, GLOBAL_REGION) and "-" in region


def _explains(price: Price, usage: Usage, cost: Decimal) -> Price | None:
    """The price (or long-context tier of it) whose cost of ``usage`` is exactly ``cost``."""
    try:
        if price.cost(usage) != cost:
            return None
    except ConfigError:  # a token class this price has no rate for
        return None
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return price.for_prompt(prompt)


def _split(price: Price, usage: Usage) -> list[tuple[str, int, Decimal]]:
    """Token class, quantity and unit price (USD per one) of each class ``usage`` used."""
    one_hour = usage.cache_write_1h_tokens
    parts: list[tuple[str, int, Decimal | None, Decimal]] = [
        ("input", usage.input_tokens, price.input, _MILLION),
        ("output", usage.output_tokens, price.output, _MILLION),
        ("cache_read", usage.cache_read_tokens, price.cache_read, _MILLION),
        ("cache_write", usage.cache_write_tokens - one_hour, price.cache_write, _MILLION),
        ("cache_write_1h", one_hour, price.cache_write_1h, _MILLION),
        ("queries", usage.queries, price.per_1k_queries, _THOUSAND),
    ]
    out: list[tuple[str, int, Decimal]] = []
    with localcontext(CONTEXT):
        for name, quantity, rate, per in parts:
            if quantity:
                assert rate is not None  # the price reproduced the cost, so it has the rate
                out.append((name, quantity, rate / per))
        if price.per_1k_requests:
            out.append(("requests", 1, price.per_1k_requests / _THOUSAND))
    return out


def _period_start(when: datetime, period: Period) -> datetime:
    utc = when.astimezone(UTC)
    if period == "day":
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


def _month(start: datetime) -> tuple[datetime, datetime]:
    first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following


# (period start, period) -> FOCUS stamps (start, end, billing period start and end): formatting
# dates would otherwise be most of what an entry costs to export.
_STAMPS: dict[tuple[datetime, str], tuple[str, ...]] = {}


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _provider(model: str | None, card: ModelCard | None) -> tuple[str, str, str]:
    """(ProviderName, ServiceName, PublisherName) of a model's charges."""
    if model is None:
        return "chainkit", "chainkit", "chainkit"
    head = model.split(":", 1)[0]
    # genai-prices ids are ``provider:model``; a Bedrock id's colon comes after its vendor's dot.
    prefix = head.lower() if ":" in model and "." not in head else "aws"
    provider, service = _PROVIDERS.get(prefix, (head, head))
    publisher = card.provider if card is not None else provider
    return provider, service, publisher


def focus_rows(
    entries: Iterable[Entry] | Ledger,
    *,
    period: Period = "hour",
    unknown: UnknownCosts = "error",
    region: str | None = None,
    catalogues: Sequence[Catalogue] | None = None,
    billing_account_id: str = "chainkit",
    billing_account_name: str = "chainkit ledger",
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[dict[str, Any]], FocusSummary]:
    """The FOCUS 1.2 rows of a ledger (or entries), and a summary of what they hold.

    Args:
        entries: a ledger (in memory, SQLite or PostgreSQL) or its entries.
        period: the charge period, ``hour`` or ``day`` (UTC).
        unknown: entries of unknown cost: ``error`` refuses, ``omit`` leaves them out, ``bound``
            writes them at their bound (the most they can have cost).
        region: the AWS region the application called from, where a price does not tell.
        catalogues: the catalogues to explain costs with (default: every bundled one, newest
            first, and genai-prices for ``provider:model`` ids).
        billing_account_id: BillingAccountId (the AWS account, say); chainkit does not know it.
        billing_account_name: BillingAccountName.
        since: only entries recorded at or after this time (timezone-aware).
        until: only entries recorded before this time. Charge periods stay whole UTC hours or
            days: a period cut by ``since`` or ``until`` holds only the entries inside them.
    """
    out, summary = _aggregate(
        entries,
        period=period,
        unknown=unknown,
        region=region,
        catalogues=catalogues,
        billing_account_id=billing_account_id,
        billing_account_name=billing_account_name,
        since=since,
        until=until,
    )
    return [r.as_dict() for r in out], summary


def _aggregate(
    entries: Iterable[Entry] | Ledger,
    *,
    period: Period = "hour",
    unknown: UnknownCosts = "error",
    region: str | None = None,
    catalogues: Sequence[Catalogue] | None = None,
    billing_account_id: str = "chainkit",
    billing_account_name: str = "chainkit ledger",
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[FocusRow], FocusSummary]:
    """:func:`focus_rows`'s rows while summed, in file order, and the summary."""
    if region is not None:
        check_region(region)
    for what, when in (("since", since), ("until", until)):
        if when is not None and when.utcoffset() is None:
            raise ConfigError(f"{what} {when!r} must be timezone-aware (UTC).")
    if period not in ("hour", "day"):
        raise ConfigError(f"period {period!r} is not 'hour' or 'day'.")
    if unknown not in ("error", "omit", "bound"):
        raise ConfigError(f"unknown={unknown!r} is not one of 'error', 'omit', 'bound'.")
    for what, value in (("billing_account_id", billing_account_id),
                        ("billing_account_name", billing_account_name)):  # fmt: skip
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise ConfigError(
                f"{what} {value!r} must be a non-empty string without surrounding spaces."
            )
    source = entries.iter_entries() if isinstance(entries, Ledger) else entries
    resolver = _Resolver(catalogues, region)
    rows: dict[tuple[Any, ...], FocusRow] = {}
    count = unknown_count = ledger_priced = 0
    known: list[Decimal] = []
    bounds: list[Decimal | None] = []
    with localcontext(CONTEXT):
        for e in source:
            if (since is not None and e.time < since) or (until is not None and e.time >= until):
                continue
            count += 1
            cost = e.cost
            status = "known"
            if cost is None:
                unknown_count += 1
                bounds.append(e.bound)
                if unknown == "error":
                    continue  # counted, refused after the loop with the numbers
                if unknown == "omit":
                    continue
                if e.bound is None:
                    raise ConfigError(
                        f"Entry {e.id!r} (stage {e.stage!r}, model {e.model!r}) has unknown cost "
                        "and no bound, so it cannot be written at its bound; export with "
                        "unknown='omit' (--unknown omit) to leave such entries out."
                    )
                cost, status = e.bound, "bound"
            else:
                known.append(cost)
            ledger_priced += _add(rows, e, cost, status, resolver, period,
                                  billing_account_id, billing_account_name)  # fmt: skip
    if unknown == "error" and unknown_count:
        bound = exact_sum(bounds)
        most = (
            "some have no bound, so the most they cost is unknown"
            if bound is None
            else f"at most ${bound:f} in all"
        )
        raise ConfigError(
            f"{unknown_count} ledger entries have unknown cost ({most}); FOCUS needs a cost on "
            "every row. Export with --unknown omit (unknown='omit') to leave them out, or "
            "--unknown bound (unknown='bound') to write them at their bound."
        )
    out = sorted(rows.values(), key=_order)
    billed = exact_sum(r.cost for r in out)
    assert billed is not None
    summary = FocusSummary(
        rows=len(out),
        entries=count,
        billed_cost=billed,
        ledger_cost=None if unknown_count else exact_sum(known),
        unknown_entries=unknown_count,
        unknown_bound=exact_sum(bounds) if unknown_count else Decimal(0),
        unknown_handling=unknown,
        ledger_priced_entries=ledger_priced,
    )
    return out, summary


def _plain(amount: Decimal) -> Decimal:
    """``amount`` without trailing zeros, never in exponent form for whole numbers."""
    with localcontext(CONTEXT):
        reduced = amount.normalize()
        exponent = reduced.as_tuple().exponent
        return reduced if isinstance(exponent, int) and exponent <= 0 else reduced.quantize(1)


def _order(row: FocusRow) -> tuple[str, ...]:
    return tuple("" if v is None else str(v) for v in row.key)


def _add(
    rows: dict[tuple[Any, ...], FocusRow],
    e: Entry,
    cost: Decimal,
    status: str,
    resolver: _Resolver,
    period: Period,
    account_id: str,
    account_name: str,
) -> int:
    """Add one entry's charges to their rows; return 1 if the ledger, not a catalogue, priced it."""
    start = _period_start(e.time, period)
    stamps = _STAMPS.get((start, period))
    if stamps is None:
        end = start + (timedelta(days=1) if period == "day" else timedelta(hours=1))
        stamps = tuple(map(_stamp, (start, end, *_month(start))))
        if len(_STAMPS) > 100_000:
            _STAMPS.clear()
        _STAMPS[(start, period)] = stamps
    period_start, period_end, bill_start, bill_end = stamps
    tags = Tags.of(e.tags).json
    usage = e.usage
    if e.model is None or usage is None:
        pricing = _Pricing("ledger", None, None, None, "unknown", None)
        parts: list[tuple[str, int, Decimal]] = [("requests", 1, cost)]
        consumed_unit = "Requests"
    else:
        pricing = resolver.resolve(e, cost) if status == "known" else resolver.unpriced()
        if pricing.price is not None:
            parts = _split(pricing.price, usage)
            if not parts:  # no tokens at all, priced at $0: one call, at $0
                parts = [("requests", 1, Decimal(0))]
            consumed_unit = ""
            if sum(q * u for _, q, u in parts) != cost:  # pragma: no cover - a pricing rule
                # the split does not know (it reproduced the total): write the call as it is.
                pricing = resolver.unpriced()
                parts = [("requests", 1, cost)]
                consumed_unit = "Requests"
        else:
            parts = [("requests", 1, cost)]
            consumed_unit = "Requests"
    provider, service, publisher = _provider(e.model, pricing.card)
    sku_model = pricing.card.id if pricing.card is not None else (e.model or f"stage:{e.stage}")
    price_region = pricing.sku_region or pricing.region or "any"
    for i, (klass, quantity, unit_price) in enumerate(parts):
        per_call = pricing.price is None
        sku = f"{provider}|{sku_model}|{price_region}|{klass}"
        sku_price = f"{sku}|{pricing.tier or 'ledger'}"
        if pricing.threshold is not None:
            sku_price += f"|above-{pricing.threshold}-prompt-tokens"
        if per_call:
            # One row per distinct cost of a call: the unit price is the call's cost, exactly,
            # written without trailing zeros (0.10000 and 0.1 are one price).
            unit_price = _plain(unit_price)
            sku_price += f"|{unit_price:f}"
        key = (
            period_start, provider, pricing.region, e.model, e.stage, e.phase, klass,
            pricing.tier, tags, sku_price, status, pricing.source,
        )  # fmt: skip
        row = rows.get(key)
        if row is None:
            meter = _CLASSES[klass]
            if e.model is not None:
                what = e.model
            else:
                what = "free stage" if cost == 0 else "a call with no model id"
            row = rows[key] = FocusRow(
                key=key,
                unit_price=unit_price,
                fixed=_pack({
                    "BillingAccountId": account_id,
                    "BillingAccountName": account_name,
                    "BillingCurrency": "USD",
                    "BillingPeriodStart": bill_start,
                    "BillingPeriodEnd": bill_end,
                    "ChargeCategory": "Usage",
                    "ChargeClass": None,
                    "ChargeDescription": f"{meter} of {what} (stage {e.stage})",
                    "ChargeFrequency": "Usage-Based",
                    "ChargePeriodStart": period_start,
                    "ChargePeriodEnd": period_end,
                    # Null: no commitment applies. Present because the validator's rules for
                    # ConsumedQuantity read it even when commitments are not supported.
                    "CommitmentDiscountStatus": None,
                    "ConsumedUnit": consumed_unit or _UNITS[klass],
                    "InvoiceId": None,
                    "InvoiceIssuerName": provider,
                    "PricingCategory": "Standard",
                    "PricingCurrency": "USD",
                    "PricingUnit": _UNITS[klass] if not per_call else "Requests",
                    "ProviderName": provider,
                    "PublisherName": publisher,
                    "RegionId": pricing.region,
                    "RegionName": None
                    if pricing.region is None
                    else _REGION_NAMES.get(pricing.region, pricing.region),
                    "ServiceCategory": "AI and Machine Learning",
                    "ServiceName": service,
                    "ServiceSubcategory": "Generative AI",
                    "SkuId": sku,
                    "SkuMeter": meter if not per_call else "Requests",
                    "SkuPriceDetails": _details(klass, pricing.tier, pricing.threshold),
                    "SkuPriceId": sku_price,
                    "Tags": tags,
                    "x_Stage": e.stage,
                    "x_Phase": e.phase,
                    "x_Model": e.model,
                    "x_TokenClass": klass if not per_call else "all",
                    "x_PricingTier": pricing.tier,
                    "x_RegionSource": pricing.region_source,
                    "x_CostSource": pricing.source,
                    "x_CostStatus": status,
                }),
            )  # fmt: skip
        row.quantity += quantity
        row.cost += quantity * unit_price
        if per_call and usage is not None and e.model is not None:
            row.consumed += usage.total_tokens
            if row.fixed[_CONSUMED_UNIT] != "Tokens":
                fixed = list(row.fixed)
                fixed[_CONSUMED_UNIT] = "Tokens"
                row.fixed = tuple(fixed)
        else:
            row.consumed += quantity
        row.requests.add(e.request_id)
        if i == 0:
            # An entry's own facts go on its first row only, so they sum right over the file.
            row.calls += 1
            row.answered += e.outcome == "answered"
            if e.avoided_cost is None:
                row.avoided_unknown += 1
            else:
                row.avoided += e.avoided_cost
    return int(pricing.price is None and e.model is not None and usage is not None)


@functools.cache
def _details(klass: str, tier: str | None, threshold: int | None) -> str:
    """SkuPriceDetails: what sets the price, as a JSON object (custom keys are ``x_``)."""
    details: dict[str, Any] = {"x_TokenClass": klass}
    if tier is not None:
        details["x_ServiceTier"] = tier
    if threshold is not None:
        details["x_AbovePromptTokens"] = threshold
    return json.dumps(details, sort_keys=True)


def _text(value: Any) -> Any:
    """A CSV cell: decimals with a point and no exponent (FOCUS readers infer types)."""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text if "." in text else text + ".0"
    return value


def write_focus(
    entries: Iterable[Entry] | Ledger,
    out: str | Path,
    *,
    period: Period = "hour",
    unknown: UnknownCosts = "error",
    region: str | None = None,
    catalogues: Sequence[Catalogue] | None = None,
    billing_account_id: str = "chainkit",
    billing_account_name: str = "chainkit ledger",
    since: datetime | None = None,
    until: datetime | None = None,
) -> FocusSummary:
    """Write a ledger as a FOCUS 1.2 dataset: CSV, or Parquet if ``out`` ends in ``.parquet``.

    See :func:`focus_rows` for the arguments. Parquet needs pyarrow (``pip install
    'chainkit[finops]'``); its decimal columns are exact ``decimal128``. The file is written
    atomically (a file that exists is replaced only by a complete one); a dataset with no rows
    is refused, as the validator fails a file with none (see README, FOCUS export).
    """
    path = Path(out)
    parquet = path.suffix.lower() == ".parquet"
    if parquet:
        _pyarrow()  # before any work: a missing extra is the first thing to learn
    else:
        for flag, value in (("--billing-account-id", billing_account_id),
                            ("--billing-account-name", billing_account_name)):  # fmt: skip
            _check_not_numeric(flag, value)
    rows, summary = _aggregate(
        entries,
        period=period,
        unknown=unknown,
        region=region,
        catalogues=catalogues,
        billing_account_id=billing_account_id,
        billing_account_name=billing_account_name,
        since=since,
        until=until,
    )
    if not rows:
        left = (
            f"; its {summary.unknown_entries} entries of unknown cost were left out "
            "(--unknown omit): write them at their bound with --unknown bound"
            if summary.unknown_entries
            else ""
        )
        raise ConfigError(
            f"Nothing to write to {str(out)!r}: the ledger has {summary.entries} entries"
            f"{' in the --since/--until range' if since or until else ''}{left}. A FOCUS file "
            "with no rows fails the FinOps validator, so none was written."
        )
    if parquet:
        with write_atomically(path, binary=True) as f:
            _write_parquet([r.as_dict() for r in rows], f)
    else:
        with write_atomically(path) as f:
            writer = csv.DictWriter(f, fieldnames=FOCUS_COLUMNS, lineterminator="\n")
            writer.writeheader()
            # One row's dict at a time: a list of them all would double the peak memory.
            for row in rows:
                writer.writerow({k: _text(v) for k, v in row.as_dict().items()})
    return summary


def _check_not_numeric(flag: str, value: str) -> None:
    # CSV readers (and the validator) infer types: an identifier that reads as a number (an AWS
    # account id, 1.5, 1e3, nan, true) becomes one and fails the string rules.
    text = value.strip().lower() if isinstance(value, str) else ""
    try:
        float(text)
        numeric = True
    except ValueError:
        numeric = text in ("true", "false")
    if numeric:
        raise ConfigError(
            f"{flag} {value!r} reads as a number (or a boolean) in CSV, and FOCUS readers would "
            f"take it for one: prefix it, e.g. 'aws-{value}', or write Parquet (--out *.parquet)."
        )


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigError(
            "Writing Parquet needs pyarrow, which is not installed: pip install "
            "'chainkit[finops]' (or write CSV: a file name not ending in .parquet)."
        ) from exc
    return pyarrow


def _write_parquet(rows: list[dict[str, Any]], path: Path | IO[bytes]) -> None:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    arrays = []
    fields = []
    for name in FOCUS_COLUMNS:
        values = [row[name] for row in rows]
        if name in _DECIMAL_COLUMNS:
            kind = _decimal_type(pa, name, values)
        elif name in _INT_COLUMNS:
            kind = pa.int64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
        arrays.append(pa.array(values, type=kind))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    pq.write_table(table, path)


def _decimal_type(pa: Any, name: str, values: Sequence[Decimal | None]) -> Any:
    """The narrowest exact decimal128 type for a column; an error if none holds it exactly."""
    scale = whole = 1
    for v in values:
        if v is None:
            continue
        exponent = v.as_tuple().exponent
        assert isinstance(exponent, int)
        scale = max(scale, -exponent)
        whole = max(whole, v.adjusted() + 1)
    if scale + whole > 38:
        raise ConfigError(
            f"Column {name} needs {whole} whole and {scale} decimal digits, more than Parquet's "
            "decimal128 holds (38); write CSV instead (a file name not ending in .parquet)."
        )
    return pa.decimal128(38, min(scale, 38 - whole))
