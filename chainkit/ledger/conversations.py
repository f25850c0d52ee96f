"""Conversations kept in a ledger: which request was which turn, its tokens, and (opted in) text.

By default a ledger keeps, per message of a conversation, only ids, positions, the user turn it
belongs to, the request id, token counts and a SHA-256 digest of the text: enough to report cost
per conversation and per turn index, and nothing a customer wrote. A conversation made with
``Conversation(..., keep_text=True)`` also keeps its texts (and its running summary), so that a
service can load it back (:meth:`ConversationStore.load`); those texts go with
``ledger.purge(before)``, ``chainkit ledger purge`` and a ledger's ``retention``, by the
conversation's last activity, as saved progress does.

The in-memory :class:`~chainkit.ledger.Ledger` keeps the same records in the process;
:class:`~chainkit.ledger.SQLiteLedger` and :class:`~chainkit.ledger.PostgresLedger` keep them in
three tables (``conversations``, ``conversation_turns``, ``conversation_texts``) written in the
ledger's own transactions.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from chainkit.errors import ConfigError
from chainkit.ledger.core import Ledger
from chainkit.ledger.sql import SQLLedger, _Write
from chainkit.money import CONTEXT
from chainkit.records import Conversation, Entry, Request, Result, Role, Tags, Turn

__all__ = ["ConversationStore", "TurnCost", "TurnRecord", "conversations", "digest"]

SUMMARY_POSITION = -1
"""Where a conversation's running summary is kept among its texts."""


def digest(text: str) -> str:
    """SHA-256 of ``text`` (UTF-8, lone surrogates escaped): what is kept instead of the text.

    >>> digest("こんにちは 🚚")[:12]
    'b01c1f3d14b5'
    """
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What a ledger keeps of one message of a conversation.

    ``position`` is the message's index among the conversation's turns, ``turn`` the user turn
    it belongs to (0 for the first question and its answer), ``request_id`` that turn's request.
    For a user message, ``history_tokens`` counts what the models were sent of the earlier
    turns (verbatim and as a summary) and ``trimmed_tokens`` what a ``History`` policy left out.
    ``text`` is ``None`` unless the conversation keeps its texts.
    """

    conversation_id: str
    position: int
    role: Role
    turn: int
    request_id: str
    tokens: int
    digest: str
    time: datetime
    history_tokens: int = 0
    trimmed_tokens: int = 0
    text: str | None = None


@dataclass(frozen=True, slots=True)
class TurnCost:
    """What one user turn of a conversation cost: every entry of its request, summed exactly.

    ``cost`` is ``None`` when any entry's cost is unknown (then ``unknown`` counts them).
    """

    conversation_id: str
    turn: int
    request_id: str
    cost: Decimal | None
    avoided_cost: Decimal | None
    input_tokens: int
    output_tokens: int
    calls: int
    unknown: int
    history_tokens: int
    trimmed_tokens: int


@dataclass(slots=True)
class _Memory:
    """The in-memory ledger's conversations (kept beside it, for the life of the process)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    meta: dict[str, tuple[Tags, int, str, datetime]] = field(default_factory=dict)
    turns: dict[tuple[str, int], TurnRecord] = field(default_factory=dict)
    texts: dict[tuple[str, int], str] = field(default_factory=dict)


_MEMORY: weakref.WeakKeyDictionary[Ledger, _Memory] = weakref.WeakKeyDictionary()
_MEMORY_LOCK = threading.Lock()

_TURN_COLUMNS = (
    "conversation_id, position, role, turn, request_id, tokens, digest, history_tokens, "
    "trimmed_tokens, time"
)


class ConversationStore:
    """A ledger's conversations: record turns, load a kept conversation, list turns and costs.

    Get one with :func:`conversations`.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._sql = ledger if isinstance(ledger, SQLLedger) else None
        if self._sql is None:
            with _MEMORY_LOCK:
                memory = _MEMORY.get(ledger)
                if memory is None:
                    memory = _MEMORY[ledger] = _Memory()
            self._memory = memory

    # -- writing -----------------------------------------------------------------------------

    def record(self, conversation: Conversation, records: Iterable[TurnRecord]) -> None:
        """Keep ``records`` (a turn's messages) and the conversation's tags and summary state.

        Texts are kept only if ``conversation.keep_text``; a record written again replaces the
        earlier one (a rerun of the same turn).
        """
        rows = list(records)
        now = self.ledger.clock().astimezone(UTC)
        keep = conversation.keep_text
        summary = conversation.summary
        summary_digest = "" if summary is None else digest(summary)
        for r in rows:
            if r.conversation_id != conversation.id:
                raise ConfigError(
                    f"Turn record of conversation {r.conversation_id!r} given with conversation "
                    f"{conversation.id!r}."
                )
        if self._sql is None:
            m = self._memory
            with m.lock:
                m.meta[conversation.id] = (
                    Tags.of(conversation.tags),
                    conversation.summarised,
                    summary_digest,
                    now,
                )
                for r in rows:
                    m.turns[r.conversation_id, r.position] = r
                    if keep and r.text is not None:
                        m.texts[r.conversation_id, r.position] = r.text
                if keep and summary is not None:
                    m.texts[conversation.id, SUMMARY_POSITION] = summary
            return
        stamp = now.isoformat()
        tags = Tags.of(conversation.tags).json

        def write(db: Any) -> None:
            db.execute(
                "INSERT INTO conversations (id, tags, created, updated, summarised, "
                "summary_digest) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "tags = excluded.tags, updated = excluded.updated, "
                "summarised = excluded.summarised, summary_digest = excluded.summary_digest",
                (conversation.id, tags, stamp, stamp, conversation.summarised, summary_digest),
            )
            for r in rows:
                db.execute(
                    f"INSERT INTO conversation_turns ({_TURN_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id, position) DO "
                    "UPDATE SET role = excluded.role, turn = excluded.turn, "
                    "request_id = excluded.request_id, tokens = excluded.tokens, "
                    "digest = excluded.digest, history_tokens = excluded.history_tokens, "
                    "trimmed_tokens = excluded.trimmed_tokens, time = excluded.time",
                    (r.conversation_id, r.position, r.role, r.turn, r.request_id, r.tokens,
                     r.digest, r.history_tokens, r.trimmed_tokens, r.time.astimezone(UTC)
                     .isoformat()),
                )  # fmt: skip
                if keep and r.text is not None:
                    _put_text(db, r.conversation_id, r.position, r.text)
            if keep and summary is not None:
                _put_text(db, conversation.id, SUMMARY_POSITION, summary)

        self._sql._write(_Write(run=write))

    def record_reply(self, result: Result) -> None:
        """Keep the answer to a conversation's turn now (``History`` keeps it with the next turn).

        A no-op for a result whose request has no conversation.
        """
        request = result.request
        conversation = request.conversation
        if conversation is None:
            return
        from chainkit.tokens import count_tokens

        record = TurnRecord(
            conversation.id, len(conversation.turns) + 1, "assistant", conversation.turn_index,
            request.id, count_tokens(result.text, result.model or ""), digest(result.text),
            self.ledger.clock().astimezone(UTC),
            text=result.text if conversation.keep_text else None,
        )  # fmt: skip
        self.record(conversation, [record])

    def purge(self, before: datetime) -> int:
        """Delete the kept texts of conversations last active before ``before``; return how many.

        Ids, turn numbers, token counts and digests stay: they are what cost reports read.
        """
        if not isinstance(before, datetime) or before.tzinfo is None:
            raise ConfigError(
                f"purge(before=...) takes a timezone-aware datetime, got {before!r}; e.g. "
                "datetime(2026, 11, 1, tzinfo=UTC)."
            )
        if self._sql is None:
            m = self._memory
            with m.lock:
                old = {cid for cid, meta in m.meta.items() if meta[3] < before}
                gone = [key for key in m.texts if key[0] in old]
                for key in gone:
                    del m.texts[key]
            return len(gone)
        stamp = before.astimezone(UTC).isoformat()
        write = _Write(
            run=lambda db: int(
                db.execute(
                    "DELETE FROM conversation_texts WHERE conversation_id IN (SELECT id FROM "
                    "conversations WHERE updated < ?)",
                    (stamp,),
                ).rowcount
            )
        )
        self._sql._write(write)
        truncate = getattr(self._sql, "_truncate_wal", None)
        if truncate is not None:  # SQLite: the -wal file still holds the deleted texts
            truncate()
        return write.ran if isinstance(write.ran, int) else 0

    # -- reading -----------------------------------------------------------------------------

    def turns(self, conversation_id: str | None = None) -> list[TurnRecord]:
        """Every kept message (of one conversation, or all), by conversation and position."""
        if self._sql is None:
            m = self._memory
            with m.lock:
                rows = [
                    _with_text(r, m.texts.get((r.conversation_id, r.position)))
                    for r in m.turns.values()
                    if conversation_id is None or r.conversation_id == conversation_id
                ]
            return sorted(rows, key=lambda r: (r.conversation_id, r.position))
        where, params = ("", ()) if conversation_id is None else (
            " WHERE t.conversation_id = ?", (conversation_id,))  # fmt: skip
        found = self._sql._read(
            f"SELECT {', '.join('t.' + c for c in _TURN_COLUMNS.split(', '))}, x.text FROM "
            "conversation_turns t LEFT JOIN conversation_texts x ON "
            f"x.conversation_id = t.conversation_id AND x.position = t.position{where} "
            "ORDER BY t.conversation_id, t.position",
            params,
        )
        return [_turn_row(row) for row in found]

    def load(self, conversation_id: str) -> Conversation | None:
        """The conversation as kept (texts, tags, summary), or ``None`` if the ledger has none.

        Raises ``ConfigError`` if it was kept without its texts, or they were purged: there is
        nothing to send a model.
        """
        turns = self.turns(conversation_id)
        if self._sql is None:
            m = self._memory
            with m.lock:
                meta = m.meta.get(conversation_id)
                summary = m.texts.get((conversation_id, SUMMARY_POSITION))
            if meta is None:
                return None
            tags, summarised, summary_digest = meta[0], meta[1], meta[2]
        else:
            rows = self._sql._read(
                "SELECT tags, summarised, summary_digest FROM conversations WHERE id = ?",
                (conversation_id,),
            )
            if not rows:
                return None
            tags = Tags.of(_json_tags(rows[0][0]))
            summarised, summary_digest = int(rows[0][1]), str(rows[0][2])
            found = self._sql._read(
                "SELECT text FROM conversation_texts WHERE conversation_id = ? AND position = ?",
                (conversation_id, SUMMARY_POSITION),
            )
            summary = str(found[0][0]) if found else None
        missing = [r.position for r in turns if r.text is None]
        if missing or (summary_digest and summary is None) or _gaps(turns):
            raise ConfigError(
                f"Conversation {conversation_id!r} is in the ledger without the texts of turns "
                f"{missing[:5] or _gaps(turns)[:5] or ['summary']}: it was not kept with "
                "Conversation(..., keep_text=True), or its texts were purged. Its costs are "
                "still reported; start a new conversation to go on."
            )
        out = tuple(Turn(r.role, r.text or "", request_id=r.request_id or None) for r in turns)
        if summary is None:
            summarised = 0
        summarised = min(summarised, len(out))
        return Conversation(
            conversation_id,
            out,
            tags=tags,
            keep_text=True,
            summary=summary,
            summarised=summarised,
            start=summarised,
        )

    def costs(self) -> list[TurnCost]:
        """Each user turn's cost (every serving entry of its request), by conversation and turn."""
        users = [r for r in self.turns() if r.role == "user"]
        if self._sql is None:
            wanted = {r.request_id for r in users}
            by_request: dict[str, list[Entry]] = {}
            for e in self.ledger.iter_entries():
                if e.request_id in wanted and e.phase == "serve":
                    by_request.setdefault(e.request_id, []).append(e)
            return [_cost(r, _sums(by_request.get(r.request_id, ()))) for r in users]
        rows = self._sql._read(
            "SELECT t.request_id, e.cost, e.avoided_cost, e.input_tokens, e.output_tokens, "
            "e.cache_read_tokens, e.cache_write_tokens FROM conversation_turns t "
            "JOIN entries e ON e.request_id = t.request_id "
            "WHERE t.role = 'user' AND e.phase = 'serve'"
        )
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(str(row[0]), []).append(row[1:])
        return [_cost(r, _sums_rows(grouped.get(r.request_id, ()))) for r in users]


def _put_text(db: Any, conversation_id: str, position: int, text: str) -> None:
    db.execute(
        "INSERT INTO conversation_texts (conversation_id, position, text) VALUES (?, ?, ?) "
        "ON CONFLICT (conversation_id, position) DO UPDATE SET text = excluded.text",
        (conversation_id, position, text),
    )


def _json_tags(text: str) -> dict[str, str]:
    return dict(json.loads(text))


def _gaps(turns: list[TurnRecord]) -> list[int]:
    return [i for i, r in enumerate(turns) if r.position != i]


def _with_text(r: TurnRecord, text: str | None) -> TurnRecord:
    return TurnRecord(
        r.conversation_id, r.position, r.role, r.turn, r.request_id, r.tokens, r.digest,
        r.time, r.history_tokens, r.trimmed_tokens, text,
    )  # fmt: skip


def _turn_row(row: Any) -> TurnRecord:
    (cid, position, role, turn, rid, tokens, dig, history, trimmed, when, text) = row
    return TurnRecord(
        str(cid), int(position), role, int(turn), str(rid), int(tokens), str(dig),
        datetime.fromisoformat(when), int(history), int(trimmed),
        None if text is None else str(text),
    )  # fmt: skip


_Sums = tuple[Decimal | None, Decimal | None, int, int, int, int]


def _sums(entries: Iterable[Entry]) -> _Sums:
    rows = [
        (
            None if e.cost is None else str(e.cost),
            None if e.avoided_cost is None else str(e.avoided_cost),
            None if e.usage is None else e.usage.input_tokens,
            None if e.usage is None else e.usage.output_tokens,
            None if e.usage is None else e.usage.cache_read_tokens,
            None if e.usage is None else e.usage.cache_write_tokens,
        )
        for e in entries
    ]
    return _sums_rows(rows)


def _sums_rows(rows: Iterable[tuple[Any, ...]]) -> _Sums:
    cost: Decimal = Decimal(0)
    avoided: Decimal | None = Decimal(0)
    unknown = calls = inputs = outputs = 0
    with_context = CONTEXT.copy()
    for c, a, i, o, r, w in rows:
        calls += 1
        if c is None:
            unknown += 1
        else:
            cost = with_context.add(cost, Decimal(c))
        avoided = None if a is None or avoided is None else with_context.add(avoided, Decimal(a))
        # Input the model read, cached or not: what a longer history makes grow.
        inputs += int(i or 0) + int(r or 0) + int(w or 0)
        outputs += int(o or 0)
    return (None if unknown else cost), avoided, inputs, outputs, calls, unknown


def _cost(r: TurnRecord, sums: _Sums) -> TurnCost:
    cost, avoided, inputs, outputs, calls, unknown = sums
    return TurnCost(
        r.conversation_id, r.turn, r.request_id, cost, avoided, inputs, outputs, calls, unknown,
        r.history_tokens, r.trimmed_tokens,
    )  # fmt: skip


def conversations(ledger: Ledger) -> ConversationStore:
    """The conversations kept in ``ledger`` (any ledger: in memory, SQLite, PostgreSQL)."""
    if not isinstance(ledger, Ledger):
        raise ConfigError(f"conversations() takes a Ledger, got {type(ledger).__name__}.")
    return ConversationStore(ledger)


def turn_records(
    request: Request,
    *,
    model_id: str,
    history_tokens: int,
    trimmed_tokens: int,
    now: datetime,
) -> Iterator[TurnRecord]:
    """The records of ``request``'s turn: the previous answer (if any), then the user's message.

    Token counts are for ``model_id`` (the model the history is sent to).
    """
    from chainkit.tokens import count_tokens

    conversation = request.conversation
    assert conversation is not None
    turns = conversation.turns
    index = conversation.turn_index
    keep = conversation.keep_text
    if turns and turns[-1].role == "assistant":
        last = turns[-1]
        yield TurnRecord(
            conversation.id, len(turns) - 1, "assistant", max(0, index - 1),
            last.request_id or "", count_tokens(last.text, model_id), digest(last.text), now,
            text=last.text if keep else None,
        )  # fmt: skip
    yield TurnRecord(
        conversation.id, len(turns), "user", index, request.id,
        count_tokens(request.text, model_id), digest(request.text), now,
        history_tokens, trimmed_tokens, request.text if keep else None,
    )  # fmt: skip
