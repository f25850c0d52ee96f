"""The records that flow through a pipeline and into the ledger: Request, Result, Usage, Entry."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, NoReturn

from chainkit.errors import ConfigError
from chainkit.money import check_money

__all__ = [
    "FLAGS",
    "MAX_TAGS",
    "Conversation",
    "Entry",
    "Outcome",
    "Phase",
    "Request",
    "Result",
    "Tags",
    "Turn",
    "Usage",
    "check_text",
    "fingerprint",
    "is_generated_id",
    "new_entry_id",
    "new_request_id",
    "state_from_json",
    "state_to_json",
]

Outcome = Literal["answered", "passed", "failed", "refused"]
"""What a stage did with a request: answered it, passed it on, failed, or refused it (budget)."""

Role = Literal["user", "assistant"]
"""Who said a turn of a conversation."""

Phase = Literal["serve", "setup"]
"""`serve` entries belong to a request; `setup` entries are one-off spend such as precomputing."""

OUTCOMES: frozenset[str] = frozenset(("answered", "passed", "failed", "refused"))
PHASES: frozenset[str] = frozenset(("serve", "setup"))
FLAGS: frozenset[str] = frozenset(
    (
        "over_estimate",  # the provider reported more than the call's reserved upper bound
        "lease_expired",  # the holder vanished: recorded at its bound until reconciled
        "reconciled",  # an entry of unknown cost whose real usage arrived later
        "timeout",  # the call passed its deadline; it may still have been billed
        "cancelled",  # stopped before its end (a task cancelled, a stream's reader gone)
        "retried_after_timeout",  # an earlier attempt timed out and may have been billed too
    )
)
"""The flags an entry may carry; reports count them."""

MAX_TEXT = 256
"""The longest id, stage name, model id, intent or tag value, in characters."""
MAX_TAG_KEY = 128
MAX_TAGS = 64
MAX_TOKENS = 10**12  # per class and call: far beyond any model, far below SQL's 64-bit limit
MAX_LATENCY_S = 10**6  # about 11.6 days: no call lasts longer, and sums of them stay exact
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9998, 12, 31, tzinfo=UTC)

# A random per-process prefix plus a counter: unique within and across processes and hosts (96
# random bits), ordered within a process, and ~20x cheaper than uuid4 on the hot path.
_ID_PREFIX = secrets.token_hex(12)
_REQUEST_COUNTER = itertools.count(1)
_ENTRY_COUNTER = itertools.count(1)


def _reseed_ids() -> None:
    # A forked child would otherwise hand out its parent's ids, and an idempotent store keeps
    # one entry per id: the child's entries would vanish.
    global _ID_PREFIX, _REQUEST_COUNTER, _ENTRY_COUNTER
    _ID_PREFIX = secrets.token_hex(12)
    _REQUEST_COUNTER = itertools.count(1)
    _ENTRY_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """Return a fresh request id, unique within and across processes."""
    return f"{_ID_PREFIX}-{next(_REQUEST_COUNTER):08d}"


_GENERATED = re.compile(r"[0-9a-f]{24}-[0-9]{8}")


def is_generated_id(request_id: str) -> bool:
    """Whether ``request_id`` has the form :func:`new_request_id` gives (in any process).

    Such an id differs in every run, so a rerun can never find what a run saved under it. (A
    caller's own ids are unlikely to take exactly this form: 24 hex digits, a dash, 8 digits.)
    """
    return _GENERATED.fullmatch(request_id) is not None


def fingerprint(request: Request, *context: str) -> str:
    """A digest of what a request asks: every field but its id, and any ``context`` (SHA-256).

    Resuming compares it with the one saved under the same id, so that a request is never given
    another request's saved progress: text, document, tags, and what stages may have set before
    it came (intent, confidence, slots, facts, summary) all count. JSON with ``ensure_ascii``
    keeps every string distinct (lone surrogates included).
    """
    body = json.dumps(
        [
            request.text,
            request.document,
            sorted(request.tags.items()),
            request.intent,
            request.confidence,
            sorted(request.slots.items()),
            list(request.facts),
            request.summary,
            list(context),
            *_conversation_print(request.conversation),
        ],
        ensure_ascii=True,
    )
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def _conversation_print(conversation: Conversation | None) -> list[object]:
    # Nothing added without a conversation: digests saved before conversations stay valid.
    if conversation is None:
        return []
    c = conversation
    turns = [[t.role, t.text, t.intent] for t in c.turns]
    return [[c.id, turns, sorted(c.tags.items()), c.summary, c.summarised, c.start]]


def new_entry_id() -> str:
    """Return a fresh entry id; a store keeps one entry per id, however often it is written."""
    return f"{_ID_PREFIX}.{next(_ENTRY_COUNTER):09d}"


_CHECKED: set[str] = set()  # names already checked (stage names, models, tag keys recur)


def _fail_text(value: object, what: str, max_len: int) -> NoReturn:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str, got {type(value).__name__} {value!r:.80}.")
    if len(value) > max_len:
        raise ConfigError(
            f"{what} is {len(value)} characters long ({value[:40]!r}...); at most {max_len} are "
            "allowed. Use a shorter id or name."
        )
    if "\x00" in value:
        raise ConfigError(f"{what} {value!r:.80} contains a NUL character, which stores reject.")
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            raise ConfigError(
                f"{what} {value!r:.80} has a lone surrogate U+{ord(ch):04X} at position {i}, "
                "which cannot be encoded as UTF-8. Decode input with errors='replace' first."
            )
    raise ConfigError(f"{what} {value!r:.80} must not be empty.")


def check_text(value: object, what: str, *, max_len: int = MAX_TEXT, empty: bool = False) -> str:
    """Return ``value`` if it is a str that every store and provider can take; else raise.

    That is: at most ``max_len`` characters, no NUL, no lone surrogate, and not empty unless
    ``empty``.

    >>> check_text("日本 🚚", "tag value")
    '日本 🚚'
    """
    if type(value) is str and value in _CHECKED:
        return value
    if (
        type(value) is str
        and (value or empty)
        and len(value) <= max_len
        and "\x00" not in value
        and (value.isascii() or _encodes(value))
    ):
        # Only what passes every caller's limits is remembered (non-empty, short enough for a
        # tag key), so a hit is valid whatever is asked next.
        if value and len(value) <= MAX_TAG_KEY:
            if len(_CHECKED) > 50_000:  # request ids pass through too: keep the set bounded
                _CHECKED.clear()
            _CHECKED.add(value)
        return value
    _fail_text(value, what, max_len)


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_body(value: object, what: str) -> None:
    """Long text (a message, a document): any length, but it must encode as UTF-8."""
    if type(value) is not str:
        raise ConfigError(f"{what} must be a str, got {type(value).__name__} {value!r:.80}.")
    if not value.isascii() and not _encodes(value):
        for i, ch in enumerate(value):
            if "\ud800" <= ch <= "\udfff":
                raise ConfigError(
                    f"{what} has a lone surrogate U+{ord(ch):04X} at position {i} "
                    f"({value[max(0, i - 20) : i + 20]!r}), which cannot be encoded as UTF-8 "
                    "or sent to a model. Decode input with errors='replace' first."
                )


class Tags(dict[str, str]):
    """Validated, read-only tags: keys and values that every store and provider can take.

    Build new tags with ``{**tags, "key": "value"}``; a ``Tags`` refuses changes in place, so a
    request's tags cannot change under the entries that share them.

    >>> Tags({"tenant": "acme", "région": "日本"}).json
    '{"région": "日本", "tenant": "acme"}'
    """

    __slots__ = ("_json",)

    def __init__(self, tags: Mapping[str, str] | Iterable[tuple[str, str]] = (), /) -> None:
        items = dict(tags)
        if len(items) > MAX_TAGS:
            raise ConfigError(
                f"{len(items)} tags given ({sorted(items)[:5]}...); at most {MAX_TAGS} are "
                "allowed. Keep tags for what reports group by (tenant, feature, team)."
            )
        for key, value in items.items():
            check_text(key, "tag key", max_len=MAX_TAG_KEY)
            check_text(value, f"tag {key!r} value", empty=True)
        super().__init__(items)
        self._json: str | None = None

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> Tags:
        """``tags`` as ``Tags``, validated once (a ``Tags`` is returned as it is).

        Equal plain mappings share one ``Tags`` (and its JSON), so code that passes the same
        dict with every entry does not pay for checking and encoding it each time.
        """
        if type(tags) is Tags:
            return tags
        try:
            key = tuple(tags.items())
            interned = _INTERNED.get(key)
        except TypeError:  # unhashable values: refused by the check below
            key, interned = None, None
        if interned is None:
            interned = cls(tags)
            if key is not None:
                if len(_INTERNED) > 10_000:
                    _INTERNED.clear()
                _INTERNED[key] = interned
        return interned

    @property
    def json(self) -> str:
        """The tags as compact JSON with sorted keys, UTF-8 kept as is (computed once)."""
        encoded = self._json
        if encoded is None:
            encoded = json.dumps(self, sort_keys=True, ensure_ascii=False)
            self._json = encoded
        return encoded

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("Tags are read-only; build new ones: {**tags, 'key': 'value'}.")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (Tags, (dict(self),))

    def __repr__(self) -> str:
        return f"Tags({dict.__repr__(self)})"


EMPTY_TAGS = Tags()
_INTERNED: dict[tuple[tuple[str, str], ...], Tags] = {}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one model call, by class; never negative.

    ``input_tokens`` counts only uncached input: tokens read from or written to a prompt cache are
    counted in ``cache_read_tokens`` and ``cache_write_tokens`` (Bedrock's convention). Providers
    whose input count includes cached tokens convert at their boundary.
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with a one-hour TTL
    (priced apart; the rest had the default five minutes), and ``queries`` counts rerank queries,
    priced per query.

    >>> Usage(input_tokens=11_000, output_tokens=4_000).total_tokens
    15000
    >>> Usage(100, 10, cache_write_tokens=1_000, cache_write_1h_tokens=400).total_tokens
    1110
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    queries: int = 0

    def __post_init__(self) -> None:
        i, o, r, w = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
        )
        h, q = self.cache_write_1h_tokens, self.queries
        # One cheap test on the hot path; the loop below only runs to name the bad field.
        if (
            type(i) is int
            and type(o) is int
            and type(r) is int
            and type(w) is int
            and type(h) is int
            and type(q) is int
            and 0 <= i <= MAX_TOKENS
            and 0 <= o <= MAX_TOKENS
            and 0 <= r <= MAX_TOKENS
            and 0 <= w <= MAX_TOKENS
            and 0 <= h <= w
            and 0 <= q <= MAX_TOKENS
        ):
            return
        for name in _USAGE_FIELDS:
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value <= MAX_TOKENS
            ):
                raise ConfigError(
                    f"Usage.{name} must be a non-negative int of at most {MAX_TOKENS:,}, got "
                    f"{value!r}; token counts come from the provider's reply or an estimator."
                )
        raise ConfigError(
            f"Usage.cache_write_1h_tokens ({h}) exceeds cache_write_tokens ({w}); one-hour "
            "writes are part of all cache writes, so count them in cache_write_tokens too."
        )

    @property
    def total_tokens(self) -> int:
        """All tokens the call processed, cached or not."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.queries + other.queries,
        )


_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "queries",
)


@dataclass(frozen=True, slots=True)
class Request:
    """One request and what the stages have learned about it so far.

    Stages never mutate a request; they pass on ``dataclasses.replace(request, ...)``. Its id and
    tags are checked when it is made (:func:`check_text`, :class:`Tags`), so a bad one is a
    ``ConfigError`` before any model is called, never a failed write afterwards.
    """

    text: str
    id: str = field(default_factory=new_request_id)
    tags: Mapping[str, str] = field(default_factory=Tags)
    document: str | None = None
    intent: str | None = None
    confidence: float | None = None
    slots: Mapping[str, str] = field(default_factory=dict)
    facts: tuple[str, ...] = ()
    summary: str | None = None
    conversation: Conversation | None = None

    def __post_init__(self) -> None:
        _check_body(self.text, "Request text")
        check_text(self.id, "Request id")
        if self.document is None and not self.text.strip():
            # Nothing to answer: a model would be paid to reply to nothing.
            raise ConfigError(
                f"Request {self.id!r} has no text (got {self.text!r}) and no document: there is "
                "nothing to answer. Skip empty messages before making requests."
            )
        if type(self.tags) is not Tags:
            object.__setattr__(self, "tags", Tags.of(self.tags))
        if self.document is not None:
            _check_body(self.document, f"Request {self.id!r} document")
        if self.intent is not None:
            check_text(self.intent, f"Request {self.id!r} intent")
        if self.conversation is not None and type(self.conversation) is not Conversation:
            raise ConfigError(
                f"Request {self.id!r} conversation must be a Conversation, got "
                f"{type(self.conversation).__name__} {self.conversation!r:.60}."
            )


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation: who said it, what, its intent (a user's), and its request.

    >>> Turn("user", "Where is my order 10234? 🚚").role
    'user'
    """

    role: Role
    text: str
    intent: str | None = None
    request_id: str | None = None
    # Token counts of the text by model id, computed once: a History stage reads every kept
    # turn's count on every request of the conversation.
    counts: dict[str, int] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ConfigError(f"Turn role must be 'user' or 'assistant', got {self.role!r}.")
        _check_body(self.text, f"{self.role} turn text")
        if self.intent is not None:
            check_text(self.intent, "Turn intent")
        if self.request_id is not None:
            check_text(self.request_id, "Turn request_id")


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation so far: its id, its earlier turns, and the tags its requests carry.

    ``turns`` are the turns *before* the request that carries the conversation (whose text is
    the latest user turn). A :class:`~chainkit.stages.history.History` stage decides what of
    them the models are sent: from turn ``start`` on, verbatim, and ``summary`` in place of the
    first ``summarised`` turns. ``keep_text`` opts this conversation's texts in to being kept
    at rest in a durable ledger (off: only ids, turn numbers, token counts and digests).

    >>> c = Conversation("c-1", tags={"tenant": "acme"})
    >>> r = c.request("Where is my order 10234?", id="c-1/0")
    >>> c = c.after(Result(r, "It left the depot today.", "generate"))
    >>> [t.role for t in c.turns], c.turn_index
    (['user', 'assistant'], 1)
    """

    id: str
    turns: tuple[Turn, ...] = ()
    tags: Mapping[str, str] = field(default_factory=Tags)
    keep_text: bool = False
    summary: str | None = None
    summarised: int = 0
    start: int = 0
    # Model id -> (number of leading turns, their tokens): a History stage adds only the turns
    # after them, so a long conversation is not recounted on every request.
    totals: dict[str, tuple[int, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        check_text(self.id, "Conversation id")
        if type(self.turns) is not tuple:
            object.__setattr__(self, "turns", tuple(self.turns))
        for turn in self.turns:
            if type(turn) is not Turn:
                raise ConfigError(
                    f"Conversation {self.id!r} turns must be Turn records, got "
                    f"{type(turn).__name__} {turn!r:.60}."
                )
        if type(self.tags) is not Tags:
            object.__setattr__(self, "tags", Tags.of(self.tags))
        if type(self.keep_text) is not bool:
            raise ConfigError(f"Conversation keep_text must be a bool, got {self.keep_text!r}.")
        if self.summary is not None:
            _check_body(self.summary, f"Conversation {self.id!r} summary")
        n = len(self.turns)
        for name in ("summarised", "start"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= n:
                raise ConfigError(
                    f"Conversation {self.id!r} {name} must be an int within [0, {n}] (its "
                    f"number of turns), got {value!r}."
                )
        if self.start < self.summarised:
            raise ConfigError(
                f"Conversation {self.id!r}: start ({self.start}) is before summarised "
                f"({self.summarised}); turns in the summary are not also sent verbatim."
            )

    @property
    def turn_index(self) -> int:
        """The number of the next user turn (0 for the first): its user turns so far."""
        return sum(1 for t in self.turns if t.role == "user")

    @property
    def sent(self) -> tuple[Turn, ...]:
        """The turns the models are sent verbatim (from ``start`` on)."""
        return self.turns[self.start :]

    def request(self, text: str, *, id: str | None = None) -> Request:
        """The request for the next user turn, carrying this conversation and its tags."""
        if id is None:
            return Request(text, tags=self.tags, conversation=self)
        return Request(text, id=id, tags=self.tags, conversation=self)

    def after(self, result: Result) -> Conversation:
        """This conversation with the request's user turn and the answer appended.

        What stages decided on the way (a summary, the first turn still sent) comes from the
        request the answer carries, so the next turn goes on from it.
        """
        request = result.request
        seen = request.conversation if request.conversation is not None else self
        if seen.id != self.id:
            raise ConfigError(
                f"Result of request {request.id!r} belongs to conversation {seen.id!r}, not "
                f"{self.id!r}."
            )
        turns = (
            *self.turns,
            Turn("user", request.text, request.intent, request.id),
            Turn("assistant", result.text, request_id=request.id),
        )
        out = dataclasses.replace(
            self,
            turns=turns,
            summary=seen.summary,
            summarised=min(seen.summarised, len(self.turns)),
            start=min(seen.start, len(self.turns)),
        )
        out.totals.update(self.totals)  # its turns begin with these
        return out


@dataclass(frozen=True, slots=True)
class Result:
    """The answer to a request, and the stage (and model, if any) that produced it."""

    request: Request
    text: str
    stage: str
    model: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row: what one stage did for one request, what it spent and what it avoided.

    ``cost`` is ``None`` when the spend is unknown (an unpriced model, a call that failed after it
    was sent) and ``Decimal(0)`` when the stage was free. ``avoided_cost`` is what the pipeline's
    final model would have cost had this stage not answered; ``None`` when that is unknown.
    ``bound`` is the most the call could have cost (what was reserved for it): budgets count an
    unknown cost at its bound. ``id`` is unique: a store keeps one entry per id, however often it
    is written. Every field is checked here, so a bad entry fails where it is made.
    """

    request_id: str
    stage: str
    outcome: Outcome
    cost: Decimal | None
    model: str | None = None
    usage: Usage | None = None
    avoided_cost: Decimal | None = Decimal(0)
    estimated: bool = False
    latency_s: float = 0.0
    attempts: int = 0
    intent: str | None = None
    tags: Mapping[str, str] = field(default_factory=Tags)
    phase: Phase = "serve"
    time: datetime = field(default_factory=_now)
    id: str = field(default_factory=new_entry_id)
    bound: Decimal | None = None
    flags: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        check_text(self.request_id, "Entry request_id")
        check_text(self.stage, "Entry stage")
        check_text(self.id, "Entry id")
        if self.outcome not in OUTCOMES:
            raise ConfigError(f"Entry outcome {self.outcome!r} is not one of {sorted(OUTCOMES)}.")
        if self.phase not in PHASES:
            raise ConfigError(f"Entry phase {self.phase!r} is not one of {sorted(PHASES)}.")
        for name in ("cost", "avoided_cost", "bound"):
            value = getattr(self, name)
            checked = check_money(value, f"Entry {name}")
            if checked is not value:  # normalised (a subclass, trailing zeros)
                object.__setattr__(self, name, checked)
        if self.model is not None:
            check_text(self.model, "Entry model")
        if self.intent is not None:
            check_text(self.intent, "Entry intent")
        if self.usage is not None and type(self.usage) is not Usage:
            raise ConfigError(f"Entry usage must be a Usage or None, got {self.usage!r:.80}.")
        latency = self.latency_s
        if type(latency) is not float or not 0.0 <= latency <= MAX_LATENCY_S:
            if type(latency) is int and 0 <= latency <= MAX_LATENCY_S:
                object.__setattr__(self, "latency_s", float(latency))
            else:
                raise ConfigError(
                    f"Entry latency_s must be a number of seconds within [0, {MAX_LATENCY_S:,}], "
                    f"got {latency!r}."
                )
        if type(self.attempts) is not int or self.attempts < 0:
            raise ConfigError(f"Entry attempts must be a non-negative int, got {self.attempts!r}.")
        if type(self.estimated) is not bool:
            raise ConfigError(f"Entry estimated must be a bool, got {self.estimated!r}.")
        when = self.time
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise ConfigError(
                f"Entry time must be a timezone-aware datetime, got {when!r}; use "
                "datetime.now(UTC)."
            )
        if not _EARLIEST <= when <= _LATEST:
            raise ConfigError(
                f"Entry time {when.isoformat()} is outside {_EARLIEST.year}-{_LATEST.year}; "
                "a ledger entry records something that happened, in UTC or with an offset."
            )
        if type(self.tags) is not Tags:
            object.__setattr__(self, "tags", Tags.of(self.tags))
        if self.flags:
            unknown = set(self.flags) - FLAGS
            if unknown or type(self.flags) is not tuple:
                raise ConfigError(
                    f"Entry flags {self.flags!r}: must be a tuple of {sorted(FLAGS)}."
                )
        if self.note:
            check_text(self.note, "Entry note", max_len=1000)


def state_to_json(state: Request | Result, *, given: str | None = None) -> str:
    """A request or result as JSON, to save a pipeline's progress.

    A document equal to ``given`` (the one the caller will pass again on resuming) is not stored,
    only marked: long documents would otherwise be written once per stage.
    """

    def request(r: Request) -> dict[str, Any]:
        same = given is not None and r.document == given
        return {
            "text": r.text,
            "id": r.id,
            "tags": dict(r.tags),
            "document": None if same else r.document,
            "document_given": same,
            "intent": r.intent,
            "confidence": r.confidence,
            "slots": dict(r.slots),
            "facts": list(r.facts),
            "summary": r.summary,
            **({} if r.conversation is None else {"conversation": _conversation_json(r)}),
        }

    if isinstance(state, Result):
        return json.dumps(
            {
                "result": {"text": state.text, "stage": state.stage, "model": state.model},
                "request": request(state.request),
            }
        )
    return json.dumps({"request": request(state)})


def _conversation_json(r: Request) -> dict[str, Any]:
    c = r.conversation
    assert c is not None
    return {
        "id": c.id,
        "turns": [[t.role, t.text, t.intent, t.request_id] for t in c.turns],
        "tags": dict(c.tags),
        "keep_text": c.keep_text,
        "summary": c.summary,
        "summarised": c.summarised,
        "start": c.start,
    }


def state_from_json(text: str, *, given: str | None = None) -> Request | Result:
    """The request or result :func:`state_to_json` saved (``given``: the document passed in)."""
    data = json.loads(text)
    fields = data["request"]
    fields["facts"] = tuple(fields["facts"])
    if fields.get("conversation") is not None:
        c = fields["conversation"]
        c["turns"] = tuple(Turn(*t) for t in c["turns"])
        fields["conversation"] = Conversation(**c)
    if fields.pop("document_given", False):
        fields["document"] = given
    request = Request(**fields)
    if "result" in data:
        return Result(request=request, **data["result"])
    return request
