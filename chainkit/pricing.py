"""Price catalogues: what each model costs, per token class, region and service tier.

Prices ship as JSON files in ``chainkit/data``; each price names its source URL and effective
date. Money is ``Decimal``; an unknown model is an error, never a silent $0.

A cross-region inference profile is priced as AWS bills it: ``global.`` at the card's ``global``
price, a geographic profile (``us.``, ``eu.``, ``apac.``, ...) at the price of the source region,
or of its geography when no region is given; never at another geography's price.

>>> from chainkit import Catalogue, Usage
>>> Catalogue.load("seed-2024").cost("anthropic.claude-v2", Usage(11_000, 4_000))
Decimal('0.184')
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chainkit.errors import ConfigError
from chainkit.money import CONTEXT
from chainkit.records import Usage

__all__ = ["Catalogue", "Confidence", "ModelCard", "Price", "Tier"]

Tier = Literal["on_demand", "batch", "flex", "priority"]
"""Bedrock service tiers: standard on-demand, batch inference (about half price), flex, priority."""

Confidence = Literal["high", "low"]
"""How far a price can be trusted: ``low`` marks a transcription that could not be checked."""

DEFAULT_CATALOGUE = "bedrock-2026-11-29"
ANY_REGION = "*"
# A context window no source gives (some genai-prices models): large enough to check nothing.
UNKNOWN_CONTEXT_WINDOW = 2**31 - 1
GLOBAL_REGION = "global"
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
# Region prefixes of each cross-region inference profile's geography (the profile id's prefix).
_GEOGRAPHIES: dict[str, tuple[str, ...]] = {
    "us": ("us-east-", "us-west-"),
    "us-gov": ("us-gov-",),
    "ca": ("ca-",),
    "eu": ("eu-",),
    "apac": ("ap-",),
    "jp": ("ap-northeast-1", "ap-northeast-3"),
    "au": ("ap-southeast-2", "ap-southeast-4"),
    "in": ("ap-south-1", "ap-south-2"),
}
# Longest first, so that ``us-gov.`` is not read as ``us.``.
_PROFILE_PREFIXES = tuple(
    f"{name}." for name in sorted((*_GEOGRAPHIES, GLOBAL_REGION), key=len, reverse=True)
)


def profile_of(model_id: str) -> str | None:
    """The cross-region inference profile a model id names (``us``, ``eu``, ``global``...), if any.

    >>> profile_of("eu.amazon.nova-micro-v1:0"), profile_of("amazon.nova-micro-v1:0")
    ('eu', None)
    """
    for prefix in _PROFILE_PREFIXES:
        if model_id.startswith(prefix):
            return prefix[:-1]
    return None


def base_model_id(model_id: str) -> str:
    """The model id without a cross-region inference profile prefix (``us.``, ``eu.``, ...).

    >>> base_model_id("us.anthropic.claude-3-haiku-20240307-v1:0")
    'anthropic.claude-3-haiku-20240307-v1:0'
    """
    profile = profile_of(model_id)
    return model_id if profile is None else model_id.removeprefix(profile + ".")


def in_geography(region: str, geography: str) -> bool:
    """Whether AWS ``region`` belongs to a cross-region profile's ``geography`` (``us``, ``eu``...).

    >>> in_geography("eu-west-3", "eu"), in_geography("us-gov-west-1", "us")
    (True, False)
    """
    return region.startswith(_GEOGRAPHIES.get(geography, ()))


def geographies_of(region: str) -> list[str]:
    """The cross-region geographies ``region`` belongs to, the narrowest first.

    >>> geographies_of("ap-northeast-1"), geographies_of("us-west-2")
    (['jp', 'apac'], ['us'])
    """
    found = [name for name in _GEOGRAPHIES if in_geography(region, name)]
    return sorted(found, key=lambda name: -max(map(len, _GEOGRAPHIES[name])))


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for each token class, in one region and tier, with its source.

    ``cache_write`` prices five-minute cache writes, ``cache_write_1h`` one-hour ones.
    ``per_1k_queries`` prices rerank queries and ``per_1k_requests`` a fee on every call, both in
    USD per 1,000. ``tiers`` are long-context prices: ``(threshold, price)`` pairs, ascending; a
    call whose prompt (input, cache read and cache write tokens) exceeds a threshold is priced
    entirely at that tier's price, as Anthropic, Google and OpenAI bill long prompts.
    ``hours`` are time-of-day prices (DeepSeek's off-peak discount): ``(start, price)`` pairs
    in UTC, ascending from 00:00; a call is priced at the price of the interval it was made in.
    """

    input: Decimal
    output: Decimal
    region: str
    tier: Tier
    source_url: str
    effective_date: date
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    per_1k_queries: Decimal | None = None
    per_1k_requests: Decimal | None = None
    tiers: tuple[tuple[int, Price], ...] = ()
    confidence: Confidence = "high"
    note: str = ""
    hours: tuple[tuple[time, Price], ...] = ()

    def at(self, moment: datetime | None = None) -> Price:
        """The price in force at ``moment`` (default: now), for prices that vary by time of day."""
        if not self.hours:
            return self
        moment = moment or datetime.now(UTC)
        if moment.tzinfo is None:  # a naive time is UTC, as the ledger's are
            moment = moment.replace(tzinfo=UTC)
        clock = moment.astimezone(UTC).time().replace(tzinfo=None)
        chosen = self.hours[0][1]
        for start, price in self.hours:
            if start <= clock:
                chosen = price
        return chosen

    def for_prompt(self, prompt_tokens: int) -> Price:
        """The price that applies to a call whose prompt has ``prompt_tokens`` tokens."""
        for threshold, price in reversed(self.tiers):
            if prompt_tokens > threshold:
                return price
        return self

    def cost(self, usage: Usage, *, model_id: str = "?", at: datetime | None = None) -> Decimal:
        """Return the exact cost of ``usage`` at this price, for a call made at ``at`` (now)."""
        if self.hours:
            return self.at(at).cost(usage, model_id=model_id)
        # chainkit's own context: the caller's decimal precision must not change a price.
        with localcontext(CONTEXT):
            if self.tiers:
                prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
                tier_price = self.for_prompt(prompt)
                if tier_price is not self:
                    return tier_price.cost(usage, model_id=model_id)
            one_hour, queries = usage.cache_write_1h_tokens, usage.queries
            total = usage.input_tokens * self.input + usage.output_tokens * self.output
            for tokens, price, what in (
                (usage.cache_read_tokens, self.cache_read, "cache-read"),
                (usage.cache_write_tokens - one_hour, self.cache_write, "cache-write"),
                (one_hour, self.cache_write_1h, "one-hour cache-write"),
            ):
                if tokens:
                    if price is None:
                        raise ConfigError(
                            f"Model {model_id!r} has no {what} price in {self.region}/{self.tier} "
                            f"but the call used {tokens} {what} tokens; add the price to the "
                            "catalogue file rather than pricing those tokens at $0."
                        )
                    total += tokens * price
            total /= _MILLION
            if queries:
                if self.per_1k_queries is None:
                    raise ConfigError(
                        f"Model {model_id!r} has no per-query price in {self.region}/{self.tier} "
                        f"but the call made {queries} queries; add per_1k_queries to the catalogue "
                        "file rather than pricing them at $0."
                    )
                total += queries * self.per_1k_queries / _THOUSAND
            if self.per_1k_requests:
                total += self.per_1k_requests / _THOUSAND
            return total

    def same_rates(self, other: Price) -> bool:
        """Whether ``other`` charges exactly what this price charges (sources aside)."""
        return _rates(self) == _rates(other)


def _rates(price: Price) -> tuple[object, ...]:
    return (
        price.input,
        price.output,
        price.cache_read,
        price.cache_write,
        price.cache_write_1h,
        price.per_1k_queries,
        price.per_1k_requests,
        tuple((threshold, _rates(p)) for threshold, p in price.tiers),
        tuple((start, _rates(p)) for start, p in price.hours),
    )


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

    def price(
        self, region: str | None = None, tier: Tier = "on_demand", *, profile: str | None = None
    ) -> Price:
        """Return the price for ``region`` and ``tier``, called through ``profile`` if one is named.

        Without a profile (an in-region call): ``region``'s price; with no region, us-east-1's,
        else the first region's. ``profile="global"``: the ``global`` price. A geographic profile
        (``us``, ``eu``, ``apac``, ``jp``, ``au``...): the price of ``region``, which must lie in
        that geography; with no region, the geography's price, if all its priced regions agree. A
        region asked for by name is never silently priced as another, nor a geography as another.
        """
        if region is not None and (not region or region != region.strip()):
            # "" would be priced as us-east-1 in-region and refused through a profile: a region
            # left empty (an unset variable) is a mistake to report, never a price to guess.
            raise ConfigError(
                f"Region {region!r} is not an AWS region name; pass the region the call is made "
                "from (such as 'eu-west-1'), or None for the catalogue's default."
            )
        candidates = [p for p in self.prices if p.tier == tier]
        if not candidates:
            tiers = sorted({p.tier for p in self.prices})
            raise ConfigError(
                f"Model {self.id!r} has no {tier!r} price; it is priced for tiers {tiers}. "
                "Choose one of those tiers or add the price to the catalogue."
            )
        regions = sorted({p.region for p in candidates})
        if profile == GLOBAL_REGION:
            return self._global(candidates, tier, regions)
        if profile is not None and region is None:
            return self._geography(candidates, tier, profile, regions)
        if profile is not None and region is not None and not in_geography(region, profile):
            raise ConfigError(
                f"The {profile}. cross-region profile of {self.id!r} cannot be called from region "
                f"{region!r}: it routes requests within the {profile!r} geography only. Use a "
                f"region in that geography, or the profile of {region!r}'s own geography."
            )
        # A region's own price first, then its geography's (a row for all of ``us`` or ``eu``).
        wanted = [region or "us-east-1"]
        wanted += [profile] if profile is not None else geographies_of(wanted[0])
        for want in (*wanted, ANY_REGION):
            for p in candidates:
                if p.region == want:
                    return p
        if region is None:
            # No region asked for and no us-east-1 price: the model's first priced region.
            return candidates[0]
        raise ConfigError(
            f"Model {self.id!r} has no {tier!r} price in region {region!r}; priced regions: "
            f"{regions}. Use one of those regions or add the price to the catalogue."
        )

    def _global(self, candidates: list[Price], tier: Tier, regions: list[str]) -> Price:
        for want in (GLOBAL_REGION, ANY_REGION):
            for p in candidates:
                if p.region == want:
                    return p
        raise ConfigError(
            f"Model {self.id!r} has no {tier!r} price for the global cross-region profile; "
            f"priced regions: {regions}. A regional price is not the global one (AWS bills them "
            "differently for newer models): call a regional or geographic profile, or add the "
            "global price to the catalogue."
        )

    def _geography(
        self, candidates: list[Price], tier: Tier, geography: str, regions: list[str]
    ) -> Price:
        inside = [p for p in candidates if p.region == geography]
        inside = inside or [p for p in candidates if in_geography(p.region, geography)]
        if inside and all(p.same_rates(inside[0]) for p in inside):
            return inside[0]
        for p in candidates:
            if p.region == ANY_REGION:
                return p
        if not inside:
            raise ConfigError(
                f"Model {self.id!r} has no {tier!r} price in the {geography!r} geography its "
                f"{geography}. profile routes to; priced regions: {regions}. Another geography's "
                "price would be wrong: add this geography's price to the catalogue."
            )
        differing = sorted(p.region for p in inside)
        raise ConfigError(
            f"The {geography}. profile of {self.id!r} is priced at its source region's rate, and "
            f"the regions of that geography differ ({differing}); pass region= to say which "
            "region the call is made from."
        )


# The most any price row may say, in its file's unit: far above any real price (USD 1,000,000 per
# 1,000 or 1,000,000 tokens, per 1,000 queries or requests), low enough that no cost overflows.
_MAX_PRICE = Decimal(1_000_000)


def _rate(default: Any = ...) -> Any:
    return Field(default=default, ge=0, le=_MAX_PRICE, allow_inf_nan=False)


class _TierRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    above_prompt_tokens: int = Field(gt=0)
    input: Decimal = _rate()
    output: Decimal = _rate()
    cache_read: Decimal | None = _rate(None)
    cache_write: Decimal | None = _rate(None)
    cache_write_1h: Decimal | None = _rate(None)


class _PriceRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str
    tier: Tier
    input: Decimal = _rate()
    output: Decimal = _rate()
    cache_read: Decimal | None = _rate(None)
    cache_write: Decimal | None = _rate(None)
    cache_write_1h: Decimal | None = _rate(None)
    per_1k_queries: Decimal | None = _rate(None)
    per_1k_requests: Decimal | None = _rate(None)
    tiers: list[_TierRow] = []
    source_url: str = Field(pattern=r"^https?://")
    effective_date: date
    confidence: Confidence = "high"
    note: str = ""

    def to_price(self, scale: Decimal) -> Price:
        """The row as a :class:`Price`, token prices scaled to USD per million tokens."""

        def per_million(value: Decimal | None) -> Decimal | None:
            # In chainkit's context: a catalogue loaded while the caller's precision is low must
            # not keep rounded prices.
            return None if value is None else CONTEXT.multiply(value, scale)

        common: dict[str, Any] = {
            "region": self.region,
            "tier": self.tier,
            "source_url": self.source_url,
            "effective_date": self.effective_date,
            "confidence": self.confidence,
            "per_1k_queries": self.per_1k_queries,
            "per_1k_requests": self.per_1k_requests,
        }
        tiers = tuple(
            (
                t.above_prompt_tokens,
                Price(
                    input=CONTEXT.multiply(t.input, scale),
                    output=CONTEXT.multiply(t.output, scale),
                    cache_read=per_million(t.cache_read),
                    cache_write=per_million(t.cache_write),
                    cache_write_1h=per_million(t.cache_write_1h),
                    **common,
                ),
            )
            for t in sorted(self.tiers, key=lambda t: t.above_prompt_tokens)
        )
        return Price(
            input=CONTEXT.multiply(self.input, scale),
            output=CONTEXT.multiply(self.output, scale),
            cache_read=per_million(self.cache_read),
            cache_write=per_million(self.cache_write),
            cache_write_1h=per_million(self.cache_write_1h),
            tiers=tiers,
            note=self.note,
            **common,
        )


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
    """A set of model cards at one point in time; prices any model it knows, refuses others.

    Args:
        name: the catalogue's name, with its date.
        cards: the models.
        description: where the prices come from.
        resolver: maps an id that is neither a card id nor an alias to a card id (or ``None``),
            for catalogues whose source matches model names by rule (genai-prices).
        profiles: whether ids may carry a Bedrock cross-region profile prefix (``us.``,
            ``global.``...); a catalogue of other providers' ids (genai-prices) has none, and
            ``eu.openai:gpt-4o-mini`` is not ``openai:gpt-4o-mini``.
    """

    def __init__(
        self,
        name: str,
        cards: list[ModelCard],
        description: str = "",
        *,
        resolver: Callable[[str], str | None] | None = None,
        profiles: bool = True,
    ) -> None:
        self.name = name
        self.description = description
        self._resolver = resolver
        self._profiles = profiles
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
        """Names of the catalogues chainkit can load: its bundled files, and genai-prices."""
        files = resources.files("chainkit").joinpath("data").iterdir()
        bundled = [f.name.removesuffix(".json") for f in files if f.name.endswith(".json")]
        if importlib.util.find_spec("genai_prices") is not None:
            bundled.append("genai-prices")
        return sorted(bundled)

    @classmethod
    def load(cls, name: str = DEFAULT_CATALOGUE) -> Catalogue:
        """Load a catalogue by name (see :meth:`names`), or a JSON file by path.

        ``genai-prices`` is every model the installed genai-prices package prices, as of today;
        ``genai-prices@2026-06-01`` as of that day.
        """
        if name.endswith(".json") or "/" in name:
            return cls.from_file(name)
        if name.startswith("genai-prices"):
            from chainkit.pricing_genai import genai_prices_catalogue, parse_name

            return genai_prices_catalogue(parse_name(name))
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
                prices=tuple(p.to_price(scale) for p in row.prices),
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
        if card is None and self._profiles:
            card = self._index.get(base_model_id(model_id))
        if card is None and self._resolver is not None:
            resolved = self._resolver(model_id)
            card = None if resolved is None else self._cards.get(resolved)
            if card is not None:
                self._index[model_id] = card
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
        """The price of ``model_id`` in ``region`` and ``tier`` (see :meth:`ModelCard.price`).

        A cross-region profile prefix on ``model_id`` (``global.``, ``eu.``...) selects the
        profile's price.
        """
        return self._resolve(model_id, region, tier)[1]

    def _resolve(self, model_id: str, region: str | None, tier: Tier) -> tuple[str, Price]:
        key = (model_id, region, tier)
        found = self._prices.get(key)
        if found is None:
            # Resolved once per model, region and tier: every priced call comes through here.
            card = self.card(model_id)
            profile = (profile_of(model_id) or profile_of(card.id)) if self._profiles else None
            found = self._prices[key] = (card.id, card.price(region, tier, profile=profile))
        return found

    def cost(
        self,
        model_id: str,
        usage: Usage,
        *,
        region: str | None = None,
        tier: Tier = "on_demand",
        at: datetime | None = None,
    ) -> Decimal:
        """Return the exact USD cost of ``usage`` on ``model_id`` in ``region`` and ``tier``.

        ``at`` is when the call was made (default: now); it matters only for prices that vary by
        time of day.
        """
        card_id, price = self._resolve(model_id, region, tier)
        return price.cost(usage, model_id=card_id, at=at)


def catalogue_for(model: object, catalogue: Catalogue | None = None) -> Catalogue:
    """``catalogue``; else, or if it is the default one, the catalogue ``model`` brings, if any.

    A ``LangChainModel`` on OpenAI or Anthropic's own API brings the genai-prices catalogue, which
    the default Bedrock one cannot replace; a catalogue passed explicitly is always kept unless it
    is the default.
    """
    default = Catalogue.load()
    if catalogue is not None and catalogue is not default:
        return catalogue
    own = getattr(model, "catalogue", None)
    return own if isinstance(own, Catalogue) else default


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
