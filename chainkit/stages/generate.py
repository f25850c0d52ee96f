"""Generate: the final (usually strong) model writes the answer from what the request carries."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from decimal import Decimal

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import Request, Result, check_text
from chainkit.stages.calling import DEFAULT_TIMEOUT_S, ModelCall, check_model, check_timeout
from chainkit.stages.history import sendable, summary_system

__all__ = ["Generate"]


@dataclass(frozen=True, kw_only=True)
class Generate:
    """Answer the request with a model, from its facts, its summary or else its document.

    ``typical_output_tokens`` (default ``max_tokens``) sizes the avoided cost that earlier stages
    record when they answer instead. ``timeout_s`` is the call's deadline (``None``: none).
    """

    model: Model
    max_tokens: int = 1000
    system: str = (
        "You are a helpful assistant. Answer the request using only the material provided."
    )
    typical_output_tokens: int | None = None
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "generate"
    timeout_s: float | None = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        check_text(self.name, "stage name")
        if self.max_tokens < 1:
            raise ConfigError(f"Generate max_tokens must be at least 1, got {self.max_tokens}.")
        check_timeout(self.timeout_s, self.name)
        # A model that brings its own prices (LangChain on OpenAI) replaces the default catalogue.
        object.__setattr__(self, "catalogue", catalogue_for(self.model, self.catalogue))
        check_model(self.model, self.catalogue, self.name)

    def prompt(self, request: Request) -> Prompt:
        """The prompt for ``request``: facts, then the summary (or the document), then the ask.

        A request in a conversation also carries its earlier turns (from ``start``) as messages.
        """
        parts: list[str] = []
        if request.facts:
            parts.append("Facts:\n" + "\n".join(f"- {fact}" for fact in request.facts))
        if request.summary is not None:
            parts.append("Summary:\n" + request.summary)
        elif request.document is not None:
            parts.append("Document:\n" + request.document)
        parts.append(request.text)
        conversation = request.conversation
        if conversation is None:
            return Prompt(self.system, "\n\n".join(parts))
        # A conversation's earlier turns go as messages (what History left of them), and its
        # running summary in the system prompt.
        return Prompt(
            summary_system(self.system, conversation),
            "\n\n".join(parts),
            history=sendable(conversation.sent),
        )

    def estimate_cost(self, request: Request) -> Decimal | None:
        """What answering ``request`` would cost at a typical output length."""
        usage = self.model.estimate(
            self.prompt(request), max_tokens=self.typical_output_tokens or self.max_tokens
        )
        return self.catalogue.cost(
            self.model.model_id, usage, region=self.model.region, tier=self.model.tier
        )

    def _model_call(self, request: Request, ledger: Ledger) -> ModelCall:
        return ModelCall(
            stage=self.name,
            model=self.model,
            catalogue=self.catalogue,
            prompt=self.prompt(request),
            max_tokens=self.max_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
        )

    def run(self, request: Request, ledger: Ledger) -> Result:
        """Call the model and answer."""
        call = self._model_call(request, ledger)
        with call as completion:
            call.record("answered")
        return Result(
            request=request, text=completion.text, stage=self.name, model=self.model.model_id
        )

    async def arun(self, request: Request, ledger: Ledger) -> Result:
        """:meth:`run` on the event loop (the model's ``acomplete``, else a worker thread)."""
        call = self._model_call(request, ledger)
        async with call as completion:
            await call.arecord("answered")
        return Result(
            request=request, text=completion.text, stage=self.name, model=self.model.model_id
        )

    async def astream(self, request: Request, ledger: Ledger) -> AsyncGenerator[str | Result, None]:
        """Answer as a stream: the reply's text as the model sends it, then the ``Result``.

        The call's entry is recorded when the stream ends, or when this generator is closed
        early (see :meth:`ModelCall.astream`).
        """
        call = self._model_call(request, ledger)
        parts: list[str] = []
        async with aclosing(call.astream("answered")) as deltas:
            async for text in deltas:
                parts.append(text)
                yield text
        yield Result(
            request=request, text="".join(parts), stage=self.name, model=self.model.model_id
        )
