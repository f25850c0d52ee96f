"""Precomputed: replies written ahead of time, kept in diskcache, keyed by intent, slots, scope."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import diskcache

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.ledger.sql import SQLLedger
from chainkit.money import exact_sum
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import MAX_TAG_KEY, Request, Result, Tags, check_text
from chainkit.stages.answering import CostEstimator, record_early
from chainkit.stages.calling import (
    DEFAULT_TIMEOUT_S,
    ModelCall,
    check_model,
    check_timeout,
    run_to_end,
)

if TYPE_CHECKING:
    from chainkit.pipeline import ResumePoint

__all__ = ["Precomputed", "ReplyStore", "precompute"]


def _check_slots(slots: object, intent: str) -> dict[str, str]:
    if slots is None:
        return {}
    if not isinstance(slots, Mapping):
        raise ConfigError(
            f"Slots of intent {intent!r} must be a mapping of slot name to value such as "
            f"{{'country': 'FR'}}, got {type(slots).__name__} {slots!r:.80}."
        )
    for name, value in slots.items():
        check_text(name, f"Slot name of intent {intent!r}", max_len=MAX_TAG_KEY)
        if type(value) is not str:
            raise ConfigError(
                f"Slot {name!r} of intent {intent!r} must be a str, got {type(value).__name__} "
                f"{value!r:.80}. Convert slot values to text before storing or looking up a reply."
            )
    return dict(slots)


def _check_scope(scope: object) -> dict[str, str] | None:
    if scope is None:
        return None
    if not isinstance(scope, Mapping) or not scope:
        # An empty scope is refused rather than read as "everyone": it is what a scope built
        # from a missing tag looks like, and a tenant's reply must not become everyone's.
        raise ConfigError(
            f"Reply scope must be a non-empty mapping of tag key to value such as "
            f"{{'tenant': 'acme'}}, got {type(scope).__name__} {scope!r:.80}. Pass scope=None "
            "for a reply that every customer of every tenant may get."
        )
    for key, value in scope.items():
        check_text(key, "Reply scope key", max_len=MAX_TAG_KEY)
        check_text(value, f"Reply scope {key!r} value", empty=True)
    return dict(scope)


class ReplyStore:
    """Precomputed replies on disk (diskcache), shared by processes that open the same directory.

    A reply is stored for an intent, the slot values it depends on, and a scope: ``None`` for a
    reply every customer of every tenant may get, or tags such as ``{"tenant": "acme"}`` for a
    reply only requests of exactly that scope may get.

    >>> import tempfile
    >>> store = ReplyStore(tempfile.mkdtemp())
    >>> store.put("delivery_options", "We ship by courier.", {"country": "FR"})
    >>> store.get("delivery_options", {"country": "FR"})
    'We ship by courier.'
    >>> store.put("returns_policy", "30 days, free.", scope={"tenant": "acme"})
    >>> store.get("returns_policy", scope={"tenant": "acme"})
    '30 days, free.'
    >>> store.get("returns_policy", scope={"tenant": "globex"}) is None
    True
    >>> store.get("returns_policy") is None
    True
    >>> store.close()
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._cache: Any = diskcache.Cache(str(self.directory))

    @staticmethod
    def key(
        intent: str,
        slots: Mapping[str, str] | None = None,
        *,
        scope: Mapping[str, str] | None = None,
    ) -> str:
        """The cache key of an intent, its slot values and a scope (``None``: everyone's).

        The SHA-256 of a canonical JSON of the three (sorted keys, ASCII escapes), so no two
        different inputs share a key and the order of slots or scope tags does not matter.

        >>> ReplyStore.key("order_status", {"order": "1|x=2"}) == ReplyStore.key(
        ...     "order_status", {"order": "1", "x": "2"}
        ... )
        False
        >>> ReplyStore.key("faq", scope={"tenant": "acme"}) == ReplyStore.key("faq")
        False
        """
        check_text(intent, "Reply intent")
        document = {
            "intent": intent,
            "slots": _check_slots(slots, intent),
            "scope": _check_scope(scope),
        }
        canonical = json.dumps(document, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def get(
        self,
        intent: str,
        slots: Mapping[str, str] | None = None,
        *,
        scope: Mapping[str, str] | None = None,
    ) -> str | None:
        """The reply stored for exactly this intent, slots and scope, or ``None``."""
        value = self._cache.get(self.key(intent, slots, scope=scope))
        return value if isinstance(value, str) else None

    def put(
        self,
        intent: str,
        reply: str,
        slots: Mapping[str, str] | None = None,
        *,
        scope: Mapping[str, str] | None = None,
    ) -> None:
        """Store a reply (free: use :func:`precompute` to have a model write and price it).

        Only store replies that hold for every customer in ``scope``: never one built from a
        customer's facts (an order, a name, an address).
        """
        if type(reply) is not str:
            raise ConfigError(
                f"Reply for intent {intent!r} must be a str, got {type(reply).__name__} "
                f"{reply!r:.80}."
            )
        self._cache.set(self.key(intent, slots, scope=scope), reply)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        """Close the underlying cache files."""
        self._cache.close()


@dataclass(frozen=True, kw_only=True)
class Precomputed:
    """Answer a declared intent from the reply store when it holds a reply; else pass.

    ``keys`` declares the intents this stage may answer, each with the names of the slots its
    reply depends on (``()`` for none); a request whose intent is not declared always passes,
    whatever the store holds. Declare only customer-independent intents (delivery options, a
    returns policy): one stored reply is shared by every customer of a tenant, so an intent whose
    reply depends on one customer's facts (an order, a name, an address) must never be declared,
    nor a slot that identifies a customer (an order number, an email address).

    A request tagged ``scope_tag`` (``tenant`` by default) gets its tenant's reply, else the
    reply stored for everyone (``scope=None``); a request without that tag gets only the
    latter. A tenant's reply is never served to another tenant.

    >>> import tempfile
    >>> from chainkit import Ledger, Request
    >>> store = ReplyStore(tempfile.mkdtemp())
    >>> store.put("returns_policy", "30 days, free.", scope={"tenant": "acme"})
    >>> stage = Precomputed(store=store, keys={"returns_policy": ()})
    >>> acme = Request("returns?", intent="returns_policy", tags={"tenant": "acme"})
    >>> stage.run(acme, Ledger()).text
    '30 days, free.'
    >>> globex = Request("returns?", intent="returns_policy", tags={"tenant": "globex"})
    >>> stage.run(globex, Ledger()) is globex
    True
    >>> store.close()
    """

    store: ReplyStore
    keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    scope_tag: str = "tenant"
    fallback: CostEstimator | None = None
    name: str = "precomputed"

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping) or not self.keys:
            raise ConfigError(
                f"Precomputed(keys={self.keys!r:.80}) declares no intents, so it would answer "
                "nothing. Declare the intents whose replies are the same for every customer of a "
                "tenant, each with the slots its reply depends on, e.g. "
                "keys={'delivery_options': (), 'returns_policy': ('country',)}. Never declare an "
                "intent whose reply is built from a customer's facts (order, name, address)."
            )
        keys: dict[str, tuple[str, ...]] = {}
        for intent, names in self.keys.items():
            check_text(intent, "Precomputed intent")
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise ConfigError(
                    f"Precomputed keys[{intent!r}] must be a sequence of slot names such as "
                    f"('country',) or () for none, got {type(names).__name__} {names!r:.80}."
                )
            for n in names:
                check_text(n, f"Slot name of Precomputed intent {intent!r}", max_len=MAX_TAG_KEY)
            keys[intent] = tuple(names)
        object.__setattr__(self, "keys", keys)
        check_text(self.scope_tag, "Precomputed scope_tag", max_len=MAX_TAG_KEY)

    def with_fallback(self, fallback: CostEstimator) -> Self:
        """A copy that records what ``fallback`` would have cost for each answered request."""
        return self if self.fallback is not None else dataclasses.replace(self, fallback=fallback)

    def run(self, request: Request, ledger: Ledger) -> Request | Result:
        """Answer from the store (the request's tenant first, then everyone's), or pass it on."""
        started = time.perf_counter()
        reply = None
        intent = request.intent
        names = None if intent is None else self.keys.get(intent)
        if intent is not None and names is not None and all(n in request.slots for n in names):
            slots = {n: request.slots[n] for n in names}
            tenant = request.tags.get(self.scope_tag)
            if tenant is not None:
                reply = self.store.get(intent, slots, scope={self.scope_tag: tenant})
            if reply is None:
                reply = self.store.get(intent, slots)
        return record_early(self.name, self.fallback, request, ledger, reply, started)

    async def arun(self, request: Request, ledger: Ledger) -> Request | Result:
        """:meth:`run` in a worker thread: the store is read from disk."""
        return await run_to_end(self.run, request, ledger)


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
    scope_tag: str = "tenant",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    resume: bool = False,
) -> Decimal | None:
    """Have ``model`` write a reply per intent ahead of time; record that spend once, as setup.

    The replies are the tenant's when ``tags`` names one under ``scope_tag`` (stored with scope
    ``{scope_tag: tags[scope_tag]}``, as :class:`Precomputed` looks them up), else everyone's.
    ``questions`` are the shop's, written from no customer's facts: precompute only the
    customer-independent intents a :class:`Precomputed` stage declares.

    Each call is a ``setup``-phase entry of stage ``precompute`` (request id
    ``precompute:<intent>``, with a digest of ``tags`` when there are tags, so that each tag set's
    setup is its own request), which reports show as one-off spend. With ``resume`` (a durable
    ledger) a reply written by an earlier run is taken from the ledger, not paid for again: the
    replies are the shop's, not customers', so they are kept there. Returns the total spent by
    this call (``None`` if some cost is unknown).
    """
    catalogue = catalogue_for(model, catalogue)
    check_model(model, catalogue, "precompute")
    check_timeout(timeout_s, "precompute")
    check_text(scope_tag, "precompute scope_tag", max_len=MAX_TAG_KEY)
    tenant = None if tags is None else tags.get(scope_tag)
    scope = None if tenant is None else {scope_tag: tenant}
    total: Decimal | None = Decimal(0)
    # One setup request per intent and per everything its reply depends on (tags, system
    # prompt, model, output budget): another tenant's or prompt's reply is never taken for it.
    key = json.dumps(
        [Tags.of(tags or {}).json, system, model.model_id, max_tokens], ensure_ascii=True
    )
    suffix = ":" + hashlib.sha256(key.encode("ascii")).hexdigest()[:12]
    for intent, question in questions.items():
        request = Request(
            question, id=f"precompute:{intent}{suffix}", intent=intent, tags=tags or {}
        )
        point = None
        if resume:
            point = _resume_point(request, ledger, system, model.model_id, str(max_tokens))
            if isinstance(point.state, Result):  # written by an earlier run: not paid again
                store.put(intent, point.state.text, scope=scope)
                continue
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
        with _step(request, ledger, point) as save, call as completion:
            store.put(intent, completion.text, scope=scope)
            call.record("passed", intent=intent)
            save(Result(request, completion.text, "precompute", model.model_id))
        total = exact_sum((total, call.cost))
    return total


def _resume_point(request: Request, ledger: Ledger, *context: str) -> ResumePoint:
    """Claim a setup request; the reply an earlier run wrote for it comes back as its state."""
    from chainkit.pipeline import Resume, resume_point  # the pipeline imports the stages

    # The replies are the shop's, not customers': kept, so that a rerun need not pay again.
    return resume_point(request, ledger, Resume(keep_text=True), *context)


@contextmanager
def _step(
    request: Request, ledger: Ledger, point: ResumePoint | None
) -> Iterator[Callable[[Request | Result], None]]:
    """A resumable step for one setup call (or nothing to save into, without ``resume``)."""
    if point is None:
        yield lambda state: None
        return
    assert isinstance(ledger, SQLLedger)  # resume_point checked it is durable
    with ledger.step(
        request.id, 0, fingerprint=point.fingerprint, keep_text=True, claimed=True
    ) as save:
        yield save
