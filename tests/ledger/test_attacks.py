"""Regressions: each case an adversarial review found where a paid call could go unrecorded."""

from __future__ import annotations

import decimal
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import (
    Budget,
    Canned,
    Catalogue,
    ChainkitError,
    Completion,
    ConfigError,
    Entry,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Pipeline,
    Prompt,
    ProviderError,
    Report,
    Request,
    ScriptedModel,
    SQLiteLedger,
    Summarise,
    Usage,
)
from chainkit.errors import LedgerError, Timeout

SEED = Catalogue.load("seed-2024")


@dataclass
class Replying:
    """A model that returns whatever ``make`` builds, and counts what it was sent."""

    make: Any
    model_id: str = "generic.powerful"
    region: str | None = None
    tier: str = "on_demand"
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(self, prompt: Prompt, *, max_tokens: int, metadata: Any = None) -> Completion:
        with self.lock:
            self.sent += 1
        result = self.make()
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(10, max_tokens)


def ok(**fields: Any) -> Completion:
    base: dict[str, Any] = {"text": "ok", "usage": Usage(10, 5), "model_id": "generic.powerful"}
    base.update(fields)
    return Completion(**base)


class Sneaky(Usage):
    """A Usage subclass whose counts change after they were checked."""

    @property  # type: ignore[misc]
    def input_tokens(self) -> int:  # type: ignore[override]
        return -5


def forced(**counts: Any) -> Usage:
    usage = Usage(10, 5)
    for name, value in counts.items():
        object.__setattr__(usage, name, value)  # what a careless provider adapter could do
    return usage


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ok(latency_s=-0.001),
        lambda: ok(latency_s=float("nan")),
        lambda: ok(attempts=None),
        lambda: ok(estimated=1),
        lambda: ok(usage=Sneaky(10, 5)),
        lambda: ok(usage=forced(input_tokens=-1)),
        lambda: ok(usage=forced(output_tokens=1.5)),
        lambda: RuntimeError("socket \x00 closed"),
        lambda: ValueError("bad \ud800 byte"),
        lambda: ProviderError("HTTP 502 body=\x00"),
        lambda: ProviderError("gone", attempts=None),  # type: ignore[arg-type]
        lambda: Unprintable(),
    ],
)
def test_odd_replies_and_errors_still_leave_one_entry(make: Any, tmp_path: Path) -> None:
    for ledger in (Ledger(), SQLiteLedger(tmp_path / "l.db")):
        model = Replying(make)
        stage = Generate(model=model, catalogue=SEED, max_tokens=20)
        with pytest.raises(ChainkitError):
            stage.run(Request("hi", id="r1"), ledger)
        entries = [e for e in ledger.entries() if e.model is not None]
        assert model.sent == 1 and len(entries) == 1
        assert (entries[0].outcome, entries[0].cost) == ("failed", None)
        ledger.close()


def test_amounts_and_token_counts_at_the_limits_keep_the_sqlite_ledger_working(
    tmp_path: Path,
) -> None:
    with SQLiteLedger(tmp_path / "big.db") as ledger:
        memory = Ledger()
        big = [
            Entry("r1", "generate", "answered", cost=Decimal("5000000"), latency_s=10**6),
            Entry("r1", "generate", "answered", cost=Decimal("5000000.000000000001")),
            Entry("r2", "generate", "answered", cost=Decimal("9300000")),
            Entry("r3", "generate", "answered", cost=Decimal(0), usage=Usage(10**12, 10**12)),
        ]
        for e in big:
            ledger.record(e)
            memory.record(e)
        # A request after them is still recorded: nothing poisons the writes that follow.
        ledger.record(Entry("r4", "canned", "answered", cost=Decimal(0)))
        memory.record(ledger.entries()[-1])
        assert ledger.totals() == memory.totals()
        assert Report.build([("x", ledger)]).to_dict() == Report.build([("x", memory)]).to_dict()
        assert ledger.by_stage() == memory.by_stage()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latency_s": 1e10}, "latency_s"),
        ({"time": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, "outside"),
        ({"time": datetime(9999, 12, 31, tzinfo=UTC)}, "outside"),
    ],
)
def test_values_no_store_can_hold_are_refused_where_the_entry_is_made(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Entry("r1", "s", "answered", cost=Decimal(0), **fields)


def test_money_that_is_exact_but_oddly_written_is_accepted() -> None:
    class Money(Decimal):
        pass

    assert Entry("r", "s", "answered", cost=Money("0.5")).cost == Decimal("0.5")
    assert Entry("r", "s", "answered", cost=Decimal("0E-30")).cost == 0
    assert Entry("r", "s", "answered", cost=Decimal("1." + "0" * 40)).cost == 1


def test_a_closed_or_read_only_ledger_refuses_before_the_model_is_called(
    tmp_path: Path,
) -> None:
    model = Replying(ok)
    stage = Generate(model=model, catalogue=SEED, max_tokens=20)
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    ledger.close()
    with pytest.raises(ConfigError, match="closed"):
        stage.run(Request("hi"), ledger)
    with (
        SQLiteLedger(path, read_only=True) as reader,
        pytest.raises(ConfigError, match="read-only"),
    ):
        stage.run(Request("hi"), reader)
    assert model.sent == 0


def test_close_waits_for_calls_under_way_and_refuses_new_ones(tmp_path: Path) -> None:
    model = Replying(lambda: (time.sleep(0.002), ok())[1])
    stage = Generate(model=model, catalogue=SEED, max_tokens=20)
    ledger = SQLiteLedger(tmp_path / "l.db")
    stop = threading.Event()

    def work(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                stage.run(Request("hi", id=f"t{n}-{i}"), ledger)
            except ConfigError:
                return  # refused: the ledger is closing, nothing was sent
            i += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    ledger.close()
    stop.set()
    for t in threads:
        t.join(10)
    with SQLiteLedger(tmp_path / "l.db") as reopened:
        assert len(reopened) == model.sent  # every call sent has its entry


def test_the_langchain_handler_refuses_bad_settings_at_construction() -> None:
    from chainkit.interop import LedgerCallbackHandler

    with pytest.raises(ConfigError):
        LedgerCallbackHandler(Ledger(), stage="s" * 300)
    with pytest.raises(ConfigError):
        LedgerCallbackHandler(Ledger(), tags={"tenant": 42})  # type: ignore[dict-item]
    with pytest.raises(ConfigError):
        LedgerCallbackHandler(Ledger(), tags={"tenant": "a\x00b"})


def test_reports_and_budgets_do_not_depend_on_the_callers_precision() -> None:
    ledger = Ledger(budgets=[Budget(Decimal(1))])
    for i in range(3):
        ledger.record(Entry(f"r{i}", "generate", "answered", cost=Decimal("0.316667")))
    with decimal.localcontext() as ctx:
        ctx.prec = 1
        ctx.traps[decimal.Inexact] = True
        Report.build([("x", ledger)], traffic_per_day=10_000).to_dict()
        model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(1000, 1000))
        stage = Generate(model=model, catalogue=SEED, max_tokens=1000)
        with pytest.raises(ChainkitError):  # $0.95 spent + $0.12 needed > $1: refused
            stage.run(Request("hi"), ledger)
    assert model.prompts == []


def test_an_interrupt_while_pricing_still_records_the_paid_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(10, 5))
    stage = Generate(model=model, catalogue=SEED, max_tokens=20)

    real = SEED.cost
    calls = []

    def interrupted(*args: Any, **kwargs: Any) -> Decimal:
        calls.append(args)
        if len(calls) == 2:  # the first prices the call's bound; the second, its reply
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ledger = Ledger()
    monkeypatch.setattr(SEED, "cost", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage.run(Request("hi", id="r1"), ledger)
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.usage) == ("failed", None, Usage(10, 5))


def test_a_bedrock_call_slower_than_its_deadline_is_a_timeout() -> None:
    from chainkit.providers.bedrock import BedrockModel

    class Slow:
        meta = type("Meta", (), {"region_name": "us-east-1", "events": None})()

        def converse(self, **kwargs: Any) -> Any:
            time.sleep(1.5)
            return {
                "output": {"message": {"content": [{"text": "late"}]}},
                "usage": {"inputTokens": 10, "outputTokens": 5},
            }

    model = BedrockModel(
        "anthropic.claude-3-haiku-20240307-v1:0", client=Slow(), count_tokens=False
    )
    stage = Generate(model=model, max_tokens=20, timeout_s=0.2)
    ledger = Ledger()
    with pytest.raises(Timeout):
        stage.run(Request("hi", id="r1"), ledger)
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.flags) == ("failed", None, ("timeout",))


def test_a_deleted_ledger_file_is_noticed_before_entries_vanish(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    ledger = SQLiteLedger(path)
    ledger.record(Entry("r1", "canned", "answered", cost=Decimal(0)))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(LedgerError, match="deleted or replaced"):
        ledger.record(Entry("r2", "canned", "answered", cost=Decimal(0)))
    assert ledger.pending == 1  # kept in the process, not lost


def test_an_early_answer_whose_avoided_cost_cannot_be_estimated_still_answers() -> None:
    class NoEstimate(ScriptedModel):
        def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
            raise RuntimeError("tokenizer missing")

    bot = Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
            Canned(replies={"greeting": "Hello"}),
            Generate(model=NoEstimate(model_id="generic.powerful"), catalogue=SEED),
        ]
    )
    ledger = Ledger()
    assert bot.run(Request("hi"), ledger).text == "Hello"
    canned = next(e for e in ledger if e.stage == "canned")
    assert (canned.cost, canned.avoided_cost) == (Decimal(0), None)


def test_a_request_at_the_tag_limit_goes_through_a_map_reduce_summary() -> None:
    tags = {f"k{i}": "v" for i in range(63)} | {"chunk": "customer-42"}
    model = ScriptedModel(model_id="generic.intent", reply="short", usage=Usage(10, 5))
    summarise = Summarise(model=model, catalogue=SEED, max_tokens=50)
    document = "\n\n".join(f"Part {i}. " + "word " * 2000 for i in range(40))
    ledger = Ledger()
    summarise.run(Request("sum up", tags=tags, document=document), ledger)
    entries = ledger.entries()
    assert len(entries) > 2
    assert all(e.tags["chunk"] == "customer-42" for e in entries)  # the user's tag, untouched


def test_a_read_only_reader_that_cannot_see_a_wal_refuses_rather_than_miss_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    writer = SQLiteLedger(path)
    writer.record(Entry("r1", "generate", "answered", cost=Decimal("0.5")))
    assert Path(f"{path}-wal").stat().st_size > 0  # the entry is in the WAL still
    real = sqlite3.connect

    def no_shared_memory(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if "mode=ro" in str(database):  # as in a directory the reader cannot write
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", no_shared_memory)
    with pytest.raises(ConfigError, match=r"writes in l\.db-wal"):
        SQLiteLedger(path, read_only=True)
    monkeypatch.undo()
    writer.close()


def test_refusing_a_foreign_wal_database_leaves_no_file_behind(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE orders (id INTEGER)")
    db.commit()
    db.close()  # checkpoints and removes its -wal and -shm
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ConfigError, match="not a chainkit ledger"):
        SQLiteLedger(path, read_only=True)
    assert sorted(os.listdir(tmp_path)) == before
