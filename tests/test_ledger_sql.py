"""SQLiteLedger aggregates in SQL; the answers must equal the in-memory ledger's, exactly."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import Entry, Ledger, SQLiteLedger, Usage

BASE = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)


def entries() -> list[Entry]:
    out = []
    for i in range(300):
        out.append(
            Entry(
                request_id=f"r{i // 3}",
                stage=["intent_scan", "canned", "generate"][i % 3],
                outcome="answered" if i % 3 == 1 else "passed",
                cost=Decimal("0.00021") * (i % 5),
                avoided_cost=Decimal("0.0003") if i % 3 == 1 else Decimal(0),
                model=None if i % 3 != 2 else "amazon.nova-micro-v1:0",
                usage=Usage(100 + i, 20, cache_read_tokens=i % 4) if i % 3 == 2 else None,
                intent=None if i % 7 == 0 else f"intent-{i % 4}",
                latency_s=0.001 * i,
                tags={"tenant": f"t{i % 3}", "variant": "v"} if i % 10 else {},
                # Some entries in another timezone: days are UTC days either way.
                time=(BASE + timedelta(hours=i)).astimezone(timezone(timedelta(hours=10))),
            )
        )
    return out


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Ledger, SQLiteLedger]:
    memory, sql = Ledger(), SQLiteLedger(tmp_path / "l.db", batch_size=50)
    for e in entries():
        memory.record(e)
        sql.record(e)
    return memory, sql


def test_every_aggregation_equals_the_in_memory_one(pair: tuple[Ledger, SQLiteLedger]) -> None:
    memory, sql = pair
    assert sql.by_stage() == memory.by_stage()
    assert sql.by_model() == memory.by_model()
    assert sql.by_intent() == memory.by_intent()
    assert sql.by_tag("tenant") == memory.by_tag("tenant")
    assert sql.by_day() == memory.by_day()
    assert sql.totals() == memory.totals()
    assert sql.cost == memory.cost == sum((e.cost for e in entries()), Decimal(0))
    assert list(sql.by_stage()) == ["intent_scan", "canned", "generate"]  # first appearance


def test_an_unknown_cost_makes_its_groups_unknown(pair: tuple[Ledger, SQLiteLedger]) -> None:
    memory, sql = pair
    unknown = Entry("r-x", "generate", "failed", cost=None, model="amazon.nova-micro-v1:0")
    memory.record(unknown)
    sql.record(unknown)
    assert sql.cost is None
    assert sql.by_stage()["generate"].cost is None
    assert sql.by_stage()["canned"].cost == memory.by_stage()["canned"].cost is not None


def test_amounts_finer_than_picodollars_are_still_summed_exactly(tmp_path: Path) -> None:
    sql = SQLiteLedger(tmp_path / "l.db")
    tiny = Decimal("1e-15")
    for _ in range(3):
        sql.record(Entry("r", "generate", "answered", cost=tiny))
    assert sql.cost == Decimal("3e-15")


def test_a_ledger_from_before_the_sql_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with SQLiteLedger(path) as ledger:
        for e in entries()[:30]:
            ledger.record(e)
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET cost_pico = NULL, avoided_pico = NULL, day = NULL")
    db.execute("ALTER TABLE entries DROP COLUMN cost_pico")
    db.execute("ALTER TABLE entries DROP COLUMN avoided_pico")
    db.execute("ALTER TABLE entries DROP COLUMN day")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    memory = Ledger()
    for e in entries()[:30]:
        memory.record(e)
    with SQLiteLedger(path) as ledger:
        assert ledger.by_day() == memory.by_day()
        assert ledger.by_stage() == memory.by_stage()
