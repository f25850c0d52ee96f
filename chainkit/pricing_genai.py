"""Every provider and model that pydantic's genai-prices knows, as a chainkit catalogue.

Ids are ``provider:model`` (``openai:gpt-4o-mini``, ``anthropic:claude-sonnet-4-5``); any name
genai-prices itself matches (``openai:gpt-4o-mini-2024-07-18``) resolves to its card.

Prices follow genai-prices' own rules: cached tokens a model has no price for are billed at the
next coarser price (a one-hour write at a write's, a write or a read at input), as its
``calc_price`` does. Prices come from the data bundled with the installed ``genai-prices``
package, never from the network: its ``UpdatePrices`` auto-update (which fetches a price
file) is not used, and the bundled providers are read directly, so not even a snapshot another
library installed applies.

A catalogue is the prices in force on one day (default: today, UTC), chosen from genai-prices'
price history; its long-context tiers, batch, flex and priority variants become chainkit tiers.
Time-of-day prices (DeepSeek's off-peak discount) become a price's ``hours``: a call is priced
at the price of the hour it was made in (``Catalogue.cost(..., at=)``, default now).
:func:`current_genai_catalogue` follows the date: it prices each call at the prices of the day
it is priced on, so a long-running process never keeps yesterday's prices.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib import metadata
from typing import TYPE_CHECKING, Any

from chainkit.errors import ConfigError
from chainkit.pricing import (
    ANY_REGION,
    UNKNOWN_CONTEXT_WINDOW,
    Catalogue,
    ModelCard,
    Price,
    Tier,
    profile_of,
)

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider

__all__ = [
    "GENAI_PRICES",
    "current_genai_catalogue",
    "genai_model_id",
    "genai_prices_catalogue",
    "genai_provider_for",
]

GENAI_PRICES = "genai-prices"
# genai-prices price keys chainkit prices, and the Price field each becomes.
_FIELDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_5m_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "rerank_searches_kcount": "per_1k_queries",
    "requests_kcount": "per_1k_requests",
}
# Output reasoning tokens are output tokens; genai-prices prices them at the output rate unless
# told their number, which chainkit's usage never does.
_SAME_AS_OUTPUT = {"output_reasoning_mtok"}
_VARIANT_TIERS: dict[tuple[str, str], Tier] = {
    ("processing", "batch"): "batch",
    ("service_tier", "flex"): "flex",
    ("service_tier", "priority"): "priority",
}
# LangChain's ls_provider names where they differ from genai-prices' provider ids.
_LANGCHAIN_PROVIDERS = {
    "google_vertexai": "google",
    "google_genai": "google",
    "google_anthropic_vertex": "google",
    "azure_openai": "azure",
    "azure": "azure",
    "mistralai": "mistral",
    "xai": "x-ai",
    "fireworks": "fireworks",
    "together": "together",
}
_BEDROCK = frozenset({"amazon_bedrock", "bedrock", "bedrock_converse", "aws"})


def _version() -> str:
    try:
        return metadata.version("genai-prices")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "Catalogue 'genai-prices' needs the genai-prices package: "
            "pip install 'chainkit[prices]'."
        ) from exc


def _providers() -> list[Provider]:
    from genai_prices.data import providers

    return providers


def parse_name(name: str) -> date | None:
    """The day a ``genai-prices[-<version>][@<YYYY-MM-DD>]`` name asks for (``None``: today)."""
    rest = name.removeprefix(GENAI_PRICES)
    rest, at, day = rest.partition("@")
    version = _version()
    if rest and rest != f"-{version}":
        raise ConfigError(
            f"Catalogue {name!r} asks for genai-prices {rest.lstrip('-')!r} but {version} is "
            f"installed; load 'genai-prices' or 'genai-prices-{version}'."
        )
    if not day:
        if at:  # "genai-prices@": a date was meant and left out; today is a guess
            raise ConfigError(
                f"Catalogue {name!r} names no date after '@'; write genai-prices@YYYY-MM-DD, or "
                "'genai-prices' for today's prices."
            )
        return None
    try:
        return date.fromisoformat(day)
    except ValueError as exc:
        raise ConfigError(
            f"Catalogue {name!r}: {day!r} is not a date; write genai-prices@YYYY-MM-DD."
        ) from exc


def _today() -> date:
    return datetime.now(UTC).date()


def genai_prices_catalogue(on: date | None = None) -> Catalogue:
    """The genai-prices catalogue of the prices in force on day ``on`` (default: today, UTC)."""
    return _catalogue(on or _today())


class _Current(Catalogue):
    """genai-prices' catalogue of the day each look-up is made on (UTC): it follows the date."""

    def __init__(self) -> None:
        self._day: date | None = None
        self._switch = threading.Lock()
        self._sync()

    def _sync(self) -> None:
        today = _today()
        if today != self._day:
            with self._switch:
                if today != self._day:
                    day = _catalogue(today)
                    self.name, self.description = day.name, day.description
                    self._resolver, self._cards = day._resolver, day._cards
                    self._profiles = day._profiles
                    self._index, self._prices = day._index, day._prices
                    self._day = today

    def __iter__(self) -> Iterator[ModelCard]:
        self._sync()
        return super().__iter__()

    def __len__(self) -> int:
        self._sync()
        return super().__len__()

    def _find(self, model_id: str) -> ModelCard | None:
        self._sync()
        return super()._find(model_id)

    def _resolve(self, model_id: str, region: str | None, tier: Tier) -> tuple[str, Price]:
        self._sync()
        return super()._resolve(model_id, region, tier)


@functools.cache
def current_genai_catalogue() -> Catalogue:
    """The genai-prices catalogue that follows the date: each call at its own day's prices (UTC).

    Chat models priced by genai-prices use it, so a process that runs for days never keeps the
    prices of the day it started.
    """
    return _Current()


def genai_model_id(provider: str, model: str) -> str:
    """``model`` as the genai-prices catalogue names it: ``provider:model``.

    A name that already starts with a genai-prices provider is kept; one whose colons name no
    provider (OpenAI's fine-tunes, ``ft:gpt-4o-mini-2024-07-18:acme::abc123``) gets one.
    """
    prefix, sep, _ = model.partition(":")
    if sep and any(p.id == prefix.lower() for p in _providers()):
        return model
    return f"{provider}:{model}"


@functools.cache
def _catalogue(on: date) -> Catalogue:
    version = _version()
    source = f"https://pypi.org/project/genai-prices/{version}/"
    moment = datetime.combine(on, time(12), tzinfo=UTC)
    cards: list[ModelCard] = []
    for provider in _providers():
        for model in provider.models:
            card = _card(provider, model, moment, source)
            if card is not None:
                cards.append(card)
    changes = [d for d in _start_dates() if d <= on]
    newest = f"; its newest price change by then took effect on {max(changes)}" if changes else ""
    description = (
        f"Every provider and model of genai-prices {version} (pydantic's price library, read from "
        f"the installed package, no network), at the prices in force on {on.isoformat()}{newest}. "
        f"A price genai-prices gives no start date for is dated {on.isoformat()}. USD per "
        "1,000,000 tokens; queries and requests per 1,000."
    )

    return Catalogue(
        f"{GENAI_PRICES}-{version}@{on.isoformat()}",
        cards,
        description,
        resolver=_resolve,
        profiles=False,
    )


def _start_dates() -> list[date]:
    """Every day a price in genai-prices' data starts on: its price history."""
    from genai_prices.types import ModelPrice, StartDateConstraint

    return [
        c.constraint.start_date
        for provider in _providers()
        for model in provider.models
        if not isinstance(model.prices, ModelPrice)
        for c in model.prices
        if isinstance(c.constraint, StartDateConstraint)
    ]


def _resolve(model_id: str) -> str | None:
    """The card id genai-prices' own matching gives ``model_id`` (``provider:ref`` or ``ref``).

    A Bedrock cross-region profile prefix (``eu.openai:...``, ``jp.claude-...``) names no
    genai-prices model: genai-prices would match it loosely to the plain model, at the plain price.
    """
    if profile_of(model_id) is not None:
        return None
    provider_id, sep, ref = model_id.partition(":")
    try:
        if sep:
            provider, model = _snapshot().find_provider_model(ref, None, provider_id, None)
        else:
            provider, model = _snapshot().find_provider_model(model_id, None, None, None)
    except LookupError:
        return None
    # A provider that resells another's models (Azure: OpenAI's) is priced, as genai-prices
    # does, at the card of the provider the model belongs to.
    owner = next((p for p in _providers() if any(m is model for m in p.models)), provider)
    return f"{owner.id}:{model.id}"


@functools.cache
def _snapshot() -> Any:
    from genai_prices.data_snapshot import DataSnapshot

    # Our own snapshot of the bundled data: one set by UpdatePrices elsewhere is never used.
    return DataSnapshot(providers=_providers(), from_auto_update=False)


def _active(model: ModelInfo, moment: datetime) -> tuple[ModelPrice, date | None, bool]:
    """The standard price genai-prices applies at ``moment``, and the day it started, if known.

    The flag says whether the price depends on the time of day, which a catalogue cannot: it
    keeps the price at noon.
    """
    from genai_prices.types import ModelPrice, StartDateConstraint, TimeOfDateConstraint

    chosen = model.get_prices(moment)
    if isinstance(model.prices, ModelPrice):
        return chosen, None, False
    by_hour = any(isinstance(c.constraint, TimeOfDateConstraint) for c in model.prices)
    for conditional in model.prices:
        if conditional.prices is chosen and isinstance(conditional.constraint, StartDateConstraint):
            return chosen, conditional.constraint.start_date, by_hour
    return chosen, None, by_hour


def _prices_at(
    model: ModelInfo, moment: datetime, source: str, skipped: set[str]
) -> tuple[list[Price], bool]:
    """The model's prices by tier at ``moment``, and whether they depend on the time of day."""
    standard, started, by_hour = _active(model, moment)
    on = moment.date()
    base = _price(standard, "on_demand", started or on, source, skipped)
    if base is None:
        return [], by_hour
    prices = [base]
    for variant in model.price_variants or ():
        tier = next((_VARIANT_TIERS.get(item) for item in variant.when.items()), None)
        if tier is None or len(variant.when) != 1:
            continue
        if variant.constraint is not None and not variant.constraint.active(moment):
            continue
        merged = {**_values(standard), **_values(variant.prices)}
        price = _price_from(merged, tier, started or on, source, skipped)
        if price is not None and all(p.tier != tier for p in prices):
            prices.append(price)
    return prices, by_hour


def _hourly(model: ModelInfo, moment: datetime, source: str, prices: list[Price]) -> list[Price]:
    """``prices`` with their time-of-day prices: one per interval between constraint bounds."""
    from genai_prices.types import TimeOfDateConstraint

    bounds = {time(0)}
    for conditional in model.prices if isinstance(model.prices, list) else ():
        if isinstance(conditional.constraint, TimeOfDateConstraint):
            for edge in (conditional.constraint.start_time, conditional.constraint.end_time):
                if edge.tzinfo is not None:
                    edge = datetime.combine(moment.date(), edge).astimezone(UTC).timetz()
                bounds.add(edge.replace(tzinfo=None))
    by_start = {
        start: _prices_at(model, datetime.combine(moment.date(), start, tzinfo=UTC), source, set())[
            0
        ]
        for start in sorted(bounds)
    }
    out = []
    for price in prices:
        hours = tuple(
            (start, p)
            for start, at_start in by_start.items()
            for p in at_start
            if p.tier == price.tier
        )
        complete = len(hours) == len(by_start)  # the tier is priced at every hour
        out.append(dataclasses.replace(price, hours=hours) if complete else price)
    return out


def _card(provider: Provider, model: ModelInfo, moment: datetime, source: str) -> ModelCard | None:
    skipped: set[str] = set()
    prices, by_hour = _prices_at(model, moment, source, skipped)
    if not prices:
        return None
    if by_hour:
        prices = _hourly(model, moment, source, prices)
    notes = [model.description or ""]
    if skipped:
        notes.append(
            "genai-prices also prices " + ", ".join(sorted(skipped)) + ", which chainkit's usage "
            "does not count; those parts of a call are not priced here."
        )
    if by_hour:
        notes.append(
            "genai-prices prices this model by time of day: the price shown is the one at 12:00 "
            "UTC; each call is priced at the price of the UTC time it was made."
        )
    if model.context_window is None:
        notes.append("genai-prices gives no context window, so none is checked.")
    if model.price_comments:
        notes.append("genai-prices: " + model.price_comments.strip())
    return ModelCard(
        id=f"{provider.id}:{model.id}",
        name=model.name or model.id,
        provider=provider.id,
        context_window=model.context_window or UNKNOWN_CONTEXT_WINDOW,
        prices=tuple(prices),
        notes=" ".join(n for n in notes if n),
    )


def _values(price: ModelPrice) -> dict[str, Any]:
    return {k: v for k, v in price.__dict__.items() if v is not None and not k.startswith("_")}


def _price(
    standard: ModelPrice, tier: Tier, since: date, source: str, skipped: set[str]
) -> Price | None:
    return _price_from(_values(standard), tier, since, source, skipped)


def _price_from(
    values: dict[str, Any], tier: Tier, since: date, source: str, skipped: set[str]
) -> Price | None:
    """A chainkit price from genai-prices price keys; tiered fields become long-context tiers."""
    from genai_prices.types import TieredPrices

    fields: dict[str, Decimal] = {}
    thresholds: set[int] = set()
    tiered: dict[str, TieredPrices] = {}
    for key, value in values.items():
        name = _FIELDS.get(key)
        if name is None:
            if key not in _SAME_AS_OUTPUT:
                skipped.add(key.removesuffix("_mtok").replace("_", " "))
            continue
        if isinstance(value, TieredPrices):
            tiered[name] = value
            thresholds.update(t.start for t in value.tiers)
            fields[name] = value.base
        else:
            fields[name] = value
    if not fields:
        return None

    def at(threshold: int | None) -> dict[str, Decimal]:
        out = dict(fields)
        for name, value in tiered.items():
            for t in value.tiers:
                if threshold is not None and t.start <= threshold:
                    out[name] = t.price
        # genai-prices counts cached tokens as input tokens of a finer kind: with no price of
        # their own they pay the coarser one (one-hour writes a write's, a write or read input's).
        if "input" in out:
            out.setdefault("cache_read", out["input"])
            out.setdefault("cache_write", out["input"])
            out.setdefault("cache_write_1h", out["cache_write"])
        return out

    def build(rates: dict[str, Decimal], tiers: tuple[tuple[int, Price], ...] = ()) -> Price:
        return Price(
            input=rates.get("input", Decimal(0)),
            output=rates.get("output", Decimal(0)),
            cache_read=rates.get("cache_read"),
            cache_write=rates.get("cache_write"),
            cache_write_1h=rates.get("cache_write_1h"),
            per_1k_queries=rates.get("per_1k_queries"),
            per_1k_requests=rates.get("per_1k_requests"),
            region=ANY_REGION,
            tier=tier,
            source_url=source,
            effective_date=since,
            tiers=tiers,
        )

    return build(at(None), tuple((t, build(at(t))) for t in sorted(thresholds)))


def genai_provider_for(ls_provider: str | None) -> str | None:
    """The genai-prices provider of a LangChain ``ls_provider`` (``None``: Bedrock or unknown)."""
    if not ls_provider or ls_provider.lower() in _BEDROCK:
        return None
    name = _LANGCHAIN_PROVIDERS.get(ls_provider.lower(), ls_provider.lower())
    from genai_prices.data_snapshot import find_provider_by_id

    found = find_provider_by_id(_providers(), name)
    return None if found is None else found.id
