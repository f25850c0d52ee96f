"""Conversations kept in every ledger: turns, costs per turn, opted-in texts, purge, privacy."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from chainkit.ledger.conversations import PurgeIncomplete, conversations, digest
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


def talk(
    ledger: Ledger, cid: str, texts: list[str], tenant: str = "acme", **kw: Any
) -> Conversation:
    conversation = Conversation(cid, tags={"tenant": tenant} if tenant else {}, **kw)
    pipeline = bot()
    for i, text in enumerate(texts):
        result = pipeline.run(conversation.request(text, id=f"{tenant}/{cid}/{i}"), ledger)
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
        (0, "user", 0, "acme/c1/0"),
        (1, "assistant", 0, "acme/c1/0"),
        (2, "user", 1, "acme/c1/1"),
        (3, "assistant", 1, "acme/c1/1"),
        (4, "user", 2, "acme/c1/2"),
        (5, "assistant", 2, "acme/c1/2"),
    ]
    assert turns[0].digest == digest(SECRET) and all(t.text is None for t in turns)
    costs = {(c.conversation_id, c.turn): c for c in store.costs()}
    for (cid, turn), c in costs.items():
        entries = [e for e in ledger.iter_entries() if e.request_id == f"acme/{cid}/{turn}"]
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
    loaded = conversations(ledger).load("c-日本", tenant="acme")
    assert loaded is not None
    assert [(t.role, t.text) for t in loaded.turns] == [(t.role, t.text) for t in said.turns]
    assert loaded.tags == {"tenant": "acme"} and loaded.keep_text
    assert conversations(ledger).load("nobody") is None


def test_a_conversation_kept_without_texts_cannot_be_loaded(make: MakeLedger) -> None:
    ledger = make()
    talk(ledger, "c1", [SECRET])
    with pytest.raises(ConfigError, match="without the texts"):
        conversations(ledger).load("c1", tenant="acme")


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
        store.load("old", tenant="acme")
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
    assert Decimal(rows[0]["cost"]) == expected.turns[0].cost
    assert cli(["report", str(path), "--by", "conversation", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tenant,conversation,turns,cost,cost_per_turn") and len(out) == 3
    assert cli(["report", str(path), "--by", "conversation"]) == 0
    assert "conversation" in capsys.readouterr().out
    argv = ["ledger", "purge", str(path), "--before", "2026-02-01", "--format", "json"]
    assert cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["conversation_texts"] == 4
    # Anything else is a tag to show back by; one no entry carries is refused in one line.
    assert cli(["report", str(path), "--by", "nope"]) == 2
    assert "no entry in the ledger has the tag 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        cli(["report", str(path), "--by", "conversation", "--format", "nope"])
    assert bad.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


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


def serve_cost(ledger: Ledger) -> Decimal:
    total = exact_sum(e.cost for e in ledger.iter_entries() if e.phase == "serve")
    assert total is not None
    return total


def test_two_tenants_conversations_with_one_id_are_kept_loaded_and_reported_apart(
    make: MakeLedger,
) -> None:
    ledger = make()
    acme = talk(ledger, "1", [SECRET, "and my address is 1 Acme Road"], keep_text=True)
    globex = talk(ledger, "1", ["hello from globex"], tenant="globex", keep_text=True)
    store = conversations(ledger)
    for tenant, said in (("acme", acme), ("globex", globex)):
        loaded = store.load("1", tenant=tenant)
        assert loaded is not None and loaded.tags == {"tenant": tenant}
        assert [t.text for t in loaded.turns] == [t.text for t in said.turns]
    assert store.load("1") is None  # no conversation "1" without a tenant tag
    assert store.load("1", tenant="initech") is None
    assert {t.tenant for t in store.turns("1")} == {"acme", "globex"}
    assert [t.text for t in store.turns("1", tenant="globex")] == ["hello from globex", REPLY]
    report = conversation_report(ledger)
    assert [(c.tenant, c.conversation_id, c.turns) for c in report.conversations] == [
        ("acme", "1", 2),
        ("globex", "1", 1),
    ]
    assert exact_sum(c.cost for c in report.conversations) == serve_cost(ledger)
    rows = json.loads(report.to_json())
    assert [(r["tenant"], r["conversation"]) for r in rows] == [("acme", "1"), ("globex", "1")]


def test_a_request_id_reused_for_another_turn_is_refused_before_it_spends(
    make: MakeLedger,
) -> None:
    ledger = make()
    model = ScriptedModel(model_id=GEN, reply=REPLY, usage=Usage(100, 20))
    pipeline = Pipeline(
        [History(priced_as=GEN, last_turns=2), Generate(model=model, max_tokens=50)]
    )
    a = Conversation("A")
    for i in range(2):
        a = a.after(pipeline.run(a.request(f"t{i}", id=str(i)), ledger))
    for cid, rid in (("B", "0"), ("A", "0")):  # another conversation's id; an earlier turn's
        conversation = Conversation(cid) if cid == "B" else a
        with pytest.raises(ConfigError, match=f"Request id '{rid}'.*already the id of turn 0"):
            pipeline.run(conversation.request("again", id=rid), ledger)
    assert len(model.prompts) == 2  # refused before the model was called
    # Another tenant may use the same ids; the same turn may be run again.
    other = Conversation("B", tags={"tenant": "globex"})
    pipeline.run(other.request("t0", id="0"), ledger)
    pipeline.run(Conversation("A").request("t0", id="0"), ledger)
    report = conversation_report(ledger)
    assert exact_sum(c.cost for c in report.conversations) == serve_cost(ledger)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "acme", "globex"]),
            st.sampled_from(["A", "B", "日本"]),
            st.sampled_from(["0", "1", "x"]),
            st.integers(1, 400),
        ),
        max_size=12,
    )
)
def test_report_totals_equal_the_ledgers_however_ids_are_reused(
    turns: list[tuple[str, str, str, int]],
) -> None:
    ledger = Ledger()
    live: dict[tuple[str, str], Conversation] = {}
    for tenant, cid, rid, tokens in turns:
        model = ScriptedModel(model_id=GEN, reply="ok", usage=Usage(tokens, 7))
        pipeline = Pipeline([History(priced_as=GEN), Generate(model=model, max_tokens=20)])
        conversation = live.get((tenant, cid)) or Conversation(
            cid, tags={"tenant": tenant} if tenant else {}
        )
        try:
            result = pipeline.run(conversation.request("q", id=rid), ledger)
        except ConfigError:
            continue  # refused: nothing spent
        live[tenant, cid] = conversation.after(result)
    report = conversation_report(ledger)
    ledger_cost = exact_sum(e.cost for e in ledger.iter_entries()) or Decimal(0)
    assert (exact_sum(c.cost for c in report.conversations) or Decimal(0)) == ledger_cost
    assert sum(t.conversations for t in report.turns) == sum(c.turns for c in report.conversations)


def _v8_ledger(path: Path) -> None:
    """A ledger file as chainkit wrote it with conversations keyed by id alone (schema 8)."""
    from chainkit.ledger import sqlite as schema

    db = sqlite3.connect(path)
    for migration in schema._MIGRATIONS[:8]:
        migration(db)
    db.execute(
        "INSERT INTO conversations VALUES ('c1', ?, '2026-01-01T00:00:00+00:00', "
        "'2026-01-01T00:00:00+00:00', 0, '')",
        (json.dumps({"tenant": "acme"}),),
    )
    db.execute("INSERT INTO conversations VALUES ('c2', '{}', 't', 't', 0, '')")
    for cid, text in (("c1", SECRET), ("c2", "hello")):
        db.execute(
            "INSERT INTO conversation_turns VALUES (?, 0, 'user', 0, ?, 3, ?, 0, 0, "
            "'2026-01-01T00:00:00+00:00')",
            (cid, f"{cid}/0", digest(text)),
        )
        db.execute("INSERT INTO conversation_texts VALUES (?, 0, ?)", (cid, text))
    db.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    db.execute("PRAGMA user_version = 8")
    db.commit()
    db.close()


def test_an_sqlite_ledger_of_schema_8_keys_its_conversations_by_tenant(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v8_ledger(path)
    with SQLiteLedger(path) as ledger:
        store = conversations(ledger)
        assert [(t.tenant, t.conversation_id, t.text) for t in store.turns()] == [
            ("", "c2", "hello"),
            ("acme", "c1", SECRET),
        ]
        loaded = store.load("c1", tenant="acme")
        assert loaded is not None and [t.text for t in loaded.turns] == [SECRET]
        # Going on: globex may now have its own "c1".
        talk(ledger, "c1", ["globex's own"], tenant="globex")
        assert {t.tenant for t in store.turns("c1")} == {"acme", "globex"}


def test_a_postgres_ledger_of_schema_3_keys_its_conversations_by_tenant(
    pg_dsn: str, pg_schema: str
) -> None:
    import psycopg

    from chainkit.ledger import postgres
    from chainkit.ledger.sql import CONVERSATION_DDL, CONVERSATION_DDL_1

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
        conn.execute(f"SET search_path TO {pg_schema}")
        for statement in postgres._DDL:
            if statement not in CONVERSATION_DDL:
                conn.execute(statement.replace("('schema', 4)", "('schema', 3)"))
        for statement in CONVERSATION_DDL_1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO conversations VALUES ('c1', %s, 't', 't', 0, '')",
            (json.dumps({"tenant": "acme"}),),
        )
        conn.execute(
            "INSERT INTO conversation_turns VALUES ('c1', 0, 'user', 0, 'c1/0', 3, %s, 0, 0, "
            "'2026-01-01T00:00:00+00:00')",
            (digest(SECRET),),
        )
        conn.execute("INSERT INTO conversation_texts VALUES ('c1', 0, %s)", (SECRET,))
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (3,)
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        store = conversations(ledger)
        loaded = store.load("c1", tenant="acme")
        assert loaded is not None and [t.text for t in loaded.turns] == [SECRET]
        talk(ledger, "c1", ["globex's own"], tenant="globex")
        assert {t.tenant for t in store.turns("c1")} == {"acme", "globex"}


def test_a_purge_that_a_reader_holds_back_says_so_and_the_next_one_empties_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chainkit.ledger import conversations as module

    monkeypatch.setattr(module, "WAL_WAIT_S", 0.2)
    path = tmp_path / "ledger.db"
    wal = tmp_path / "ledger.db-wal"
    with SQLiteLedger(path) as ledger:
        talk(ledger, "k", [SECRET, "second"], keep_text=True)
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM entries").fetchone()  # a report mid-read
        store = conversations(ledger)
        with pytest.warns(PurgeIncomplete, match="-wal file still holds copies"):
            assert store.purge(datetime.now(UTC) + timedelta(seconds=1)) == 4
        assert not store.wal_clear and b"zebra-marker" in wal.read_bytes()
        assert b"zebra-marker" not in path.read_bytes()
        reader.rollback()
        reader.close()
        assert store.purge(datetime.now(UTC) + timedelta(seconds=1)) == 0
        assert store.wal_clear and b"zebra-marker" not in wal.read_bytes()


def test_texts_purged_are_not_written_back_when_the_conversation_goes_on(
    make: MakeLedger,
) -> None:
    summariser = ScriptedModel(model_id="amazon.nova-micro-v1:0", reply="Summary: zebra-marker")
    history = History(priced_as=GEN, last_turns=1, summarise_with=summariser, summary_tokens=40)
    pipeline = Pipeline(
        [history, Generate(model=ScriptedModel(model_id=GEN, reply=REPLY), max_tokens=50)]
    )
    ledger = make()
    store = conversations(ledger)
    conversation = Conversation("k", keep_text=True)
    for i, text in enumerate([SECRET, "second", "third"]):
        result = pipeline.run(conversation.request(text, id=f"k/{i}"), ledger)
        store.record_reply(result)
        conversation = conversation.after(result)
    assert store.purge(datetime.now(UTC) + timedelta(seconds=1)) == 7  # 6 messages, summary
    # The service still holds the conversation and goes on: only the new turn is kept.
    result = pipeline.run(conversation.request("fourth", id="k/3"), ledger)
    store.record_reply(result)
    assert [(t.position, t.text) for t in store.turns("k") if t.text is not None] == [
        (6, "fourth"),
        (7, REPLY),
    ]
    with pytest.raises(ConfigError, match="purged"):
        store.load("k")
    if isinstance(ledger, SQLiteLedger):
        ledger.close()
        files = b"".join(p.read_bytes() for p in ledger.path.parent.iterdir() if p.is_file())
        assert b"zebra-marker" not in files and SECRET.encode() not in files


def test_the_report_writes_plain_decimals_and_escapes_ids(make: MakeLedger) -> None:
    ledger = make()
    model = ScriptedModel(model_id="amazon.nova-micro-v1:0", reply="ok", usage=Usage(10, 5))
    pipeline = Pipeline(
        [
            History(priced_as="amazon.nova-micro-v1:0", last_turns=1),
            Generate(model=model, max_tokens=30),
        ]
    )
    ids = ["x\ny", "=cmd|' /C calc'!A0", "+1", "-2", "@sum", 'a,b"c', "日本 🚚"]
    for cid in ids:
        conversation = Conversation(cid)
        for i in range(3):
            conversation = conversation.after(
                pipeline.run(conversation.request(f"t{i}", id=f"{cid}/{i}"), ledger)
            )
    report = conversation_report(ledger)
    for row in json.loads(report.to_json()):
        for key in ("cost", "avoided_cost", "cost_per_turn", "last_turn_cost"):
            assert "E" not in row[key] and Decimal(row[key]) >= 0, row
        entries = [e for e in ledger.iter_entries() if e.request_id.rsplit("/", 1)[0] == row[
            "conversation"]]  # fmt: skip
        assert Decimal(row["avoided_cost"]) == exact_sum(e.avoided_cost for e in entries) > 0
    table = report.to_table().splitlines()
    assert len(table) == 1 + len(ids) and any("x\\ny" in line for line in table)
    assert len(report.to_markdown().splitlines()) == 2 + len(ids)
    assert "=cmd\\|" in report.to_markdown()
    cells = {r["conversation"] for r in csv.DictReader(io.StringIO(report.to_csv()))}
    assert cells == {"x\ny", "'=cmd|' /C calc'!A0", "'+1", "'-2", "'@sum", 'a,b"c', "日本 🚚"}
    assert "E-" not in report.to_csv()
