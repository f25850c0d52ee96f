from decimal import Decimal

import pytest

from chainkit import (
    Canned,
    Catalogue,
    ConfigError,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    LLMClassifier,
    LocalClassifier,
    OfflineModel,
    Pipeline,
    Request,
    Result,
    ScriptedModel,
    Usage,
)

SEED = Catalogue.load("seed-2024")
REPLIES = {"greeting": "Hello! How can I help?"}


def test_canned_answers_a_known_intent_with_one_free_entry() -> None:
    ledger = Ledger()

    out = Canned(replies=REPLIES).run(
        Request("hi", id="r1", intent="greeting", tags={"tenant": "acme"}), ledger
    )

    assert isinstance(out, Result)
    assert (out.text, out.stage, out.model) == ("Hello! How can I help?", "canned", None)
    assert out.request.id == "r1"
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "canned"
    assert entry.outcome == "answered"
    assert entry.cost == Decimal(0)
    assert entry.model is None and entry.usage is None
    assert entry.intent == "greeting"
    assert dict(entry.tags) == {"tenant": "acme"}
    assert entry.phase == "serve"


def test_canned_outside_a_pipeline_records_no_avoided_cost() -> None:
    ledger = Ledger()

    Canned(replies=REPLIES).run(Request("hi", id="r1", intent="greeting"), ledger)

    [entry] = ledger.entries()
    assert entry.avoided_cost == Decimal(0)


def test_canned_passes_an_intent_without_a_reply() -> None:
    ledger = Ledger()
    request = Request("refund please", id="r1", intent="refund")

    out = Canned(replies=REPLIES).run(request, ledger)

    assert out is request
    [entry] = ledger.entries()
    assert (entry.stage, entry.outcome, entry.cost) == ("canned", "passed", Decimal(0))
    assert entry.avoided_cost == Decimal(0)
    assert entry.intent == "refund"


def test_canned_passes_a_request_without_an_intent() -> None:
    ledger = Ledger()

    out = Canned(replies=REPLIES).run(Request("hi", id="r1"), ledger)

    assert isinstance(out, Request)
    [entry] = ledger.entries()
    assert entry.outcome == "passed"
    assert entry.intent is None


def test_canned_with_a_fallback_records_what_the_fallback_would_cost() -> None:
    final = Generate(
        model=OfflineModel(model_id="generic.powerful"),
        system="Answer.",
        max_tokens=200,
        typical_output_tokens=100,
        catalogue=SEED,
    )
    ledger = Ledger()

    Canned(replies=REPLIES).with_fallback(final).run(
        Request("hello", id="r1", intent="greeting"), ledger
    )

    # "Answer." and "hello" are 2 tokens each at 4 characters a token; plus 100 typical output
    # tokens: 104 tokens at $0.06 per 1K.
    [entry] = ledger.entries()
    assert entry.avoided_cost == Decimal("0.00624")
    assert entry.cost == Decimal(0)


def test_canned_passing_with_a_fallback_records_no_avoided_cost() -> None:
    final = Generate(
        model=ScriptedModel(model_id="generic.powerful", usage=Usage(50, 50)), catalogue=SEED
    )
    ledger = Ledger()

    Canned(replies=REPLIES).with_fallback(final).run(Request("x", id="r1", intent="x"), ledger)

    [entry] = ledger.entries()
    assert entry.avoided_cost == Decimal(0)


def test_with_fallback_keeps_an_existing_fallback_and_leaves_the_original_alone() -> None:
    first = Generate(
        model=ScriptedModel(model_id="generic.powerful", usage=Usage(50, 50)), catalogue=SEED
    )
    second = Generate(
        model=ScriptedModel(model_id="generic.responder", usage=Usage(25, 25)), catalogue=SEED
    )
    canned = Canned(replies=REPLIES)

    bound = canned.with_fallback(first)

    assert canned.fallback is None
    assert bound.fallback is first
    assert bound.with_fallback(second).fallback is first


def test_canned_in_a_pipeline_records_what_generate_would_have_cost() -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="answer", usage=Usage(50, 50))
    canned = Canned(replies=REPLIES)
    bot = Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
            canned,
            Generate(model=model, max_tokens=50, catalogue=SEED),
        ]
    )
    ledger = Ledger()

    result = bot.run(Request("hi there", id="r1"), ledger)

    assert result.stage == "canned"
    assert model.prompts == []
    entries = ledger.entries()
    assert [(e.stage, e.outcome) for e in entries] == [
        ("intent_scan", "passed"),
        ("canned", "answered"),
    ]
    # Generate would have used 100 tokens at $0.06 per 1K.
    assert entries[1].avoided_cost == Decimal("0.006")
    assert ledger.cost == Decimal(0)
    # The pipeline bound a copy; the stage it was given still has no fallback.
    outside = Ledger()
    canned.run(Request("hi", id="r2", intent="greeting"), outside)
    assert outside.entries()[0].avoided_cost == Decimal(0)


def test_a_reply_under_an_intent_the_scan_cannot_set_is_refused_with_the_closest_label() -> None:
    scan = IntentScan(classifier=KeywordClassifier({"greeting": ["hello"]}))
    with pytest.raises(ConfigError) as caught:
        Pipeline(
            [
                scan,
                Canned(replies={"greting": "Hello!"}),
                Generate(model=OfflineModel(model_id="amazon.nova-micro-v1:0")),
            ]
        )
    message = str(caught.value)
    assert "'greting'" in message and "did you mean 'greeting'?" in message


def test_reply_keys_are_checked_against_every_kind_of_classifier() -> None:
    texts = ["hello there", "hi", "where is my order", "track my parcel"] * 5
    labels = ["greeting", "greeting", "track", "track"] * 5
    local = LocalClassifier().fit(texts, labels)
    with pytest.raises(ConfigError, match="'refund'"):
        Pipeline([IntentScan(classifier=local), Canned(replies={"refund": "See our policy."})])
    # The out-of-scope label is one the classifier sets, so a reply to it is allowed.
    Pipeline([IntentScan(classifier=local), Canned(replies={"oos": "Sorry.", "track": "Soon."})])
    # An unfitted classifier cannot say what it will set: nothing to check yet.
    Pipeline([IntentScan(classifier=LocalClassifier()), Canned(replies={"refund": "See."})])
    # A reply stage before any scan answers requests that arrive with their intent set.
    Pipeline([Canned(replies={"anything": "Yes."}), IntentScan(classifier=local)])
    llm = LLMClassifier(model=OfflineModel(model_id="amazon.nova-micro-v1:0"), labels=["greeting"])
    with pytest.raises(ConfigError, match="'bye'"):
        Pipeline([IntentScan(classifier=llm), Canned(replies={"bye": "Bye!"})])
