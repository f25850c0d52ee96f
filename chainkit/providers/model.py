"""The model protocol every provider implements, and what a call returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chainkit.pricing import Tier
from chainkit.records import Usage

__all__ = ["Completion", "Model", "Prompt"]


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a model is asked: a system instruction and one user message."""

    system: str
    user: str


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's reply with the usage it reported (or that was counted, if ``estimated``)."""

    text: str
    usage: Usage
    model_id: str
    estimated: bool = False
    latency_s: float = 0.0
    attempts: int = 1


@runtime_checkable
class Model(Protocol):
    """A transport that completes a prompt and reports usage.

    ``model_id`` is the catalogue id used for pricing; ``region`` and ``tier`` select the price.
    """

    model_id: str
    region: str | None
    tier: Tier

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """Send ``prompt`` and return the reply; raise a ``ProviderError`` on failure.

        ``metadata`` (stage, request id, tags) goes wherever the provider logs calls, so that its
        logs and the ledger can be joined.
        """
        ...

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Return the expected usage of ``complete(prompt, max_tokens=...)`` (output at most).

        A model that can count its input exactly may also have ``count_input(prompt) -> int |
        None``; budgets then hold that count instead of the byte bound (see
        :func:`chainkit.stages.calling.input_bound`).
        """
        ...
