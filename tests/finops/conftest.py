"""A ledger of each kind for the FinOps tests: in memory, SQLite, PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chainkit import Ledger, PostgresLedger, SQLiteLedger

MakeLedger = Callable[[], Ledger]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    opened: list[Ledger] = []

    def build() -> Ledger:
        if request.param == "memory":
            ledger: Ledger = Ledger()
        elif request.param == "postgres":
            ledger = PostgresLedger(
                request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema")
            )
        else:
            ledger = SQLiteLedger(tmp_path / f"l{len(opened)}.db")
        opened.append(ledger)
        return ledger

    yield build
    for ledger in opened:
        ledger.close()
