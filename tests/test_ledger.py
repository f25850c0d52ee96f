"""The ledger: recording, totals, aggregations, budgets, SQLite persistence, exports."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from contextlib import closing
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import Budget, BudgetExceeded, ConfigError, Entry, Ledger, SQLiteLedger, Usage

DAY1 = datetime(2024, 3, 13, 9, 0, tzinfo=UTC)
DAY2 = datetime(2024, 3, 14, 23, 30, tzinfo=UTC)


def entry(
    request_id: str = "r1",
    stage: str = "generate",
    cost: Decimal | None = Decimal("0.006"),
    **fields: Any,
) -> Entry:
    return Entry(
        request_id=request_id,
        stage=stage,
        outcome=fields.pop("outcome", "answered"),
        cost=cost,
        **fields,
    )


@pytest.fixture
def ledger() -> Ledger:
    """Three requests through an intent scan, canned replies and a generator."""
    book = Ledger()
    rows = [
        entry("r1", "intent", Decimal("0.0003"), model="generic.intent", usage=Usage(80, 20),
              intent="greeting", tags={"tenant": "acme"}, time=DAY1, outcome="passed"),
        entry("r1", "canned", Decimal(0), avoided_cost=Decimal("0.006"), intent="greeting",
              tags={"tenant": "acme"}, time=DAY1),
        entry("r2", "intent", Decimal("0.0003"), model="generic.intent", usage=Usage(90, 10),
              intent="order", tags={"tenant": "globex"}, time=DAY1, outcome="passed"),
        entry("r2", "generate", Decimal("0.0012"), model="generic.responder",
              usage=Usage(150, 50), intent="order", tags={"tenant": "globex"}, time=DAY2),
        entry("r3", "generate", Decimal("0.006"), model="generic.powerful", usage=Usage(50, 50),
              time=DAY2, latency_s=0.25),
    ]  # fmt: skip
    for row in rows:
        book.record(row)
    return book


# -- recording and totals ------------------------------------------------------------------------


def test_record_appends_in_order(ledger: Ledger) -> None:
    assert len(ledger) == 5
    assert [(e.request_id, e.stage) for e in ledger.entries()] == [
        ("r1", "intent"),
        ("r1", "canned"),
        ("r2", "intent"),
        ("r2", "generate"),
        ("r3", "generate"),
    ]
    assert list(ledger) == ledger.entries()


def test_entries_is_a_snapshot(ledger: Ledger) -> None:
    snapshot = ledger.entries()
    snapshot.clear()
    assert len(ledger) == 5


def test_empty_ledger_costs_zero() -> None:
    assert len(Ledger()) == 0
    assert Ledger().cost == Decimal(0)


def test_totals_sum_priced_entries(ledger: Ledger) -> None:
    t = ledger.totals()
    assert (t.calls, t.requests) == (5, 3)
    assert (t.input_tokens, t.output_tokens) == (370, 130)
    assert t.cost == Decimal("0.0078")
    assert t.avoided_cost == Decimal("0.006")
    assert t.latency_s == 0.25
    assert ledger.cost == Decimal("0.0078")


def test_totals_where_filters(ledger: Ledger) -> None:
    t = ledger.totals(lambda e: e.model == "generic.intent")
    assert (t.calls, t.cost) == (2, Decimal("0.0006"))


def test_totals_count_cache_tokens() -> None:
    book = Ledger()
    book.record(entry(usage=Usage(10, 5, cache_read_tokens=300, cache_write_tokens=40)))
    book.record(entry(usage=Usage(1, 1, cache_read_tokens=3)))
    t = book.totals()
    assert (t.cache_read_tokens, t.cache_write_tokens) == (303, 40)


def test_cost_is_none_when_any_entry_cost_unknown(ledger: Ledger) -> None:
    ledger.record(entry("r4", cost=None, model="unpriced.model"))
    assert ledger.cost is None
    assert ledger.totals().cost is None
    assert ledger.by_stage()["generate"].cost is None
    assert ledger.by_stage()["intent"].cost == Decimal("0.0006")


def test_avoided_cost_none_when_any_unknown(ledger: Ledger) -> None:
    ledger.record(entry("r4", "canned", Decimal(0), avoided_cost=None))
    assert ledger.totals().avoided_cost is None
    assert ledger.cost == Decimal("0.0078")


# -- aggregations --------------------------------------------------------------------------------


def test_by_stage(ledger: Ledger) -> None:
    stages = ledger.by_stage()
    assert list(stages) == ["intent", "canned", "generate"]
    assert stages["intent"].calls == 2
    assert stages["intent"].cost == Decimal("0.0006")
    assert stages["canned"].cost == Decimal(0)
    assert stages["canned"].avoided_cost == Decimal("0.006")
    assert stages["generate"].cost == Decimal("0.0072")
    assert stages["generate"].requests == 2


def test_by_model_keeps_none_for_modelless_stages(ledger: Ledger) -> None:
    models = ledger.by_model()
    assert list(models) == ["generic.intent", None, "generic.responder", "generic.powerful"]
    assert models[None].calls == 1
    assert models["generic.responder"].cost == Decimal("0.0012")
    assert models["generic.powerful"].input_tokens == 50


def test_by_intent(ledger: Ledger) -> None:
    intents = ledger.by_intent()
    assert intents["greeting"].cost == Decimal("0.0003")
    assert intents["order"].cost == Decimal("0.0015")
    assert intents[None].cost == Decimal("0.006")


def test_by_tag(ledger: Ledger) -> None:
    tenants = ledger.by_tag("tenant")
    assert set(tenants) == {"acme", "globex", None}
    assert tenants["acme"].cost == Decimal("0.0003")
    assert tenants["acme"].requests == 1
    assert tenants["globex"].cost == Decimal("0.0015")
    assert tenants[None].cost == Decimal("0.006")


def test_by_day(ledger: Ledger) -> None:
    days = ledger.by_day()
    assert list(days) == [date(2024, 3, 13), date(2024, 3, 14)]
    assert days[date(2024, 3, 13)].cost == Decimal("0.0006")
    assert days[date(2024, 3, 14)].cost == Decimal("0.0072")


def test_by_day_groups_by_utc_day_whatever_the_entry_timezone() -> None:
    book = Ledger()
    sydney = timezone(timedelta(hours=10))
    # 01:00 on 2 Jan in UTC+10 is 15:00 on 1 Jan UTC.
    book.record(entry("r1", time=datetime(2024, 1, 2, 1, 0, tzinfo=sydney)))
    book.record(entry("r2", time=datetime(2024, 1, 1, 15, 0, tzinfo=UTC)))
    days = book.by_day()
    assert list(days) == [date(2024, 1, 1)]
    assert days[date(2024, 1, 1)].calls == 2


# -- threads -------------------------------------------------------------------------------------


def test_many_threads_recording_lose_nothing() -> None:
    book = Ledger()
    threads, per_thread = 16, 500

    def work(n: int) -> None:
        for i in range(per_thread):
            book.record(entry(f"t{n}-{i}", cost=Decimal("0.00021")))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(book) == threads * per_thread
    assert book.totals().requests == threads * per_thread
    assert book.cost == Decimal("0.00021") * threads * per_thread == Decimal("1.68")


def test_concurrent_reserves_never_exceed_the_limit() -> None:
    budget = Budget(Decimal("1.00"))
    book = Ledger([budget])
    granted: list[int] = []

    def work() -> None:
        for _ in range(50):
            try:
                book.reserve(Decimal("0.01"), {}, stage="generate")
            except BudgetExceeded:
                continue
            granted.append(1)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(granted) == 100


# -- budgets -------------------------------------------------------------------------------------


# -- SQLite --------------------------------------------------------------------------------------


def _sqlite_entries() -> list[Entry]:
    return [
        entry("r1", "intent", Decimal("0.00021"), model="generic.intent", usage=Usage(60, 10),
              intent="order", tags={"tenant": "acme", "variant": "chained"}, estimated=True,
              latency_s=0.125, attempts=2, time=DAY1, outcome="passed"),
        entry("r1", "generate", None, model="unpriced.model", usage=Usage(5, 6, 7, 8),
              avoided_cost=None, time=DAY2, outcome="failed"),
        entry("r2", "canned", Decimal(0), avoided_cost=Decimal("0.0060"), time=DAY2),
        entry("setup", "precompute", Decimal("1.50"), phase="setup", time=DAY1),
    ]  # fmt: skip


def test_sqlite_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    written = _sqlite_entries()
    with SQLiteLedger(path) as book:
        for e in written:
            book.record(e)
        assert book.entries() == written
    reopened = SQLiteLedger(path)
    try:
        read = reopened.entries()
        assert read == written
        assert [str(e.cost) for e in read] == ["0.00021", "None", "0", "1.50"]
        assert str(read[2].avoided_cost) == "0.0060"
        assert read[0].tags == {"tenant": "acme", "variant": "chained"}
        assert read[1].usage == Usage(5, 6, 7, 8)
        assert read[2].usage is None
        assert read[0].time == DAY1
        assert reopened.cost is None
        assert reopened.request_ids() == {"r1", "r2", "setup"}
    finally:
        reopened.close()


def test_sqlite_appends_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as book:
        book.record(entry("r1", cost=Decimal("0.1")))
    with SQLiteLedger(path) as book:
        book.record(entry("r2", cost=Decimal("0.2")))
        assert [e.request_id for e in book.entries()] == ["r1", "r2"]
        assert book.cost == Decimal("0.3")


def _rows_in_file(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def test_sqlite_record_is_durable_when_it_returns(tmp_path: Path) -> None:
    # No batching to lose: another connection sees every entry as soon as record() returns.
    path = tmp_path / "run.db"
    book = SQLiteLedger(path)
    book.record(entry("r1"))
    assert _rows_in_file(path) == 1
    book.record(entry("r2"))
    assert _rows_in_file(path) == 2
    book.close()
    with SQLiteLedger(path) as reopened:
        assert [e.request_id for e in reopened.entries()] == ["r1", "r2"]


def test_sqlite_record_many_writes_in_one_go(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as book:
        book.record_many([entry("r1"), entry("r2", cost=Decimal("0.5"))])
        assert _rows_in_file(path) == 2
        assert book.cost == Decimal("0.506")


def test_sqlite_many_threads_recording(tmp_path: Path) -> None:
    with SQLiteLedger(tmp_path / "run.db") as book:

        def work(n: int) -> None:
            for i in range(100):
                book.record(entry(f"t{n}-{i}", cost=Decimal("0.01")))

        workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(book) == 800
        assert book.cost == Decimal(8)


def test_opening_non_database_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a ledger\n" * 50, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        SQLiteLedger(path)
    assert str(path) in str(info.value)


def test_opening_newer_schema_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match=r"schema version 99.*upgrade chainkit"):
        SQLiteLedger(path)


# -- exports -------------------------------------------------------------------------------------


def _export_ledger() -> Ledger:
    book = Ledger()
    book.record(
        entry(
            "r1",
            "generate",
            Decimal("0.00021"),
            model="generic.intent",
            usage=Usage(60, 10),
            tags={"tenant": "acme"},
            time=DAY1,
        )
    )
    book.record(entry("r2", "canned", None, avoided_cost=None, time=DAY2))
    return book  # fmt: skip


def test_to_json_money_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _export_ledger().to_json(path)
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert len(rows) == 2
    assert rows[0]["cost"] == "0.00021"
    assert rows[0]["avoided_cost"] == "0"
    assert rows[0]["tags"] == {"tenant": "acme"}
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (60, 10)
    assert rows[0]["time"] == "2024-03-13T09:00:00+00:00"
    assert rows[1]["cost"] is None
    assert rows[1]["input_tokens"] is None


def test_to_json_accepts_a_stream() -> None:
    out = io.StringIO()
    _export_ledger().to_json(out)
    assert [row["request_id"] for row in json.loads(out.getvalue())] == ["r1", "r2"]


def test_to_csv_header_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    _export_ledger().to_csv(path)
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["id", "request_id", "stage", "outcome", "model"]
    assert {"cost", "avoided_cost", "bound", "tags", "phase", "time", "flags", "note"} <= set(
        header
    )
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["cost"] == "0.00021"
    assert json.loads(rows[0]["tags"]) == {"tenant": "acme"}
    assert rows[0]["input_tokens"] == "60"
    assert rows[1]["cost"] == ""
    assert rows[1]["model"] == ""
