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
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableLambda

from chainkit.errors import BudgetExceeded, ChainkitError, ConfigError
from chainkit.ledger import Hold, Ledger
from chainkit.pipeline import Pipeline
from chainkit.pricing import Catalogue, Tier
from chainkit.providers.langchain import model_id_of, usage_from_langchain
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
    reports count requests, not calls. A model the catalogue does not know is recorded with cost
    ``None`` (unknown) rather than breaking the user's chain.

    Args:
        ledger: where the entries go.
        catalogue: prices; by default chosen per call from the provider LangChain traces:
            the current Bedrock catalogue for Bedrock, genai-prices (ids ``provider:model``)
            for OpenAI, Anthropic, Vertex, Azure and the other providers it knows.
        stage: the stage name the entries carry.
        tags: tags put on every entry (tenant, feature, ...).
        model_ids: map from the names LangChain reports to catalogue ids.
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
        self._started: dict[UUID, tuple[float, str | None, str | None, Hold | None]] = {}

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
        self._enter(run_id, parent_run_id)
        hold = None
        if self.ledger.budgets:
            with self._lock:
                root = str(self._roots.get(run_id, run_id))
            catalogue, model = self._pricing(
                _model_name(self.model_ids.get(hint or "", hint)), provider
            )
            amount = _bound(catalogue, model, messages, kwargs.get("invocation_params") or {},
                            region=self.region, tier=self.tier)  # fmt: skip
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
            self._started[run_id] = (time.perf_counter(), hint, provider, hold)

    def _pricing(self, model: str | None, provider: str | None) -> tuple[Catalogue, str | None]:
        """The catalogue for this call, and the model id as it names it."""
        if not self._by_provider or model is None or model in self.model_ids.values():
            return self.catalogue, model
        try:
            from chainkit.pricing_genai import genai_provider_for

            genai = genai_provider_for(provider)
        except ImportError:  # genai-prices not installed: the default catalogue only
            genai = None
        if genai is None:
            return self.catalogue, model
        return Catalogue.load("genai-prices"), model if ":" in model else f"{genai}:{model}"

    def _price(self, catalogue: Catalogue, model: str | None, usage: Any) -> Decimal | None:
        if model is None:
            return None
        try:
            return catalogue.cost(model, usage, region=self.region, tier=self.tier)
        except ChainkitError:
            return None

    def _finish(self, run_id: UUID) -> tuple[str, float, str | None, str | None, Hold | None]:
        with self._lock:
            started, hint, provider, hold = self._started.pop(
                run_id, (time.perf_counter(), None, None, None)
            )
            root = self._roots.get(run_id, run_id)
            if root == run_id:  # a model called on its own, outside any chain
                self._roots.pop(run_id, None)
        return str(root), time.perf_counter() - started, hint, provider, hold

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record one entry per generation, with reported usage and its price."""
        request_id, latency, hint, provider, hold = self._finish(run_id)
        llm_output = response.llm_output or {}
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                message = generation.message
                reported = model_id_of(getattr(message, "response_metadata", {}))
                name = reported or model_id_of(llm_output) or hint
                catalogue, model = self._pricing(
                    _model_name(self.model_ids.get(name or "", name)), provider
                )
                try:
                    usage = usage_from_langchain(
                        getattr(message, "usage_metadata", None), str(model)
                    )
                except ChainkitError:
                    usage = None
                # The call's first generation settles its hold (and carries its id).
                settles, hold = hold, None
                self.ledger.record(
                    Entry(
                        request_id=request_id,
                        stage=self.stage,
                        outcome="answered",
                        model=model,
                        usage=usage,
                        cost=None if usage is None else self._price(catalogue, model, usage),
                        latency_s=latency,
                        attempts=1,
                        tags=self.tags,
                        bound=None if settles is None else settles.amount,
                        id=new_entry_id() if settles is None else settles.id,
                        # When the call was held (and so in the period it was held for).
                        time=_now() if settles is None else settles.created,
                    ),
                    hold=settles,
                )
        self.ledger.release(hold)  # a reply with no generation: nothing to settle it

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the failed call; what it cost, if anything, is unknown."""
        request_id, latency, hint, _, hold = self._finish(run_id)
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
