"""LangChain at the edge: a pipeline as a Runnable, and a callback that fills a ledger.

>>> from chainkit import Canned, IntentScan, KeywordClassifier, Ledger, Pipeline
>>> bot = Pipeline([IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
...                 Canned(replies={"greeting": "Hello!"})])
>>> runnable = as_runnable(bot, Ledger())
>>> runnable.batch(["hi", "hi there"])
['Hello!', 'Hello!']
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableLambda

from chainkit.errors import BudgetExceeded, ChainkitError, ConfigError
from chainkit.ledger import Hold, Ledger
from chainkit.pipeline import Pipeline
from chainkit.pricing import Catalogue, Tier, in_geography, profile_of
from chainkit.providers.langchain import (
    catalogue_for_provider,
    model_id_of,
    service_tier_of,
    unpriced,
    usage_from_langchain,
)
from chainkit.records import Entry, Request, Tags, Usage, check_text, new_entry_id
from chainkit.stages.calling import TEMPLATE_TOKENS_PER_CALL, TEMPLATE_TOKENS_PER_MESSAGE

__all__ = ["LedgerCallbackHandler", "as_runnable"]


_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "maxTokens")


def _now() -> datetime:
    return datetime.now(UTC)


def _wire(message: Any) -> Any:
    """What of a LangChain message goes to the provider, generously: all of it."""
    dump = getattr(message, "model_dump", None)
    return dump() if callable(dump) else getattr(message, "content", message)


def _bound(
    catalogue: Catalogue,
    model: str | None,
    messages: list[list[Any]],
    params: Mapping[str, Any],
    *,
    region: str | None,
    tier: Tier,
) -> Decimal | None:
    """The most a chat call can cost: its messages' bytes and template, and ``max_tokens``.

    ``None`` (no budget can keep it) when the model is not priced or has no ``max_tokens``.
    """
    limit = next(
        (v for k in _MAX_TOKENS_KEYS if isinstance(v := params.get(k), int) and v > 0), None
    )
    if model is None or limit is None:
        return None
    # Everything that may be sent: each message whole (content, tool calls and their results,
    # names), and the call's parameters (tool definitions, response schemas): counting a
    # field that is not sent only raises the bound.
    text = json.dumps(
        [[_wire(m) for m in batch] for batch in messages], ensure_ascii=False, default=str
    ) + json.dumps(dict(params), ensure_ascii=False, default=str)
    size = len(text.encode("utf-8", "surrogatepass")) + sum(
        TEMPLATE_TOKENS_PER_MESSAGE * len(batch) + TEMPLATE_TOKENS_PER_CALL for batch in messages
    )
    # Prompt caching (cache_control) may bill every input token as a cache write.
    one_hour = '"1h"' in text
    usage = (
        Usage(0, limit, 0, size, size if one_hour else 0)
        if "cache_control" in text
        else Usage(size, limit)
    )
    try:
        return catalogue.cost(model, usage, region=region, tier=tier)
    except ChainkitError:
        try:
            return catalogue.cost(model, Usage(size, limit), region=region, tier=tier)
        except ChainkitError:
            return None


_TIERS: frozenset[str] = frozenset(("on_demand", "batch", "flex", "priority"))


@dataclass(frozen=True, slots=True)
class _Started:
    """What the handler knows of a chat call from its start."""

    clock: float
    hint: str | None
    provider: str | None
    hold: Hold | None
    region: str | None
    asked: str | None  # the service tier the call asked for, if it named one
    when: datetime


def _region(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    params: Mapping[str, Any],
) -> str | None:
    """The AWS region a chat model says it calls (langchain-aws's ``region_name``), if any."""
    places: list[Any] = [params]
    if isinstance(serialized, Mapping):
        places.append(serialized.get("kwargs"))
    if isinstance(metadata, Mapping):
        places.append(metadata.get("ls_invocation_params"))
    for place in places:
        region = place.get("region_name") if isinstance(place, Mapping) else None
        if isinstance(region, str) and region:
            return region
    return None


def _safe(note: str) -> str:
    """A note any store takes: no NUL, no lone surrogate."""
    return note.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", " ")


def _model_name(name: str | None) -> str | None:
    """A model name fit for an entry; a name no store can take is dropped, not the entry."""
    try:
        return None if name is None else check_text(name, "model")
    except ChainkitError:
        return None


def _request(value: Any) -> Request:
    if isinstance(value, Request):
        return value
    if isinstance(value, str):
        return Request(value)
    if isinstance(value, Mapping) and isinstance(value.get("text"), str):
        fields = {k: v for k, v in value.items() if k in ("text", "id", "tags", "document")}
        return Request(**fields)
    raise ConfigError(
        f"A chainkit pipeline takes a str, a Request or a mapping with 'text'; got "
        f"{type(value).__name__}: {value!r:.80}."
    )


def as_runnable(pipeline: Pipeline, ledger: Ledger) -> Runnable[Any, str]:
    """A LangChain ``Runnable`` that runs ``pipeline`` and returns the answer's text.

    It takes a string, a ``Request`` or a mapping with ``text`` (and optionally ``id``, ``tags``,
    ``document``); every stage still writes to ``ledger``.
    """

    def run(value: Any) -> str:
        return pipeline.run(_request(value), ledger).text

    return RunnableLambda(run, name=pipeline.name)


class LedgerCallbackHandler(BaseCallbackHandler):
    """Record every chat-model call of a LangChain chain into a chainkit ledger, priced.

    Calls made within one chain invocation share a request id (the id of the outermost run), so
    reports count requests, not calls. One call is one entry, however many choices (``n``) it
    returned: LangChain integrations put the call's usage on every choice. A model the catalogue
    does not know, usage that is missing or malformed, or a part of a call chainkit cannot price
    (audio tokens, a service tier without a price) is recorded with cost ``None`` (unknown) and a
    note, rather than breaking the user's chain.

    The region is the chat model's own (``region_name``, as LangChain serialises it), else
    ``region``; the service tier is the one the reply names (OpenAI's ``service_tier``), else the
    one the call asked for, else ``tier``. A cross-region profile the chat model's region cannot
    call (``us.`` from eu-west-1) is refused before the call, as a ``ConfigError``.

    Args:
        ledger: where the entries go.
        catalogue: prices; by default chosen per call from the provider LangChain traces:
            the current Bedrock catalogue for Bedrock, genai-prices (ids ``provider:model``)
            for OpenAI, Anthropic, Vertex, Azure and the other providers it knows.
        stage: the stage name the entries carry.
        tags: tags put on every entry (tenant, feature, ...).
        model_ids: map from the names LangChain reports to catalogue ids (Bedrock ids, or
            genai-prices ids for the providers it knows: ``gpt-4o-mini``, ``openai:gpt-4o-mini``).
        region: the AWS region of chat models that do not name theirs.
        tier: the service tier of calls whose reply and request do not name theirs.
    """

    # Errors propagate: a BudgetExceeded from on_chat_model_start must stop the call before the
    # provider is asked, and a ledger that cannot record must not be ignored.
    raise_error = True

    def __init__(
        self,
        ledger: Ledger,
        catalogue: Catalogue | None = None,
        *,
        stage: str = "langchain",
        tags: Mapping[str, str] | None = None,
        model_ids: Mapping[str, str] | None = None,
        region: str | None = None,
        tier: Tier = "on_demand",
    ) -> None:
        self.ledger = ledger
        self.catalogue = catalogue or Catalogue.load()
        self._by_provider = catalogue is None
        # Checked now: inside a callback a bad stage or tag would lose every entry, since the
        # entry could not be made for a call that was already paid.
        self.stage = check_text(stage, "LedgerCallbackHandler stage")
        self.tags = Tags(tags or {})
        self.model_ids = {
            check_text(k, "model_ids key"): check_text(v, "model_ids value")
            for k, v in (model_ids or {}).items()
        }
        self.region = region
        self.tier: Tier = tier
        self._lock = threading.Lock()
        self._roots: dict[UUID, UUID] = {}
        self._started: dict[UUID, _Started] = {}

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            if parent_run_id is None:
                self._roots[run_id] = run_id
            else:
                self._roots[run_id] = self._roots.get(parent_run_id, parent_run_id)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Note the chain's outermost run, to group its model calls under one request."""
        self._enter(run_id, parent_run_id)

    def on_chain_end(
        self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Forget the runs of a finished outermost chain."""
        if parent_run_id is None:
            with self._lock:
                self._roots = {k: r for k, r in self._roots.items() if r != run_id}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start the clock; hold the call's bound under the ledger's budgets, or refuse it.

        The model name and provider come from what LangChain traces (``ls_*``); ``max_tokens``
        from the invocation parameters. A refusal raises ``BudgetExceeded`` here, before the
        provider is called, and is recorded.
        """
        hint = (metadata or {}).get("ls_model_name")
        provider = (metadata or {}).get("ls_provider")
        hint = hint if isinstance(hint, str) else None
        provider = provider if isinstance(provider, str) else None
        params = kwargs.get("invocation_params")
        params = params if isinstance(params, Mapping) else {}
        region = _region(serialized, metadata, params) or self.region
        asked = service_tier_of(params)
        self._enter(run_id, parent_run_id)
        with self._lock:
            root = str(self._roots.get(run_id, run_id))
        catalogue, model = self._pricing(hint, provider)
        self._check_profile(catalogue, model, region, root)
        hold = None
        if self.ledger.budgets:
            tier = cast(Tier, asked) if asked in _TIERS else self.tier
            amount = _bound(catalogue, model, messages, params, region=region, tier=tier)
            entry_id = new_entry_id()
            try:
                hold = self.ledger.reserve(
                    amount, self.tags, stage=self.stage, model=model, request_id=root,
                    entry_id=entry_id, lease_s=3600.0,
                )  # fmt: skip
            except BudgetExceeded as exc:
                self.ledger.record(
                    Entry(request_id=root, stage=self.stage, outcome="refused", cost=Decimal(0),
                          model=model, estimated=True, tags=self.tags, note=str(exc)[:1000])
                )  # fmt: skip
                raise
        with self._lock:
            self._started[run_id] = _Started(
                time.perf_counter(), hint, provider, hold, region, asked, _now()
            )

    def _check_profile(
        self, catalogue: Catalogue, model: str | None, region: str | None, root: str
    ) -> None:
        """Refuse a geographic profile called from a region outside its geography."""
        profile = None if model is None else profile_of(model)
        if profile is None or region is None or profile == "global":
            return
        if in_geography(region, profile):
            return
        error = ConfigError(
            f"The {profile}. cross-region profile {model!r} cannot be called from region "
            f"{region!r}: it routes requests within the {profile!r} geography only, and "
            "chainkit could not price the call. Use a region in that geography, or the profile "
            f"of {region!r}'s own geography."
        )
        self.ledger.record(
            Entry(request_id=root, stage=self.stage, outcome="refused", cost=Decimal(0),
                  model=_model_name(model), estimated=True, tags=self.tags, note=str(error)[:1000])
        )  # fmt: skip
        raise error

    def _pricing(self, name: str | None, provider: str | None) -> tuple[Catalogue, str | None]:
        """The catalogue for this call, and the model id as it names it.

        A name ``model_ids`` maps is priced as mapped: by genai-prices for a provider it knows
        (``gpt-4o-mini`` and ``openai:gpt-4o-mini`` alike), unless only the handler's catalogue
        knows the mapped id.
        """
        mapped = self.model_ids.get(name or "")
        model = _model_name(mapped or name)
        if not self._by_provider or model is None:
            return self.catalogue, model
        catalogue, priced = catalogue_for_provider(provider, model)
        if mapped is not None and priced not in catalogue and model in self.catalogue:
            return self.catalogue, model
        return catalogue, _model_name(priced)

    def _finish(self, run_id: UUID) -> tuple[str, float, _Started]:
        with self._lock:
            started = self._started.pop(run_id, None)
            root = self._roots.get(run_id, run_id)
            if root == run_id:  # a model called on its own, outside any chain
                self._roots.pop(run_id, None)
        if started is None:
            started = _Started(time.perf_counter(), None, None, None, self.region, None, _now())
        return str(root), time.perf_counter() - started.clock, started

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the call's one entry, with its reported usage and its price.

        A call with several choices (``n``) is one entry: its integrations put the call's usage
        on every choice, so it is counted once. Nothing here raises into the user's chain for a
        reply it cannot read: the entry records an unknown cost (``None``) and says why.
        """
        request_id, latency, started = self._finish(run_id)
        hold = started.hold
        llm_output = response.llm_output if isinstance(response.llm_output, Mapping) else {}
        messages = [
            generation.message
            for generations in response.generations
            for generation in generations
            if isinstance(generation, ChatGeneration)
        ]
        if not messages:
            self.ledger.release(hold)  # a reply with no generation: nothing to settle it
            return
        first = messages[0]
        metadata = getattr(first, "response_metadata", None)
        reported = model_id_of(metadata) if isinstance(metadata, Mapping) else None
        name = reported or model_id_of(llm_output) or started.hint
        catalogue, model = self._pricing(name, started.provider)
        usage, cost, note = self._priced(catalogue, model, messages, llm_output, started)
        self.ledger.record(
            Entry(
                request_id=request_id,
                stage=self.stage,
                outcome="answered",
                model=model,
                usage=usage,
                cost=cost,
                latency_s=latency,
                attempts=1,
                tags=self.tags,
                bound=None if hold is None else hold.amount,
                note=note[:1000],
                id=new_entry_id() if hold is None else hold.id,
                # When the call was held (and so in the period it was held for).
                time=_now() if hold is None else hold.created,
            ),
            hold=hold,
        )

    def _priced(
        self,
        catalogue: Catalogue,
        model: str | None,
        messages: list[Any],
        llm_output: Mapping[str, Any],
        started: _Started,
    ) -> tuple[Usage | None, Decimal | None, str]:
        """The call's usage, its cost, and why the cost is unknown when it is."""
        reported = [getattr(m, "usage_metadata", None) for m in messages]
        present = [u for u in reported if u]
        if any(u != present[0] for u in present[1:]):
            return (
                None,
                None,
                (
                    f"The call's {len(messages)} choices report different usage; chainkit cannot "
                    "tell the call's usage from them, so its cost is unknown."
                ),
            )
        raw = present[0] if present else None
        try:
            usage = usage_from_langchain(raw, str(model))
        except ChainkitError as exc:
            return None, None, _safe(str(exc))
        except Exception as exc:  # a reply no integration should send: still never raised
            return None, None, _safe(f"Unreadable usage ({type(exc).__name__}: {exc})")
        why = unpriced(raw)
        if why:
            return usage, None, why
        metadata = getattr(messages[0], "response_metadata", None)
        tier = service_tier_of(metadata, raw) or service_tier_of(llm_output) or started.asked
        if tier is None:
            tier = self.tier
        if tier not in _TIERS:
            return (
                usage,
                None,
                (
                    f"The call ran at service tier {tier!r}, which chainkit has no prices for; its "
                    "cost is unknown."
                ),
            )
        if model is None:
            return usage, None, "The reply names no model; the call's cost is unknown."
        try:
            cost = catalogue.cost(
                model, usage, region=started.region, tier=cast(Tier, tier), at=started.when
            )
        except ChainkitError as exc:
            return usage, None, _safe(str(exc))
        return usage, cost, ""

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the failed call; what it cost, if anything, is unknown."""
        request_id, latency, started = self._finish(run_id)
        hint, hold = started.hint, started.hold
        self.ledger.record(
            Entry(
                request_id=request_id,
                stage=self.stage,
                outcome="failed",
                model=_model_name(self.model_ids.get(hint or "", hint)),
                cost=None,
                latency_s=latency,
                attempts=1,
                tags=self.tags,
                bound=None if hold is None else hold.amount,
                note=f"{type(error).__name__}: {str(error)[:800]}".encode(
                    "utf-8", "backslashreplace"
                )
                .decode("utf-8")
                .replace("\x00", " "),
                id=new_entry_id() if hold is None else hold.id,
                time=_now() if hold is None else hold.created,
            ),
            hold=hold,
        )
