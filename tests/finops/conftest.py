"""A ledger of each kind (memory, SQLite, PostgreSQL) for the FinOps tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from chainkit import Entry, Ledger, PostgresLedger, SQLiteLedger

MakeLedger = Callable[[], Ledger]


def _ledgers(
    request: pytest.FixtureRequest, tmp_path: Path, *, new_file: bool
) -> Iterator[MakeLedger]:
    """Yield a factory of ledgers of ``request.param``'s kind; close them all afterwards.

    ``new_file``: each SQLite ledger in a file of its own (else every call opens the same one).
    """
    made: list[Ledger] = []
    if request.param == "postgres":
        # Asked for before the ledgers are made, so the schema is dropped after they are closed
        # (a schema dropped under an open ledger's writer deadlocks).
        dsn = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")

    def make() -> Ledger:
        if request.param == "memory":
            ledger: Ledger = Ledger()
        elif request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / (f"l{len(made)}.db" if new_file else "ledger.db"))
        else:
            ledger = PostgresLedger(dsn, schema=schema)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    """A factory for an empty ledger of one kind (SQLite: the same file each call)."""
    yield from _ledgers(request, tmp_path, new_file=False)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    """A factory for empty ledgers of one kind (SQLite: a new file each call)."""
    yield from _ledgers(request, tmp_path, new_file=True)


def filled(make: MakeLedger, entries: Iterable[Entry]) -> Ledger:
    """A new ledger holding ``entries``."""
    ledger = make()
    for entry in entries:
        ledger.record(entry)
    ledger.flush()
    return ledger
