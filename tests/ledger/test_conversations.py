"""Conversations kept in every ledger: turns, costs per turn, opted-in texts, purge, privacy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chainkit import (
    ConfigError,
    Conversation,
    Generate,
    History,
    Ledger,
    Pipeline,
    PostgresLedger,
    ScriptedModel,
    SQLiteLedger,
    Usage,
)
from chainkit.cli import main as cli
from chainkit.finops.conversations import conversation_report
from chainkit.ledger.conversations import conversations, digest
from chainkit.money import exact_sum

GEN = "anthropic.claude-3-haiku-20240307-v1:0"
SECRET = "私の注文 10234 はどこ？ 🚚 zebra-marker"  # noqa: RUF001
REPLY = "Votre colis 🚚 arrive lundi, quokka-marker."

MakeLedger = Callable[..., Ledger]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    opened: list[Ledger] = []

    def new(**kw: Any) -> Ledger:
        if request.param == "memory":
            ledger: Ledger = Ledger(**kw)
        elif request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / "ledger.db", **kw)
        else:
            dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
            ledger = PostgresLedger(dsn, schema=schema, **kw)
        opened.append(ledger)
        return ledger

    yield new
    for ledger in opened:
        ledger.close()


def bot(reply: str = REPLY, **history: Any) -> Pipeline:
    model = ScriptedModel(model_id=GEN, reply=reply, usage=Usage(100, 20))
    return Pipeline([History(priced_as=GEN, **history), Generate(model=model, max_tokens=50)])


def talk(ledger: Ledger, cid: str, texts: list[str], **kw: Any) -> Conversation:
    conversation = Conversation(cid, tags={"tenant": "acme"}, **kw)
    pipeline = bot()
    for i, text in enumerate(texts):
        result = pipeline.run(conversation.request(text, id=f"{cid}/{i}"), ledger)
        conversations(ledger).record_reply(result)
        conversation = conversation.after(result)
    return conversation


def test_turns_and_their_costs_are_kept(make: MakeLedger) -> None:
    ledger = make()
    talk(ledger, "c1", [SECRET, "and the second one?", "merci"])
    talk(ledger, "c2", ["hello"])
    store = conversations(ledger)
    turns = store.turns("c1")
    assert [(t.position, t.role, t.turn, t.request_id) for t in turns] == [
        (0, "user", 0, "c1/0"),
        (1, "assistant", 0, "c1/0"),
        (2, "user", 1, "c1/1"),
        (3, "assistant", 1, "c1/1"),
        (4, "user", 2, "c1/2"),
        (5, "assistant", 2, "c1/2"),
    ]
    assert turns[0].digest == digest(SECRET) and all(t.text is None for t in turns)
    costs = {(c.conversation_id, c.turn): c for c in store.costs()}
    for (cid, turn), c in costs.items():
        entries = [e for e in ledger.iter_entries() if e.request_id == f"{cid}/{turn}"]
        assert c.cost == exact_sum(e.cost for e in entries)
        assert c.calls == len(entries) == 2
    report = conversation_report(ledger)
    assert [(c.conversation_id, c.turns) for c in report.conversations] == [("c1", 3), ("c2", 1)]
    one_turn = costs["c2", 0].cost
    assert one_turn is not None
    assert report.conversations[0].cost == one_turn * 3  # scripted usage: every turn costs alike
    assert [(t.turn, t.conversations) for t in report.turns] == [(0, 2), (1, 1), (2, 1)]
    assert report.turns[0].mean_cost == one_turn


def test_a_conversation_kept_with_its_texts_loads_back(make: MakeLedger) -> None:
    ledger = make()
    said = talk(ledger, "c-日本", [SECRET, "and the second one? 😀"], keep_text=True)
    loaded = conversations(ledger).load("c-日本")
    assert loaded is not None
    assert [(t.role, t.text) for t in loaded.turns] == [(t.role, t.text) for t in said.turns]
    assert loaded.tags == {"tenant": "acme"} and loaded.keep_text
    assert conversations(ledger).load("nobody") is None


def test_a_conversation_kept_without_texts_cannot_be_loaded(make: MakeLedger) -> None:
    ledger = make()
    talk(ledger, "c1", [SECRET])
    with pytest.raises(ConfigError, match="without the texts"):
        conversations(ledger).load("c1")


def test_purge_removes_texts_and_keeps_the_counts(make: MakeLedger) -> None:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    ledger = make(clock=lambda: now[0])
    talk(ledger, "old", [SECRET], keep_text=True)
    now[0] += timedelta(days=40)
    talk(ledger, "new", ["fresh question"], keep_text=True)
    store = conversations(ledger)
    assert store.purge(datetime(2026, 11, 2, tzinfo=UTC)) == 2  # old's question and answer
    assert all(t.text is None for t in store.turns("old"))
    assert [t.text for t in store.turns("new")] == ["fresh question", REPLY]
    assert len(store.costs()) == 2  # its cost is still reported
    with pytest.raises(ConfigError, match="purged"):
        store.load("old")
    with pytest.raises(ConfigError, match="timezone-aware"):
        store.purge(datetime(2026, 11, 2))


def test_no_conversation_text_is_in_the_file_unless_opted_in(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())

    with SQLiteLedger(path) as ledger:
        talk(ledger, "c1", [SECRET, "second"])
        assert b"zebra-marker" not in on_disk() and b"quokka-marker" not in on_disk()
        assert digest(SECRET).encode() in on_disk()
    with SQLiteLedger(path) as ledger:
        talk(ledger, "c2", [SECRET], keep_text=True)
        assert SECRET.encode() in on_disk() and b"quokka-marker" in on_disk()
        conversations(ledger).purge(datetime.now(UTC) + timedelta(seconds=1))
        assert b"zebra-marker" not in on_disk() and b"quokka-marker" not in on_disk()


def test_retention_and_the_cli_purge_conversation_texts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC)) as ledger:
        talk(ledger, "a", [SECRET], keep_text=True)
        talk(ledger, "b", ["other"], keep_text=True)
    with SQLiteLedger(path, retention=timedelta(days=30)) as ledger:
        assert all(t.text is None for t in conversations(ledger).turns())


def test_cli_purge_and_report_by_conversation_and_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC)) as ledger:
        talk(ledger, "a", [SECRET, "and then?"], keep_text=True)
        talk(ledger, "b", ["hi"])
        expected = conversation_report(ledger)
    assert cli(["report", str(path), "--by", "turn", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["turn"], r["conversations"]) for r in rows] == [(0, 2), (1, 1)]
    assert rows[0]["cost"] == str(expected.turns[0].cost)
    assert cli(["report", str(path), "--by", "conversation", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("conversation,turns,cost,cost_per_turn") and len(out) == 3
    assert cli(["report", str(path), "--by", "conversation"]) == 0
    assert "conversation" in capsys.readouterr().out
    argv = ["ledger", "purge", str(path), "--before", "2026-02-01", "--format", "json"]
    assert cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["conversation_texts"] == 4
    # Anything else is a tag to show back by; one no entry carries is refused in one line.
    assert cli(["report", str(path), "--by", "nope"]) == 2
    assert "no entry in the ledger has the tag 'nope'" in capsys.readouterr().err


def test_an_empty_ledger_reports_no_conversations(make: MakeLedger) -> None:
    report = conversation_report(make())
    assert report.conversations == () and report.turns == ()
    assert "No conversations" in report.to_table() and report.to_json() == "[]"
    assert report.to_csv("turn").startswith("turn,conversations,cost")


def test_a_summarised_conversation_loads_back_with_its_summary(make: MakeLedger) -> None:
    ledger = make()
    summariser = ScriptedModel(model_id="amazon.nova-micro-v1:0", reply="Orders 1-2 asked 🚚.")
    history = History(priced_as=GEN, last_turns=1, summarise_with=summariser, summary_tokens=40)
    model = ScriptedModel(model_id=GEN, reply="Noted.", usage=Usage(50, 5))
    pipeline = Pipeline([history, Generate(model=model, max_tokens=20)])
    conversation = Conversation("s", keep_text=True)
    for i, text in enumerate(["order 1?", "order 2?", "order 3?"]):
        result = pipeline.run(conversation.request(text, id=f"s/{i}"), ledger)
        conversations(ledger).record_reply(result)
        conversation = conversation.after(result)
    loaded = conversations(ledger).load("s")
    assert loaded is not None
    assert (loaded.summary, loaded.summarised, loaded.start) == ("Orders 1-2 asked 🚚.", 2, 2)
    assert [t.text for t in loaded.turns] == [t.text for t in conversation.turns]
    # Going on from the loaded conversation sends the same as going on from the live one.
    live = pipeline.run(conversation.request("order 4?", id="s/3"), Ledger())
    again = pipeline.run(loaded.request("order 4?", id="s/3b"), Ledger())
    assert model.prompts[-1] == model.prompts[-2]
    assert live.text == again.text
