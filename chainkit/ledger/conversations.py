"""Conversations kept in a ledger: which request was which turn, its tokens, and (opted in) text.

By default a ledger keeps, per message of a conversation, only ids, positions, the user turn it
belongs to, the request id, token counts and a SHA-256 digest of the text: enough to report cost
per conversation and per turn index, and nothing a customer wrote. A conversation made with
``Conversation(..., keep_text=True)`` also keeps its texts (and its running summary), so that a
service can load it back (:meth:`ConversationStore.load`); those texts go with
``ledger.purge(before)``, ``chainkit ledger purge`` and a ledger's ``retention``, by the
conversation's last activity, as saved progress does.

A conversation is known by its ``tenant`` tag and its id: tenants ``acme`` and ``globex`` may
both have a conversation ``"1"``, and each is stored, loaded and reported apart (a conversation
without a tenant tag has the tenant ``""``). A turn's cost is every serving entry with its
request id and its tenant tag; a request id names one turn of one conversation per tenant, and a
turn that reuses another turn's request id is refused (``ConfigError``) before anything is spent,
so that no entry is counted for two turns.

After a purge, texts the service still holds in memory are not written back: a turn's text is
kept only when the turn is new to the ledger (its user message, or its answer the first time
it is recorded), and the running summary only while no turn of the conversation was purged
(it folds purged turns).

The in-memory :class:`~chainkit.ledger.Ledger` keeps the same records in the process;
:class:`~chainkit.ledger.SQLiteLedger` and :class:`~chainkit.ledger.PostgresLedger` keep them in
three tables (``conversations``, ``conversation_turns``, ``conversation_texts``) written in the
ledger's own transactions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import warnings
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

__all__ = [
    "ConversationStore",
    "PurgeIncomplete",
    "TurnCost",
    "TurnRecord",
    "conversations",
    "digest",
    "tenant_of",
]

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
    tenant: str = ""


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
    tenant: str = ""


def tenant_of(tags: Tags | dict[str, str] | Any) -> str:
    """The tenant a conversation (or an entry) belongs to: its ``tenant`` tag, or ``""``."""
    return str(tags.get("tenant", ""))


@dataclass(slots=True)
class _Memory:
    """The in-memory ledger's conversations (kept beside it, for the life of the process)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # (tenant, id) -> tags, summarised, summary digest, last activity
    meta: dict[tuple[str, str], tuple[Tags, int, str, datetime]] = field(default_factory=dict)
    turns: dict[tuple[str, str, int], TurnRecord] = field(default_factory=dict)
    texts: dict[tuple[str, str, int], str] = field(default_factory=dict)
    # (tenant, request id) -> (conversation id, turn): which turn a request id names
    requests: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)


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

        Texts are kept only if ``conversation.keep_text``, and only for a message new to the
        ledger or one whose text is still kept (a rerun of the same turn replaces it): texts a
        purge removed are not written back. The running summary is kept only while every
        earlier message's text is.

        Raises:
            ConfigError: a user turn reuses the request id of another turn of this tenant (its
                entries could not be told apart); nothing is written.
        """
        rows = list(records)
        now = self.ledger.clock().astimezone(UTC)
        keep = conversation.keep_text
        summary = conversation.summary
        summary_digest = "" if summary is None else digest(summary)
        tenant = tenant_of(conversation.tags)
        cid = conversation.id
        for r in rows:
            if r.conversation_id != cid:
                raise ConfigError(
                    f"Turn record of conversation {r.conversation_id!r} given with conversation "
                    f"{cid!r}."
                )
        rows = [dataclasses.replace(r, tenant=tenant) for r in rows]
        users = [(r.request_id, r.turn) for r in rows if r.role == "user"]
        if self._sql is None:
            m = self._memory
            with m.lock:
                for rid, turn in users:
                    _refuse_reuse(tenant, cid, rid, turn, m.requests.get((tenant, rid)))
                for rid, turn in users:
                    m.requests[tenant, rid] = (cid, turn)
                for r in rows:
                    key = (tenant, cid, r.position)
                    new = key not in m.turns
                    m.turns[key] = dataclasses.replace(r, text=None)
                    if keep and r.text is not None and (new or key in m.texts):
                        m.texts[key] = r.text
                whole = all(
                    (tenant, cid, t.position) in m.texts
                    for t in m.turns.values()
                    if t.tenant == tenant and t.conversation_id == cid
                )
                if keep and summary is not None and whole:
                    m.texts[tenant, cid, SUMMARY_POSITION] = summary
                m.meta[tenant, cid] = (
                    Tags.of(conversation.tags),
                    conversation.summarised,
                    summary_digest,
                    now,
                )
            return
        stamp = now.isoformat()
        tags = Tags.of(conversation.tags).json

        def write(db: Any) -> object:
            for rid, turn in users:
                found = db.execute(
                    "SELECT conversation_id, turn FROM conversation_turns WHERE tenant = ? AND "
                    "request_id = ? AND role = 'user' AND NOT (conversation_id = ? AND turn = ?)",
                    (tenant, rid, cid, turn),
                ).fetchone()
                if found is not None:
                    return (rid, turn, (str(found[0]), int(found[1])))  # refused: nothing written
            db.execute(
                "INSERT INTO conversations (tenant, id, tags, created, updated, summarised, "
                "summary_digest) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id) DO "
                "UPDATE SET tags = excluded.tags, updated = excluded.updated, "
                "summarised = excluded.summarised, summary_digest = excluded.summary_digest",
                (tenant, cid, tags, stamp, stamp, conversation.summarised, summary_digest),
            )
            for r in rows:
                new = (
                    db.execute(
                        "SELECT 1 FROM conversation_turns WHERE tenant = ? AND "
                        "conversation_id = ? AND position = ?",
                        (tenant, cid, r.position),
                    ).fetchone()
                    is None
                )
                db.execute(
                    f"INSERT INTO conversation_turns (tenant, {_TURN_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, conversation_id, "
                    "position) DO UPDATE SET role = excluded.role, turn = excluded.turn, "
                    "request_id = excluded.request_id, tokens = excluded.tokens, "
                    "digest = excluded.digest, history_tokens = excluded.history_tokens, "
                    "trimmed_tokens = excluded.trimmed_tokens, time = excluded.time",
                    (tenant, r.conversation_id, r.position, r.role, r.turn, r.request_id,
                     r.tokens, r.digest, r.history_tokens, r.trimmed_tokens,
                     r.time.astimezone(UTC).isoformat()),
                )  # fmt: skip
                if keep and r.text is not None:
                    if new:
                        _put_text(db, tenant, cid, r.position, r.text)
                    else:  # a rerun replaces a kept text; a purged one stays purged
                        db.execute(
                            "UPDATE conversation_texts SET text = ? WHERE tenant = ? AND "
                            "conversation_id = ? AND position = ?",
                            (r.text, tenant, cid, r.position),
                        )
            if keep and summary is not None:
                lost = db.execute(
                    "SELECT 1 FROM conversation_turns t WHERE t.tenant = ? AND "
                    "t.conversation_id = ? AND NOT EXISTS (SELECT 1 FROM conversation_texts x "
                    "WHERE x.tenant = t.tenant AND x.conversation_id = t.conversation_id AND "
                    "x.position = t.position) LIMIT 1",
                    (tenant, cid),
                ).fetchone()
                if lost is None:
                    _put_text(db, tenant, cid, SUMMARY_POSITION, summary)
            return None

        unit = _Write(run=write)
        self._sql._write(unit)
        if isinstance(unit.ran, tuple):
            rid, turn, other = unit.ran
            _refuse_reuse(tenant, cid, rid, turn, other)

    def check(self, request: Request) -> None:
        """Refuse ``request`` before it spends if its id names another turn of its tenant.

        Raises:
            ConfigError: the request id is already the id of another conversation's turn (or
                of another turn of this one) of the same tenant.
        """
        conversation = request.conversation
        if conversation is None:
            return
        tenant = tenant_of(conversation.tags)
        turn = conversation.turn_index
        other: tuple[str, int] | None
        if self._sql is None:
            with self._memory.lock:
                other = self._memory.requests.get((tenant, request.id))
        else:
            found = self._sql._read(
                "SELECT conversation_id, turn FROM conversation_turns WHERE tenant = ? AND "
                "request_id = ? AND role = 'user' AND NOT (conversation_id = ? AND turn = ?)",
                (tenant, request.id, conversation.id, turn),
            )
            other = (str(found[0][0]), int(found[0][1])) if found else None
        _refuse_reuse(tenant, conversation.id, request.id, turn, other)

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

        Ids, turn numbers, token counts and digests stay: they are what cost reports read. On
        SQLite the -wal file is then checkpointed and emptied; ``wal_clear`` says whether that
        could be done (a read in another connection that outlasts the wait holds it back).
        """
        if not isinstance(before, datetime) or before.tzinfo is None:
            raise ConfigError(
                f"purge(before=...) takes a timezone-aware datetime, got {before!r}; e.g. "
                "datetime(2026, 11, 1, tzinfo=UTC)."
            )
        if self._sql is None:
            m = self._memory
            with m.lock:
                old = {key for key, meta in m.meta.items() if meta[3] < before}
                gone = [key for key in m.texts if (key[0], key[1]) in old]
                for key in gone:
                    del m.texts[key]
            return len(gone)
        stamp = before.astimezone(UTC).isoformat()
        write = _Write(
            run=lambda db: int(
                db.execute(
                    "DELETE FROM conversation_texts WHERE EXISTS (SELECT 1 FROM conversations c "
                    "WHERE c.tenant = conversation_texts.tenant AND "
                    "c.id = conversation_texts.conversation_id AND c.updated < ?)",
                    (stamp,),
                ).rowcount
            )
        )
        self._sql._write(write)
        self.wal_clear = _clear_wal(self._sql)
        if not self.wal_clear:
            warnings.warn(
                f"Purged conversation texts from {self._sql.where}, but its -wal file still "
                f"holds copies: another connection kept reading for over {WAL_WAIT_S:g} s. "
                "They go at the next purge or when the last connection closes; end long reads "
                "and purge again.",
                PurgeIncomplete,
                stacklevel=2,
            )
        return write.ran if isinstance(write.ran, int) else 0

    wal_clear: bool = True
    """After :meth:`purge`: whether no copy of the deleted texts is left in a -wal file."""

    # -- reading -----------------------------------------------------------------------------

    def turns(
        self, conversation_id: str | None = None, *, tenant: str | None = None
    ) -> list[TurnRecord]:
        """Every kept message, by tenant, conversation and position.

        Args:
            conversation_id: only conversations with this id (``None``: every one).
            tenant: only this tenant's (``""``: conversations without a tenant tag; ``None``:
                every tenant's, each record naming its ``tenant``).
        """
        if self._sql is None:
            m = self._memory
            with m.lock:
                rows = [
                    dataclasses.replace(r, text=m.texts.get(key))
                    for key, r in m.turns.items()
                    if (conversation_id is None or r.conversation_id == conversation_id)
                    and (tenant is None or r.tenant == tenant)
                ]
            return sorted(rows, key=lambda r: (r.tenant, r.conversation_id, r.position))
        clauses, params = [], []
        if tenant is not None:
            clauses.append("t.tenant = ?")
            params.append(tenant)
        if conversation_id is not None:
            clauses.append("t.conversation_id = ?")
            params.append(conversation_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        found = self._sql._read(
            f"SELECT {', '.join('t.' + c for c in _TURN_COLUMNS.split(', '))}, x.text, t.tenant "
            "FROM conversation_turns t LEFT JOIN conversation_texts x ON x.tenant = t.tenant AND "
            f"x.conversation_id = t.conversation_id AND x.position = t.position{where} "
            "ORDER BY t.tenant, t.conversation_id, t.position",
            tuple(params),
        )
        return [_turn_row(row) for row in found]

    def load(self, conversation_id: str, *, tenant: str = "") -> Conversation | None:
        """The conversation as kept (texts, tags, summary), or ``None`` if the ledger has none.

        Args:
            conversation_id: the conversation's id.
            tenant: its ``tenant`` tag (``""``, the default: a conversation without one); a
                conversation of another tenant with the same id is never returned.

        Raises ``ConfigError`` if it was kept without its texts, or they were purged: there is
        nothing to send a model.
        """
        turns = self.turns(conversation_id, tenant=tenant)
        if self._sql is None:
            m = self._memory
            with m.lock:
                meta = m.meta.get((tenant, conversation_id))
                summary = m.texts.get((tenant, conversation_id, SUMMARY_POSITION))
            if meta is None:
                return None
            tags, summarised, summary_digest = meta[0], meta[1], meta[2]
        else:
            rows = self._sql._read(
                "SELECT tags, summarised, summary_digest FROM conversations WHERE tenant = ? "
                "AND id = ?",
                (tenant, conversation_id),
            )
            if not rows:
                return None
            tags = Tags.of(_json_tags(rows[0][0]))
            summarised, summary_digest = int(rows[0][1]), str(rows[0][2])
            found = self._sql._read(
                "SELECT text FROM conversation_texts WHERE tenant = ? AND conversation_id = ? "
                "AND position = ?",
                (tenant, conversation_id, SUMMARY_POSITION),
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
        """Each user turn's cost: the serving entries of its request id and tenant tag.

        Every entry counts for one turn at most, so these costs sum to the ledger's cost of the
        entries they cover (were a request id shared, as a ledger written before reuse was
        refused may hold, its entries go to the first turn that has it).
        """
        users = [r for r in self.turns() if r.role == "user"]
        wanted = {(r.tenant, r.request_id) for r in users}
        grouped: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        if self._sql is None:
            for e in self.ledger.iter_entries():
                key = (tenant_of(e.tags), e.request_id)
                if e.phase == "serve" and key in wanted:
                    grouped.setdefault(key, []).append(_entry_row(e))
        else:
            rows = self._sql._read(
                "SELECT e.request_id, e.tags, e.cost, e.avoided_cost, e.input_tokens, "
                "e.output_tokens, e.cache_read_tokens, e.cache_write_tokens FROM entries e "
                "WHERE e.phase = 'serve' AND e.request_id IN (SELECT t.request_id FROM "
                "conversation_turns t WHERE t.role = 'user')"
            )
            for row in rows:
                key = (tenant_of(_json_tags(row[1])), str(row[0]))
                if key in wanted:
                    grouped.setdefault(key, []).append(tuple(row[2:]))
        out = []
        for r in users:
            # The first turn with a (tenant, request id) takes its entries; a later one none.
            entries = grouped.pop((r.tenant, r.request_id), [])
            out.append(_cost(r, _sums_rows(entries)))
        return out


class PurgeIncomplete(UserWarning):
    """A purge deleted texts that an SQLite -wal file still holds (a reader held it back)."""


def _refuse_reuse(
    tenant: str, cid: str, request_id: str, turn: int, other: tuple[str, int] | None
) -> None:
    if other is None or other == (cid, turn):
        return
    whose = f" of tenant {tenant!r}" if tenant else ""
    raise ConfigError(
        f"Request id {request_id!r} of turn {turn} of conversation {cid!r} is already the id of "
        f"turn {other[1]} of conversation {other[0]!r}{whose}: a turn's cost is the entries of "
        "its request id, so each turn needs its own. Give each request a unique id, e.g. "
        "id=f'{conversation.id}/{turn}'."
    )


def _clear_wal(ledger: SQLLedger) -> bool:
    """Empty an SQLite ledger's -wal file after a purge; whether it was (True: no -wal)."""
    truncate = getattr(ledger, "_truncate_wal", None)
    if truncate is None:
        return True
    return bool(truncate(wait_s=WAL_WAIT_S))


WAL_WAIT_S = 5.0
"""How long a purge waits for reads of an SQLite ledger to end before leaving the -wal as is."""


def _put_text(db: Any, tenant: str, conversation_id: str, position: int, text: str) -> None:
    db.execute(
        "INSERT INTO conversation_texts (tenant, conversation_id, position, text) VALUES "
        "(?, ?, ?, ?) ON CONFLICT (tenant, conversation_id, position) DO UPDATE SET "
        "text = excluded.text",
        (tenant, conversation_id, position, text),
    )


def _json_tags(text: str) -> dict[str, str]:
    return dict(json.loads(text))


def _gaps(turns: list[TurnRecord]) -> list[int]:
    return [i for i, r in enumerate(turns) if r.position != i]


def _turn_row(row: Any) -> TurnRecord:
    (cid, position, role, turn, rid, tokens, dig, history, trimmed, when, text, tenant) = row
    return TurnRecord(
        str(cid), int(position), role, int(turn), str(rid), int(tokens), str(dig),
        datetime.fromisoformat(when), int(history), int(trimmed),
        None if text is None else str(text), str(tenant),
    )  # fmt: skip


_Sums = tuple[Decimal | None, Decimal | None, int, int, int, int]


def _entry_row(e: Entry) -> tuple[Any, ...]:
    return (
        None if e.cost is None else str(e.cost),
        None if e.avoided_cost is None else str(e.avoided_cost),
        None if e.usage is None else e.usage.input_tokens,
        None if e.usage is None else e.usage.output_tokens,
        None if e.usage is None else e.usage.cache_read_tokens,
        None if e.usage is None else e.usage.cache_write_tokens,
    )


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
        r.history_tokens, r.trimmed_tokens, r.tenant,
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
