"""SQLiteLedger aggregates in SQL; the answers must equal the in-memory ledger's, exactly."""

from __future__ import annotations

import json
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
    memory, sql = Ledger(), SQLiteLedger(tmp_path / "l.db")
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


def _legacy_ledger(path: Path, rows: list[Entry], version: int) -> None:
    """A ledger file as chainkit wrote it before entry ids and roll-ups (schema 2 or 4)."""
    from chainkit.ledger import sqlite as schema

    db = sqlite3.connect(path)
    for migration in schema._MIGRATIONS[:version]:
        migration(db)
    columns = ["request_id", "stage", "outcome", "model", "input_tokens", "output_tokens",
               "cache_read_tokens", "cache_write_tokens", "cost", "avoided_cost", "estimated",
               "latency_s", "attempts", "intent", "tags", "phase", "time"]  # fmt: skip
    for e in rows:
        u = e.usage
        db.execute(
            f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' * 17)})",
            (e.request_id, e.stage, e.outcome, e.model,
             *((None,) * 4 if u is None else (u.input_tokens, u.output_tokens,
                                               u.cache_read_tokens, u.cache_write_tokens)),
             None if e.cost is None else str(e.cost),
             None if e.avoided_cost is None else str(e.avoided_cost),
             int(e.estimated), e.latency_s, e.attempts, e.intent,
             json.dumps(dict(e.tags), sort_keys=True),  # ASCII-escaped, as it was
             e.phase, e.time.isoformat()),
        )  # fmt: skip
    if version >= 3:
        db.execute(
            "UPDATE entries SET cost_pico = CAST(ROUND(cost * 1e12) AS INTEGER), "
            "avoided_pico = CAST(ROUND(avoided_cost * 1e12) AS INTEGER), day = substr(time, 1, 10)"
        )
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


@pytest.mark.parametrize("version", [2, 4])
def test_a_ledger_from_an_older_chainkit_is_migrated(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    rows = [*entries()[:30], Entry("rj", "generate", "answered", cost=Decimal("0.5"),
                                   tags={"région": "日本", "🚚": "a\tb"})]  # fmt: skip
    _legacy_ledger(path, rows, version)
    memory = Ledger()
    memory.record_many(rows)
    with SQLiteLedger(path) as ledger:
        assert ledger.by_day() == memory.by_day()
        assert ledger.by_stage() == memory.by_stage()
        assert ledger.by_tag("région") == memory.by_tag("région")
        assert ledger.by_tag("🚚") == memory.by_tag("🚚")
        assert ledger.totals() == memory.totals()
        assert [e.request_id for e in ledger.entries()] == [e.request_id for e in rows]
        assert len({e.id for e in ledger.entries()}) == len(rows)
