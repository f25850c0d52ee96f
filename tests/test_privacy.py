"""No customer's data reaches another, and the ledger keeps no texts unless asked (issue #11)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import (
    AlreadyAnswered,
    BadResponse,
    Catalogue,
    ConfigError,
    Entry,
    Generate,
    Pipeline,
    Request,
    Resume,
    ScriptedModel,
    SQLiteLedger,
    Summarise,
    Usage,
)
from chainkit.cli import main as cli
from chainkit.errors import InProgress
from chainkit.stages.lookup import FactRule, Lookup

SEED = Catalogue.load("seed-2024")
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
CARD = "4111 1111 1111 1111"
ORDER_RULE = FactRule(
    slot="order_id",
    pattern=r"\border\s+#?(\d+)",
    sql="SELECT id, name, address FROM orders WHERE id = ?",
    fact="Order {id} for {name} at {address}.",
    normalise=int,
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    with db:
        db.executescript(
            """
            CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, address TEXT);
            INSERT INTO orders VALUES (10234, 'Jane Doe', '1 Main St');
            INSERT INTO orders VALUES (20000, 'Bob Roe', '9 Elm Rd');
            """
        )
    db.close()
    return path


def support_bot(shop: Path) -> tuple[Pipeline, ScriptedModel]:
    # The model repeats its facts: a reply built from one customer's order.
    model = ScriptedModel(
        model_id=SONNET,
        reply=lambda prompt: "Facts: " + str(prompt).split("Facts:")[-1].strip()[:80],
        usage=Usage(200, 40),
    )
    bot = Pipeline(
        [Lookup(shop, [ORDER_RULE]), Generate(model=model, max_tokens=100, catalogue=SEED)]
    )
    return bot, model


def test_a_reused_id_with_other_content_never_gets_the_saved_reply(
    shop: Path, tmp_path: Path
) -> None:
    bot, model = support_bot(shop)
    with SQLiteLedger(tmp_path / "run.db") as ledger:
        keep = Resume(keep_text=True)
        first = bot.run(Request("Where is order 10234?", id="1"), ledger, resume=keep)
        assert "Jane Doe" in first.text
        bob = Request("Where is order 20000? I am Bob.", id="1")
        with pytest.raises(ConfigError, match=r"'1'.*asked something else"):
            bot.run(bob, ledger, resume=keep)
        assert len(model.prompts) == 1  # refused before any call
        # By explicit choice the id starts afresh: Bob's own order, paid for once.
        again = bot.run(bob, ledger, resume=Resume(keep_text=True, changed="restart"))
        assert "Bob Roe" in again.text and "Jane" not in again.text
        assert len(model.prompts) == 2
        # The same content under the same id is the same request: no new call.
        assert bot.run(bob, ledger, resume=keep).text == again.text
        assert len(model.prompts) == 2


def test_tags_are_part_of_what_a_request_asks(shop: Path, tmp_path: Path) -> None:
    bot, model = support_bot(shop)
    keep = Resume(keep_text=True)
    acme = Request("Where is order 10234?", id="7", tags={"tenant": "acme"})
    globex = Request("Where is order 10234?", id="7", tags={"tenant": "globex"})
    with SQLiteLedger(tmp_path / "kept.db") as ledger:
        bot.run(acme, ledger, resume=keep)
        with pytest.raises(ConfigError, match="asked something else"):
            bot.run(globex, ledger, resume=keep)
    # Without texts, an answered request keeps nothing to compare (not even a digest): any
    # request under its id is refused as answered, never given anything, never paid again.
    with SQLiteLedger(tmp_path / "plain.db") as ledger:
        bot.run(acme, ledger, resume=True)
        with pytest.raises(AlreadyAnswered):
            bot.run(globex, ledger, resume=True)
        saved = ledger.progress("7")
        assert saved is not None and saved.done and saved.fingerprint == saved.state == ""
    assert len(model.prompts) == 2


def test_resume_refuses_ids_made_up_for_this_run(shop: Path, tmp_path: Path) -> None:
    bot, model = support_bot(shop)
    with SQLiteLedger(tmp_path / "run.db") as ledger:
        with pytest.raises(ConfigError, match="same in every run"):
            bot.run(Request("Where is order 10234?"), ledger, resume=True)
        assert model.prompts == [] and len(ledger) == 0


def test_resuming_a_ledger_written_without_resume_never_pays_twice(
    shop: Path, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    bot, model = support_bot(shop)
    requests = [Request(f"Where is order {n}?", id=f"q{n}") for n in (10234, 20000)]
    with SQLiteLedger(path) as ledger:
        bot.run_batch(requests, ledger)
        cost = ledger.cost
    with SQLiteLedger(path) as ledger:
        with pytest.raises(ConfigError, match="2 entries of request 'q10234' but no saved"):
            bot.run_batch(requests, ledger, resume=True, concurrency=1)
        assert ledger.cost == cost and len(ledger) == 4
    assert len(model.prompts) == 2


def _file_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _chained() -> tuple[Pipeline, ScriptedModel, ScriptedModel]:
    small = ScriptedModel(
        model_id=MIXTRAL, reply=lambda p: "summary of " + str(p)[-60:], usage=Usage(1_000, 50)
    )
    strong = ScriptedModel(
        model_id=SONNET, reply=lambda p: "reply about " + str(p)[-60:], usage=Usage(100, 50)
    )
    bot = Pipeline(
        [
            Summarise(model=small, max_tokens=50, catalogue=SEED),
            Generate(model=strong, max_tokens=50, catalogue=SEED),
        ]
    )
    return bot, small, strong


def test_no_text_is_at_rest_by_default(shop: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    bot, _ = support_bot(shop)
    text = f"Where is order 10234? My card is {CARD}."
    with SQLiteLedger(path) as ledger:
        bot.run(Request(text, id="c1"), ledger, resume=True)
        progress = ledger.progress("c1")
        assert progress is not None and progress.done and progress.state == ""
    raw = _file_bytes(path)
    for secret in (CARD, "Jane Doe", "1 Main St", "Facts:"):
        assert secret.encode() not in raw, secret
    # The check can fail: with texts kept, the file holds them.
    kept = tmp_path / "kept.db"
    with SQLiteLedger(kept) as ledger:
        bot.run(Request(text, id="c1"), ledger, resume=Resume(keep_text=True))
    assert CARD.encode() in _file_bytes(kept) and b"Jane Doe" in _file_bytes(kept)


def test_an_answered_request_is_not_paid_again_even_without_its_text(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    bot, small, strong = _chained()
    docs = [Request("report", id=f"d{i}", document=f"document {i} {CARD}") for i in range(4)]
    with SQLiteLedger(path) as ledger:
        bot.run_batch(docs, ledger, resume=True)
        cost = ledger.cost
    bot, small, strong = _chained()
    with SQLiteLedger(path) as ledger:
        out = bot.run_batch(docs, ledger, resume=True, return_exceptions=True)
        assert all(isinstance(o, AlreadyAnswered) for o in out)
        assert ledger.cost == cost and len(ledger) == 8
    assert small.prompts == [] and strong.prompts == []


def test_a_failed_request_resumes_by_replaying_its_paid_calls(tmp_path: Path) -> None:
    """Without texts, a rerun starts from the first stage and replays what was paid for."""
    path = tmp_path / "run.db"
    small = ScriptedModel(model_id=MIXTRAL, reply="summary", usage=Usage(1_000, 50))

    def flaky(prompt: object) -> str:
        raise RuntimeError("provider down")

    strong = ScriptedModel(model_id=SONNET, reply=flaky, usage=Usage(100, 50))
    bot = Pipeline(
        [
            Summarise(model=small, max_tokens=50, catalogue=SEED),
            Generate(model=strong, max_tokens=50, catalogue=SEED),
        ]
    )
    doc = Request("report", id="d1", document=f"a long document {CARD}")
    with SQLiteLedger(path) as ledger, pytest.raises(Exception, match="provider down"):
        bot.run(doc, ledger, resume=True)
    strong.reply = "the report"
    with SQLiteLedger(path) as ledger:
        result = bot.run(doc, ledger, resume=True)
        assert result.text == "the report"
        summaries = [e for e in ledger.entries() if e.stage == "summarise"]
        assert len(summaries) == 1  # replayed, not paid again
        # Answered: the saved reply (a summary of the customer's document) is gone.
        assert ledger._read("SELECT COUNT(*) FROM replies")[0][0] == 0
    assert len(small.prompts) == 1


def test_purge_removes_saved_texts_and_a_purged_request_is_never_paid_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.db"
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    small = ScriptedModel(model_id=MIXTRAL, reply=f"summary {CARD}", usage=Usage(1_000, 50))
    strong = ScriptedModel(
        model_id=SONNET, reply=lambda p: (_ for _ in ()).throw(RuntimeError("down")),
        usage=Usage(100, 50),
    )  # fmt: skip
    bot = Pipeline(
        [
            Summarise(model=small, max_tokens=50, catalogue=SEED),
            Generate(model=strong, max_tokens=50, catalogue=SEED),
        ]
    )
    doc = Request("report", id="d1", document="a document")
    with SQLiteLedger(path, clock=lambda: now[0]) as ledger:
        with pytest.raises(BadResponse, match="down"):
            bot.run(doc, ledger, resume=True)
        assert ledger._read("SELECT COUNT(*) FROM replies")[0][0] == 1
        assert ledger.purge(datetime(2026, 10, 1, tzinfo=UTC)) == (0, 0)  # nothing that old
        assert ledger.purge(datetime(2026, 11, 2, tzinfo=UTC)) == (1, 1)
        assert ledger.progress("d1") is None
        with pytest.raises(ConfigError, match="no saved progress"):
            bot.run(doc, ledger, resume=True)
        with pytest.raises(ConfigError, match="timezone-aware"):
            ledger.purge(datetime(2026, 11, 2))
    assert CARD.encode() not in _file_bytes(path)
    assert len(small.prompts) == 1


def test_chainkit_ledger_purge_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.db"
    bot, _, _ = _chained()
    with SQLiteLedger(path, clock=lambda: datetime(2026, 1, 5, tzinfo=UTC)) as ledger:
        bot.run_batch(
            [Request("r", id=f"d{i}", document="doc") for i in range(3)],
            ledger,
            resume=Resume(keep_text=True),
        )
    assert cli(["ledger", "purge", str(path), "--before", "2026-01-01", "--format", "json"]) == 0
    assert '"progress": 0' in capsys.readouterr().out
    assert cli(["ledger", "purge", str(path), "--before", "2026-02-01", "--format", "json"]) == 0
    assert '"progress": 3' in capsys.readouterr().out
    with SQLiteLedger(path, read_only=True) as ledger:
        assert ledger.progress("d0") is None and len(ledger) == 6
    assert cli(["ledger", "purge", str(path), "--before", "yesterday"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_retention_purges_old_progress_when_the_ledger_opens(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    bot, _, _ = _chained()
    day = [datetime(2026, 3, 1, tzinfo=UTC)]
    with SQLiteLedger(path, clock=lambda: day[0]) as ledger:
        bot.run(Request("r", id="d1", document="doc"), ledger, resume=Resume(keep_text=True))
    week = timedelta(days=7)
    day[0] += timedelta(days=3)
    with SQLiteLedger(path, clock=lambda: day[0], retention=week) as ledger:
        assert ledger.progress("d1") is not None  # 3 days old: kept
    day[0] += timedelta(days=5)
    with SQLiteLedger(path, clock=lambda: day[0], retention=week) as ledger:
        assert ledger.progress("d1") is None  # 8 days old: gone
        # Entries stay: Mixtral 1,000 in x $0.45/M + 50 out x $0.70/M = $0.000485, Sonnet
        # 100 x $3/M + 50 x $15/M = $0.00105.
        assert ledger.cost == Decimal("0.001535")
    with pytest.raises(ConfigError, match="positive timedelta"):
        SQLiteLedger(path, retention=7)  # type: ignore[arg-type]


def test_postgres_keeps_progress_the_same_way(shop: Path, pg_dsn: str, pg_schema: str) -> None:
    from chainkit import PostgresLedger

    bot, model = support_bot(shop)
    when = [datetime(2026, 5, 1, tzinfo=UTC)]
    with PostgresLedger(pg_dsn, schema=pg_schema, clock=lambda: when[0]) as ledger:
        bot.run(Request(f"Where is order 10234? {CARD}", id="p1"), ledger, resume=True)
        saved = ledger.progress("p1")
        assert saved is not None and saved.done and saved.state == ""
        rows = ledger._read("SELECT state FROM checkpoints UNION ALL SELECT reply FROM replies")
        assert all(CARD not in str(r[0]) and "Jane" not in str(r[0]) for r in rows)
        with pytest.raises(AlreadyAnswered):  # nothing kept to compare: refused as answered
            bot.run(Request("Where is order 20000?", id="p1"), ledger, resume=True)
        with pytest.raises(AlreadyAnswered):
            bot.run(Request(f"Where is order 10234? {CARD}", id="p1"), ledger, resume=True)
        assert ledger.purge(datetime(2026, 5, 2, tzinfo=UTC)) == (1, 0)
        with pytest.raises(ConfigError, match="no saved progress"):
            bot.run(Request(f"Where is order 10234? {CARD}", id="p1"), ledger, resume=True)
    assert len(model.prompts) == 1


# -- regressions: an adversarial review of resume and privacy ------------------------------------


def _three_stages(**fail: bool) -> tuple[Pipeline, list[ScriptedModel]]:
    """sum1 -> sum2 -> generate; ``fail`` names stages whose model raises for now."""

    def reply(name: str, text: str) -> Any:
        def answer(prompt: object) -> str:
            if fail.get(name):
                raise RuntimeError("provider down")
            return text

        return answer

    models = [
        ScriptedModel(model_id=MIXTRAL, reply=reply("sum1", "first"), usage=Usage(1_000, 50)),
        ScriptedModel(model_id=MIXTRAL, reply=reply("sum2", "second"), usage=Usage(1_000, 50)),
        ScriptedModel(model_id=SONNET, reply=reply("generate", "final"), usage=Usage(100, 50)),
    ]
    bot = Pipeline(
        [
            Summarise(model=models[0], max_tokens=50, catalogue=SEED, name="sum1"),
            Summarise(model=models[1], max_tokens=50, catalogue=SEED, name="sum2"),
            Generate(model=models[2], max_tokens=50, catalogue=SEED),
        ]
    )
    return bot, models


@pytest.mark.parametrize(
    "field", [{"facts": ("Card 4111 for Bob",)}, {"slots": {"order": "9"}}, {"intent": "refund"}]
)
def test_every_field_of_a_request_is_part_of_what_it_asks(
    shop: Path, tmp_path: Path, field: dict[str, Any]
) -> None:
    bot, model = support_bot(shop)
    keep = Resume(keep_text=True)
    with SQLiteLedger(tmp_path / "run.db") as ledger:
        bot.run(Request("Where is order 10234?", id="t1"), ledger, resume=keep)
        with pytest.raises(ConfigError, match="asked something else"):
            bot.run(Request("Where is order 10234?", id="t1", **field), ledger, resume=keep)
    assert len(model.prompts) == 1


def test_switching_keep_text_off_between_runs_pays_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    doc = Request("report", id="d1", document="a customer's document")
    bot, models = _three_stages(sum2=True)
    with SQLiteLedger(path) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=Resume(keep_text=True))
    bot, models = _three_stages(generate=True)  # texts off now; generate fails this time
    with SQLiteLedger(path) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=True)
    bot, models = _three_stages()
    with SQLiteLedger(path) as ledger:
        assert bot.run(doc, ledger, resume=True).text == "final"
        paid = Counter(e.stage for e in ledger.entries() if e.outcome != "failed")
    assert paid == {"sum1": 1, "sum2": 1, "generate": 1}
    assert [len(m.prompts) for m in models] == [0, 0, 1]


def test_a_purge_while_a_request_runs_makes_its_rerun_refused_not_paid_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.db"
    doc = Request("report", id="d1", document="a customer's document")
    bot, models = _three_stages(generate=True)
    purged: list[tuple[int, int]] = []

    def purge_then_answer(prompt: object) -> str:
        with SQLiteLedger(path) as other:  # another process's purge, mid-request
            purged.append(other.purge(datetime.now(UTC) + timedelta(seconds=1)))
        return "second"

    models[1].reply = purge_then_answer
    with SQLiteLedger(path) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=True)
    assert purged == [(1, 1)]
    bot, models = _three_stages()
    with SQLiteLedger(path) as ledger:
        with pytest.raises(ConfigError, match="no saved progress"):
            bot.run(doc, ledger, resume=True)
        assert ledger.progress("d1") is None  # the request's later writes did not bring it back
    assert [len(m.prompts) for m in models] == [0, 0, 0]


def test_two_runs_never_answer_the_same_request_at_once(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(prompt: object) -> str:
        started.set()
        release.wait(10)
        return "answer"

    model = ScriptedModel(model_id=SONNET, reply=slow, usage=Usage(100, 50))
    bot = Pipeline([Generate(model=model, max_tokens=50, catalogue=SEED)])
    request = Request("same question", id="dup")
    with SQLiteLedger(tmp_path / "run.db") as ledger:
        first = threading.Thread(target=bot.run, args=(request, ledger), kwargs={"resume": True})
        first.start()
        assert started.wait(10)
        with pytest.raises(InProgress, match="'dup' is being answered by another run"):
            bot.run(request, ledger, resume=True)
        release.set()
        first.join()
        # A batch that lists an id twice (a queue redelivering a message): paid once.
        twice = Request("other question", id="twice")
        out = bot.run_batch([twice, twice], ledger, resume=True, return_exceptions=True)
        kinds = sorted(type(o).__name__ for o in out)
        assert kinds in (["AlreadyAnswered", "Result"], ["InProgress", "Result"])
        assert len([e for e in ledger.entries() if e.model]) == 2
    assert len(model.prompts) == 2


def test_a_claim_of_a_dead_process_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    child = (
        "import os, sys\n"
        "from chainkit import SQLiteLedger\n"
        "with SQLiteLedger(sys.argv[1]) as led:\n"
        "    led.claim('q1', 'f', f'{os.uname().nodename} pid {os.getpid()} x', "
        "stale_after_s=900)\n"
        "os._exit(0)  # dies holding the claim\n"
    )
    subprocess.run([sys.executable, "-c", child, str(path)], check=True)
    model = ScriptedModel(model_id=SONNET, reply="answer", usage=Usage(100, 50))
    bot = Pipeline([Generate(model=model, max_tokens=50, catalogue=SEED)])
    with SQLiteLedger(path) as ledger:
        saved = ledger.progress("q1")
        assert saved is not None and saved.owner.endswith(" x")
        # Another fingerprint was claimed ('f'): the request is refused as changed, not busy.
        with pytest.raises(ConfigError, match="asked something else"):
            bot.run(Request("question", id="q1"), ledger, resume=True)


def test_precompute_on_resume_never_takes_a_reply_written_for_another_prompt(
    tmp_path: Path,
) -> None:
    from chainkit import ReplyStore, precompute

    path = tmp_path / "run.db"
    questions = {"returns_policy": "How do returns work?"}
    writers = []
    for system in ("You write Acme's replies. Code: ACME-SECRET.", "You write Globex's replies."):
        model = ScriptedModel(model_id=MIXTRAL, reply=lambda p: p.system, usage=Usage(40, 60))
        writers.append(model)
        store = ReplyStore(tmp_path / f"store-{len(writers)}")
        with SQLiteLedger(path) as ledger:
            precompute(store, questions, model=model, ledger=ledger, catalogue=SEED,
                       system=system, resume=True)  # fmt: skip
        assert store.get("returns_policy") == system
        store.close()
    assert [len(m.prompts) for m in writers] == [1, 1]


def test_a_purge_empties_the_wal_file_too(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    bot, models = _three_stages(generate=True)
    models[0].reply = f"summary of card {CARD}"
    doc = Request("report", id="d1", document="doc")
    with SQLiteLedger(path) as ledger:
        with pytest.raises(BadResponse):
            bot.run(doc, ledger, resume=True)
        assert CARD.encode() in _file_bytes(path)  # the reply is kept while the request runs
        for i in range(50):  # the server goes on recording
            ledger.record(Entry(f"x{i}", "canned", "answered", cost=Decimal(0)))
        # The progress and both paid calls' replies.
        assert ledger.purge(datetime.now(UTC) + timedelta(seconds=1)) == (1, 2)
        assert CARD.encode() not in _file_bytes(path)  # not in the file, nor in its -wal


def test_purge_and_retention_hold_with_a_clock_that_is_not_in_utc(tmp_path: Path) -> None:
    tokyo = timezone(timedelta(hours=9))
    now = [datetime(2026, 3, 1, 8, 0, tzinfo=tokyo)]  # 2026-02-28 23:00 UTC
    path = tmp_path / "run.db"
    bot, _ = _three_stages(generate=True)
    with SQLiteLedger(path, clock=lambda: now[0]) as ledger, pytest.raises(BadResponse):
        bot.run(Request("r", id="d1", document="doc"), ledger, resume=True)
    with SQLiteLedger(path, clock=lambda: now[0]) as ledger:
        assert ledger.purge(datetime(2026, 3, 1, tzinfo=UTC)) == (1, 2)  # 1 h after it, in UTC


def test_progress_and_its_replies_go_together_under_retention(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    day = [datetime(2026, 4, 1, tzinfo=UTC)]
    doc = Request("r", id="d1", document="doc")
    bot, _ = _three_stages(generate=True)
    with SQLiteLedger(path, clock=lambda: day[0]) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=True)  # day 0: sum1, sum2 paid, generate fails
    day[0] += timedelta(days=6)
    bot, models = _three_stages(generate=True)
    with SQLiteLedger(path, clock=lambda: day[0]) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=True)  # day 6: replayed, generate fails again
    assert [len(m.prompts) for m in models] == [0, 0, 1]
    day[0] += timedelta(days=2)  # day 8: the replies are 8 days old, the progress 2
    week = timedelta(days=7)
    bot, models = _three_stages()
    with SQLiteLedger(path, clock=lambda: day[0], retention=week) as ledger:
        assert bot.run(doc, ledger, resume=True).text == "final"
    assert [len(m.prompts) for m in models] == [0, 0, 1]  # nothing paid twice


def test_a_reply_with_a_lone_surrogate_is_repaired_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    bot, models = _three_stages(generate=True)
    models[1].reply = "summary \ud800 end"  # the summary the generator will be given
    doc = Request("r", id="d1", document="doc")
    with SQLiteLedger(path) as ledger, pytest.raises(BadResponse):
        bot.run(doc, ledger, resume=True)
    bot, models = _three_stages()
    with SQLiteLedger(path) as ledger:
        assert bot.run(doc, ledger, resume=True).text == "final"
        assert not [e for e in ledger.entries() if e.flags]  # no hold left to expire
    # Replayed (not paid again), repaired: U+FFFD where the lone surrogate was.
    assert [len(m.prompts) for m in models] == [0, 0, 1]
    assert "summary \ufffd end" in models[2].prompts[0].user


def test_ids_made_up_in_other_processes_are_refused_too() -> None:
    from chainkit.records import is_generated_id

    out = subprocess.run(
        [sys.executable, "-c", "from chainkit import Request; print(Request('q').id)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert is_generated_id(out.stdout.strip())
    assert not is_generated_id("order-10234") and not is_generated_id("lazy-0000")


def test_progress_saved_by_an_older_chainkit_is_not_given_to_another_document(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path):
        pass
    db = sqlite3.connect(path)
    with db:  # what chainkit wrote before fingerprints: the document marked as given again
        state = (
            '{"request": {"text": "Write the report.", "id": "doc-7", "tags": {}, "document": null,'
            ' "document_given": true, "intent": null, "confidence": null, "slots": {}, '
            '"facts": [], "summary": "Jane Doe is diabetic"}}'
        )
        db.execute("INSERT INTO checkpoints (request_id, stage, state) VALUES ('doc-7', 0, ?)",
                   (state,))  # fmt: skip
    db.close()
    bot, models = _three_stages()
    bob = Request("Write the report.", id="doc-7", document="Bob Roe's file")
    with SQLiteLedger(path) as ledger, pytest.raises(ConfigError, match="asked something else"):
        bot.run(bob, ledger, resume=True)
    assert [len(m.prompts) for m in models] == [0, 0, 0]


def test_chainkit_ledger_purge_names_the_postgres_schema(pg_dsn: str, pg_schema: str) -> None:
    from chainkit import PostgresLedger

    bot, _ = _three_stages(generate=True)
    when = datetime(2026, 1, 5, tzinfo=UTC)
    with (
        PostgresLedger(pg_dsn, schema=pg_schema, clock=lambda: when) as ledger,
        pytest.raises(BadResponse),
    ):
        bot.run(Request("r", id="p1", document="doc"), ledger, resume=True)
    argv = ["ledger", "purge", pg_dsn, "--before", "2026-02-01", "--format", "json"]
    assert cli([*argv, "--schema", pg_schema]) == 0
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        assert ledger.progress("p1") is None
    assert cli([*argv, "--schema", "no_such_ledger"]) == 2  # refused, and nothing created
