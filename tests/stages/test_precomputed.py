from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import (
    Canned,
    Catalogue,
    ConfigError,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Pipeline,
    Precomputed,
    Prompt,
    ReplyStore,
    Request,
    Result,
    ScriptedModel,
    Usage,
    precompute,
)

SEED = Catalogue.load("seed-2024")
QUESTIONS = {
    "delivery_options": "What delivery options does the shop offer?",
    "check_refund_policy": "What is the refund policy?",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReplyStore]:
    store = ReplyStore(tmp_path / "replies")
    yield store
    store.close()


def writer() -> ScriptedModel:
    return ScriptedModel(
        model_id="generic.responder", reply=lambda p: f"Reply to: {p.user}", usage=Usage(100, 50)
    )


def test_a_hit_answers_with_one_free_entry(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()

    out = Precomputed(store=store).run(
        Request("shipping?", id="r1", intent="delivery_options", tags={"tenant": "acme"}), ledger
    )

    assert isinstance(out, Result)
    assert (out.text, out.stage, out.model) == ("We ship by courier.", "precomputed", None)
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "precomputed"
    assert entry.outcome == "answered"
    assert entry.cost == Decimal(0)
    assert entry.avoided_cost == Decimal(0)
    assert entry.intent == "delivery_options"
    assert dict(entry.tags) == {"tenant": "acme"}


def test_a_miss_passes_with_one_free_entry(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()
    request = Request("refund?", id="r1", intent="check_refund_policy")

    out = Precomputed(store=store).run(request, ledger)

    assert out is request
    [entry] = ledger.entries()
    assert (entry.stage, entry.outcome, entry.cost) == ("precomputed", "passed", Decimal(0))
    assert entry.intent == "check_refund_policy"


def test_a_request_without_intent_passes(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()

    out = Precomputed(store=store).run(Request("shipping?", id="r1"), ledger)

    assert isinstance(out, Request)
    assert [e.outcome for e in ledger] == ["passed"]


def test_keys_select_the_slots_a_reply_depends_on(store: ReplyStore) -> None:
    store.put("track_order", "Order 123 left the warehouse.", {"order_id": "123"})
    stage = Precomputed(store=store, keys={"track_order": ["order_id"]})
    ledger = Ledger()

    # Slots not named in `keys` are ignored.
    hit = stage.run(
        Request("where?", id="hit", intent="track_order", slots={"order_id": "123", "lang": "en"}),
        ledger,
    )
    other = stage.run(
        Request("where?", id="other", intent="track_order", slots={"order_id": "999"}), ledger
    )
    missing = stage.run(Request("where?", id="missing", intent="track_order"), ledger)

    assert isinstance(hit, Result) and hit.text == "Order 123 left the warehouse."
    assert isinstance(other, Request)
    assert isinstance(missing, Request)
    assert [(e.request_id, e.outcome) for e in ledger] == [
        ("hit", "answered"),
        ("other", "passed"),
        ("missing", "passed"),
    ]


def test_without_keys_slots_on_the_request_do_not_matter(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    stage = Precomputed(store=store)

    out = stage.run(
        Request("x", id="r1", intent="delivery_options", slots={"country": "FR"}), Ledger()
    )

    assert isinstance(out, Result)


def test_reply_store_keys_ignore_slot_order(store: ReplyStore) -> None:
    store.put("delivery_options", "Courier to Lyon.", {"country": "FR", "city": "Lyon"})

    assert store.get("delivery_options", {"city": "Lyon", "country": "FR"}) == "Courier to Lyon."
    assert store.get("delivery_options", {"country": "FR"}) is None
    assert store.get("delivery_options") is None
    assert len(store) == 1


def test_precompute_writes_one_priced_setup_entry_per_intent(store: ReplyStore) -> None:
    model = writer()
    ledger = Ledger()

    total = precompute(
        store,
        QUESTIONS,
        model=model,
        ledger=ledger,
        catalogue=SEED,
        tags={"variant": "well-architected"},
    )

    # 150 tokens at $0.006 per 1K, twice.
    assert total == Decimal("0.0018")
    entries = ledger.entries()
    assert [e.request_id for e in entries] == [
        "precompute:delivery_options",
        "precompute:check_refund_policy",
    ]
    for entry, intent in zip(entries, QUESTIONS, strict=True):
        assert entry.stage == "precompute"
        assert entry.phase == "setup"
        assert entry.model == "generic.responder"
        assert entry.usage == Usage(100, 50)
        assert entry.cost == Decimal("0.0009")
        assert entry.intent == intent
        assert dict(entry.tags) == {"variant": "well-architected"}
    system = "Write the reply a customer-support assistant should give to this question."
    assert model.prompts == [Prompt(system, q) for q in QUESTIONS.values()]
    assert store.get("delivery_options") == f"Reply to: {QUESTIONS['delivery_options']}"
    assert store.get("check_refund_policy") == f"Reply to: {QUESTIONS['check_refund_policy']}"


def test_after_precompute_hits_cost_nothing_and_record_the_avoided_call(
    store: ReplyStore,
) -> None:
    ledger = Ledger()
    precompute(store, QUESTIONS, model=writer(), ledger=ledger, catalogue=SEED)
    final = ScriptedModel(model_id="generic.powerful", reply="answer", usage=Usage(50, 50))
    bot = Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"delivery_options": ["deliver"]})),
            Canned(replies={"greeting": "Hello!"}),
            Precomputed(store=store),
            Generate(model=final, max_tokens=50, catalogue=SEED),
        ]
    )

    result = bot.run(Request("Do you deliver to Lyon?", id="r1"), ledger)

    assert result.stage == "precomputed"
    assert result.text == f"Reply to: {QUESTIONS['delivery_options']}"
    assert final.prompts == []
    serve = [e for e in ledger if e.phase == "serve"]
    assert [(e.stage, e.outcome, e.cost) for e in serve] == [
        ("intent_scan", "passed", Decimal(0)),
        ("canned", "passed", Decimal(0)),
        ("precomputed", "answered", Decimal(0)),
    ]
    assert serve[1].avoided_cost == Decimal(0)
    assert serve[2].avoided_cost == Decimal("0.006")
    assert ledger.totals(lambda e: e.phase == "setup").cost == Decimal("0.0018")


def test_a_reopened_store_still_has_the_precomputed_reply(tmp_path: Path) -> None:
    directory = tmp_path / "replies"
    first = ReplyStore(directory)
    precompute(first, QUESTIONS, model=writer(), ledger=Ledger(), catalogue=SEED)
    first.close()

    again = ReplyStore(directory)
    try:
        ledger = Ledger()
        out = Precomputed(store=again).run(
            Request("x", id="r1", intent="check_refund_policy"), ledger
        )
        assert isinstance(out, Result)
        assert out.text == f"Reply to: {QUESTIONS['check_refund_policy']}"
        assert len(again) == 2
    finally:
        again.close()


def test_precompute_with_an_unpriced_model_fails_before_any_call(store: ReplyStore) -> None:
    model = ScriptedModel(model_id="generic.responder", reply="x")
    ledger = Ledger()

    # generic.responder is only in seed-2024; the default catalogue cannot price it.
    with pytest.raises(ConfigError, match=r"generic\.responder"):
        precompute(store, QUESTIONS, model=model, ledger=ledger)

    assert model.prompts == []
    assert len(ledger) == 0
    assert len(store) == 0


def test_precompute_of_no_questions_costs_nothing(store: ReplyStore) -> None:
    assert precompute(store, {}, model=writer(), ledger=Ledger(), catalogue=SEED) == Decimal(0)
