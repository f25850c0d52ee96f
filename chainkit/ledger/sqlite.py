"""A ledger in an SQLite file (WAL): shared by every thread and process on one host.

Opening: a new file is created, an older chainkit ledger migrated (inside a write lock, so that
processes opening it at once all succeed), and anything else refused without being changed.
``read_only=True`` opens without writing anything, for reports on files one may not change.
Everything else (durable writes, roll-up cells, budgets) is
:class:`~chainkit.ledger.sql.SQLLedger`'s.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError, LedgerError
from chainkit.ledger.budgets import Budget, BudgetEvent
from chainkit.ledger.sql import (
    CONVERSATION_DDL,
    CONVERSATION_DDL_1,
    SQLLedger,
    _pico,
    _stored_tags,
)
from chainkit.records import Tags

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
    for column in (
        "uid TEXT",
        "bound TEXT",
        "flags TEXT NOT NULL DEFAULT ''",
        "cache_write_1h_tokens INTEGER",
        "queries INTEGER",
    ):
        db.execute(f"ALTER TABLE entries ADD COLUMN {column}")
    db.execute("ALTER TABLE entries ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    # Tags were stored with ensure_ascii; one encoding per tag set lets SQL group by the text.
    db.create_function("canon_tags", 1, lambda text: Tags(_stored_tags(text)).json)
    db.create_function("utc_day", 1, _utc_day)
    # The day is recomputed too: grouping by it must agree with the cells, which use UTC days.
    db.execute(
        "UPDATE entries SET uid = 'legacy.' || id, tags = canon_tags(tags), day = utc_day(time), "
        "cache_write_1h_tokens = CASE WHEN input_tokens IS NULL THEN NULL ELSE 0 END, "
        "queries = CASE WHEN input_tokens IS NULL THEN NULL ELSE 0 END"
    )
    db.execute("CREATE UNIQUE INDEX entries_uid ON entries (uid)")
    # Nothing looks entries up by request id any more (checkpoints have their own table), and
    # every index costs each write a B-tree insert.
    db.execute("DROP INDEX IF EXISTS entries_request")
    db.execute(
        """CREATE TABLE cells (
            id INTEGER PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            tags TEXT NOT NULL, phase TEXT NOT NULL, stage TEXT NOT NULL, model TEXT NOT NULL,
            intent TEXT NOT NULL, outcome TEXT NOT NULL, day TEXT NOT NULL, flags TEXT NOT NULL,
            first INTEGER NOT NULL,
            calls INTEGER NOT NULL, estimated INTEGER NOT NULL,
            input_tokens TEXT NOT NULL, output_tokens TEXT NOT NULL,
            cache_read_tokens TEXT NOT NULL, cache_write_tokens TEXT NOT NULL,
            cost TEXT NOT NULL, cost_unknown INTEGER NOT NULL,
            bound_unknown TEXT NOT NULL, bound_missing INTEGER NOT NULL,
            avoided TEXT NOT NULL, avoided_unknown INTEGER NOT NULL,
            latency_ns TEXT NOT NULL,
            cache_write_1h_tokens TEXT NOT NULL, queries TEXT NOT NULL
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
    # How far the cells are folded: entries with a larger id are folded later, by the writer
    # when it is idle or by the next read (older versions' entries included).
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('cells_through', 0)")


def _m006_budgets(db: sqlite3.Connection) -> None:
    """Budgets kept in the store: definitions, spend per period, holds with leases, events."""
    db.execute("CREATE TABLE budgets (name TEXT PRIMARY KEY, definition TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE budget_state (
            budget TEXT NOT NULL, period TEXT NOT NULL,
            spent TEXT NOT NULL, held TEXT NOT NULL,
            PRIMARY KEY (budget, period)
        )"""
    )
    db.execute(
        """CREATE TABLE holds (
            id TEXT PRIMARY KEY, amount TEXT NOT NULL, expires TEXT NOT NULL,
            details TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX holds_expires ON holds (expires)")
    db.execute(
        """CREATE TABLE budget_events (
            budget TEXT NOT NULL, period TEXT NOT NULL, threshold TEXT NOT NULL,
            spent TEXT NOT NULL, limit_usd TEXT NOT NULL, time TEXT NOT NULL,
            PRIMARY KEY (budget, period, threshold)
        )"""
    )


def _m007_progress(db: sqlite3.Connection) -> None:
    # Resuming checks what a request asks against what was saved under its id; purging and
    # retention need to know when progress and replies were written ('' before: the oldest).
    db.execute("ALTER TABLE checkpoints ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE checkpoints ADD COLUMN updated TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE checkpoints ADD COLUMN done INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE checkpoints ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE replies ADD COLUMN created TEXT NOT NULL DEFAULT ''")


def _m008_conversations(db: sqlite3.Connection) -> None:
    """Conversations: which request was which turn, its tokens, digests, and opted-in texts."""
    for statement in CONVERSATION_DDL_1:
        db.execute(statement)


_TURN_COLUMNS = (
    "conversation_id, position, role, turn, request_id, tokens, digest, history_tokens, "
    "trimmed_tokens, time"
)


def _m009_conversation_tenants(db: sqlite3.Connection) -> None:
    """Conversations keyed by (tenant tag, id): two tenants' conversation "1" are two."""
    # SQLite cannot change a primary key in place: rebuild the three tables, each row taking
    # its conversation's tenant tag (tags are JSON).
    db.execute("DROP INDEX conversations_updated")
    db.execute("DROP INDEX conversation_turns_request")
    for table in ("conversations", "conversation_turns", "conversation_texts"):
        db.execute(f"ALTER TABLE {table} RENAME TO {table}_1")
    for statement in CONVERSATION_DDL:
        db.execute(statement)
    db.execute(
        "INSERT INTO conversations (tenant, id, tags, created, updated, summarised, "
        "summary_digest) SELECT COALESCE(json_extract(tags, '$.tenant'), ''), id, tags, "
        "created, updated, summarised, summary_digest FROM conversations_1"
    )
    tenant = "COALESCE((SELECT c.tenant FROM conversations c WHERE c.id = t.conversation_id), '')"
    db.execute(
        f"INSERT INTO conversation_turns (tenant, {_TURN_COLUMNS}) SELECT {tenant}, "
        + ", ".join(f"t.{c}" for c in _TURN_COLUMNS.split(", "))
        + " FROM conversation_turns_1 t"
    )
    db.execute(
        "INSERT INTO conversation_texts (tenant, conversation_id, position, text) SELECT "
        f"{tenant}, t.conversation_id, t.position, t.text FROM conversation_texts_1 t"
    )
    for table in ("conversations", "conversation_turns", "conversation_texts"):
        db.execute(f"DROP TABLE {table}_1")


# Migrations run in order; the database's user_version counts those already applied.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_entries,
    _m002_checkpoints,
    _m003_sql_sums,
    _m004_jobs,
    _m005_ids_and_cells,
    _m006_budgets,
    _m007_progress,
    _m008_conversations,
    _m009_conversation_tenants,
]


class SQLiteLedger(SQLLedger):
    """A ledger kept in an SQLite file: survives the process, same interface as :class:`Ledger`.

    Args:
        path: the database file; created if missing.
        budgets: spending limits to enforce (kept in the file, for every process).
        read_only: open without writing anything (for reports); recording raises.
        timeout_s: how long to wait for another process's write lock before failing.
        clock: now, for budget periods and hold leases.
        on_threshold: called with each budget threshold crossing this process causes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        budgets: Iterable[Budget] = (),
        read_only: bool = False,
        timeout_s: float = 30.0,
        clock: Callable[[], datetime] | None = None,
        on_threshold: Callable[[BudgetEvent], object] | None = None,
        retention: timedelta | None = None,
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._inode: tuple[int, int] = (-1, -1)
        self._data_version: int | None = None
        self._timeout_s = timeout_s
        self.read_only = read_only
        super().__init__(
            budgets=budgets,
            read_only=read_only,
            timeout_s=timeout_s,
            clock=clock,
            on_threshold=on_threshold,
            retention=retention,
        )

    def _begin_write(self, db: Any) -> bool:
        db.execute("BEGIN IMMEDIATE")  # the file's write lock, for every process
        # data_version changes only when another connection commits.
        version = db.execute("PRAGMA data_version").fetchone()[0]
        stale, self._data_version = version != self._data_version, version
        return bool(stale)

    def _begin_read(self, db: Any) -> None:
        db.execute("BEGIN")  # WAL: one snapshot for every statement until COMMIT

    _statement_is_snapshot = True  # outside BEGIN, a SELECT is its own read transaction

    def _unwell(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError | LedgerError):
            return True
        # Locked, full, I/O, a closed or damaged file: the store. A constraint broken or a value
        # SQLite cannot take: that write's data (it is refused alone; the others go on).
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError):
            return False
        if isinstance(exc, sqlite3.ProgrammingError):
            return "closed" in str(exc)
        return isinstance(exc, sqlite3.Error)

    def _requests_by_tagset(self, db: Any, values: Mapping[str, str | None]) -> dict[Hashable, int]:
        # A temporary table with a key: SQLite cannot index a VALUES list, and joining a
        # million entries to one without an index takes seconds. (The temp database is the
        # connection's own: a read-only ledger may write it.)
        db.execute("CREATE TEMP TABLE IF NOT EXISTS tag_values (tags TEXT PRIMARY KEY, v TEXT)")
        db.execute("DELETE FROM temp.tag_values")
        db.executemany("INSERT INTO temp.tag_values VALUES (?, ?)", values.items())
        rows = db.execute(
            "SELECT t.v, COUNT(DISTINCT e.request_id) FROM entries e "
            "JOIN temp.tag_values t ON t.tags = e.tags GROUP BY t.v"
        ).fetchall()
        db.execute("DELETE FROM temp.tag_values")
        return dict(rows)

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
            try:
                reader = self._connect_read_only()
                self._check_schema(reader, writable=False)
            except sqlite3.DatabaseError as exc:
                raise ConfigError(
                    f"{path} is not a readable chainkit ledger ({exc}): it may be damaged or "
                    "not a ledger at all."
                ) from exc
            return None, reader
        try:
            db = sqlite3.connect(
                path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open ledger {path}: {exc}.") from exc
        try:
            if self._kind(db)[0] == "foreign":
                self._refuse("foreign", 0)  # before anything writes to it, WAL included
            self._set_wal(db)
            self._check_schema(db, writable=True)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{path} is not a usable chainkit ledger ({exc}): it may be damaged or not a "
                "ledger at all."
            ) from exc
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process kills
        # Deleted rows are overwritten, not left in free pages: replies and saved progress hold
        # customers' texts, and a purge must remove them from the file, not just from view.
        db.execute("PRAGMA secure_delete=ON")
        # ...and the -wal file is cut back to nothing each time SQLite starts it afresh after a
        # checkpoint, so old copies of deleted pages do not linger in it either.
        db.execute("PRAGMA journal_size_limit=0")
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        reader = sqlite3.connect(
            path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        return db, reader

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        wal = Path(f"{self.path}-wal")
        # First a look that can create nothing beside the file (no -wal, no -shm): a file that
        # turns out not to be a ledger is refused without a trace.
        snapshot = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
        kind, version = self._kind(snapshot)
        if kind != "current" and not (wal.exists() and wal.stat().st_size):
            snapshot.close()
            self._refuse(kind, version)
        try:
            db = sqlite3.connect(
                f"{uri}?mode=ro", uri=True, timeout=self._timeout_s, check_same_thread=False
            )
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            snapshot.close()
            return db
        except sqlite3.OperationalError:
            if wal.exists() and wal.stat().st_size:
                snapshot.close()
                raise ConfigError(
                    f"Ledger {self.path} has writes in {wal.name} that a reader can only see with "
                    "write access to its directory (for the -shm file). Copy the .db, -wal and "
                    "-shm files somewhere writable and report on the copy."
                ) from None
            return snapshot  # nothing in a WAL: the snapshot is the whole ledger

    def purge(self, before: datetime) -> tuple[int, int]:
        """Delete saved progress and replies (see ``SQLLedger.purge``), from the -wal file too."""
        purged = super().purge(before)
        self._truncate_wal()
        return purged

    def _truncate_wal(self, wait_s: float = 0.0) -> bool:
        """Checkpoint and empty the -wal file, so that deleted texts leave it too.

        A read in another connection keeps the pages it may see: the checkpoint is retried until
        such reads end, for up to ``wait_s`` seconds. Return whether the file was emptied.
        """
        self._reopen_after_fork()
        deadline = time.monotonic() + wait_s
        pause = 0.005
        while True:
            with self._gate:  # the writer's connection, between two of its transactions
                if self._db is None:
                    return True
                # Copies the pages into the file (where secure_delete zeroed what went) and
                # empties the -wal file, which still held the deleted texts. Each try returns
                # at once (no busy handler): this loop, not SQLite's, bounds the wait.
                self._db.execute("PRAGMA busy_timeout = 0")
                try:
                    busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    self._db.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.2)

    def _check_file(self) -> None:
        """Refuse to write if the file was deleted or replaced since it was opened.

        SQLite would go on writing to the unlinked file, and every entry would vanish with it.
        """
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._inode
        except OSError:
            same = False
        if not same:
            raise LedgerError(
                f"Ledger file {self.path} was deleted or replaced while open; nothing more is "
                "written to it. Entries not yet written are kept in this process: restore the "
                "file, or open a ledger at a new path and record them there."
            )

    def _set_wal(self, db: sqlite3.Connection) -> None:
        # Switching to WAL takes an exclusive lock without waiting on the busy handler: another
        # process opening the same new file at this moment makes it fail. Retry until timeout.
        deadline = time.monotonic() + self._timeout_s
        delay = 0.005
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise LedgerError(
                        f"Cannot switch ledger {self.path} to WAL mode: {exc}. Another process "
                        f"has held it for over {self._timeout_s} s."
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.2)

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
