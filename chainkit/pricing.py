"""Price catalogues: what each model costs, per token class, region and service tier.

Prices ship as JSON files in ``chainkit/data``; each price names its source URL and effective
date. Money is ``Decimal``; an unknown model is an error, never a silent $0.

>>> from chainkit import Catalogue, Usage
>>> Catalogue.load("seed-2024").cost("anthropic.claude-v2", Usage(11_000, 4_000))
Decimal('0.184')
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chainkit.errors import ConfigError
from chainkit.money import CONTEXT
from chainkit.records import Usage

__all__ = ["Catalogue", "ModelCard", "Price", "Tier"]

Tier = Literal["on_demand", "batch", "flex", "priority"]
"""Bedrock service tiers: standard on-demand, batch inference (about half price), flex, priority."""

DEFAULT_CATALOGUE = "bedrock-2026-11"
ANY_REGION = "*"
_MILLION = Decimal(1_000_000)
# Cross-region inference profiles prefix the model id with a geography.
_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.")


def base_model_id(model_id: str) -> str:
    """The model id without a cross-region inference profile prefix (``us.``, ``eu.``, ...).

    >>> base_model_id("us.anthropic.claude-3-haiku-20240307-v1:0")
    'anthropic.claude-3-haiku-20240307-v1:0'
    """
    for prefix in _PROFILE_PREFIXES:
        if model_id.startswith(prefix):
            return model_id.removeprefix(prefix)
    return model_id


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for each token class, in one region and tier, with its source."""

    input: Decimal
    output: Decimal
    region: str
    tier: Tier
    source_url: str
    effective_date: date
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    def cost(self, usage: Usage, *, model_id: str = "?") -> Decimal:
        """Return the exact cost of ``usage`` at this price."""
        # chainkit's own context: the caller's decimal precision must not change a price.
        with localcontext(CONTEXT):
            total = usage.input_tokens * self.input + usage.output_tokens * self.output
            for tokens, price, what in (
                (usage.cache_read_tokens, self.cache_read, "cache-read"),
                (usage.cache_write_tokens, self.cache_write, "cache-write"),
            ):
                if tokens:
                    if price is None:
                        raise ConfigError(
                            f"Model {model_id!r} has no {what} price in {self.region}/"
                            f"{self.tier} but the call used {tokens} {what} tokens; add the "
                            "price to the catalogue file rather than pricing those tokens at $0."
                        )
                    total += tokens * price
            return total / _MILLION


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One model: its ids, limits, languages, tasks and prices by region and tier."""

    id: str
    name: str
    provider: str
    context_window: int
    prices: tuple[Price, ...]
    aliases: tuple[str, ...] = ()
    max_output_tokens: int | None = None
    languages: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    notes: str = ""

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions this card has prices for, in file order."""
        return tuple(dict.fromkeys(p.region for p in self.prices))

    def price(self, region: str | None = None, tier: Tier = "on_demand") -> Price:
        """Return the price for ``region`` and ``tier``.

        Without a region: us-east-1's price, else the first region's. A region asked for by name
        is never silently priced as another.
        """
        candidates = [p for p in self.prices if p.tier == tier]
        if not candidates:
            tiers = sorted({p.tier for p in self.prices})
            raise ConfigError(
                f"Model {self.id!r} has no {tier!r} price; it is priced for tiers {tiers}. "
                "Choose one of those tiers or add the price to the catalogue."
            )
        for wanted in (region or "us-east-1", ANY_REGION):
            for p in candidates:
                if p.region == wanted:
                    return p
        if region is None:
            # No region asked for and no us-east-1 price: the model's first priced region.
            return candidates[0]
        regions = sorted({p.region for p in candidates})
        raise ConfigError(
            f"Model {self.id!r} has no {tier!r} price in region {region!r}; priced regions: "
            f"{regions}. Use one of those regions or add the price to the catalogue."
        )


class _PriceRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str
    tier: Tier
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_read: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)
    source_url: str = Field(pattern=r"^https?://")
    effective_date: date


class _CardRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    name: str
    provider: str
    aliases: list[str] = []
    context_window: int = Field(gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    languages: list[str] = []
    tasks: list[str] = []
    notes: str = ""
    prices: list[_PriceRow] = Field(min_length=1)


class _CatalogueFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalogue: str
    description: str = ""
    currency: Literal["USD"] = "USD"
    unit_tokens: Literal[1000, 1000000]
    models: list[_CardRow]


def _describe(exc: ValidationError, raw: Any, path: Path) -> str:
    """Name the file, the model and the field of the first validation error."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    model = "?"
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        try:
            model = str(raw["models"][loc[1]].get("id", f"#{loc[1]}"))
        except (KeyError, IndexError, TypeError, AttributeError):
            model = f"#{loc[1]}"
        loc = loc[2:]
    where = ".".join(str(part) for part in loc) or "(file)"
    return (
        f"Malformed price file {path}: model {model!r}, field {where!r}: {err['msg']} "
        f"(got {err.get('input')!r}). Fix that field in the file."
    )


class Catalogue:
    """A set of model cards at one point in time; prices any model it knows, refuses others."""

    def __init__(self, name: str, cards: list[ModelCard], description: str = "") -> None:
        self.name = name
        self.description = description
        self._cards = {card.id: card for card in cards}
        self._index: dict[str, ModelCard] = {}
        self._prices: dict[tuple[str, str | None, Tier], tuple[str, Price]] = {}
        for card in cards:
            for key in (card.id, *card.aliases):
                other = self._index.get(key)
                if other is not None and other is not card:
                    raise ConfigError(
                        f"Catalogue {name!r}: id or alias {key!r} is used by both {other.id!r} "
                        f"and {card.id!r}; every id and alias must name one model."
                    )
                self._index[key] = card

    @classmethod
    def names(cls) -> list[str]:
        """Names of the catalogues bundled with chainkit."""
        files = resources.files("chainkit").joinpath("data").iterdir()
        return sorted(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))

    @classmethod
    def load(cls, name: str = DEFAULT_CATALOGUE) -> Catalogue:
        """Load a bundled catalogue by name (see :meth:`names`), or a JSON file by path."""
        if name.endswith(".json") or "/" in name:
            return cls.from_file(name)
        return _load_bundled(name)

    @classmethod
    def from_file(cls, path: str | Path) -> Catalogue:
        """Load and validate a catalogue JSON file."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"Price file {path} does not exist.") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Malformed price file {path}: not valid JSON ({exc}).") from exc
        try:
            parsed = _CatalogueFile.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, raw, path)) from exc
        with localcontext(CONTEXT):
            scale = _MILLION / parsed.unit_tokens

        def per_million(amount: Decimal) -> Decimal:
            # Under chainkit's context: a catalogue loaded while the caller's precision is low
            # must not keep rounded prices.
            with localcontext(CONTEXT):
                return amount * scale

        cards = [
            ModelCard(
                id=row.id,
                name=row.name,
                provider=row.provider,
                aliases=tuple(row.aliases),
                context_window=row.context_window,
                max_output_tokens=row.max_output_tokens,
                languages=tuple(row.languages),
                tasks=tuple(row.tasks),
                notes=row.notes,
                prices=tuple(
                    Price(
                        input=per_million(p.input),
                        output=per_million(p.output),
                        cache_read=None if p.cache_read is None else per_million(p.cache_read),
                        cache_write=None if p.cache_write is None else per_million(p.cache_write),
                        region=p.region,
                        tier=p.tier,
                        source_url=p.source_url,
                        effective_date=p.effective_date,
                    )
                    for p in row.prices
                ),
            )
            for row in parsed.models
        ]
        return cls(parsed.catalogue, cards, parsed.description)

    def __iter__(self) -> Iterator[ModelCard]:
        return iter(self._cards.values())

    def __len__(self) -> int:
        return len(self._cards)

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self._find(model_id) is not None

    def _find(self, model_id: str) -> ModelCard | None:
        card = self._index.get(model_id)
        if card is None:
            return self._index.get(base_model_id(model_id))
        return card

    def card(self, model_id: str) -> ModelCard:
        """Return the card for a model id, alias or cross-region inference profile id."""
        card = self._find(model_id)
        if card is None:
            close = difflib.get_close_matches(model_id, list(self._index), n=3, cutoff=0.4)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise ConfigError(
                f"Unknown model {model_id!r} in catalogue {self.name!r}.{hint} "
                "Run `chainkit prices --catalogue " + self.name + "` to list the known models."
            )
        return card

    def price(self, model_id: str, region: str | None = None, tier: Tier = "on_demand") -> Price:
        """The price of ``model_id`` in ``region`` and ``tier`` (see :meth:`ModelCard.price`)."""
        return self._resolve(model_id, region, tier)[1]

    def _resolve(self, model_id: str, region: str | None, tier: Tier) -> tuple[str, Price]:
        key = (model_id, region, tier)
        found = self._prices.get(key)
        if found is None:
            # Resolved once per model, region and tier: every priced call comes through here.
            card = self.card(model_id)
            found = self._prices[key] = (card.id, card.price(region, tier))
        return found

    def cost(
        self, model_id: str, usage: Usage, *, region: str | None = None, tier: Tier = "on_demand"
    ) -> Decimal:
        """Return the exact USD cost of ``usage`` on ``model_id`` in ``region`` and ``tier``."""
        card_id, price = self._resolve(model_id, region, tier)
        return price.cost(usage, model_id=card_id)


@functools.cache
def _load_bundled(name: str) -> Catalogue:
    resource = resources.files("chainkit").joinpath("data", f"{name}.json")
    if not resource.is_file():
        available = Catalogue.names()
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"No bundled catalogue {name!r}; bundled: {available}.{hint}")
    with resources.as_file(resource) as path:
        return Catalogue.from_file(path)
