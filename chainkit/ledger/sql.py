"""What every SQL ledger shares: durable writes with group commit, roll-up cells, budgets.

A store keeps one entry per id. Every :meth:`SQLLedger.record` returns once its entry is
committed; threads that record at the same moment share one transaction, written by the ledger's
writer thread. A failed write keeps its entries pending in the process and raises
:class:`~chainkit.errors.LedgerError`; the next write, :meth:`~SQLLedger.flush` or ``close()``
stores them, once each.

Aggregations fold roll-up *cells* (sums per stage, model, intent, outcome, phase, day, flags and
tag set), kept in the store and brought up to date by the writer when it is idle and by every
read, and count distinct requests in SQL; no aggregation loads every entry. Budgets are decided
inside the writer's transaction, which holds the store's single write lock.

The SQL is written once, with ``?`` placeholders and ``ON CONFLICT`` upserts; a subclass opens
the store and says how a write transaction takes its lock (:class:`SQLiteLedger`,
:class:`PostgresLedger`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from chainkit.errors import BudgetExceeded, ConfigError, LedgerError
from chainkit.ledger.budgets import (
    Budget,
    BudgetEvent,
    BudgetState,
    Hold,
    charge,
    check,
    check_reservation,
    settle,
)
from chainkit.ledger.budgets import hold as hold_states
from chainkit.ledger.core import (
    Cell,
    CellKey,
    Ledger,
    RequestCosts,
    Totals,
    VariantSums,
    fold,
    fold_groups,
    latency_bucket,
    observed,
    variant_sums,
)
from chainkit.ledger.sqlbook import SQLBook, define, events_of, read_budgets
from chainkit.money import CONTEXT, MIN_EXPONENT, to_units
from chainkit.records import (
    Entry,
    Request,
    Result,
    Tags,
    Usage,
    check_text,
    new_entry_id,
    state_from_json,
    state_to_json,
)

__all__ = ["CONVERSATION_DDL", "CONVERSATION_DDL_1", "Progress", "SQLLedger"]

# Conversations (chainkit.ledger.conversations): metadata always, texts only when opted in, in
# their own table so that a purge deletes rows rather than blanking columns. A conversation is
# keyed by its tenant tag and its id: two tenants may both have a conversation "1".
CONVERSATION_DDL = (
    "CREATE TABLE conversations (tenant TEXT NOT NULL DEFAULT '', id TEXT NOT NULL, "
    "tags TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, "
    "summarised BIGINT NOT NULL DEFAULT 0, summary_digest TEXT NOT NULL DEFAULT '', "
    "PRIMARY KEY (tenant, id))",
    "CREATE INDEX conversations_updated ON conversations (updated)",
    "CREATE TABLE conversation_turns (tenant TEXT NOT NULL DEFAULT '', "
    "conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
    "role TEXT NOT NULL, turn BIGINT NOT NULL, request_id TEXT NOT NULL, "
    "tokens BIGINT NOT NULL, digest TEXT NOT NULL, history_tokens BIGINT NOT NULL, "
    "trimmed_tokens BIGINT NOT NULL, time TEXT NOT NULL, "
    "PRIMARY KEY (tenant, conversation_id, position))",
    "CREATE INDEX conversation_turns_request ON conversation_turns (tenant, request_id)",
    "CREATE TABLE conversation_texts (tenant TEXT NOT NULL DEFAULT '', "
    "conversation_id TEXT NOT NULL, position BIGINT NOT NULL, text TEXT NOT NULL, "
    "PRIMARY KEY (tenant, conversation_id, position))",
)

# The first form of those tables (keyed by id alone), as the migrations that made it ran.
CONVERSATION_DDL_1 = (
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, tags TEXT NOT NULL, "
    "created TEXT NOT NULL, updated TEXT NOT NULL, summarised BIGINT NOT NULL DEFAULT 0, "
    "summary_digest TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX conversations_updated ON conversations (updated)",
    "CREATE TABLE conversation_turns (conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
    "role TEXT NOT NULL, turn BIGINT NOT NULL, request_id TEXT NOT NULL, "
    "tokens BIGINT NOT NULL, digest TEXT NOT NULL, history_tokens BIGINT NOT NULL, "
    "trimmed_tokens BIGINT NOT NULL, time TEXT NOT NULL, "
    "PRIMARY KEY (conversation_id, position))",
    "CREATE INDEX conversation_turns_request ON conversation_turns (request_id)",
    "CREATE TABLE conversation_texts (conversation_id TEXT NOT NULL, position BIGINT NOT NULL, "
    "text TEXT NOT NULL, PRIMARY KEY (conversation_id, position))",
)

_PICO = 12  # money is also kept as an integer count of 10^-12 USD, which SQL sums exactly
_UNITS_PER_PICO = 10 ** (-MIN_EXPONENT - _PICO)  # picodollars to chainkit's 1e-24 USD units


def _pico(amount: Decimal | None) -> int | None:
    """``amount`` in picodollars if that is exact, else ``None`` (then Python sums the text)."""
    if amount is None:
        return None
    if not amount:
        return 0  # most entries (canned, passed) cost nothing
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -_PICO:
        pico = int(amount.scaleb(_PICO, CONTEXT))  # exact: only the exponent moves
        # Over $9.2 million does not fit SQLite's 64 bits: summed from the text instead.
        return pico if pico < _INT64 else None
    return None


_INT64 = 2**63


_WRITE_COLUMNS = [
    "uid",
    "request_id",
    "stage",
    "outcome",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "queries",
    "cost",
    "avoided_cost",
    "bound",
    "estimated",
    "latency_s",
    "attempts",
    "intent",
    "tags",
    "phase",
    "time",
    "flags",
    "note",
    "cost_pico",
    "avoided_pico",
    "day",
]
_READ_COLUMNS = _WRITE_COLUMNS[:23]
_FOLD_SLICE = 5_000  # entries folded into the cells per idle transaction
_LULL_S = 0.05  # no write for this long: a lull, when the writer folds
_INSERT = (
    f"INSERT INTO entries ({', '.join(_WRITE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_WRITE_COLUMNS))}) ON CONFLICT (uid) DO NOTHING"
)
_UPDATE = f"UPDATE entries SET {', '.join(c + ' = ?' for c in _WRITE_COLUMNS[1:])} WHERE uid = ?"
_ZERO = timedelta(0)


def _to_sql(e: Entry) -> tuple[Any, ...]:
    # Built directly, not through entry_row: this is the hot path of every write.
    u = e.usage
    cost, avoided, bound = e.cost, e.avoided_cost, e.bound
    when = e.time
    iso = when.isoformat()
    # The UTC day is the ISO text's first ten characters when the time is in UTC already.
    day = iso[:10] if when.utcoffset() == _ZERO else when.astimezone(UTC).date().isoformat()
    return (
        e.id,
        e.request_id,
        e.stage,
        e.outcome,
        e.model,
        None if u is None else u.input_tokens,
        None if u is None else u.output_tokens,
        None if u is None else u.cache_read_tokens,
        None if u is None else u.cache_write_tokens,
        None if u is None else u.cache_write_1h_tokens,
        None if u is None else u.queries,
        None if cost is None else str(cost),
        None if avoided is None else str(avoided),
        None if bound is None else str(bound),
        int(e.estimated),
        e.latency_s,
        e.attempts,
        e.intent,
        Tags.of(e.tags).json,
        e.phase,
        iso,
        ",".join(e.flags),
        e.note,
        _pico(cost),
        _pico(avoided),
        day,
    )


def _must_land(w: _Write) -> bool:
    """Whether a write that failed on an unwell store is kept to be retried (see ``_serve``)."""
    return bool(
        w.entries or w.settle or w.release or w.save or w.reply or w.job or w.release_claim
        or w.run
    )  # fmt: skip


def _save(db: Any, save: _Save) -> None:
    """Write a request's progress (in the open transaction).

    A claimed request's row exists from its claim on, so it is only ever updated: if a purge
    removed it meanwhile, it stays removed, and a rerun is refused rather than paid twice.
    """
    if save.stage < 0:  # a paid call of the step: the request is still alive
        db.execute(
            "UPDATE checkpoints SET updated = ? WHERE request_id = ?",
            (save.now, save.request_id),
        )
    elif save.claimed:
        db.execute(
            "UPDATE checkpoints SET stage = ?, state = ?, fingerprint = ?, updated = ?, done = ?, "
            "owner = CASE WHEN ? = 1 THEN '' ELSE owner END WHERE request_id = ?",
            (save.stage, save.state, save.fingerprint, save.now, int(save.done),
             int(save.done or save.release), save.request_id),
        )  # fmt: skip
    else:
        db.execute(
            "INSERT INTO checkpoints (request_id, stage, state, fingerprint, updated, done) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET "
            "stage = excluded.stage, state = excluded.state, fingerprint = excluded.fingerprint, "
            "updated = excluded.updated, done = excluded.done",
            (save.request_id, save.stage, save.state, save.fingerprint, save.now, int(save.done)),
        )
    if save.release and save.stage < 0:
        db.execute("UPDATE checkpoints SET owner = '' WHERE request_id = ?", (save.request_id,))
    if save.done:
        db.execute("DELETE FROM replies WHERE request_id = ?", (save.request_id,))
    elif save.clear_step is not None:
        db.execute(
            "DELETE FROM replies WHERE request_id = ? AND step = ?",
            (save.request_id, save.clear_step),
        )


_PROGRESS = "stage, state, fingerprint, done, updated, owner"


def _progress(row: Sequence[Any]) -> Progress:
    stage, state, print_, done, updated, owner = row
    return Progress(int(stage), str(state), str(print_), bool(done), str(updated), str(owner))


def _claim(db: Any, c: _Claim) -> None:
    """Decide a claim in the open write transaction (see ``SQLLedger.claim``)."""
    if c.restart:
        db.execute("DELETE FROM checkpoints WHERE request_id = ?", (c.request_id,))
        db.execute("DELETE FROM replies WHERE request_id = ?", (c.request_id,))
    row = db.execute(
        f"SELECT {_PROGRESS} FROM checkpoints WHERE request_id = ?", (c.request_id,)
    ).fetchone()
    if row is None:
        if not c.restart:
            c.entries = int(
                db.execute(
                    "SELECT COUNT(*) FROM entries WHERE request_id = ?", (c.request_id,)
                ).fetchone()[0]
            )
            if c.entries:
                return
        db.execute(
            "INSERT INTO checkpoints (request_id, stage, state, fingerprint, updated, done, owner) "
            "VALUES (?, -1, '', ?, ?, 0, ?)",
            (c.request_id, c.fingerprint, c.now, c.owner),
        )
        c.claimed = True
        return
    c.row = saved = _progress(row)
    if saved.done:
        return
    held = saved.owner and saved.owner != c.owner and saved.updated >= c.stale_before
    if held and _alive(saved.owner):
        c.busy = saved
        return
    db.execute(
        "UPDATE checkpoints SET owner = ?, updated = ? WHERE request_id = ?",
        (c.owner, c.now, c.request_id),
    )
    c.claimed = True


def _purge(db: Any, before: str) -> tuple[int, int]:
    """Delete progress last active before ``before``, with all its replies; orphan replies too."""
    replies = db.execute(
        "DELETE FROM replies WHERE request_id IN (SELECT request_id FROM checkpoints WHERE "
        "updated < ?) OR (created < ? AND request_id NOT IN (SELECT request_id FROM checkpoints))",
        (before, before),
    ).rowcount
    gone = db.execute("DELETE FROM checkpoints WHERE updated < ?", (before,)).rowcount
    return int(gone), int(replies)


def _alive(owner: str) -> bool:
    """Whether the run that claimed a request may still be running (see ``SQLLedger.claim``)."""
    host, _, rest = owner.partition(" pid ")
    pid_text = rest.split(" ", 1)[0]
    if host != _HOST or not pid_text.isdigit():
        return True  # another host: only its silence (the claim growing stale) tells
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # another thread of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user
    return True


_HOST = socket.gethostname()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _stored_tags(text: str) -> dict[str, str]:
    """Tags as stored; a lone surrogate written there by other means reads as U+FFFD.

    chainkit never writes one (``Entry`` refuses them), but a row changed by hand must not make
    every report of the ledger fail: the value is shown repaired, as the HTML report promises.
    """
    tags: dict[str, str] = json.loads(text)
    return {
        _LONE_SURROGATE.sub("\ufffd", k): _LONE_SURROGATE.sub("\ufffd", v) for k, v in tags.items()
    }


def _from_sql(row: Sequence[Any]) -> Entry:
    (uid, rid, stage, outcome, model, inp, out, cread, cwrite, hour, queries) = row[:11]
    (cost, avoided, bound, estimated, latency, attempts, intent, tags, phase) = row[11:20]
    (when, flags, note) = row[20:23]
    return Entry(
        id=uid,
        request_id=rid,
        stage=stage,
        outcome=outcome,
        model=model,
        usage=None if inp is None else Usage(inp, out, cread, cwrite, hour or 0, queries or 0),
        cost=None if cost is None else Decimal(cost),
        avoided_cost=None if avoided is None else Decimal(avoided),
        bound=None if bound is None else Decimal(bound),
        estimated=bool(estimated),
        latency_s=float(latency),
        attempts=attempts,
        intent=intent,
        tags=Tags(_stored_tags(tags)),
        phase=phase,
        time=datetime.fromisoformat(when),
        flags=tuple(flags.split(",")) if flags else (),
        note=note,
    )


# -- roll-up cells -------------------------------------------------------------------------------

_CELL_SUMS = (
    "calls, estimated, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "cost, cost_unknown, bound_unknown, bound_missing, avoided, avoided_unknown, latency_ns, "
    "cache_write_1h_tokens, queries"
)
_CELL_KEY = "tags, phase, stage, model, intent, outcome, day, flags"
_CELL_FIND = f"SELECT id, {_CELL_SUMS} FROM cells WHERE key_hash = ?"
_CELL_INSERT = (
    f"INSERT INTO cells (key_hash, {_CELL_KEY}, first, {_CELL_SUMS}) "
    f"VALUES ({', '.join('?' * 25)}) RETURNING id"
)
_CELL_UPDATE = (
    "UPDATE cells SET calls = ?, estimated = ?, input_tokens = ?, output_tokens = ?, "
    "cache_read_tokens = ?, cache_write_tokens = ?, cost = ?, cost_unknown = ?, "
    "bound_unknown = ?, bound_missing = ?, avoided = ?, avoided_unknown = ?, latency_ns = ?, "
    "cache_write_1h_tokens = ?, queries = ? WHERE id = ?"
)
_LATENCY_ADD = (
    "INSERT INTO cell_latency VALUES (?, ?, ?) "
    "ON CONFLICT (cell, bucket) DO UPDATE SET n = cell_latency.n + excluded.n"
)


def _sql_key(key: CellKey) -> tuple[str, ...]:
    """The key as stored: a hash to look it up by, then its parts ('' for None)."""
    # NULL never equals NULL in a UNIQUE constraint; '' cannot be a model or intent. The hash is
    # what is unique: an index over the parts could outgrow a B-tree entry (long tag sets).
    tags, phase, stage, model, intent, outcome, day, flags = key
    parts = (tags, phase, stage, model or "", intent or "", outcome, day, flags)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return (digest, *parts)


def _cell_key(row: Sequence[Any]) -> CellKey:
    tags, phase, stage, model, intent, outcome, day, flags = row
    return (tags, phase, stage, model or None, intent or None, outcome, day, flags)


def _cell_sums(c: Cell) -> tuple[Any, ...]:
    # Sums are text (TEXT columns): Python's integers and Decimals never overflow, SQLite's would.
    return (
        c.calls,
        c.estimated,
        str(c.input_tokens),
        str(c.output_tokens),
        str(c.cache_read_tokens),
        str(c.cache_write_tokens),
        str(c.cost),
        c.cost_unknown,
        str(c.bound_unknown),
        c.bound_missing,
        str(c.avoided),
        c.avoided_unknown,
        str(c.latency_ns),
        str(c.cache_write_1h_tokens),
        str(c.queries),
    )


_FOLD_COLUMNS = (
    "id, tags, phase, stage, model, intent, outcome, day, flags, estimated, input_tokens, "
    "output_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, queries, "
    "cost, bound, avoided_cost, latency_s"
)


def _fold_rows(
    cells: dict[CellKey, Cell], rows: Iterable[Sequence[Any]], sign: int = 1
) -> dict[CellKey, Cell]:
    """Add entry rows (``_FOLD_COLUMNS``) to ``cells``, exactly; return the cells they touched.

    ``sign=-1`` takes them out again (an entry replaced after it was folded).
    """
    touched: dict[CellKey, Cell] = {}
    with localcontext(CONTEXT):
        for row in rows:
            (rowid, tags, phase, stage, model, intent, outcome, day, flags, estimated) = row[:10]
            (inp, out, cread, cwrite, hour, queries, cost, bound, avoided, latency) = row[10:]
            key: CellKey = (tags, phase, stage, model, intent, outcome, day, flags)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = Cell(key, rowid)
            touched[key] = cell
            cell.calls += sign
            cell.estimated += sign * estimated
            if inp is not None:
                cell.input_tokens += sign * inp
                cell.output_tokens += sign * out
                cell.cache_read_tokens += sign * cread
                cell.cache_write_tokens += sign * cwrite
                cell.cache_write_1h_tokens += sign * (hour or 0)
                cell.queries += sign * (queries or 0)
            if cost is None:
                cell.cost_unknown += sign
                if bound is None:
                    cell.bound_missing += sign
                else:
                    cell.bound_unknown += sign * Decimal(bound)
            else:
                cell.cost += sign * Decimal(cost)
            if avoided is None:
                cell.avoided_unknown += sign
            else:
                cell.avoided += sign * Decimal(avoided)
            cell.latency_ns += sign * round(latency * 1e9)
            bucket = latency_bucket(latency)
            cell.histogram[bucket] = cell.histogram.get(bucket, 0) + sign
    return touched


def _fold(db: Any, cache: dict[CellKey, tuple[int, Cell]], limit: int | None) -> int:
    """Fold up to ``limit`` entries past ``cells_through`` into the stored cells; return how many.

    Runs in the caller's write transaction: the cells and how far they reach change together,
    so every entry is folded exactly once, whichever process folds it.
    """
    through = db.execute("SELECT value FROM meta WHERE key = 'cells_through'").fetchone()[0]
    rows = db.execute(
        f"SELECT {_FOLD_COLUMNS} FROM entries WHERE id > ? ORDER BY id"
        + ("" if limit is None else f" LIMIT {int(limit)}"),
        (through,),
    ).fetchall()
    if not rows:
        return 0
    _apply(db, cache, _fold_rows({}, rows))
    db.execute("UPDATE meta SET value = ? WHERE key = 'cells_through'", (rows[-1][0],))
    return len(rows)


def _replace(db: Any, cache: dict[CellKey, tuple[int, Cell]], e: Entry) -> None:
    """Overwrite the stored entry with ``e``'s id by ``e``, moving it between cells if folded.

    In place, keeping its row id: a new row could take an id the cells already reach.
    """
    row = db.execute(f"SELECT {_FOLD_COLUMNS} FROM entries WHERE uid = ?", (e.id,)).fetchone()
    if row is None:
        return
    through = db.execute("SELECT value FROM meta WHERE key = 'cells_through'").fetchone()[0]
    folded = row[0] <= through
    if folded:
        _apply(db, cache, _fold_rows({}, [row], sign=-1))
    db.execute(_UPDATE, (*_to_sql(e)[1:], e.id))
    if folded:
        new = db.execute(f"SELECT {_FOLD_COLUMNS} FROM entries WHERE uid = ?", (e.id,))
        _apply(db, cache, _fold_rows({}, new.fetchall()))


def _apply(db: Any, cache: dict[CellKey, tuple[int, Cell]], deltas: dict[CellKey, Cell]) -> None:
    """Add cell deltas to the stored cells (read-modify-write, exact), in the transaction."""
    updates: list[tuple[Any, ...]] = []
    latencies: list[tuple[int, int, int]] = []
    with localcontext(CONTEXT):
        for delta in deltas.values():
            found = cache.get(delta.key)
            if found is None:
                sql_key = _sql_key(delta.key)
                row = db.execute(_CELL_FIND, sql_key[:1]).fetchone()
                if row is None:
                    new_id = db.execute(
                        _CELL_INSERT, (*sql_key, delta.first, *_cell_sums(delta))
                    ).fetchone()[0]
                    cache[delta.key] = (new_id, _copy(delta))
                    latencies.extend((new_id, b, n) for b, n in delta.histogram.items())
                    continue
                found = (row[0], _cell_from_row(delta.key, 0, row[1:]))
            cell_id, old = found
            merged = _copy(old)
            _merge(merged, delta)
            cache[delta.key] = (cell_id, merged)
            updates.append((*_cell_sums(merged), cell_id))
            latencies.extend((cell_id, b, n) for b, n in delta.histogram.items())
    db.executemany(_CELL_UPDATE, updates)
    db.executemany(_LATENCY_ADD, latencies)


def _merge(into: Cell, other: Cell) -> None:
    """Add ``other``'s sums to ``into`` (inside ``localcontext(CONTEXT)``)."""
    into.calls += other.calls
    into.estimated += other.estimated
    into.input_tokens += other.input_tokens
    into.output_tokens += other.output_tokens
    into.cache_read_tokens += other.cache_read_tokens
    into.cache_write_tokens += other.cache_write_tokens
    into.cost += other.cost
    into.cost_unknown += other.cost_unknown
    into.bound_unknown += other.bound_unknown
    into.bound_missing += other.bound_missing
    into.avoided += other.avoided
    into.avoided_unknown += other.avoided_unknown
    into.latency_ns += other.latency_ns
    into.cache_write_1h_tokens += other.cache_write_1h_tokens
    into.queries += other.queries
    for bucket, n in other.histogram.items():
        into.histogram[bucket] = into.histogram.get(bucket, 0) + n


def _copy(cell: Cell) -> Cell:
    return Cell(
        cell.key,
        0,
        cell.calls,
        cell.estimated,
        cell.input_tokens,
        cell.output_tokens,
        cell.cache_read_tokens,
        cell.cache_write_tokens,
        cell.cost,
        cell.cost_unknown,
        cell.bound_unknown,
        cell.bound_missing,
        cell.avoided,
        cell.avoided_unknown,
        cell.latency_ns,
        cache_write_1h_tokens=cell.cache_write_1h_tokens,
        queries=cell.queries,
    )


def _cell_from_row(key: CellKey, first: int, sums: Sequence[Any]) -> Cell:
    (calls, estimated, inp, out, cread, cwrite, cost, unknown) = sums[:8]
    (bound, missing, avoided, avoided_unknown, latency_ns, hour, queries) = sums[8:15]
    return Cell(
        key,
        first,
        calls,
        estimated,
        int(inp),
        int(out),
        int(cread),
        int(cwrite),
        Decimal(cost),
        unknown,
        Decimal(bound),
        missing,
        Decimal(avoided),
        avoided_unknown,
        int(latency_ns),
        cache_write_1h_tokens=int(hour),
        queries=int(queries),
    )


# -- what one write carries ----------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    """Entries and the state that must land with them, in one transaction."""

    entries: list[Entry] = field(default_factory=list)
    fold: bool = False  # also fold every entry not yet in the cells (a read is waiting)
    settle: Hold | None = None  # the call's hold, settled by its entry (the last of entries)
    release: Hold | None = None
    reserve: _Reservation | None = None
    reserve_all: list[_Reservation] = field(default_factory=list)  # all or none
    define: tuple[Budget, ...] = ()
    expire: bool = False  # turn holds whose lease ended into entries (a status read is waiting)
    events: list[BudgetEvent] = field(default_factory=list)  # crossings, for the caller's hook
    save: _Save | None = None  # a resumable request's progress
    reply: tuple[str, int, int, str, str, str] | None = None
    claim: _Claim | None = None
    release_claim: tuple[str, str] | None = None  # (request id, owner)
    purge: str | None = None  # progress and replies written before this time go
    purged: tuple[int, int] = (0, 0)  # (progress rows, replies) the purge removed
    job: tuple[str, str] | None = None
    # Statements of another part of chainkit (conversations), run in this transaction; ``ran``
    # is what the function returned.
    run: Callable[[Any], object] | None = None
    ran: object = None


@dataclass(slots=True)
class _Save:
    """A resumable request's progress, written in the same transaction as its step's entries."""

    request_id: str
    fingerprint: str
    now: str
    stage: int = -1  # -1: only mark the request as begun (kept if progress exists already)
    state: str = ""  # the saved Request or Result as JSON; "" when texts are not kept
    done: bool = False  # answered: its replies are no longer needed
    clear_step: int | None = None  # the replies of this step are no longer needed
    claimed: bool = False  # the row exists since the request was claimed: update it only
    release: bool = False  # the run lets go of the request (failed, or ended unanswered)


@dataclass(slots=True)
class _Claim:
    """A run taking a resumable request for itself, decided in one write transaction."""

    request_id: str
    fingerprint: str
    owner: str
    now: str
    stale_before: str  # a claim not renewed since then is taken over
    restart: bool = False  # drop what was saved and begin again (the caller chose to)
    # What came of it:
    row: Progress | None = None
    entries: int = 0  # entries of a request with no progress (written without resume)
    busy: Progress | None = None  # held by a live run
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """What a ledger holds of a resumable request (see ``Pipeline.run(resume=...)``).

    ``stage`` is the last stage saved (-1 if none yet), ``state`` the saved request or result
    as JSON (``""`` when texts were not kept), ``fingerprint`` the digest of what the request
    asked, ``done`` whether it was answered, ``updated`` when it was last written (ISO 8601).
    """

    stage: int
    state: str
    fingerprint: str
    done: bool
    updated: str
    owner: str = ""


@dataclass(slots=True)
class _Reservation:
    """A request to set money aside, and what came of it (a hold, or a refusal)."""

    amount: Decimal | None
    tags: Mapping[str, str]
    stage: str
    model: str | None
    request_id: str
    entry_id: str
    lease_s: float
    phase: str
    intent: str | None
    now: datetime
    hold: Hold | None = None
    refused: BudgetExceeded | None = None


class _Ticket:
    """One caller's place in the group commit: its write, and how it ended.

    ``done`` is a lock taken at creation and released by the writer: cheaper than an Event on
    a path every write takes.
    """

    __slots__ = ("done", "error", "write")

    def __init__(self, write: _Write | None) -> None:
        self.write = write
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


@dataclass(slots=True)
class _Step:
    """One stage of a resumable run: its free entries wait for its checkpoint."""

    request_id: str
    index: int
    fingerprint: str = ""
    free: list[Entry] = field(default_factory=list)
    calls: int = 0
    claimed: bool = False


# -- the ledger ----------------------------------------------------------------------------------

# What a request being run has open on each ledger (its deferred free entries, its resumable
# step), by ledger id. A context variable rather than a thread-local: each thread has its own
# context, as before, and so does each asyncio task, so that requests run concurrently on one
# event loop never write into each other's step. A worker thread started by asyncio.to_thread
# runs in a copy of its task's context and so sees (and appends to) the same step.
_OPEN_SCOPES: ContextVar[Mapping[tuple[int, str], Any]] = ContextVar("chainkit_ledger_scopes")

_OPEN: weakref.WeakSet[SQLLedger] = weakref.WeakSet()


def _before_fork() -> None:
    for ledger in list(_OPEN):
        ledger._before_fork()


def _after_fork_in_parent() -> None:
    for ledger in list(_OPEN):
        ledger._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for ledger in list(_OPEN):
        ledger._forking = []  # the child's copies of the locks are re-made on first use
        ledger._reopen_lock = threading.Lock()  # the parent's may have been held at the fork


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class SQLLedger(Ledger):
    """A ledger in an SQL store; see the module. Use :class:`SQLiteLedger` or ``PostgresLedger``.

    A subclass sets ``where`` (what the messages name) and implements :meth:`_open`,
    :meth:`_begin_write`, :meth:`_begin_read` and :meth:`_unwell`.
    """

    durable = True

    def __init__(
        self,
        *,
        budgets: Iterable[Budget] = (),
        read_only: bool = False,
        timeout_s: float = 30.0,
        clock: Callable[[], datetime] | None = None,
        on_threshold: Callable[[BudgetEvent], object] | None = None,
        retention: timedelta | None = None,
    ) -> None:
        self.read_only = read_only
        self._timeout_s = timeout_s
        self._wake = threading.Condition(threading.Lock())
        self._waiting: list[_Ticket] = []  # writes queued for the writer thread
        self._pending: list[_Write] = []  # writes that failed, kept to be retried
        self.rejected: list[tuple[list[Entry], BaseException]] = []
        """Entries the store could not take at all (with why): reported, never dropped quietly."""
        self._flushing = False
        self._stopping = False
        self._idle = False
        self._unfolded = 1  # about how many entries wait to be folded into the cells
        self._writer: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._gate = threading.Lock()  # held by the writer while it writes (see _before_fork)
        self._forking: list[threading.Lock] = []
        self._pid = os.getpid()
        self._reopen_lock = threading.Lock()
        self._closed = False
        self._closing = False
        self._calls = threading.Condition(threading.Lock())
        self._in_flight = 0  # model calls that may still record (close() waits for them)
        # How long close() waits for calls under way that make no progress: past the longest
        # a call may take (its deadline plus its lease's margin).
        self.close_patience_s = 180.0
        self._cells_cache: dict[CellKey, tuple[int, Cell]] = {}
        self._defs: dict[str, Budget] | None = None  # budget definitions, while nobody else writes
        self._earliest_expiry: datetime | None = None  # no hold's lease ends before this
        # Budget states as this connection last committed them (valid while nobody else writes).
        self._known_states: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        self._parsed_budgets: dict[tuple[str, str], Budget] = {}  # (name, definition) -> Budget
        self._committing_states: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise ConfigError(
                f"retention must be a positive timedelta (e.g. timedelta(days=30)), got "
                f"{retention!r}."
            )
        self.retention = retention
        """Saved progress and replies older than this are deleted (at open, close, hourly)."""
        self._purged_at = 0.0  # time.monotonic() of the last retention purge
        self._db, self._reader = self._open()
        super().__init__(clock=clock, on_threshold=on_threshold)
        _OPEN.add(self)
        budgets = tuple(budgets)
        if budgets:
            if read_only:
                raise ConfigError(
                    "A read-only ledger cannot take budgets: nothing is spent through it."
                )
            self._write(_Write(define=budgets))
        if retention is not None and read_only:
            raise ConfigError("A read-only ledger cannot keep a retention: it deletes nothing.")
        self._retain()

    def _retain(self, *, every_s: float = 0.0) -> None:
        """Apply the retention (if any, and not within ``every_s`` of the last time)."""
        if self.retention is None or time.monotonic() - self._purged_at < every_s:
            return
        self._purged_at = time.monotonic()
        self.purge(self.clock() - self.retention)
        from chainkit.ledger.conversations import conversations  # it builds on this module

        conversations(self).purge(self.clock() - self.retention)

    # -- what a store says about itself -----------------------------------------------------

    where: str = ""
    """The store as messages name it (a path; a DSN without its password)."""

    def _open(self) -> tuple[Any, Any]:
        """Connect: the writer's connection (``None`` if read-only) and the reader's."""
        raise NotImplementedError

    def _begin_write(self, db: Any) -> bool:
        """Begin a transaction holding the store's write lock.

        Return whether another connection may have written since this one last did (then the
        cached cell sums are dropped).
        """
        raise NotImplementedError

    def _begin_read(self, db: Any) -> None:
        """Begin a read transaction in which every statement sees the same snapshot."""
        raise NotImplementedError

    _statement_is_snapshot = False
    """Whether one statement outside a transaction already reads one snapshot (SQLite's do)."""

    def _unwell(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the store is unwell (full, locked, gone), not the data bad."""
        raise NotImplementedError

    def _check_file(self) -> None:
        """Refuse to write to a store that is no longer the one opened (a file store's check)."""

    def _reconnect_if_broken(self, reader: bool = False) -> None:
        """Open a new connection (the writer's, or the reader's) if the server ended ours."""

    def _abandon_connections(self) -> None:
        """In a forked child: let go of the parent's connections (closed unless unsafe)."""
        self._close_connections()

    def _close_connections(self) -> None:
        for db in (self._db, self._reader):
            if db is not None:
                with suppress(Exception):
                    db.close()

    def _reopen_after_fork(self) -> None:
        # A connection must not cross fork(): the child opens its own. The ones it inherited
        # were idle at the fork (see _before_fork) and are closed, so that SQLite's per-process
        # lock bookkeeping starts clean for the new ones. The child's threads may all arrive
        # here at once: one reopens, the others wait, and the pid changes last, once all is new.
        if os.getpid() == self._pid:
            return
        with self._reopen_lock:
            if os.getpid() == self._pid:
                return
            self._abandon_connections()
            self._wake = threading.Condition(threading.Lock())
            self._read_lock = threading.Lock()
            self._gate = threading.Lock()
            self._waiting, self._pending, self._flushing = [], [], False
            self._stopping, self._writer, self._idle = False, None, False
            self._cells_cache, self._defs, self._earliest_expiry = {}, None, None
            self._known_states = {}
            if not self._closed:
                self._db, self._reader = self._open()
            self._pid = os.getpid()

    def _before_fork(self) -> None:
        """Wait for the write and read under way, and hold off others, until fork() is done."""
        # Bounded: a fork from inside a ledger call must not deadlock on its own lock.
        self._forking = [lock for lock in (self._gate, self._read_lock) if lock.acquire(timeout=30)]

    def _after_fork_in_parent(self) -> None:
        for lock in self._forking:
            lock.release()
        self._forking = []

    def _scope(self, name: str) -> Any:
        """What this context has open on this ledger under ``name`` (None if nothing)."""
        return _OPEN_SCOPES.get({}).get((id(self), name))

    def _set_scope(self, name: str, value: Any) -> None:
        # A new mapping each time: a context copied from this one keeps what it was given.
        scopes = dict(_OPEN_SCOPES.get({}))
        if value is None:
            scopes.pop((id(self), name), None)
        else:
            scopes[(id(self), name)] = value
        _OPEN_SCOPES.set(scopes)

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        entry: Entry,
        *,
        hold: Hold | None = None,
        reply: tuple[str, str] | None = None,
    ) -> None:
        """Store ``entry``; it is committed when this returns (except as below).

        An entry of a stage that called no model may wait for the next model call's entry, or
        for the end of the request, and land with it: inside :meth:`deferring` (every
        ``Pipeline.run``) or a resumable step (with the step's checkpoint). An entry of a model
        call is committed at once, with ``reply`` (its digest and saved reply) in a step, so that
        a rerun of the step replays the call rather than paying for it again.
        """
        if type(entry) is not Entry:
            raise ConfigError(f"Ledger.record takes an Entry, got {type(entry).__name__}.")
        step: _Step | None = self._scope("step")
        deferred: list[Entry] | None = self._scope("deferred")
        free = entry.model is None and hold is None and entry.cost == 0
        if free and step is not None:
            step.free.append(entry)
            observed(entry)
            return
        if free and deferred is not None:
            deferred.append(entry)
            observed(entry)
            return
        write = _Write(entries=[entry], settle=hold)
        if step is None and deferred:
            write.entries = [*deferred, entry]
            deferred.clear()
        if step is not None:
            now = self._now_text()
            # A paid call keeps its request's claim fresh (and its progress from retention).
            write.save = _Save(step.request_id, step.fingerprint, now, claimed=step.claimed)
            if reply is not None:
                write.reply = (step.request_id, step.index, step.calls - 1, *reply, now)
        try:
            self._write(write)
        finally:
            if hold is not None:
                hold.open = False
        observed(entry)
        self._notify(write.events)

    def record_many(self, entries: Iterable[Entry]) -> None:
        """Store many entries in one transaction."""
        batch = list(entries)
        for e in batch:
            if type(e) is not Entry:
                raise ConfigError(f"Ledger.record takes an Entry, got {type(e).__name__}.")
        write = _Write(entries=batch)
        self._write(write)
        for e in batch:
            observed(e)
        self._notify(write.events)

    # -- budgets, kept in the file for every process -----------------------------------------

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The budgets in the file (any process's): every call through this ledger keeps them."""
        rows = self._read("SELECT name, definition FROM budgets ORDER BY name")
        parsed = self._parsed_budgets
        if set(parsed) != set(rows):  # changed (or first read): parse again
            parsed = self._parsed_budgets = {(n, d): Budget.from_json(n, d) for n, d in rows}
        return tuple(parsed[n, d] for n, d in rows)

    def add_budget(self, budget: Budget) -> None:
        """Keep ``budget`` in the file, for every process (one of the same name is replaced)."""
        if not isinstance(budget, Budget):
            raise ConfigError(f"add_budget takes a Budget, got {type(budget).__name__}.")
        self._write(_Write(define=(budget,)))

    def reserve(
        self,
        amount: Decimal | None,
        tags: Mapping[str, str],
        *,
        stage: str,
        model: str | None = None,
        request_id: str = "",
        entry_id: str | None = None,
        lease_s: float = 3600.0,
        phase: str = "serve",
        intent: str | None = None,
    ) -> Hold | None:
        """Set ``amount`` aside in the file, one step for every process (see ``Ledger.reserve``)."""
        check_reservation(amount, lease_s)
        r = _Reservation(
            amount=amount,
            tags=dict(tags),
            stage=stage,
            model=model,
            request_id=request_id,
            entry_id=entry_id or new_entry_id(),
            lease_s=lease_s,
            phase=phase,
            intent=intent,
            now=self.clock(),
        )
        write = _Write(reserve=r)
        self._write(write)
        self._notify(write.events)
        if r.refused is not None:
            raise r.refused
        return r.hold

    def reserve_many(self, requests: Sequence[Mapping[str, Any]]) -> list[Hold | None]:
        """Reserve several calls in one step, all or none (see :meth:`Ledger.reserve_many`)."""
        for item in requests:
            check_reservation(item.get("amount"), item.get("lease_s", 3600.0))
        ids = [str(item["entry_id"]) for item in requests if item.get("entry_id") is not None]
        if len(set(ids)) < len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"reserve_many got the same entry_id more than once: {twice[:5]}.")
        now = self.clock()
        rs = [
            _Reservation(
                amount=item.get("amount"),
                tags=dict(item.get("tags", {})),
                stage=item["stage"],
                model=item.get("model"),
                request_id=item.get("request_id", ""),
                entry_id=item.get("entry_id") or new_entry_id(),
                lease_s=item.get("lease_s", 3600.0),
                phase=item.get("phase", "serve"),
                intent=item.get("intent"),
                now=now,
            )
            for item in requests
        ]
        write = _Write(reserve_all=rs)
        self._write(write)
        self._notify(write.events)
        refused = next((r.refused for r in rs if r.refused is not None), None)
        if refused is not None:
            raise refused
        return [r.hold for r in rs]

    def hold(self, hold_id: str) -> Hold | None:
        """The open hold with this id, from the file (a resumed run settles an earlier run's)."""
        rows = self._read("SELECT id, amount, expires, details FROM holds WHERE id = ?", (hold_id,))
        return Hold.from_json(*rows[0]) if rows else None

    def release(self, hold: Hold | None) -> None:
        """Give back a hold whose call will record nothing (safe to call twice)."""
        if hold is None or not hold.open:
            return
        hold.open = False
        write = _Write(release=hold)
        self._write(write)
        self._notify(write.events)

    def spent(self, budget: Budget | str, when: datetime | None = None) -> Decimal:
        """What counts against ``budget`` in the period of ``when`` (now): unknown at its bound."""
        name = budget.name if isinstance(budget, Budget) else budget
        found = {b.name: b for b in self.budgets}.get(name)
        if found is None:
            raise ConfigError(f"No budget named {name!r} in {self.where}.")
        period = found.period_of(when or self.clock())
        with self._snapshot() as db:
            row = db.execute(
                "SELECT spent FROM budget_state WHERE budget = ? AND period = ?", (name, period)
            ).fetchone()
            if row is not None:
                return Decimal(row[0])
            return self._spent_from(db, found, period)

    def status(self) -> list[BudgetState]:
        """Every budget's state in its current period (spent, held), for reports."""
        if not self.read_only:
            self._write(_Write(expire=True))  # holds whose lease ended count at their bound
        now = self.clock()
        out = []
        with self._snapshot() as db:
            budgets = [
                Budget.from_json(n, d)
                for n, d in db.execute("SELECT name, definition FROM budgets ORDER BY name")
            ]
            for budget in budgets:
                period = budget.period_of(now)
                row = db.execute(
                    "SELECT spent, held FROM budget_state WHERE budget = ? AND period = ?",
                    (budget.name, period),
                ).fetchone()
                if row is None:
                    held = Decimal(0)
                    for amount, details in db.execute("SELECT amount, details FROM holds"):
                        if [budget.name, period] in json.loads(details)["periods"]:
                            held += Decimal(amount)
                    spent = self._spent_from(db, budget, period)
                    out.append(BudgetState(budget, period, spent, held))
                else:
                    out.append(BudgetState(budget, period, Decimal(row[0]), Decimal(row[1])))
        return out

    def events(self) -> list[BudgetEvent]:
        """Every threshold crossing recorded in the file, oldest first."""
        return events_of(
            self._read(
                "SELECT budget, period, threshold, spent, limit_usd, time FROM budget_events "
                "ORDER BY time"
            )
        )

    def check_writable(self) -> None:
        """Raise ``ConfigError`` if this ledger cannot record now (closed, read-only)."""
        if self.read_only:
            raise ConfigError(
                f"Ledger {self.where} is open read-only; it cannot record, so nothing may be spent "
                "through it. Open it with SQLiteLedger(path) to record."
            )
        if self._closed or self._closing:
            raise ConfigError(f"Ledger {self.where} is closed; open it again to record.")

    def start_call(self) -> None:
        """A model call is about to spend: refuse if closing; else close() waits for it."""
        if self.retention is not None and not self._closing:
            self._retain(every_s=3600.0)  # a long-running server purges hourly
        with self._calls:
            self.check_writable()
            self._in_flight += 1

    def end_call(self) -> None:
        """The call started by :meth:`start_call` has recorded its entry (or failed to)."""
        with self._calls:
            self._in_flight -= 1
            if not self._in_flight:
                self._calls.notify_all()

    def _write(self, write: _Write | None) -> None:
        """Queue ``write`` and return once it is committed (group commit across threads).

        One writer thread per ledger commits everything queued in one transaction, then wakes
        the callers it served; while it writes, the next callers queue up. (Callers that wrote
        for themselves would convoy on the GIL and commit one entry at a time.)
        """
        if self.read_only:
            raise ConfigError(f"Ledger {self.where} is open read-only; it cannot record.")
        if self._closed:
            raise LedgerError(
                f"Ledger {self.where} is closed; the entry was not written. Open the ledger again "
                "(calls made through a closed ledger are refused before they spend)."
            )
        self._reopen_after_fork()
        ticket = _Ticket(write)
        inline = False
        with self._wake:
            if write is None and not self._pending and not self._waiting and not self._flushing:
                return  # nothing to write
            if self._writer is None:  # it also folds entries into the cells in lulls
                self._writer = threading.Thread(
                    target=self._write_loop, name=f"chainkit-ledger:{self.where}", daemon=True
                )
                self._writer.start()
            if not self._waiting and not self._flushing and self._gate.acquire(blocking=False):
                # Nobody else is writing: write here, without waking the writer thread (two
                # thread switches saved). Writers that come meanwhile queue for the writer.
                inline = self._flushing = True
            else:
                self._waiting.append(ticket)
                if self._idle:
                    self._wake.notify()
        if inline:
            try:
                self._serve([ticket])
            finally:
                self._gate.release()
                with self._wake:
                    self._flushing = False
                    if self._idle:  # queued writes, or new entries to fold in the next lull
                        self._wake.notify()
        else:
            ticket.done.acquire()
        if ticket.error is not None:
            raise self._failure(ticket.error) from ticket.error

    def _write_loop(self) -> None:
        """The writer thread: commit what is queued and wake its callers; fold when idle."""
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    # Fold new entries into the cells only in a lull (or with a large backlog):
                    # folding after every write would double the transactions of a steady
                    # trickle, and every caller would wait behind the fold.
                    if self._unfolded >= _FOLD_SLICE:
                        break
                    self._idle = True
                    woken = self._wake.wait(_LULL_S if self._unfolded else None)
                    self._idle = False
                    if not woken and self._unfolded and not self._waiting:
                        break
                if not self._waiting and self._stopping:
                    self._writer = None
                    return
                tickets, self._waiting = self._waiting, []
                self._flushing = True
            with self._gate:
                if tickets:
                    self._serve(tickets)
                else:
                    # Nothing queued: fold a slice of new entries into the cells, so that reads
                    # find them ready. Callers that arrive meanwhile wait one slice at most.
                    try:
                        folded = self._store([], fold=_FOLD_SLICE)
                        # Caught up, or more to fold (perhaps another process's entries).
                        self._unfolded = 0 if folded < _FOLD_SLICE else _FOLD_SLICE
                    except BaseException:
                        self._unfolded = 0  # retried after the next write
            with self._wake:
                self._flushing = False

    def _serve(self, tickets: list[_Ticket]) -> None:
        """Write what ``tickets`` (and earlier failed writes) carry; then fold if one asked."""
        writes = [t.write for t in tickets if t.write is not None]
        with self._wake:
            batch = self._pending + writes
        errors: dict[int, BaseException] = {}
        try:
            self._store(batch)
            failed: list[_Write] = []
        except BaseException as exc:
            if not self._unwell(exc):
                failed, errors = self._isolate(batch)
            else:
                # The store is unwell (disk full, locked, file gone): keep, in order, what must
                # land (entries, settlements, progress, jobs) for the next write to retry; never
                # dropped, never doubled. A reservation (or a claim, a definition) is not kept:
                # its caller is told it failed, and spends nothing on it.
                failed = [w for w in batch if _must_land(w)]
                errors = {id(w): exc for w in batch}
        with self._wake:
            self._pending = failed
        if any(t.write is not None and t.write.fold for t in tickets):
            try:
                self._store([], fold=None)
            except BaseException as exc:
                for t in tickets:
                    if t.write is not None and t.write.fold:
                        errors[id(t.write)] = exc
        pending_error = next(iter(errors.values()), None) if failed else None
        for t in tickets:
            error = errors.get(id(t.write))
            if error is None and t.write is None and pending_error is not None:
                error = pending_error  # a flush fails while earlier writes stay pending
            t.error = error
            t.done.release()

    def _isolate(self, batch: list[_Write]) -> tuple[list[_Write], dict[int, BaseException]]:
        """Write each unit alone, so that one bad unit cannot keep every later one out.

        A unit that fails alone for its data is refused to its caller (and kept in
        ``rejected``); one that fails because the store is unwell stays pending.
        """
        failed: list[_Write] = []
        errors: dict[int, BaseException] = {}
        for w in batch:
            try:
                self._store([w])
            except BaseException as exc:
                errors[id(w)] = exc
                if self._unwell(exc):
                    if _must_land(w):
                        failed.append(w)
                else:
                    self.rejected.append((w.entries, exc))
        return failed, errors

    def _failure(self, error: BaseException) -> BaseException:
        if isinstance(error, LedgerError):
            return error
        if not self._unwell(error) and isinstance(error, Exception):
            return LedgerError(
                f"Ledger {self.where} could not store an entry ({type(error).__name__}: "
                f"{error}); it is kept in ledger.rejected. The ledger goes on recording."
            )
        if self._unwell(error):
            return LedgerError(
                f"Could not write to ledger {self.where}: {error}. {self.pending} entries are kept "
                "in this process and will be written by the next write, flush() or close(); "
                "free disk space or fix the file, then call flush()."
            )
        return error

    def _store(self, batch: list[_Write], *, fold: int | None = 0) -> int:
        """Write ``batch`` in one transaction; fold up to ``fold`` entries into the cells too.

        Budgets are kept in the same transaction: holds settled by their entries, released or
        expired, reservations decided. ``fold=None`` folds everything not yet folded. Returns
        how many entries were folded.
        """
        self._check_file()
        self._reconnect_if_broken()
        db = self._db
        assert db is not None
        try:
            # Inside the try: a BEGIN, lock wait or staleness check that fails is rolled back
            # too, so that the connection is clean for the next write.
            stale = self._begin_write(db)
            if stale or len(self._cells_cache) > 100_000:
                # Another connection wrote since we last did: our cell sums may be stale.
                self._cells_cache.clear()
            if stale:
                # Another connection may have defined budgets or made holds meanwhile.
                self._defs, self._earliest_expiry = None, None
                self._known_states.clear()
            entries = [e for w in batch for e in w.entries]
            for w in batch:
                if w.define:
                    define(db, w.define)
                    self._defs = None
                    self._known_states.clear()  # a changed budget starts its periods again
            if self._defs is None:
                self._defs = read_budgets(db)
            budgeted = bool(self._defs) or any(
                w.reserve or w.reserve_all or w.settle or w.release or w.expire for w in batch
            )
            if budgeted:
                self._budgets_in(db, batch)
            elif entries:
                self._insert(db, entries)
            if entries:
                self._unfolded += len(entries)
            for w in batch:
                if w.claim is not None:
                    _claim(db, w.claim)
                if w.release_claim is not None:
                    db.execute(
                        "UPDATE checkpoints SET owner = '' WHERE request_id = ? AND owner = ?",
                        w.release_claim,
                    )
                if w.reply is not None:
                    db.execute(
                        "INSERT INTO replies (request_id, step, ordinal, digest, reply, created) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, step, ordinal) DO "
                        "UPDATE SET digest = excluded.digest, reply = excluded.reply, "
                        "created = excluded.created",
                        w.reply,
                    )
                if w.save is not None:
                    _save(db, w.save)
                if w.purge is not None:
                    w.purged = _purge(db, w.purge)
                if w.job is not None:
                    db.execute(
                        "INSERT INTO jobs VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "job = excluded.job",
                        w.job,
                    )
                if w.run is not None:
                    w.ran = w.run(db)
            folded = 0
            if fold is None or fold > 0:
                folded = _fold(db, self._cells_cache, fold)
            db.execute("COMMIT")
            self._known_states.update(self._committing_states)
            self._committing_states = {}
            return folded
        except BaseException:
            self._cells_cache.clear()  # it may hold sums that were rolled back
            self._defs, self._earliest_expiry = None, None
            self._known_states.clear()
            self._committing_states = {}
            with suppress(Exception):
                db.rollback()
            for w in batch:
                w.events = []
                if w.reserve is not None:
                    w.reserve.hold = w.reserve.refused = None
            raise

    def _budgets_in(self, db: Any, batch: list[_Write]) -> None:
        """Insert the batch's entries and keep the budgets, in the open transaction."""
        book = SQLBook(
            db,
            lambda budget, period: self._spent_from(db, budget, period),
            self._defs,
            self._known_states,
        )
        # Every hold was made through this connection since it last saw another's write, so
        # none expires before the earliest lease it made: skip looking until then.
        book.not_before = self._earliest_expiry
        entries = [e for w in batch for e in w.entries]
        stored: dict[str, tuple[str, str | None, str | None, str, str]] = {}
        ids = list({e.id for e in entries})
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            for uid, flags, cost, bound, tags, when in db.execute(
                f"SELECT uid, flags, cost, bound, tags, time FROM entries WHERE uid IN ({marks})",
                part,
            ):
                stored[uid] = (flags, cost, bound, tags, when)
        # A real entry replaces the one that stood in for it when its hold expired.
        replaced: dict[str, Entry] = {}
        for e in entries:
            old = stored.get(e.id)
            if (
                old is not None
                and "lease_expired" in old[0].split(",")
                and ("lease_expired" not in e.flags)
            ):
                replaced[e.id] = Entry(
                    e.request_id,
                    e.stage,
                    "failed",
                    cost=None if old[1] is None else Decimal(old[1]),
                    bound=None if old[2] is None else Decimal(old[2]),
                    tags=json.loads(old[3]),
                    time=datetime.fromisoformat(old[4]),
                )
                stored.pop(e.id)
        # The budget states involved, as they stand before any of this batch lands (a state made
        # now counts what is held and recorded so far, not these entries nor these releases):
        # a hold is released from the states it was made against, and an entry charged to the
        # states it belongs to, by its own period and tags (which may differ from its hold's).
        holds = [h for w in batch for h in (w.settle, w.release) if h is not None]
        held_states = {h.id: book.states_of(h) for h in holds}
        entry_states: dict[str, list[BudgetState]] = {}
        for e in entries:
            if e.id not in stored:
                counted = replaced.get(e.id, e)  # a stand-in's states, for its real entry
                entry_states[e.id] = book.existing(counted.tags, counted.time)
        for e in entries:
            if e.id in replaced:
                _replace(
                    db,
                    self._cells_cache,
                    dataclasses.replace(e, flags=tuple(sorted({*e.flags, "reconciled"}))),
                )
        self._insert(db, [e for e in entries if e.id not in replaced])
        book.take_all(holds)
        now = self.clock()
        seen: set[str] = set(stored)
        for w in batch:
            events: list[BudgetEvent] = []
            call_entry = w.entries[-1] if w.settle is not None and w.entries else None
            if w.settle is not None:
                held = book.take(w.settle)
                if held is not None:
                    events += settle(held_states[w.settle.id], release=held.amount,
                                     spend=Decimal(0), now=now)  # fmt: skip
                if held is not None and call_entry is not None and call_entry.id not in seen:
                    spend = charge(call_entry)
                    if call_entry.cost is None and call_entry.bound is None:
                        spend = held.amount
                    events += settle(entry_states[call_entry.id], release=Decimal(0),
                                     spend=spend, now=now)  # fmt: skip
                    seen.add(call_entry.id)
            if w.release is not None:
                held = book.take(w.release)
                if held is not None:
                    events += settle(held_states[w.release.id], release=held.amount,
                                     spend=Decimal(0), now=now)  # fmt: skip
            for e in w.entries:
                if e.id in seen:
                    continue  # stored already (counted then), or settled above
                seen.add(e.id)
                old_entry = replaced.get(e.id)
                delta = charge(e) - charge(old_entry) if old_entry is not None else charge(e)
                states = entry_states[e.id]
                if states and delta:
                    events += settle(states, release=Decimal(0), spend=delta, now=now)
            if w.reserve is not None:
                events += self._reserve_in(db, book, w.reserve)
            elif w.reserve_all:
                for r in w.reserve_all:
                    events += self._reserve_in(db, book, r)
                if any(r.refused for r in w.reserve_all):
                    for r in w.reserve_all:  # all or none: give back what was held
                        if r.hold is not None:
                            taken = book.take(r.hold)
                            if taken is not None:
                                settle(book.states_of(taken), release=taken.amount,
                                       spend=Decimal(0), now=now)  # fmt: skip
                            r.hold = None
            elif w.expire:
                events += self._expire_in(db, book, now)
            w.events = events
        new = set(map(id, book.write([e for w in batch for e in w.events])))
        self._committing_states = {k: (st.spent, st.held) for k, st in book.states.items()}
        for w in batch:
            w.events = [e for e in w.events if id(e) in new]

    def _reserve_in(self, db: Any, book: SQLBook, r: _Reservation) -> list[BudgetEvent]:
        """Decide a reservation (after expiring dead holds); return the crossings expiry made."""
        events = self._expire_in(db, book, r.now)
        budgets = [b for b in book.budgets.values() if b.applies(r.tags)]
        if not budgets:
            return events
        states = [book.state(b, b.period_of(r.now)) for b in budgets]
        assert all(st is not None for st in states)
        ready = [st for st in states if st is not None]
        try:
            check(ready, r.amount, stage=r.stage, model=r.model)
        except BudgetExceeded as exc:
            r.refused = exc
            return events
        assert r.amount is not None
        hold_states(ready, r.amount)
        expires = r.now + timedelta(seconds=r.lease_s)
        if self._earliest_expiry is not None:
            self._earliest_expiry = min(self._earliest_expiry, expires)
        r.hold = Hold(
            id=r.entry_id,
            amount=r.amount,
            periods=tuple((st.budget.name, st.period) for st in ready),
            expires=expires,
            request_id=r.request_id,
            stage=r.stage,
            model=r.model,
            tags=dict(r.tags),
            phase=r.phase,
            intent=r.intent,
            created=r.now,
        )
        book.put(r.hold)
        return events

    def _expire_in(self, db: Any, book: SQLBook, now: datetime) -> list[BudgetEvent]:
        """Holds whose lease ended become entries of unknown cost, counted at their bound."""
        events: list[BudgetEvent] = []
        if book.not_before is None or now >= book.not_before:
            # A full look: afterwards, the earliest lease still open is the next time to look.
            expired = book.expired_all(now)
            self._earliest_expiry = book.next_expiry
        else:
            expired = []
        for held in expired:
            self._insert(db, [held.expired_entry()])
            self._unfolded += 1
            events += settle(book.states_of(held), release=held.amount, spend=held.amount,
                             now=now)  # fmt: skip
        return events

    def _spent_from(self, db: Any, budget: Budget, period: str) -> Decimal:
        """What recorded entries count against ``budget`` in ``period``, from the cells."""
        with localcontext(CONTEXT):
            total = Decimal(0)
            for cell in self._cells_in(db):
                day = cell.key[6]
                if period != "all" and not day.startswith(period):
                    continue
                if budget.applies(cell.tags):
                    total += cell.cost + cell.bound_unknown
            return total

    @staticmethod
    def _insert(db: Any, entries: list[Entry]) -> None:
        """Insert the entries whose ids are not stored yet (the store keeps one entry per id)."""
        db.executemany(_INSERT, [_to_sql(e) for e in entries])

    def flush(self) -> None:
        """Write pending entries (those a failed write kept); raise ``LedgerError`` if it fails."""
        if self.read_only or self._closed:
            return
        self._write(None)

    @property
    def pending(self) -> int:
        """Entries recorded but not yet written (only after a failed write)."""
        with self._wake:
            return sum(len(w.entries) for w in self._pending)

    def close(self) -> None:
        """Wait for the model calls under way to record, write pending entries, close the file.

        New calls are refused from the moment close() is called. If the pending entries cannot be
        written, ``LedgerError`` is raised and the ledger stays open, so that :meth:`flush` can
        be tried again: nothing is dropped silently.
        """
        if self._closed:
            return
        # No new call may start; the calls under way record their entries before the file closes.
        # A call that makes no progress for longer than any call may take (a stream its reader
        # holds open, perhaps on this very thread) would make close() wait forever: say so
        # instead, and stay open, so that nothing it would still record is lost.
        with self._calls:
            self._closing = True
            waiting, still = self._in_flight, time.monotonic()
            while self._in_flight:
                self._calls.wait(timeout=1.0)
                if self._in_flight != waiting:
                    waiting, still = self._in_flight, time.monotonic()
                elif time.monotonic() - still > self.close_patience_s:
                    self._closing = False
                    raise LedgerError(
                        f"Ledger {self.where} cannot close: {self._in_flight} model call(s) are "
                        f"still under way after {self.close_patience_s:.0f} s without progress "
                        "(a stream not read to its end nor closed?). Finish or close them (e.g. "
                        "aclose() the stream), then close the ledger; it stays open meanwhile."
                    )
        self._retain()
        self.flush()
        self._closed = True
        with self._wake:
            self._stopping = True
            writer = self._writer
            self._wake.notify()
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self._close_connections()

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Let entries of free stages wait for the next paid entry or the end of the block.

        ``Pipeline.run`` wraps each request in it: a request commits once per model call (and
        once at the end) rather than once per stage. Entries of model calls never wait.
        """
        if self._scope("deferred") is not None:
            yield  # already inside one: the outer block writes
            return
        deferred: list[Entry] = []
        self._set_scope("deferred", deferred)
        try:
            yield
        finally:
            self._set_scope("deferred", None)
            if deferred:
                self._write(_Write(entries=deferred))

    @asynccontextmanager
    async def adeferring(self) -> AsyncIterator[None]:
        """:meth:`deferring` for a coroutine: the block's last write runs in a worker thread.

        The event loop goes on serving other requests during that commit. A block left by an
        exception or a cancellation writes on the loop's own thread instead: that write must
        happen, and an await there could be cancelled again.
        """
        if self._scope("deferred") is not None:
            yield
            return
        deferred: list[Entry] = []
        self._set_scope("deferred", deferred)
        try:
            yield
        except BaseException:
            self._set_scope("deferred", None)
            if deferred:
                self._write(_Write(entries=deferred))
            raise
        self._set_scope("deferred", None)
        if deferred:
            import asyncio

            await asyncio.to_thread(self._write, _Write(entries=deferred))

    # -- checkpoints: resuming a run without paying twice ------------------------------------

    @contextmanager
    def step(
        self,
        request_id: str,
        stage: int,
        *,
        given: str | None = None,
        fingerprint: str = "",
        keep_text: bool = True,
        keep_answer: bool | None = None,
        claimed: bool = False,
    ) -> Iterator[Callable[[Request | Result], None]]:
        """One stage of a resumable run; yields ``save(state)`` for the stage's output.

        Entries of model calls are committed as the calls finish, each with its reply; the free
        entries and the progress land together when the block ends. A run killed inside the
        block loses no paid entry, and its rerun replays the calls it already paid for.

        With ``keep_text`` the stage's output (texts included) is saved, so that a rerun goes
        on from the next stage, and the stage's replies are dropped. Without it only the stage
        number is saved; the replies stay until the request is answered, so that a rerun
        replays every paid call from the first stage, and then go too. ``keep_answer`` (as
        ``keep_text`` unless given) says the same of the final answer: without it an answered
        request keeps neither its reply nor the digest of what it asked.

        ``claimed``: the request was claimed (:meth:`claim`); its progress is then only ever
        updated, and a step that fails lets go of the claim.
        """
        step = _Step(request_id, stage, fingerprint, claimed=claimed)
        self._set_scope("step", step)
        saved: list[Request | Result] = []
        failed = True
        try:
            yield saved.append
            failed = False
        finally:
            self._set_scope("step", None)
            save = _Save(request_id, fingerprint, self._now_text(), claimed=claimed)
            save.release = claimed and failed
            if saved:
                state = saved[-1]
                save.stage, save.done = stage, isinstance(state, Result)
                keep = keep_text if not save.done or keep_answer is None else keep_answer
                if keep:
                    save.state = state_to_json(state, given=given)
                    save.clear_step = stage
                elif save.done:
                    save.fingerprint = ""  # nothing of what it asked stays, not even a digest
            self._write(_Write(entries=step.free, save=save))

    def _now_text(self) -> str:
        # Always UTC: stamps are compared as text (by purge and retention).
        return self.clock().astimezone(UTC).isoformat()

    def claim(
        self,
        request_id: str,
        fingerprint: str,
        owner: str,
        *,
        stale_after_s: float,
        restart: bool = False,
    ) -> _Claim:
        """Take a resumable request for this run, atomically, across processes and hosts.

        Returns what was found: ``row`` (the progress saved before, ``None`` if none: then a
        new one is begun), ``entries`` (a request with entries but no progress: nothing is
        claimed), ``busy`` (another live run holds it: nothing is claimed). An answered request
        is not claimed. A claim not renewed for ``stale_after_s`` (the run died), or held by a
        process of this host that no longer exists, is taken over.
        """
        now = self.clock().astimezone(UTC)
        stale = (now - timedelta(seconds=stale_after_s)).isoformat()
        write = _Write(
            claim=_Claim(request_id, fingerprint, owner, now.isoformat(), stale, restart)
        )
        self._write(write)
        assert write.claim is not None
        return write.claim

    def unclaim(self, request_id: str, owner: str) -> None:
        """Let go of a claimed request (it stays resumable by the next run)."""
        self._write(_Write(release_claim=(request_id, owner)))

    def progress(self, request_id: str) -> Progress | None:
        """What this ledger saved of a resumable request, or ``None``."""
        rows = self._read(
            f"SELECT {_PROGRESS} FROM checkpoints WHERE request_id = ?", (request_id,)
        )
        return _progress(rows[0]) if rows else None

    def entry_count(self, request_id: str) -> int:
        """How many entries this ledger holds for a request (any process's)."""
        return int(
            self._read("SELECT COUNT(*) FROM entries WHERE request_id = ?", (request_id,))[0][0]
        )

    def purge(self, before: datetime) -> tuple[int, int]:
        """Delete saved progress and replies last written before ``before``.

        A request's progress and all its replies go together, by when the request was last
        active. Entries are kept (they hold no text and are the record of spend). A request
        purged while under way is refused if resumed (its entries are there, its progress is
        not), never paid for twice. Returns how many progress rows and replies went.
        """
        if not isinstance(before, datetime) or before.tzinfo is None:
            raise ConfigError(
                f"purge(before=...) takes a timezone-aware datetime, got {before!r}; e.g. "
                "datetime(2026, 11, 1, tzinfo=UTC)."
            )
        write = _Write(purge=before.astimezone(UTC).isoformat())
        self._write(write)
        return write.purged

    def in_step(self) -> bool:
        """Whether this thread is inside a resumable step."""
        return self._scope("step") is not None

    def replay(self, digest: str) -> str | None:
        """The saved reply of the next model call in this thread's step, if it matches ``digest``.

        Outside a step, or when the call was not made before, ``None``: the call is made.
        """
        step: _Step | None = self._scope("step")
        if step is None:
            return None
        ordinal = step.calls
        step.calls += 1
        row = self._read(
            "SELECT digest, reply FROM replies WHERE request_id = ? AND step = ? AND ordinal = ?",
            (step.request_id, step.index, ordinal),
        )
        if not row or row[0][0] != digest:
            return None
        return str(row[0][1])

    def checkpoint(
        self, request_id: str, *, given: str | None = None
    ) -> tuple[int, Request | Result] | None:
        """The last saved ``(stage index, request or result)`` of a request, or ``None``.

        ``None`` too when the progress was saved without its texts (nothing to go on from).
        """
        progress = self.progress(request_id)
        if progress is None or not progress.state:
            return None
        return progress.stage, state_from_json(progress.state, given=given)

    def save_job(self, key: str, job: str) -> None:
        """Remember a submitted asynchronous job (a batch job's ARN) under ``key``, durably.

        A run restarted after a crash finds it with :meth:`job` and waits for it, rather than
        submitting (and paying for) the same work again.
        """
        self._write(_Write(job=(key, job)))

    def job(self, key: str) -> str | None:
        """The job saved under ``key``, or ``None``."""
        rows = self._read("SELECT job FROM jobs WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    _EVENT = "event:"  # events share the jobs table (no migration): keys apart by this prefix

    def record_event(self, key: str, body: str) -> None:
        """Keep an event about the entries under ``key``, durably (the same key replaces it)."""
        check_text(key, "Event key", max_len=1000)
        check_text(body, "Event body", max_len=1_000_000, empty=True)
        self.check_writable()
        self._write(_Write(job=(self._EVENT + key, body)))

    def recorded_events(self, prefix: str = "") -> dict[str, str]:
        """The events recorded under keys that start with ``prefix``, by key."""
        start = self._EVENT + prefix
        rows = self._read(
            "SELECT key, job FROM jobs WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(start), start),
        )
        return {str(k)[len(self._EVENT) :]: str(v) for k, v in rows}

    # -- reading -----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._read_once(sql, params)
        except LedgerError:
            # A session the server ended shows only when used: reads are safe to try again,
            # on a new connection.
            if not self._reader_broken():
                raise
            return self._read_once(sql, params)

    def _reader_broken(self) -> bool:
        """Whether the reader's connection is one the server ended (a database store's)."""
        return False

    def _read_once(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._reopen_after_fork()
        with self._read_lock:
            self._reconnect_if_broken(reader=True)
            try:
                if self._statement_is_snapshot:
                    return list(self._reader.execute(sql, params).fetchall())
                self._begin_read(self._reader)
                try:
                    return list(self._reader.execute(sql, params).fetchall())
                finally:
                    self._reader.execute("COMMIT")
            except Exception as exc:
                if not self._unwell(exc):
                    raise
                with suppress(Exception):
                    self._reader.rollback()
                raise LedgerError(f"Could not read ledger {self.where}: {exc}.") from exc

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        """The reader connection inside one read transaction: every query sees the same state.

        A writable ledger first has its writer fold what is not in the cells yet (so that the
        next read finds it done); a read-only one folds the rest in memory, changing nothing.
        """
        if not self.read_only and not self._closed:
            self._write(_Write(fold=True))
        self._reopen_after_fork()
        with self._read_lock:
            self._reconnect_if_broken(reader=True)
            db = self._reader
            try:
                self._begin_read(db)
                try:
                    yield db
                finally:
                    with suppress(Exception):
                        db.execute("COMMIT")
            except Exception as exc:
                if not self._unwell(exc):
                    raise
                with suppress(Exception):
                    db.rollback()
                raise LedgerError(f"Could not read ledger {self.where}: {exc}.") from exc

    def _begin_read_again(self, db: Any) -> None:
        """After a failed statement: a fresh read transaction (PostgreSQL aborts the old one)."""
        with suppress(Exception):
            db.rollback()
        self._begin_read(db)

    @staticmethod
    def _cells_in(db: Any) -> list[Cell]:
        """Every cell, exact: the stored cells plus the entries not folded into them yet."""
        cells: dict[CellKey, Cell] = {}
        by_id: dict[int, Cell] = {}
        for row in db.execute(f"SELECT id, {_CELL_KEY}, first, {_CELL_SUMS} FROM cells"):
            key = _cell_key(row[1:9])
            cells[key] = by_id[row[0]] = _cell_from_row(key, row[9], row[10:])
        empty = [key for key, cell in cells.items() if cell.calls == 0]
        for cell_id, bucket, n in db.execute("SELECT cell, bucket, n FROM cell_latency"):
            by_id[cell_id].histogram[bucket] = n
        through = db.execute("SELECT value FROM meta WHERE key = 'cells_through'").fetchone()[0]
        rest = db.execute(
            f"SELECT {_FOLD_COLUMNS} FROM entries WHERE id > ? ORDER BY id", (through,)
        )
        _fold_rows(cells, rest)
        # A cell whose only entry was replaced (a stand-in for an expired hold) holds nothing.
        return [cell for cell in cells.values() if cell.calls != 0 or cell.key not in empty]

    def _cells(self) -> list[Cell]:
        with self._snapshot() as db:
            return self._cells_in(db)

    def entries(self) -> list[Entry]:
        """A snapshot of every stored entry, in the order written."""
        return list(self.iter_entries())

    def iter_entries(self) -> Iterator[Entry]:
        """Every stored entry in the order written, read a slice at a time."""
        self._reopen_after_fork()
        last = 0
        while True:
            rows = self._read(
                f"SELECT id, {', '.join(_READ_COLUMNS)} FROM entries WHERE id > ? "
                "ORDER BY id LIMIT 5000",
                (last,),
            )
            if not rows:
                return
            for row in rows:
                yield _from_sql(row[1:])
            last = rows[-1][0]

    def __len__(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM entries")[0][0]) + self.pending

    def totals(self, where: Callable[[Entry], bool] | None = None) -> Totals:
        """Totals over all entries (from the roll-up), or over those ``where`` accepts."""
        if where is not None:
            return super().totals(where)
        with self._snapshot() as db:
            cells = self._cells_in(db)
            requests = db.execute("SELECT COUNT(DISTINCT request_id) FROM entries").fetchone()[0]
        return fold(cells, requests)

    def _by(self, column: str, index: int) -> dict[Hashable, Totals]:
        with self._snapshot() as db:
            cells = self._cells_in(db)
            requests = dict(
                db.execute(
                    f"SELECT {column}, COUNT(DISTINCT request_id) FROM entries GROUP BY 1"
                ).fetchall()
            )
        return fold_groups(cells, lambda c: c.key[index], requests)

    def by_stage(self) -> dict[str, Totals]:
        """Totals per stage name."""
        return {str(k): v for k, v in self._by("stage", 2).items()}

    def by_model(self) -> dict[str | None, Totals]:
        """Totals per model id (``None`` for stages that called no model)."""
        return {None if k is None else str(k): v for k, v in self._by("model", 3).items()}

    def by_intent(self) -> dict[str | None, Totals]:
        """Totals per intent (``None`` where no intent was known)."""
        return {None if k is None else str(k): v for k, v in self._by("intent", 4).items()}

    def by_day(self) -> dict[date, Totals]:
        """Totals per UTC day."""
        return {date.fromisoformat(str(k)): v for k, v in self._by("day", 6).items()}

    def by_tag(self, key: str) -> dict[str | None, Totals]:
        """Totals per value of tag ``key`` (``None`` for entries without it)."""
        with self._snapshot() as db:
            cells = self._cells_in(db)
            values = {c.key[0]: c.tags.get(key) for c in cells}
            requests = self._requests_by_tagset(db, values)
        grouped = fold_groups(cells, lambda c: values[c.key[0]], requests)
        return {None if k is None else str(k): v for k, v in grouped.items()}

    def _requests_by_tagset(self, db: Any, values: Mapping[str, str | None]) -> dict[Hashable, int]:
        """Distinct requests per tag value, given each stored tag set's value of the tag."""
        if not values:
            return {}
        if len(values) <= 5_000:
            # The stored tag sets mapped to their values, as a table of literals joined in SQL.
            rows = ", ".join("(?, CAST(? AS TEXT))" for _ in values)
            params = [item for pair in values.items() for item in pair]
            found = db.execute(
                "SELECT t.v, COUNT(DISTINCT e.request_id) FROM entries e JOIN "
                f"(SELECT column1 AS tags, column2 AS v FROM (VALUES {rows}) AS x) t "
                "ON t.tags = e.tags GROUP BY t.v",
                params,
            ).fetchall()
            return dict(found)
        counts: dict[Hashable, set[str]] = {}  # very many tag sets: pair them up in Python
        for tags, rid in db.execute("SELECT DISTINCT tags, request_id FROM entries"):
            counts.setdefault(values.get(tags), set()).add(rid)
        return {k: len(v) for k, v in counts.items()}

    def variants(self, tag: str | None, default: str = "all") -> dict[str, VariantSums]:
        """What a report needs, per value of ``tag``, from the roll-up and one SQL pass.

        Requests' costs stream in request order and are kept as integers, never as a row or a
        ``Decimal`` per request: a million requests cost tens of MB, not hundreds.
        """
        with self._snapshot() as db:
            cells = self._cells_in(db)
            names = {c.key[0]: default if tag is None else c.tags.get(tag, default) for c in cells}
            try:
                return variant_sums(cells, self._request_costs_in(db, names, exact=False), tag,
                                    default)  # fmt: skip
            except Exception as exc:  # a request's sum beyond 64 bits: all from the text
                if "overflow" not in str(exc).lower():
                    raise
            self._begin_read_again(db)
            return variant_sums(cells, self._request_costs_in(db, names, exact=True), tag, default)

    @staticmethod
    def _request_costs_in(
        db: Any, names: Mapping[str, str], *, exact: bool
    ) -> dict[str, RequestCosts]:
        """Each serving request's cost per variant name, in 1e-24 USD, streamed from SQL.

        Amounts too fine (or too large) for picodollars are added from their text; ``exact``
        takes every amount from its text (when a sum of picodollars overflows 64 bits).
        """
        missing = "" if exact else " AND cost_pico IS NULL"
        fine: dict[tuple[str, str], int] = {}
        for rid, tags, cost in db.execute(
            f"SELECT request_id, tags, cost FROM entries WHERE phase = 'serve' "
            f"AND cost IS NOT NULL{missing}"
        ):
            fine[rid, tags] = fine.get((rid, tags), 0) + to_units(Decimal(cost))
        summed = "0" if exact else "SUM(cost_pico)"
        out: dict[str, RequestCosts] = {}
        current: str | None = None
        per: dict[str, int | None] = {}  # the current request's cost per variant name

        def flush() -> None:
            for name, units in per.items():
                costs = out.get(name)
                if costs is None:
                    costs = out[name] = RequestCosts()
                costs.add(units)
            per.clear()

        for rid, tags, pico, unknown in db.execute(
            f"SELECT request_id, tags, {summed}, COUNT(*) - COUNT(cost) FROM entries "
            "WHERE phase = 'serve' GROUP BY request_id, tags ORDER BY request_id"
        ):
            if rid != current:
                flush()
                current = rid
            name = names[tags]
            units = None if unknown else int(pico or 0) * _UNITS_PER_PICO + fine.get((rid, tags), 0)
            before = per.get(name, 0)
            per[name] = None if before is None or units is None else before + units
        flush()
        return out

    def request_ids(self) -> set[str]:
        """Ids of the requests that have at least one entry (for resuming a run)."""
        return {r[0] for r in self._read("SELECT DISTINCT request_id FROM entries")}
