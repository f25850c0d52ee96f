"""Precomputed: replies written ahead of time, kept in diskcache, keyed by intent and slots."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import diskcache

from chainkit.ledger import Ledger
from chainkit.money import exact_sum
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import Request, Result
from chainkit.stages.answering import CostEstimator, record_early
from chainkit.stages.calling import DEFAULT_TIMEOUT_S, ModelCall, check_model, check_timeout

__all__ = ["Precomputed", "ReplyStore", "precompute"]


class ReplyStore:
    """Precomputed replies on disk (diskcache), shared by processes that open the same directory.

    >>> import tempfile
    >>> store = ReplyStore(tempfile.mkdtemp())
    >>> store.put("delivery_options", "We ship by courier.", {"country": "FR"})
    >>> store.get("delivery_options", {"country": "FR"})
    'We ship by courier.'
    >>> store.close()
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._cache: Any = diskcache.Cache(str(self.directory))

    @staticmethod
    def key(intent: str, slots: Mapping[str, str] | None = None) -> str:
        """The cache key of an intent and its slot values (order of slots does not matter)."""
        if not slots:
            return intent
        return intent + "|" + "|".join(f"{k}={slots[k]}" for k in sorted(slots))

    def get(self, intent: str, slots: Mapping[str, str] | None = None) -> str | None:
        """The stored reply, or ``None``."""
        value = self._cache.get(self.key(intent, slots))
        return value if isinstance(value, str) else None

    def put(self, intent: str, reply: str, slots: Mapping[str, str] | None = None) -> None:
        """Store a reply (free: use :func:`precompute` to have a model write and price it)."""
        self._cache.set(self.key(intent, slots), reply)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        """Close the underlying cache files."""
        self._cache.close()


@dataclass(frozen=True, kw_only=True)
class Precomputed:
    """Answer from the reply store when it holds a reply for the intent (and slots); else pass.

    ``keys`` names, per intent, the slots its reply depends on; other slots are ignored.
    """

    store: ReplyStore
    keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    fallback: CostEstimator | None = None
    name: str = "precomputed"

    def with_fallback(self, fallback: CostEstimator) -> Self:
        """A copy that records what ``fallback`` would have cost for each answered request."""
        return self if self.fallback is not None else dataclasses.replace(self, fallback=fallback)

    def run(self, request: Request, ledger: Ledger) -> Request | Result:
        """Answer from the store, or pass the request on."""
        started = time.perf_counter()
        reply = None
        if request.intent is not None:
            names = self.keys.get(request.intent, ())
            if all(n in request.slots for n in names):
                slots = {n: request.slots[n] for n in names}
                reply = self.store.get(request.intent, slots)
        return record_early(self.name, self.fallback, request, ledger, reply, started)


def precompute(
    store: ReplyStore,
    questions: Mapping[str, str],
    *,
    model: Model,
    ledger: Ledger,
    catalogue: Catalogue | None = None,
    max_tokens: int = 300,
    system: str = "Write the reply a customer-support assistant should give to this question.",
    tags: Mapping[str, str] | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Decimal | None:
    """Have ``model`` write a reply per intent ahead of time; record that spend once, as setup.

    Each call is a ``setup``-phase entry of stage ``precompute`` (request id
    ``precompute:<intent>``, carrying ``tags``), which reports show as one-off spend. Returns the
    total spent (``None`` if some cost is unknown).
    """
    catalogue = catalogue_for(model, catalogue)
    check_model(model, catalogue, "precompute")
    check_timeout(timeout_s, "precompute")
    total: Decimal | None = Decimal(0)
    for intent, question in questions.items():
        request = Request(question, id=f"precompute:{intent}", intent=intent, tags=tags or {})
        call = ModelCall(
            stage="precompute",
            model=model,
            catalogue=catalogue,
            prompt=Prompt(system, question),
            max_tokens=max_tokens,
            request=request,
            ledger=ledger,
            phase="setup",
            timeout_s=timeout_s,
        )
        with call as completion:
            store.put(intent, completion.text)
            call.record("passed", intent=intent)
        total = exact_sum((total, call.cost))
    return total
