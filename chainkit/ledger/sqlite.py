"""A ledger in an SQLite file (WAL): shared by every thread and process on one host.

Writing: every :meth:`SQLiteLedger.record` returns once its entry is committed. Threads that record
at the same moment share one transaction (group commit), so durability does not cost a commit per
entry. Entries are stored once per id (``INSERT`` only of ids not yet present), so writing again
after a failure never doubles an entry; a failed write keeps its entries pending in the process
and raises :class:`~chainkit.errors.LedgerError`; the next write, :meth:`flush` or :meth:`close`
stores them.

Reading: aggregations fold roll-up *cells* kept in the same transaction as the entries (a few
thousand rows for a million entries) and count distinct requests in SQL; no aggregation loads
every entry.

Opening: a new file is created, an older chainkit ledger migrated (inside a write lock, so that
processes opening it at once all succeed), and anything else refused without being changed.
``read_only=True`` opens without writing anything, for reports on files one may not change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, Inexact, localcontext
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError, LedgerError
from chainkit.ledger.core import (
    Budget,
    Cell,
    CellKey,
    Hold,
    Ledger,
    Totals,
    VariantSums,
    cells_of,
    fold,
    fold_groups,
    variant_sums,
)
from chainkit.money import CONTEXT
from chainkit.records import Entry, Request, Result, Tags, Usage, state_from_json, state_to_json

__all__ = ["SQLiteLedger"]

APPLICATION_ID = 0x636B6C67  # "cklg" in the file header: this file is a chainkit ledger
_SQLITE_MAGIC = b"SQLite format 3\x00"

# -- schema: migrations as a plain list of functions, applied in order ---------------------------


def _m001_entries(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            outcome TEXT NOT NULL,
            model TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cache_read_tokens INTEGER,
            cache_write_tokens INTEGER,
            cost TEXT,
            avoided_cost TEXT,
            estimated INTEGER NOT NULL,
            latency_s REAL NOT NULL,
            attempts INTEGER NOT NULL,
            intent TEXT,
            tags TEXT NOT NULL,
            phase TEXT NOT NULL,
            time TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX entries_request ON entries (request_id)")


def _m002_checkpoints(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE checkpoints (
            request_id TEXT PRIMARY KEY,
            stage INTEGER NOT NULL,
            state TEXT NOT NULL
        )"""
    )


_PICO = 12  # money is also kept as an integer count of 10^-12 USD, which SQL sums exactly


def _pico(amount: Decimal | None) -> int | None:
    """``amount`` in picodollars if that is exact, else ``None`` (then Python sums the text)."""
    if amount is None:
        return None
    with localcontext(CONTEXT) as ctx:
        ctx.traps[Inexact] = False
        scaled = amount.scaleb(_PICO)
        return int(scaled) if scaled == scaled.to_integral_value() else None


def _utc_day(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).date().isoformat()


def _m003_sql_sums(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE entries ADD COLUMN cost_pico INTEGER")
    db.execute("ALTER TABLE entries ADD COLUMN avoided_pico INTEGER")
    db.execute("ALTER TABLE entries ADD COLUMN day TEXT")
    db.create_function("pico", 1, lambda text: None if text is None else _pico(Decimal(text)))
    db.create_function("utc_day", 1, _utc_day)
    db.execute(
        "UPDATE entries SET cost_pico = pico(cost), avoided_pico = pico(avoided_cost), "
        "day = utc_day(time)"
    )


def _m004_jobs(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS jobs (key TEXT PRIMARY KEY, job TEXT NOT NULL)")


def _m005_ids_and_cells(db: sqlite3.Connection) -> None:
    """Entry ids, bounds, flags and notes; roll-up cells; saved replies for resuming."""
    for column in ("uid TEXT", "bound TEXT", "flags TEXT NOT NULL DEFAULT ''"):
        db.execute(f"ALTER TABLE entries ADD COLUMN {column}")
    db.execute("ALTER TABLE entries ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    # Tags were stored with ensure_ascii; one encoding per tag set lets SQL group by the text.
    db.create_function("canon_tags", 1, lambda text: Tags(json.loads(text)).json)
    db.create_function("utc_day", 1, _utc_day)
    # The day is recomputed too: grouping by it must agree with the cells, which use UTC days.
    db.execute(
        "UPDATE entries SET uid = 'legacy.' || id, tags = canon_tags(tags), day = utc_day(time)"
    )
    db.execute("CREATE UNIQUE INDEX entries_uid ON entries (uid)")
    db.execute(
        """CREATE TABLE cells (
            id INTEGER PRIMARY KEY,
            tags TEXT NOT NULL, phase TEXT NOT NULL, stage TEXT NOT NULL, model TEXT NOT NULL,
            intent TEXT NOT NULL, outcome TEXT NOT NULL, day TEXT NOT NULL, flags TEXT NOT NULL,
            first INTEGER NOT NULL,
            calls INTEGER NOT NULL, estimated INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
            cost TEXT NOT NULL, cost_unknown INTEGER NOT NULL,
            bound_unknown TEXT NOT NULL, bound_missing INTEGER NOT NULL,
            avoided TEXT NOT NULL, avoided_unknown INTEGER NOT NULL,
            latency_ns INTEGER NOT NULL,
            UNIQUE (tags, phase, stage, model, intent, outcome, day, flags)
        )"""
    )
    db.execute(
        """CREATE TABLE cell_latency (
            cell INTEGER NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (cell, bucket)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE replies (
            request_id TEXT NOT NULL, step INTEGER NOT NULL, ordinal INTEGER NOT NULL,
            digest TEXT NOT NULL, reply TEXT NOT NULL,
            PRIMARY KEY (request_id, step, ordinal)
        )"""
    )
    # Roll up what older versions wrote, a slice at a time.
    cursor = db.execute(f"SELECT id, {', '.join(_READ_COLUMNS)} FROM entries ORDER BY id")
    while rows := cursor.fetchmany(10_000):
        _add_cells(db, [(_from_sql(r[1:]), r[0]) for r in rows])


# Migrations run in order; the database's user_version counts those already applied.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_entries,
    _m002_checkpoints,
    _m003_sql_sums,
    _m004_jobs,
    _m005_ids_and_cells,
]

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
_READ_COLUMNS = _WRITE_COLUMNS[:21]
_INSERT = (
    f"INSERT INTO entries ({', '.join(_WRITE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_WRITE_COLUMNS))})"
)
_ZERO = timedelta(0)


def _to_sql(e: Entry) -> tuple[Any, ...]:
    # Built directly, not through entry_row: this is the hot path of every write.
    u = e.usage
    cost, avoided, bound = e.cost, e.avoided_cost, e.bound
    when = e.time
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
        None if cost is None else str(cost),
        None if avoided is None else str(avoided),
        None if bound is None else str(bound),
        int(e.estimated),
        e.latency_s,
        e.attempts,
        e.intent,
        Tags.of(e.tags).json,
        e.phase,
        when.isoformat(),
        ",".join(e.flags),
        e.note,
        _pico(cost),
        _pico(avoided),
        (when if when.utcoffset() == _ZERO else when.astimezone(UTC)).date().isoformat(),
    )


def _from_sql(row: Sequence[Any]) -> Entry:
    (uid, rid, stage, outcome, model, inp, out, cread, cwrite, cost, avoided, bound) = row[:12]
    (estimated, latency, attempts, intent, tags, phase, when, flags, note) = row[12:21]
    return Entry(
        id=uid,
        request_id=rid,
        stage=stage,
        outcome=outcome,
        model=model,
        usage=None if inp is None else Usage(inp, out, cread, cwrite),
        cost=None if cost is None else Decimal(cost),
        avoided_cost=None if avoided is None else Decimal(avoided),
        bound=None if bound is None else Decimal(bound),
        estimated=bool(estimated),
        latency_s=float(latency),
        attempts=attempts,
        intent=intent,
        tags=Tags(json.loads(tags)),
        phase=phase,
        time=datetime.fromisoformat(when),
        flags=tuple(flags.split(",")) if flags else (),
        note=note,
    )


# -- roll-up cells -------------------------------------------------------------------------------

_CELL_SUMS = (
    "calls, estimated, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "cost, cost_unknown, bound_unknown, bound_missing, avoided, avoided_unknown, latency_ns"
)
_CELL_KEY = "tags, phase, stage, model, intent, outcome, day, flags"
_CELL_FIND = (
    f"SELECT id, {_CELL_SUMS} FROM cells WHERE tags = ? AND phase = ? AND stage = ? AND "
    "model = ? AND intent = ? AND outcome = ? AND day = ? AND flags = ?"
)
_CELL_INSERT = (
    f"INSERT INTO cells ({_CELL_KEY}, first, {_CELL_SUMS}) VALUES ({', '.join('?' * 22)})"
)
_CELL_UPDATE = (
    "UPDATE cells SET calls = ?, estimated = ?, input_tokens = ?, output_tokens = ?, "
    "cache_read_tokens = ?, cache_write_tokens = ?, cost = ?, cost_unknown = ?, "
    "bound_unknown = ?, bound_missing = ?, avoided = ?, avoided_unknown = ?, latency_ns = ? "
    "WHERE id = ?"
)
_LATENCY_ADD = (
    "INSERT INTO cell_latency VALUES (?, ?, ?) "
    "ON CONFLICT (cell, bucket) DO UPDATE SET n = n + excluded.n"
)


def _sql_key(key: CellKey) -> tuple[str, ...]:
    # NULL never equals NULL in a UNIQUE constraint; '' cannot be a model or intent.
    tags, phase, stage, model, intent, outcome, day, flags = key
    return (tags, phase, stage, model or "", intent or "", outcome, day, flags)


def _cell_sums(c: Cell) -> tuple[Any, ...]:
    return (
        c.calls,
        c.estimated,
        c.input_tokens,
        c.output_tokens,
        c.cache_read_tokens,
        c.cache_write_tokens,
        str(c.cost),
        c.cost_unknown,
        str(c.bound_unknown),
        c.bound_missing,
        str(c.avoided),
        c.avoided_unknown,
        c.latency_ns,
    )


def _add_cells(db: sqlite3.Connection, written: Sequence[tuple[Entry, int]]) -> None:
    """Add entries (with their row ids) to the roll-up cells, exactly, in the open transaction."""
    deltas = cells_of(e for e, _ in written)
    firsts = [rowid for _, rowid in written]
    with localcontext(CONTEXT):
        for delta in deltas:
            sql_key = _sql_key(delta.key)
            row = db.execute(_CELL_FIND, sql_key).fetchone()
            if row is None:
                cursor = db.execute(
                    _CELL_INSERT, (*sql_key, firsts[delta.first], *_cell_sums(delta))
                )
                cell_id = cursor.lastrowid
            else:
                cell_id = row[0]
                old = _cell_from_row(delta.key, 0, row[1:])
                merged = Cell(
                    delta.key,
                    0,
                    old.calls + delta.calls,
                    old.estimated + delta.estimated,
                    old.input_tokens + delta.input_tokens,
                    old.output_tokens + delta.output_tokens,
                    old.cache_read_tokens + delta.cache_read_tokens,
                    old.cache_write_tokens + delta.cache_write_tokens,
                    old.cost + delta.cost,
                    old.cost_unknown + delta.cost_unknown,
                    old.bound_unknown + delta.bound_unknown,
                    old.bound_missing + delta.bound_missing,
                    old.avoided + delta.avoided,
                    old.avoided_unknown + delta.avoided_unknown,
                    old.latency_ns + delta.latency_ns,
                )
                db.execute(_CELL_UPDATE, (*_cell_sums(merged), cell_id))
            db.executemany(_LATENCY_ADD, [(cell_id, b, n) for b, n in delta.histogram.items()])


def _cell_from_row(key: CellKey, first: int, sums: Sequence[Any]) -> Cell:
    (calls, estimated, inp, out, cread, cwrite, cost, unknown) = sums[:8]
    (bound, missing, avoided, avoided_unknown, latency_ns) = sums[8:13]
    return Cell(
        key,
        first,
        calls,
        estimated,
        inp,
        out,
        cread,
        cwrite,
        Decimal(cost),
        unknown,
        Decimal(bound),
        missing,
        Decimal(avoided),
        avoided_unknown,
        latency_ns,
    )


# -- what one write carries ----------------------------------------------------------------------


@dataclass(slots=True)
class _Write:
    """Entries and the state that must land with them, in one transaction."""

    entries: list[Entry] = field(default_factory=list)
    checkpoint: tuple[str, int, str] | None = None
    reply: tuple[str, int, int, str, str] | None = None
    clear_replies: tuple[str, int] | None = None
    job: tuple[str, str] | None = None


@dataclass(slots=True)
class _Step:
    """One stage of a resumable run: its free entries wait for its checkpoint."""

    request_id: str
    index: int
    free: list[Entry] = field(default_factory=list)
    calls: int = 0


# -- the ledger ----------------------------------------------------------------------------------


class SQLiteLedger(Ledger):
    """A ledger kept in an SQLite file: survives the process, same interface as :class:`Ledger`.

    Args:
        path: the database file; created if missing.
        budgets: spending limits to enforce.
        read_only: open without writing anything (for reports); recording raises.
        timeout_s: how long to wait for another process's write lock before failing.
    """

    durable = True

    def __init__(
        self,
        path: str | Path,
        *,
        budgets: Iterable[Budget] = (),
        read_only: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._timeout_s = timeout_s
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[_Write] = []
        self._queued = 0
        self._committed = 0
        self._flushing = False
        self._local = threading.local()
        self._read_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._db, self._reader = self._open()
        super().__init__(budgets)

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> tuple[sqlite3.Connection | None, sqlite3.Connection]:
        path = self.path
        exists = path.exists()
        if exists and not path.is_file():
            raise ConfigError(f"{path} is not a file; pass the path of a ledger database.")
        size = path.stat().st_size if exists else 0
        if self.read_only and not exists:
            raise ConfigError(
                f"No ledger file at {path}. Run a recipe with `--ledger {path}` to write one."
            )
        if self.read_only and size == 0:
            raise ConfigError(f"{path} is empty: it is not a chainkit ledger.")
        if size:
            with open(path, "rb") as f:
                if f.read(16) != _SQLITE_MAGIC:
                    raise ConfigError(
                        f"{path} is not an SQLite database, so not a chainkit ledger; pass the "
                        ".db file a recipe wrote with --ledger, or a new path."
                    )
        if self.read_only:
            reader = self._connect_read_only()
            self._check_schema(reader, writable=False)
            return None, reader
        try:
            db = sqlite3.connect(
                path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open ledger {path}: {exc}.") from exc
        self._check_schema(db, writable=True)
        self._set_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process kills
        reader = sqlite3.connect(
            path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        return db, reader

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(
                f"{uri}?mode=ro", uri=True, timeout=self._timeout_s, check_same_thread=False
            )
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # A WAL file we may not write beside (read-only directory or file): read it as an
            # immutable snapshot, which needs no -shm file.
            return sqlite3.connect(
                f"{uri}?immutable=1", uri=True, timeout=self._timeout_s, check_same_thread=False
            )

    def _set_wal(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            raise LedgerError(f"Cannot switch ledger {self.path} to WAL mode: {exc}.") from exc

    def _check_schema(self, db: sqlite3.Connection, *, writable: bool) -> None:
        """Refuse a foreign database; migrate an older or new one (inside a write lock)."""
        try:
            kind, version = self._kind(db)
            if kind == "current" or not writable:
                if kind != "current":
                    self._refuse(kind, version)
                return
            if kind == "foreign":
                self._refuse(kind, version)
            db.execute("BEGIN IMMEDIATE")  # another process may be migrating right now
            try:
                kind, version = self._kind(db)
                if kind == "foreign":
                    self._refuse(kind, version)
                for number, migration in enumerate(_MIGRATIONS[version:], start=version + 1):
                    migration(db)
                    db.execute(f"PRAGMA user_version = {number}")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path} is not a chainkit ledger database: {exc}.") from exc

    def _kind(self, db: sqlite3.Connection) -> tuple[str, int]:
        # One read transaction: three separate reads could straddle another process's migration
        # and see its tables without its version.
        own = not db.in_transaction
        if own:
            db.execute("BEGIN")
        try:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            if own and db.in_transaction:
                db.execute("COMMIT")
        if version > len(_MIGRATIONS):
            raise ConfigError(
                f"Ledger {self.path} has schema version {version}, newer than this chainkit "
                f"({len(_MIGRATIONS)}); upgrade chainkit to read it."
            )
        if app == APPLICATION_ID and version == len(_MIGRATIONS):
            return "current", version
        if app == APPLICATION_ID or (app == 0 and version >= 1 and "entries" in tables):
            return "older", version
        if app == 0 and version == 0 and not tables:
            return "new", 0
        return "foreign", version

    def _refuse(self, kind: str, version: int) -> None:
        if kind == "foreign":
            raise ConfigError(
                f"{self.path} is an SQLite database but not a chainkit ledger (it has other "
                "tables); it was left unchanged. Pass the .db file a recipe wrote with --ledger."
            )
        if kind == "new":
            raise ConfigError(f"{self.path} holds no ledger (an empty SQLite database).")
        raise ConfigError(
            f"Ledger {self.path} was written by an older chainkit (schema {version}); opening it "
            "read-only cannot upgrade it. Open it once for writing (SQLiteLedger(path)) to "
            "upgrade it in place."
        )

    def _reopen_after_fork(self) -> None:
        # A connection must not cross fork(); the child opens its own (the parent's are left
        # alone, not closed, so that its locks are not disturbed).
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._cv = threading.Condition(threading.Lock())
            self._read_lock = threading.Lock()
            self._queue, self._queued, self._committed, self._flushing = [], 0, 0, False
            self._db, self._reader = self._open()

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        entry: Entry,
        *,
        hold: Hold | None = None,
        reply: tuple[str, str] | None = None,
    ) -> None:
        """Store ``entry``; it is committed when this returns (except as below).

        Inside a resumable step (:meth:`step`), entries of stages that called no model wait for
        the step's checkpoint and land with it; an entry of a model call is committed at once,
        with ``reply`` (its digest and saved reply) so that a rerun of the step replays it.
        """
        if type(entry) is not Entry:
            raise ConfigError(f"Ledger.record takes an Entry, got {type(entry).__name__}.")
        step: _Step | None = getattr(self._local, "step", None)
        if step is not None and entry.model is None and hold is None:
            step.free.append(entry)
            return
        write = _Write(entries=[entry])
        if step is not None and reply is not None:
            write.reply = (step.request_id, step.index, step.calls - 1, reply[0], reply[1])
        try:
            self._write(write)
        finally:
            with self._lock:
                self._count(entry)
                if hold is not None:
                    self._release(hold)

    def record_many(self, entries: Iterable[Entry]) -> None:
        """Store many entries in one transaction."""
        batch = list(entries)
        for e in batch:
            if type(e) is not Entry:
                raise ConfigError(f"Ledger.record takes an Entry, got {type(e).__name__}.")
        self._write(_Write(entries=batch))
        with self._lock:
            for e in batch:
                self._count(e)

    def _write(self, write: _Write | None) -> None:
        """Queue ``write`` and return once it is committed (group commit across threads)."""
        if self.read_only:
            raise ConfigError(f"Ledger {self.path} is open read-only; it cannot record.")
        if self._closed:
            raise ConfigError(f"Ledger {self.path} is closed.")
        self._reopen_after_fork()
        cv = self._cv
        with cv:
            if write is not None:
                self._queue.append(write)
                self._queued += 1
            ticket = self._queued
            while self._committed < ticket and self._flushing:
                cv.wait()
            if self._committed >= ticket:
                return
            # This thread writes everything queued so far, its own write included.
            self._flushing = True
            batch, self._queue = self._queue, []
            upto = self._queued
        error: BaseException | None = None
        try:
            self._store(batch)
        except BaseException as exc:
            error = exc
        with cv:
            self._flushing = False
            if error is None:
                self._committed = upto
            else:
                self._queue[:0] = batch  # kept, in order, for the next write to retry
            cv.notify_all()
        if error is not None:
            pending = sum(len(w.entries) for w in self._queue)
            if isinstance(error, sqlite3.Error | OSError):
                raise LedgerError(
                    f"Could not write to ledger {self.path}: {error}. {pending} entries are kept "
                    "in this process and will be written by the next write, flush() or close(); "
                    "free disk space or fix the file, then call flush()."
                ) from error
            raise error

    def _store(self, batch: list[_Write]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            entries = [e for w in batch for e in w.entries]
            new = self._new(db, entries)
            if new:
                cursor = db.executemany(_INSERT, [_to_sql(e) for e in new])
                del cursor
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                first = last - len(new) + 1
                _add_cells(db, [(e, first + i) for i, e in enumerate(new)])
            for w in batch:
                if w.reply is not None:
                    db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)", w.reply)
                if w.checkpoint is not None:
                    db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", w.checkpoint)
                if w.clear_replies is not None:
                    db.execute(
                        "DELETE FROM replies WHERE request_id = ? AND step = ?", w.clear_replies
                    )
                if w.job is not None:
                    db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", w.job)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    @staticmethod
    def _new(db: sqlite3.Connection, entries: list[Entry]) -> list[Entry]:
        """The entries whose ids are not stored yet (and the first of any id given twice)."""
        seen: set[str] = set()
        for i in range(0, len(entries), 500):
            ids = [e.id for e in entries[i : i + 500]]
            marks = ", ".join("?" * len(ids))
            seen.update(
                r[0] for r in db.execute(f"SELECT uid FROM entries WHERE uid IN ({marks})", ids)
            )
        new = []
        for e in entries:
            if e.id not in seen:
                seen.add(e.id)
                new.append(e)
        return new

    def flush(self) -> None:
        """Write pending entries (those a failed write kept); raise ``LedgerError`` if it fails."""
        if self.read_only or self._closed:
            return
        self._write(None)

    @property
    def pending(self) -> int:
        """Entries recorded but not yet written (only after a failed write)."""
        with self._cv:
            return sum(len(w.entries) for w in self._queue)

    def close(self) -> None:
        """Write pending entries and close the file.

        If the pending entries cannot be written, ``LedgerError`` is raised and the ledger stays
        open, so that :meth:`flush` can be tried again: nothing is dropped silently.
        """
        if self._closed:
            return
        self.flush()
        self._closed = True
        for db in (self._db, self._reader):
            if db is not None:
                with suppress(sqlite3.Error):
                    db.close()

    # -- checkpoints: resuming a run without paying twice ------------------------------------

    @contextmanager
    def step(
        self, request_id: str, stage: int, *, given: str | None = None
    ) -> Iterator[Callable[[Request | Result], None]]:
        """One stage of a resumable run; yields ``save(state)`` for the stage's output.

        Entries of model calls are committed as the calls finish, each with its reply; the free
        entries and the checkpoint land together when the block ends. A run killed inside the
        block loses no paid entry, and its rerun replays the calls it already paid for.
        """
        self._local.step = step = _Step(request_id, stage)
        saved: list[Request | Result] = []
        try:
            yield saved.append
        finally:
            self._local.step = None
            write = _Write(entries=step.free)
            if saved:
                write.checkpoint = (request_id, stage, state_to_json(saved[-1], given=given))
                write.clear_replies = (request_id, stage)
            self._write(write)

    def in_step(self) -> bool:
        """Whether this thread is inside a resumable step."""
        return getattr(self._local, "step", None) is not None

    def replay(self, digest: str) -> str | None:
        """The saved reply of the next model call in this thread's step, if it matches ``digest``.

        Outside a step, or when the call was not made before, ``None``: the call is made.
        """
        step: _Step | None = getattr(self._local, "step", None)
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
        """The last saved ``(stage index, request or result)`` of a request, or ``None``."""
        rows = self._read(
            "SELECT stage, state FROM checkpoints WHERE request_id = ?", (request_id,)
        )
        if not rows:
            return None
        return int(rows[0][0]), state_from_json(str(rows[0][1]), given=given)

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

    # -- reading -----------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._reopen_after_fork()
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"Could not read ledger {self.path}: {exc}.") from exc

    def _cells(self) -> list[Cell]:
        rows = self._read(f"SELECT id, {_CELL_KEY}, first, {_CELL_SUMS} FROM cells")
        histograms: dict[int, dict[int, int]] = {}
        for cell, bucket, n in self._read("SELECT cell, bucket, n FROM cell_latency"):
            histograms.setdefault(cell, {})[bucket] = n
        cells = []
        for row in rows:
            tags, phase, stage, model, intent, outcome, day, flags = row[1:9]
            key: CellKey = (tags, phase, stage, model or None, intent or None, outcome, day, flags)
            cell = _cell_from_row(key, row[9], row[10:])
            cell.histogram = histograms.get(row[0], {})
            cells.append(cell)
        return cells

    def _requests(self, column: str) -> dict[Any, int]:
        return dict(
            self._read(f"SELECT {column}, COUNT(DISTINCT request_id) FROM entries GROUP BY 1")
        )

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
        requests = self._read("SELECT COUNT(DISTINCT request_id) FROM entries")[0][0]
        return fold(self._cells(), requests)

    def _by(self, column: str, index: int) -> dict[Hashable, Totals]:
        requests = self._requests(column)
        return fold_groups(self._cells(), lambda c: c.key[index], requests)

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
        cells = self._cells()
        values = {c.key[0]: c.tags.get(key) for c in cells}
        requests = self._tag_requests(values)
        grouped = fold_groups(cells, lambda c: values[c.key[0]], requests)
        return {None if k is None else str(k): v for k, v in grouped.items()}

    def _tag_requests(self, values: Mapping[str, str | None]) -> dict[Hashable, int]:
        """Distinct requests per tag value, given each stored tag set's value."""
        self._reopen_after_fork()
        with self._read_lock:
            db = self._reader
            try:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS tag_values (tags TEXT PRIMARY KEY, v)")
                db.execute("DELETE FROM temp.tag_values")
                db.executemany("INSERT INTO temp.tag_values VALUES (?, ?)", values.items())
                rows = db.execute(
                    "SELECT t.v, COUNT(DISTINCT e.request_id) FROM entries e "
                    "JOIN temp.tag_values t ON t.tags = e.tags GROUP BY t.v"
                ).fetchall()
                db.execute("DELETE FROM temp.tag_values")
            except sqlite3.Error as exc:
                raise LedgerError(f"Could not read ledger {self.path}: {exc}.") from exc
        return dict(rows)

    def variants(self, tag: str | None, default: str = "all") -> dict[str, VariantSums]:
        """What a report needs, per value of ``tag``, from the roll-up and one SQL pass."""
        cells = self._cells()
        names = {c.key[0]: default if tag is None else c.tags.get(tag, default) for c in cells}
        costs: dict[str, dict[str, Decimal | None]] = {}
        rows = self._read(
            "SELECT tags, request_id, SUM(cost_pico), COUNT(*) - COUNT(cost), "
            "COUNT(cost) - COUNT(cost_pico) FROM entries WHERE phase = 'serve' "
            "GROUP BY tags, request_id"
        )
        with localcontext(CONTEXT):
            for tags, rid, pico, unknown, inexact in rows:
                name = names.get(tags)
                if name is None:  # written after the cells were read
                    name = default if tag is None else Tags(json.loads(tags)).get(tag, default)
                if inexact:
                    found = self._read(
                        "SELECT cost FROM entries WHERE phase = 'serve' AND tags = ? AND "
                        "request_id = ?",
                        (tags, rid),
                    )
                    amount: Decimal | None = sum(
                        (Decimal(r[0]) for r in found if r[0] is not None), Decimal(0)
                    )
                else:
                    amount = Decimal(pico or 0).scaleb(-_PICO)
                if unknown:
                    amount = None
                per = costs.setdefault(name, {})
                before = per.get(rid, Decimal(0))
                per[rid] = None if before is None or amount is None else before + amount
        return variant_sums(cells, costs, tag, default)

    def request_ids(self) -> set[str]:
        """Ids of the requests that have at least one entry (for resuming a run)."""
        return {r[0] for r in self._read("SELECT DISTINCT request_id FROM entries")}

    def add_budget(self, budget: Budget) -> None:
        """Enforce ``budget`` from now on, counting what is already recorded against it."""
        cells = self._cells()
        spent = fold(c for c in cells if budget.applies(c.tags)).cost
        with self._lock:
            self._spent[budget] = spent
            self._held[budget] = Decimal(0)
