"""Durability: kills, a full disk, concurrent first opens, and files a reader must not change."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import (
    Catalogue,
    ConfigError,
    Entry,
    Generate,
    Ledger,
    Request,
    ScriptedModel,
    SQLiteLedger,
    Usage,
)
from chainkit.errors import LedgerError

ROOT = Path(__file__).resolve().parents[2]
SEED = Catalogue.load("seed-2024")

# A child that serves requests into a ledger and prints each request id once its result is back.
CHILD = """
import sys
from chainkit import (Canned, Catalogue, Generate, IntentScan, KeywordClassifier, Pipeline,
                      PostgresLedger, Request, Resume, ScriptedModel, SQLiteLedger, Summarise,
                      Usage)
path, mode, seed, schema = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seed_prices = Catalogue.load("seed-2024")
small = ScriptedModel(model_id="generic.intent", reply="short summary", usage=Usage(30, 5),
                      latency_s=0.003)
big = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50), latency_s=0.004)
bot = Pipeline([
    IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
    Canned(replies={"greeting": "Hello"}),
    Summarise(model=small, catalogue=seed_prices, max_tokens=20),
    Generate(model=big, catalogue=seed_prices, max_tokens=50),
])
requests = [
    Request("hi" if i % 3 == 0 else f"where is order {i}?", id=f"k{seed}-{i}",
            document=None if i % 2 else f"Order {i} left the warehouse. It is late.")
    for i in range(400)
]
ledger = PostgresLedger(path, schema=schema) if schema else SQLiteLedger(path)
resume = Resume(keep_text=True) if mode == "resume" else False
for result in bot.stream(requests, ledger, concurrency=4, resume=resume):
    print(result.request.id, flush=True)
ledger.close()
print("done", flush=True)
"""


def run_child(
    path: Path | str, mode: str, seed: int, kill_after: int | None, schema: str = ""
) -> list[str]:
    """Run the child; SIGKILL it once it has returned ``kill_after`` results (and a moment)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(seed), schema],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if kill_after is None:
        out, _ = child.communicate(timeout=120)
        return out.split()
    lines = []
    while len(lines) < kill_after:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    time.sleep(random.Random(kill_after).uniform(0, 0.01))  # land anywhere in a write
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    return lines + out.split()


def expected_stages(request_id: str) -> Counter[str]:
    i = int(request_id.rsplit("-", 1)[1])
    if i % 3 == 0:
        return Counter({"intent_scan": 1, "canned": 1})
    return Counter({"intent_scan": 1, "canned": 1, "summarise": 1, "generate": 1})


def check_file(path: Path, returned: list[str]) -> list[Entry]:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with SQLiteLedger(path) as ledger:
        entries = ledger.entries()
        assert len({e.id for e in entries}) == len(entries)
        stages: dict[str, Counter[str]] = {}
        for e in entries:
            stages.setdefault(e.request_id, Counter())[e.stage] += 1
        for rid in returned:
            if rid != "done":
                assert stages.get(rid) == expected_stages(rid), rid
        # Aggregations agree with the entries after the kill.
        assert ledger.totals() == Ledger.totals(_memory(entries))
    return entries


def _memory(entries: list[Entry]) -> Ledger:
    memory = Ledger()
    memory.record_many(entries)
    return memory


@pytest.mark.parametrize("mode", ["plain", "resume"])
def test_a_killed_run_loses_no_entry_of_a_returned_result(tmp_path: Path, mode: str) -> None:
    rng = random.Random(mode)
    for attempt in range(4):
        path = tmp_path / f"kill-{attempt}.db"
        returned = run_child(path, mode, attempt, kill_after=rng.randrange(5, 300))
        assert "done" not in returned, "killed too late to test anything"
        check_file(path, returned)
        if mode == "resume":
            # Finishing the run pays for nothing twice: one entry per stage per request.
            finished = run_child(path, mode, attempt, kill_after=None)
            assert finished[-1] == "done"
            entries = check_file(path, finished)
            per_request: dict[str, Counter[str]] = {}
            for e in entries:
                per_request.setdefault(e.request_id, Counter())[e.stage] += 1
            assert len(per_request) == 400
            for rid, stages in per_request.items():
                assert stages == expected_stages(rid), rid


@pytest.mark.parametrize("mode", ["plain", "resume"])
def test_a_killed_run_on_postgres_loses_no_entry_of_a_returned_result(
    mode: str, pg_dsn: str, pg_schema: str
) -> None:
    from chainkit import PostgresLedger

    returned = run_child(pg_dsn, mode, 7, kill_after=120, schema=pg_schema)
    assert "done" not in returned
    if mode == "resume":
        returned = run_child(pg_dsn, mode, 7, kill_after=None, schema=pg_schema)
        assert returned[-1] == "done"
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        entries = ledger.entries()
        assert len({e.id for e in entries}) == len(entries)
        stages: dict[str, Counter[str]] = {}
        for e in entries:
            stages.setdefault(e.request_id, Counter())[e.stage] += 1
        for rid in returned:
            if rid != "done":
                assert stages.get(rid) == expected_stages(rid), rid
        if mode == "resume":
            assert len(stages) == 400  # finished: every request, each stage once
            assert all(s == expected_stages(r) for r, s in stages.items())
        assert ledger.totals() == Ledger.totals(_memory(entries))


def full_disk(ledger: SQLiteLedger) -> None:
    """Let the file grow no more: SQLite's own SQLITE_FULL, as on a full disk."""
    assert ledger._db is not None
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(ledger: SQLiteLedger) -> None:
    assert ledger._db is not None
    ledger._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_keeps_entries_pending_and_writes_them_once_when_space_returns(
    tmp_path: Path,
) -> None:
    ledger = SQLiteLedger(tmp_path / "full.db")
    ledger.record(Entry("r0", "canned", "answered", cost=Decimal(0)))
    full_disk(ledger)
    recorded: list[Entry] = []
    with pytest.raises(LedgerError, match="disk is full"):
        for i in range(1, 200):
            entry = Entry(f"r{i}", "generate", "answered", cost=Decimal("0.25"), note="x" * 900)
            recorded.append(entry)
            ledger.record(entry)
    assert ledger.pending >= 1
    with pytest.raises(LedgerError):
        ledger.flush()  # still full: still pending, nothing doubled
    free_disk(ledger)
    ledger.flush()
    assert ledger.pending == 0
    entries = ledger.entries()
    assert [e.id for e in entries][1:] == [e.id for e in recorded]
    assert ledger.cost == Decimal("0.25") * len(recorded)
    ledger.close()


def test_a_paid_call_whose_entry_cannot_be_written_is_not_recorded_twice(tmp_path: Path) -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50))
    stage = Generate(model=model, catalogue=SEED, max_tokens=50, name="generate")
    ledger = SQLiteLedger(tmp_path / "full.db")
    # Fill the file to its limit first, so that the generate entry is what does not fit.
    full_disk(ledger)
    with pytest.raises(LedgerError):
        for i in range(100):
            ledger.record(Entry(f"pad{i}", "pad", "passed", cost=Decimal(0), note="y" * 900))
    free_disk(ledger)
    ledger.flush()
    full_disk(ledger)
    calls_before = len(model.prompts)
    with pytest.raises(LedgerError):
        for i in range(100):
            stage.run(Request("where is my order?", id=f"q{i}"), ledger)
    paid = len(model.prompts) - calls_before
    # While the ledger cannot write, no further call is made: nothing is spent unrecorded.
    with pytest.raises(LedgerError):
        stage.run(Request("and now?", id="q-next"), ledger)
    assert len(model.prompts) - calls_before == paid
    free_disk(ledger)
    ledger.flush()
    generated = [e for e in ledger.entries() if e.stage == "generate"]
    assert len(generated) == paid
    assert Counter(e.outcome for e in generated) == {"answered": paid}
    assert sum((e.cost or Decimal(0) for e in generated), Decimal(0)) == Decimal("0.006") * paid
    ledger.close()


def _open_and_record(path: str, barrier: object, n: int) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    with SQLiteLedger(path) as ledger:
        ledger.record(Entry(f"p{n}", "canned", "answered", cost=Decimal("0.001")))


def test_processes_opening_a_new_ledger_at_once_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(6):
        path = tmp_path / f"new-{round_}.db"
        barrier = ctx.Barrier(8)
        workers = [
            ctx.Process(target=_open_and_record, args=(str(path), barrier, n)) for n in range(8)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0] * 8
        with SQLiteLedger(path) as ledger:
            assert len(ledger) == 8
            assert ledger.cost == Decimal("0.008")


def _recording_child(path: str, n: int) -> None:
    ledger = SQLiteLedger(path)
    for i in range(50):
        ledger.record(Entry(f"c{n}-{i}", "canned", "answered", cost=Decimal(0)))
    ledger.close()


def test_a_forked_child_gets_its_own_ids_and_connection(tmp_path: Path) -> None:
    path = tmp_path / "fork.db"
    ledger = SQLiteLedger(path)
    ledger.record(Entry("parent", "canned", "answered", cost=Decimal(0)))
    ctx = multiprocessing.get_context("fork")

    def child() -> None:
        # The parent's ledger object, used after fork: it must reopen, and its ids must differ.
        for i in range(20):
            ledger.record(Entry(f"child-{i}", "canned", "answered", cost=Decimal(0)))
        ledger.close()

    workers = [ctx.Process(target=child) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 3
    for i in range(20):
        ledger.record(Entry(f"parent-{i}", "canned", "answered", cost=Decimal(0)))
    assert len(ledger) == 1 + 3 * 20 + 20
    ledger.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (who TEXT, amount REAL)")
    db.execute("INSERT INTO entries VALUES ('alice', 3.5)")
    db.commit()
    db.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_foreign_sqlite_file_is_refused_and_left_byte_identical(
    tmp_path: Path, read_only: bool
) -> None:
    path = tmp_path / "shop.db"
    foreign_db(path)
    before = digest(path)
    with pytest.raises(ConfigError, match="not a chainkit ledger"):
        SQLiteLedger(path, read_only=read_only)
    assert digest(path) == before
    assert not Path(f"{path}-wal").exists()


def test_a_reader_never_changes_or_creates_a_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        SQLiteLedger(empty, read_only=True)
    assert empty.read_bytes() == b""
    with pytest.raises(ConfigError, match="No ledger file"):
        SQLiteLedger(tmp_path / "typo.db", read_only=True)
    assert not (tmp_path / "typo.db").exists()
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 40)
    with pytest.raises(ConfigError, match="not an SQLite database"):
        SQLiteLedger(text, read_only=True)


def test_a_ledger_opened_read_only_reports_and_refuses_to_record(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as writer:
        writer.record(Entry("r1", "generate", "answered", cost=Decimal("0.5"), tags={"日本": "🚚"}))
    before = digest(path)
    with SQLiteLedger(path, read_only=True) as reader:
        assert reader.cost == Decimal("0.5")
        assert reader.by_tag("日本")["🚚"].cost == Decimal("0.5")
        with pytest.raises(ConfigError, match="read-only"):
            reader.record(Entry("r2", "canned", "answered", cost=Decimal(0)))
    assert digest(path) == before


def test_a_read_only_copy_without_its_wal_files_can_be_reported(tmp_path: Path) -> None:
    # A ledger copied off a server (no -wal/-shm beside it), in a directory the reader cannot
    # write: the immutable snapshot path. Root ignores permission bits, so this test removes the
    # write path by opening a copy whose side files are absent.
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as writer:
        writer.record(Entry("r1", "generate", "answered", cost=Decimal("0.5")))
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    os.chmod(copy, 0o444)
    with SQLiteLedger(copy, read_only=True) as reader:
        assert reader.cost == Decimal("0.5")
