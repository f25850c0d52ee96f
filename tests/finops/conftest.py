"""A ledger of each kind (memory, SQLite, PostgreSQL) for the FinOps what-ifs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from chainkit import Entry, Ledger, PostgresLedger, SQLiteLedger


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """A factory for an empty ledger of one kind; PostgreSQL skips when no server runs."""
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
            ledger = SQLiteLedger(tmp_path / "ledger.db")
        else:
            ledger = PostgresLedger(dsn, schema=schema)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def filled(make: Callable[[], Ledger], entries: Iterable[Entry]) -> Ledger:
    """A new ledger holding ``entries``."""
    ledger = make()
    for entry in entries:
        ledger.record(entry)
    ledger.flush()
    return ledger
