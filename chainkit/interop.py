"""LangChain at the edge: a pipeline as a Runnable, and a callback that fills a ledger.

>>> from chainkit import Canned, IntentScan, KeywordClassifier, Ledger, Pipeline
>>> bot = Pipeline([IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
...                 Canned(replies={"greeting": "Hello!"})])
>>> runnable = as_runnable(bot, Ledger())
>>> runnable.batch(["hi", "hi there"])
['Hello!', 'Hello!']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableLambda

from chainkit.errors import ChainkitError, ConfigError
from chainkit.ledger import Ledger
from chainkit.pipeline import Pipeline
from chainkit.pricing import Catalogue, Tier
from chainkit.providers.langchain import model_id_of, usage_from_langchain
from chainkit.records import Entry, Request, Tags, check_text

__all__ = ["LedgerCallbackHandler", "as_runnable"]


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

    raise_error = False

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
        self._started: dict[UUID, tuple[float, str | None, str | None]] = {}

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
        """Start the clock; note the model name and provider LangChain traces (``ls_*``)."""
        hint = (metadata or {}).get("ls_model_name")
        provider = (metadata or {}).get("ls_provider")
        self._enter(run_id, parent_run_id)
        with self._lock:
            self._started[run_id] = (
                time.perf_counter(),
                hint if isinstance(hint, str) else None,
                provider if isinstance(provider, str) else None,
            )

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

    def _finish(self, run_id: UUID) -> tuple[str, float, str | None, str | None]:
        with self._lock:
            started, hint, provider = self._started.pop(run_id, (time.perf_counter(), None, None))
            root = self._roots.get(run_id, run_id)
            if root == run_id:  # a model called on its own, outside any chain
                self._roots.pop(run_id, None)
        return str(root), time.perf_counter() - started, hint, provider

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record one entry per generation, with reported usage and its price."""
        request_id, latency, hint, provider = self._finish(run_id)
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
                    )
                )

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the failed call; what it cost, if anything, is unknown."""
        request_id, latency, hint, _ = self._finish(run_id)
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
            )
        )
