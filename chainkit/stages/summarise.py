"""Summarise: a cheap model condenses the request's document before the strong model reads it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue
from chainkit.providers.model import Model, Prompt
from chainkit.records import Entry, Request
from chainkit.stages.calling import ModelCall, check_model

__all__ = ["Summarise"]


@dataclass(frozen=True, kw_only=True)
class Summarise:
    """Put a summary of ``request.document`` on the request; pass requests without one (free)."""

    model: Model
    max_tokens: int = 500
    instruction: str = (
        "Summarise the document in at most {max_tokens} tokens. Keep every decision, figure, "
        "name and open question; drop small talk."
    )
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "summarise"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"Summarise max_tokens must be at least 1, got {self.max_tokens}.")
        check_model(self.model, self.catalogue, self.name)

    def prompt(self, document: str) -> Prompt:
        """The summarisation prompt: the instruction as system prompt, the document as user turn."""
        return Prompt(self.instruction.format(max_tokens=self.max_tokens), document)

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with ``summary`` set."""
        if request.document is None:
            ledger.record(
                Entry(
                    request_id=request.id,
                    stage=self.name,
                    outcome="passed",
                    cost=Decimal(0),
                    intent=request.intent,
                    tags=request.tags,
                )
            )
            return request
        call = ModelCall(
            stage=self.name,
            model=self.model,
            catalogue=self.catalogue,
            prompt=self.prompt(request.document),
            max_tokens=self.max_tokens,
            request=request,
            ledger=ledger,
        )
        with call as completion:
            call.record("passed")
        return dataclasses.replace(request, summary=completion.text)
