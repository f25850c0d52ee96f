"""A ledger in PostgreSQL (psycopg 3): shared by every process on every host that connects.

The same implementation as the SQLite ledger (:class:`~chainkit.ledger.sql.SQLLedger`): every
write transaction first takes the ledger's transaction-scoped advisory lock, so writers on every
host take turns exactly as SQLite's writers on one host do, and budgets, roll-up cells and entry
ids behave the same. Reads run in ``REPEATABLE READ`` read-only transactions (one snapshot per
aggregation). Each ledger lives in its own schema (``chainkit`` unless told), created on first
use.

    ledger = PostgresLedger("postgresql://chainkit@db.internal/finops", budgets=[...])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any

from chainkit.errors import ConfigError, LedgerError
from chainkit.ledger.budgets import Budget, BudgetEvent
from chainkit.ledger.sql import CONVERSATION_DDL, CONVERSATION_DDL_1, SQLLedger

__all__ = ["PostgresLedger"]

SCHEMA_VERSION = 4
# What takes a store of each older version to the next (the current DDL makes new ones).
_UPGRADES: dict[int, list[str]] = {
    1: [
        "ALTER TABLE checkpoints ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE checkpoints ADD COLUMN updated TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE checkpoints ADD COLUMN done BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE checkpoints ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE replies ADD COLUMN created TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS entries_request ON entries (request_id)",
    ],
    2: list(CONVERSATION_DDL_1),
    # Conversations keyed by (tenant tag, id): each row takes its conversation's tenant.
    3: [
        *(
            f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL DEFAULT ''"
            for table in ("conversations", "conversation_turns", "conversation_texts")
        ),
        "UPDATE conversations SET tenant = COALESCE(tags::json ->> 'tenant', '')",
        "UPDATE conversation_turns t SET tenant = c.tenant FROM conversations c "
        "WHERE c.id = t.conversation_id",
        "UPDATE conversation_texts t SET tenant = c.tenant FROM conversations c "
        "WHERE c.id = t.conversation_id",
        "ALTER TABLE conversations DROP CONSTRAINT conversations_pkey, "
        "ADD PRIMARY KEY (tenant, id)",
        "ALTER TABLE conversation_turns DROP CONSTRAINT conversation_turns_pkey, "
        "ADD PRIMARY KEY (tenant, conversation_id, position)",
        "ALTER TABLE conversation_texts DROP CONSTRAINT conversation_texts_pkey, "
        "ADD PRIMARY KEY (tenant, conversation_id, position)",
        "DROP INDEX conversation_turns_request",
        "CREATE INDEX conversation_turns_request ON conversation_turns (tenant, request_id)",
    ],
}
_ABANDONED: list[Any] = []  # a forked child's inherited connections (see _abandon_connections)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# The current schema in one go: a new store needs no history of migrations.
_DDL = [
    """CREATE TABLE entries (
        id BIGSERIAL PRIMARY KEY, uid TEXT NOT NULL UNIQUE, request_id TEXT NOT NULL,
        stage TEXT NOT NULL, outcome TEXT NOT NULL, model TEXT,
        input_tokens BIGINT, output_tokens BIGINT, cache_read_tokens BIGINT,
        cache_write_tokens BIGINT, cache_write_1h_tokens BIGINT, queries BIGINT,
        cost TEXT, avoided_cost TEXT, bound TEXT, estimated BIGINT NOT NULL,
        latency_s DOUBLE PRECISION NOT NULL, attempts BIGINT NOT NULL, intent TEXT,
        tags TEXT NOT NULL, phase TEXT NOT NULL, time TEXT NOT NULL,
        flags TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
        cost_pico BIGINT, avoided_pico BIGINT, day TEXT
    )""",
    "CREATE INDEX entries_request ON entries (request_id)",
    "CREATE TABLE checkpoints (request_id TEXT PRIMARY KEY, stage BIGINT NOT NULL, "
    "state TEXT NOT NULL, fingerprint TEXT NOT NULL DEFAULT '', "
    "updated TEXT NOT NULL DEFAULT '', done BIGINT NOT NULL DEFAULT 0, "
    "owner TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE jobs (key TEXT PRIMARY KEY, job TEXT NOT NULL)",
    """CREATE TABLE cells (
        id BIGSERIAL PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL, phase TEXT NOT NULL, stage TEXT NOT NULL, model TEXT NOT NULL,
        intent TEXT NOT NULL, outcome TEXT NOT NULL, day TEXT NOT NULL, flags TEXT NOT NULL,
        first BIGINT NOT NULL, calls BIGINT NOT NULL, estimated BIGINT NOT NULL,
        input_tokens TEXT NOT NULL, output_tokens TEXT NOT NULL,
        cache_read_tokens TEXT NOT NULL, cache_write_tokens TEXT NOT NULL,
        cost TEXT NOT NULL, cost_unknown BIGINT NOT NULL,
        bound_unknown TEXT NOT NULL, bound_missing BIGINT NOT NULL,
        avoided TEXT NOT NULL, avoided_unknown BIGINT NOT NULL, latency_ns TEXT NOT NULL,
        cache_write_1h_tokens TEXT NOT NULL, queries TEXT NOT NULL
    )""",
    "CREATE TABLE cell_latency (cell BIGINT NOT NULL, bucket BIGINT NOT NULL, "
    "n BIGINT NOT NULL, PRIMARY KEY (cell, bucket))",
    "CREATE TABLE replies (request_id TEXT NOT NULL, step BIGINT NOT NULL, "
    "ordinal BIGINT NOT NULL, digest TEXT NOT NULL, reply TEXT NOT NULL, "
    "created TEXT NOT NULL DEFAULT '', PRIMARY KEY (request_id, step, ordinal))",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    f"INSERT INTO meta VALUES ('cells_through', 0), ('version', 0), ('schema', {SCHEMA_VERSION})",
    "CREATE TABLE budgets (name TEXT PRIMARY KEY, definition TEXT NOT NULL)",
    "CREATE TABLE budget_state (budget TEXT NOT NULL, period TEXT NOT NULL, "
    "spent TEXT NOT NULL, held TEXT NOT NULL, PRIMARY KEY (budget, period))",
    "CREATE TABLE holds (id TEXT PRIMARY KEY, amount TEXT NOT NULL, expires TEXT NOT NULL, "
    "details TEXT NOT NULL)",
    "CREATE INDEX holds_expires ON holds (expires)",
    "CREATE TABLE budget_events (budget TEXT NOT NULL, period TEXT NOT NULL, "
    "threshold TEXT NOT NULL, spent TEXT NOT NULL, limit_usd TEXT NOT NULL, "
    "time TEXT NOT NULL, PRIMARY KEY (budget, period, threshold))",
    *CONVERSATION_DDL,
]


class _Connection:
    """A psycopg connection that takes the ``?`` placeholders the shared SQL is written with.

    Statements whose results nobody reads (``execute_later``) wait, and go in one pipelined
    round trip with the next statement: on a network, round trips are what a transaction costs.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._later: list[tuple[str, tuple[Any, ...] | None]] = []

    def execute_later(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._later.append((sql.replace("?", "%s"), tuple(params) or None))

    def _flush(self, then: tuple[str, tuple[Any, ...] | None] | None = None) -> Any:
        queued, self._later = self._later, []
        if then is not None:
            queued.append(then)
        if not queued:
            return None
        if len(queued) == 1:
            return self.conn.execute(*queued[0])
        with self.conn.pipeline():
            cursors = [self.conn.execute(sql, params) for sql, params in queued]
        return cursors[-1]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._flush((sql.replace("?", "%s"), tuple(params) or None))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        self._flush()
        cursor = self.conn.cursor()
        rows = list(rows)
        if rows:
            cursor.executemany(sql.replace("?", "%s"), rows)
        return cursor

    def rollback(self) -> None:
        self._later = []  # never sent: nothing to undo
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class PostgresLedger(SQLLedger):
    """A ledger kept in PostgreSQL: one store for every process and host.

    Args:
        dsn: a libpq connection string or URI (``postgresql://user@host:5432/db``).
        schema: the schema the ledger's tables live in; several ledgers can share a database.
        budgets: spending limits to enforce (kept in the database, for every host).
        read_only: connect without writing anything (for reports).
        timeout_s: how long to wait for another writer's lock, or to connect, before failing.
        clock: now, for budget periods and hold leases.
        on_threshold: called with each budget threshold crossing this process causes.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "chainkit",
        budgets: Iterable[Budget] = (),
        read_only: bool = False,
        timeout_s: float = 30.0,
        clock: Callable[[], datetime] | None = None,
        on_threshold: Callable[[BudgetEvent], object] | None = None,
        retention: timedelta | None = None,
    ) -> None:
        if not isinstance(schema, str) or not _IDENTIFIER.match(schema):
            raise ConfigError(
                f"PostgresLedger schema {schema!r} must be a lower-case SQL identifier "
                "(letters, digits, underscores; at most 63 characters)."
            )
        self.dsn = dsn
        self.schema = schema
        self.where = f"{_redact(dsn)} (schema {schema})"
        self._timeout_s = timeout_s
        self.read_only = read_only
        self._last_version: int | None = None
        super().__init__(
            budgets=budgets,
            read_only=read_only,
            timeout_s=timeout_s,
            clock=clock,
            on_threshold=on_threshold,
            retention=retention,
        )

    def _connect(self) -> _Connection:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "PostgresLedger needs psycopg 3: pip install 'chainkit[postgres]'."
            ) from exc
        try:
            # Named after the ledger, so an operator sees in pg_stat_activity whose sessions
            # these are (a DSN's own application_name wins).
            extra: dict[str, Any] = {}
            if "application_name" not in self.dsn:
                extra["application_name"] = f"chainkit:{self.schema}"[:63]
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self._timeout_s)), **extra
            )
        except psycopg.Error as exc:
            raise ConfigError(f"Cannot connect to {self.where}: {exc}".strip()) from exc
        # Waiting for another writer's lock is bounded, as SQLite's busy timeout is.
        conn.execute(f"SET lock_timeout = '{int(self._timeout_s * 1000)}ms'")
        conn.execute(f"SET search_path TO {self.schema}")
        return _Connection(conn)

    def _open(self) -> tuple[_Connection | None, _Connection]:
        reader = self._connect()
        writer = None
        try:
            if self.read_only:
                reader.execute("SET default_transaction_read_only = on")
                self._check_schema(reader)
                return None, reader
            writer = self._connect()
            self._create_or_upgrade(writer)
            self._check_schema(reader)
            return writer, reader
        except BaseException:
            # Refused (no ledger there, a newer schema...): no connection is left open.
            for conn in (writer, reader):
                if conn is not None:
                    with suppress(Exception):
                        conn.close()
            raise

    def _create_or_upgrade(self, writer: _Connection) -> None:
        writer.execute("BEGIN")
        try:
            writer.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self._lock_name,))
            writer.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            exists = writer.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND "
                "table_name = 'meta'",
                (self.schema,),
            ).fetchone()
            if exists is None:
                for statement in _DDL:
                    writer.execute(statement)
            else:
                (version,) = writer.execute(
                    "SELECT value FROM meta WHERE key = 'schema'"
                ).fetchone() or (SCHEMA_VERSION,)
                while version in _UPGRADES:
                    for statement in _UPGRADES[version]:
                        writer.execute(statement)
                    version += 1
                    writer.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
            writer.execute("COMMIT")
        except BaseException:
            writer.rollback()
            raise

    @property
    def _lock_name(self) -> str:
        return f"chainkit:{self.schema}"

    def _check_schema(self, db: _Connection) -> None:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except Exception as exc:
            raise ConfigError(
                f"{self.where} holds no chainkit ledger ({type(exc).__name__}); open it once "
                "without read_only to create one."
            ) from exc
        if row is None or row[0] > SCHEMA_VERSION:
            raise ConfigError(
                f"Ledger {self.where} has schema version {row and row[0]}, newer than this "
                f"chainkit ({SCHEMA_VERSION}); upgrade chainkit to read it."
            )

    def _abandon_connections(self) -> None:
        # Closing a connection inherited across fork() would end the parent's session (libpq
        # sends Terminate on the shared socket): keep it, unused, for the life of the child.
        _ABANDONED.extend(c for c in (self._db, self._reader) if c is not None)

    def _begin_write(self, db: Any) -> bool:
        # One writer at a time, on every host: the ledger's advisory lock, released at COMMIT.
        # The three statements go in one pipelined round trip.
        db.execute_later("BEGIN")
        db.execute_later("SELECT pg_advisory_xact_lock(hashtext(?))", (self._lock_name,))
        before, after = db.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'version' RETURNING value - 1, value"
        ).fetchone()
        # Another writer committed since our last write if the counter moved without us.
        stale = before != self._last_version
        self._last_version = after
        return bool(stale)

    def _begin_read(self, db: Any) -> None:
        # Sent with the first query of the snapshot, in one round trip.
        db.execute_later("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _unwell(self, exc: BaseException) -> bool:
        import psycopg

        if isinstance(exc, LedgerError | OSError):
            return True
        # Connection, lock (a lock timeout is an OperationalError), transaction-state and
        # resource errors; not bad data (DataError, IntegrityError), which is refused alone.
        unwell = (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg.InternalError,
            psycopg.errors.InsufficientResources,
            psycopg.errors.InvalidSqlStatementName,
        )
        return isinstance(exc, unwell)

    def _reader_broken(self) -> bool:
        conn = self._reader.conn
        return bool(conn.closed or conn.broken)

    def _reconnect_if_broken(self, reader: bool = False) -> None:
        # The server ended a session (a restart, pg_terminate_backend, a dropped network): open
        # a new one, so that the entries kept pending are written once the server takes them.
        # The writer's connection is only touched by the writer, the reader's under its lock.
        for name in ("_reader",) if reader else ("_db",):
            conn = getattr(self, name)
            if conn is not None and (conn.conn.closed or conn.conn.broken):
                with suppress(Exception):
                    conn.close()
                setattr(self, name, self._connect())
                if name == "_reader" and self.read_only:
                    self._reader.execute("SET default_transaction_read_only = on")
                self._last_version = None  # another writer may have written meanwhile


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    dsn = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)
