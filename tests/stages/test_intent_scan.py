from decimal import Decimal

import pytest

from chainkit import (
    Catalogue,
    ConfigError,
    IntentScan,
    KeywordClassifier,
    Ledger,
    LLMClassifier,
    Prompt,
    Request,
    ScriptedModel,
    Usage,
)

SEED = Catalogue.load("seed-2024")
RULES = KeywordClassifier({"greeting": ["hi", "hello"], "track_order": ["where is"]})


def test_keyword_scan_writes_one_free_entry_with_the_intent() -> None:
    ledger = Ledger()
    request = Request("Hello, where is my parcel?", id="r1", tags={"tenant": "acme"})

    out = IntentScan(classifier=RULES).run(request, ledger)

    assert (out.intent, out.confidence) == ("greeting", 1.0)
    assert out.text == request.text and out.id == "r1"
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "intent_scan"
    assert entry.outcome == "passed"
    assert entry.cost == Decimal(0)
    assert entry.avoided_cost == Decimal(0)
    assert entry.model is None and entry.usage is None
    assert entry.intent == "greeting"
    assert dict(entry.tags) == {"tenant": "acme"}
    assert entry.phase == "serve"


def test_keyword_scan_without_a_match_labels_the_default() -> None:
    ledger = Ledger()

    out = IntentScan(classifier=RULES).run(Request("I want a refund", id="r1"), ledger)

    assert (out.intent, out.confidence) == ("unknown", 0.0)
    [entry] = ledger.entries()
    assert entry.intent == "unknown"
    assert entry.cost == Decimal(0)


def test_keyword_scan_matches_whole_words_only() -> None:
    out = IntentScan(classifier=RULES).run(Request("this is thin", id="r1"), Ledger())

    assert out.intent == "unknown"


def test_keyword_scan_needs_no_priced_model_in_any_catalogue() -> None:
    scan = IntentScan(classifier=RULES, catalogue=SEED, name="rules")
    ledger = Ledger()

    scan.run(Request("hi", id="r1"), ledger)

    assert [e.stage for e in ledger] == ["rules"]


def test_llm_scan_asks_the_model_with_the_labels_and_the_message() -> None:
    model = ScriptedModel(model_id="generic.intent", reply="track_order", usage=Usage(15, 5))
    scan = IntentScan(classifier=LLMClassifier(model, ["refund", "track_order"]), catalogue=SEED)
    ledger = Ledger()

    out = scan.run(Request("where is my parcel 10234?", id="r1", tags={"tenant": "acme"}), ledger)

    assert (out.intent, out.confidence) == ("track_order", 1.0)
    [prompt] = model.prompts
    assert prompt.user == "where is my parcel 10234?"
    assert "refund, track_order" in prompt.system
    assert "'unknown'" in prompt.system
    [entry] = ledger.entries()
    assert entry.stage == "intent_scan"
    assert entry.outcome == "passed"
    assert entry.model == "generic.intent"
    assert entry.usage == Usage(15, 5)
    # 20 tokens at $0.003 per 1K.
    assert entry.cost == Decimal("0.00006")
    assert entry.intent == "track_order"
    assert entry.attempts == 1
    assert entry.estimated is False
    assert dict(entry.tags) == {"tenant": "acme"}


def test_llm_scan_tolerates_case_and_punctuation_in_the_reply() -> None:
    model = ScriptedModel(model_id="generic.intent", reply=" Refund.\n", usage=Usage(15, 5))
    scan = IntentScan(classifier=LLMClassifier(model, ["refund", "track_order"]), catalogue=SEED)

    out = scan.run(Request("money back please", id="r1"), Ledger())

    assert out.intent == "refund"


def test_llm_scan_turns_an_invalid_reply_into_the_default_label() -> None:
    model = ScriptedModel(
        model_id="generic.intent", reply="I think it is about shipping", usage=Usage(15, 5)
    )
    scan = IntentScan(
        classifier=LLMClassifier(model, ["refund", "track_order"], default="other"),
        catalogue=SEED,
    )
    ledger = Ledger()

    out = scan.run(Request("hmm", id="r1"), ledger)

    assert (out.intent, out.confidence) == ("other", 0.0)
    [entry] = ledger.entries()
    assert entry.intent == "other"
    # The call was made and is paid for even though its answer was unusable.
    assert entry.cost == Decimal("0.00006")
    assert "'other'" in model.prompts[0].system


def test_llm_scan_with_an_empty_reply_gets_the_default() -> None:
    model = ScriptedModel(model_id="generic.intent", reply="", usage=Usage(15, 0))
    scan = IntentScan(classifier=LLMClassifier(model, ["refund"]), catalogue=SEED)

    out = scan.run(Request("hmm", id="r1"), Ledger())

    assert out.intent == "unknown"


def test_llm_scan_prices_from_the_counted_prompt_when_usage_is_not_scripted() -> None:
    model = ScriptedModel(model_id="generic.intent", reply=lambda p: "refund")
    classifier = LLMClassifier(model, ["refund"])
    ledger = Ledger()

    IntentScan(classifier=classifier, catalogue=SEED).run(Request("money back", id="r1"), ledger)

    prompt = classifier.prompt("money back")
    expected_input = -(-len(prompt.system) // 4) + -(-len("money back") // 4)
    [entry] = ledger.entries()
    assert entry.usage == Usage(expected_input, 2)
    assert entry.cost == (expected_input + 2) * Decimal("0.000003")
    assert entry.estimated is True


def test_llm_scan_with_a_model_the_catalogue_cannot_price_fails_at_construction() -> None:
    model = ScriptedModel(model_id="generic.intent", reply="refund")

    # generic.intent exists only in seed-2024, not in the default catalogue.
    with pytest.raises(ConfigError, match=r"generic\.intent"):
        IntentScan(classifier=LLMClassifier(model, ["refund"]))
    with pytest.raises(ConfigError, match="intent_scan"):
        IntentScan(
            classifier=LLMClassifier(ScriptedModel(model_id="nope-1"), ["refund"]),
            catalogue=SEED,
        )
    assert model.prompts == []


def test_llm_classifier_prompt_lists_labels_in_order() -> None:
    clf = LLMClassifier(ScriptedModel(model_id="generic.intent"), ["b", "a"])

    assert clf.prompt("text") == Prompt(
        "Classify the customer's message into exactly one intent from this list, or "
        "'unknown' if none fits. Answer with the intent name only.\nIntents: b, a",
        "text",
    )
