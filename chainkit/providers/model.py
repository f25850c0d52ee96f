"""The model protocol every provider implements, and what a call returns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chainkit.errors import ConfigError
from chainkit.pricing import Tier
from chainkit.records import Turn, Usage

__all__ = [
    "METADATA_KEYS",
    "Chunk",
    "Completion",
    "Model",
    "Prompt",
    "check_private_tags",
]

METADATA_KEYS = ("stage", "request_id")
"""The keys chainkit puts in every call's metadata beside the tags; a tag cannot replace them."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a model is asked: a system instruction, earlier turns, and the user's message.

    ``history`` holds a conversation's earlier turns, oldest first, sent as messages with their
    roles before ``user`` (Bedrock Converse and LangChain take them as such); it starts with a
    user turn and alternates, as :class:`~chainkit.stages.history.History` keeps it.
    """

    system: str
    user: str
    history: tuple[Turn, ...] = ()

    def messages(self) -> list[tuple[str, str]]:
        """``(role, text)`` of every message after the system prompt, the user's last."""
        return [*((t.role, t.text) for t in self.history), ("user", self.user)]


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's reply with the usage it reported (or that was counted, if ``estimated``)."""

    text: str
    usage: Usage
    model_id: str
    estimated: bool = False
    latency_s: float = 0.0
    attempts: int = 1
    unpriced: str = ""
    """Why the call cannot be priced exactly (audio tokens, a service tier it was not priced
    for); the entry then records its cost as unknown (``None``) with this note."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a streamed reply: text as the provider sends it, and at the end its usage.

    A provider's ``astream(prompt, *, max_tokens, metadata)`` yields these (an async iterator):
    text deltas, then one chunk with the ``usage`` it reported (``model_id``, ``attempts`` and
    ``estimated`` ride along with it). A stream that ends without usage was cut before the
    provider said what it billed; chainkit then records the call's upper bound, marked
    estimated. Optional for a provider: a model without ``astream`` streams its whole reply
    as one piece.
    """

    text: str = ""
    usage: Usage | None = None
    model_id: str | None = None
    estimated: bool = False
    attempts: int = 1
    unpriced: str = ""  # as Completion.unpriced: why the usage cannot be priced exactly


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
        logs and the ledger can be joined. A provider that sends it away leaves out the tags in
        its ``private_tags`` (a frozenset of keys), and may have ``check_metadata(metadata)``,
        which raises ``ConfigError`` for metadata it could not send: chainkit asks before it
        reserves or sends anything, so such a call is refused at $0.

        A provider may also have ``async def acomplete(...)`` with the same arguments, which
        the async path (``Pipeline.arun``) awaits; without it, ``complete`` runs in a worker
        thread. ``astream`` (see :class:`Chunk`) streams a reply.
        """
        ...

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Return the expected usage of ``complete(prompt, max_tokens=...)`` (output at most).

        A model that can count its input exactly may also have ``count_input(prompt) -> int |
        None``; budgets then hold that count instead of the byte bound (see
        :func:`chainkit.stages.calling.input_bound`).
        """
        ...


def check_private_tags(private_tags: object, owner: str) -> frozenset[str]:
    """``private_tags`` as a frozenset of tag keys; ``ConfigError`` unless a collection of str.

    >>> sorted(check_private_tags(["email", "name"], "BedrockModel"))
    ['email', 'name']
    """
    if isinstance(private_tags, str | bytes) or not isinstance(private_tags, Iterable):
        raise ConfigError(
            f"{owner}: private_tags must be a collection of tag keys, such as "
            f"private_tags=('customer_email',), not {type(private_tags).__name__} "
            f"{private_tags!r:.60} (a string would be read as its characters)."
        )
    keys = tuple(private_tags)
    for key in keys:
        if type(key) is not str or not key:
            raise ConfigError(
                f"{owner}: private_tags holds {key!r:.60}; every item must be a tag key (a "
                "non-empty str)."
            )
    return frozenset(keys)
