"""Summarise: a cheap model condenses the request's document before the strong model reads it.

A document too long for the model's context window is split on paragraph or turn boundaries and
summarised map-reduce style: each chunk, then the chunk summaries together. Every call is its own
ledger entry under the request's id (its note says which chunk: ``chunk 1.2/3``, ``chunk
reduce``), and no prompt exceeds the window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from chainkit.documents import split_document
from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import Request, check_text
from chainkit.stages.answering import record_free
from chainkit.stages.calling import DEFAULT_TIMEOUT_S, ModelCall, check_model, check_timeout
from chainkit.tokens import count_tokens, is_exact

__all__ = ["Summarise"]

# Counts from the offline estimator can be off for another vendor's tokenizer: keep 10% spare.
_ESTIMATE_MARGIN = 0.9


@dataclass(frozen=True, kw_only=True)
class Summarise:
    """Put a summary of ``request.document`` on the request; pass requests without one (free)."""

    model: Model
    max_tokens: int = 500
    instruction: str = (
        "Summarise the document in at most {max_tokens} tokens. Keep every decision, figure, "
        "name and open question; drop small talk."
    )
    combine: str = (
        "These are summaries of consecutive parts of one document. Combine them into a single "
        "summary of at most {max_tokens} tokens, keeping every decision, figure and name."
    )
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "summarise"
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    _room: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_text(self.name, "stage name")
        if self.max_tokens < 1:
            raise ConfigError(f"Summarise max_tokens must be at least 1, got {self.max_tokens}.")
        check_timeout(self.timeout_s, self.name)
        # A model that brings its own prices (LangChain on OpenAI) replaces the default catalogue.
        object.__setattr__(self, "catalogue", catalogue_for(self.model, self.catalogue))
        check_model(self.model, self.catalogue, self.name)
        object.__setattr__(self, "_room", self._measure_room())
        if self.room < self.max_tokens:
            window = self.catalogue.card(self.model.model_id).context_window
            raise ConfigError(
                f"Summarise: {self.model.model_id!r} has a context window of {window} tokens, too "
                f"small to read chunks and write {self.max_tokens}-token summaries; choose a "
                "model with a longer context or a smaller max_tokens."
            )

    @property
    def room(self) -> int:
        """The most document tokens one call may carry: the window less prompt and output."""
        return self._room

    def _measure_room(self) -> int:
        model_id = self.model.model_id
        window = self.catalogue.card(model_id).context_window
        overhead = max(
            count_tokens(self.instruction.format(max_tokens=self.max_tokens), model_id),
            count_tokens(self.combine.format(max_tokens=self.max_tokens), model_id),
        )
        room = window - overhead - self.max_tokens
        return room if is_exact(model_id) else int(room * _ESTIMATE_MARGIN)

    def prompt(self, document: str) -> Prompt:
        """The summarisation prompt: the instruction as system prompt, the document as user turn."""
        return Prompt(self.instruction.format(max_tokens=self.max_tokens), document)

    def _call(self, request: Request, ledger: Ledger, prompt: Prompt, chunk: str | None) -> str:
        # Which part of the document a call read goes in the entry's note, not its tags: the
        # request's tags are the user's (a "chunk" tag of theirs stays theirs, and a request
        # at the tag limit must not fail half-way through a document).
        call = ModelCall(
            stage=self.name,
            model=self.model,
            catalogue=self.catalogue,
            prompt=prompt,
            max_tokens=self.max_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
            note="" if chunk is None else f"chunk {chunk}",
        )
        with call as completion:
            call.record("passed")
        return completion.text

    async def _acall(
        self, request: Request, ledger: Ledger, prompt: Prompt, chunk: str | None
    ) -> str:
        call = ModelCall(
            stage=self.name,
            model=self.model,
            catalogue=self.catalogue,
            prompt=prompt,
            max_tokens=self.max_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
            note="" if chunk is None else f"chunk {chunk}",
        )
        async with call as completion:
            await call.arecord("passed")
        return completion.text

    async def asummarise(self, request: Request, ledger: Ledger, document: str) -> str:
        """:meth:`summarise` on the event loop: the same calls, one after another."""
        room = self.room
        model_id = self.model.model_id
        if count_tokens(document, model_id) <= room:
            return await self._acall(request, ledger, self.prompt(document), None)
        text, level = document, 1
        while True:
            chunks = split_document(text, room, model_id)
            # In order, as run() makes them: the same entries in the same order either way.
            partials = [
                await self._acall(request, ledger, self.prompt(chunk), f"{level}.{i}/{len(chunks)}")
                for i, chunk in enumerate(chunks, start=1)
            ]
            text = "\n\n".join(partials)
            if count_tokens(text, model_id) <= room:
                combine = Prompt(self.combine.format(max_tokens=self.max_tokens), text)
                return await self._acall(request, ledger, combine, "reduce")
            level += 1

    async def arun(self, request: Request, ledger: Ledger) -> Request:
        """:meth:`run` on the event loop."""
        if request.document is None:
            record_free(self.name, request, ledger)
            return request
        return dataclasses.replace(
            request, summary=await self.asummarise(request, ledger, request.document)
        )

    def summarise(self, request: Request, ledger: Ledger, document: str) -> str:
        """Summarise ``document`` for ``request``, map-reduce style if it does not fit."""
        room = self.room
        model_id = self.model.model_id
        if count_tokens(document, model_id) <= room:
            return self._call(request, ledger, self.prompt(document), None)
        text, level = document, 1
        while True:
            chunks = split_document(text, room, model_id)
            partials = [
                self._call(request, ledger, self.prompt(chunk), f"{level}.{i}/{len(chunks)}")
                for i, chunk in enumerate(chunks, start=1)
            ]
            text = "\n\n".join(partials)
            if count_tokens(text, model_id) <= room:
                combine = Prompt(self.combine.format(max_tokens=self.max_tokens), text)
                return self._call(request, ledger, combine, "reduce")
            level += 1

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with ``summary`` set."""
        if request.document is None:
            record_free(self.name, request, ledger)
            return request
        return dataclasses.replace(
            request, summary=self.summarise(request, ledger, request.document)
        )
