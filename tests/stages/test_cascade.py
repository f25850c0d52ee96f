import math
from dataclasses import dataclass
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
    Pipeline,
    Prediction,
    Request,
    ScriptedModel,
    Usage,
)
from chainkit.stages.intent_scan import Cascade

SEED = Catalogue.load("seed-2024")
LABELS = ["greeting", "refund", "track_order"]
RULES = KeywordClassifier({"greeting": ["hi", "hello"], "track_order": ["where is"]})


@dataclass(frozen=True)
class Fixed:
    """A local classifier that always gives the same label and confidence."""

    label: str
    confidence: float

    def predict(self, text: str) -> Prediction:
        return Prediction(self.label, self.confidence)


def intent_model(reply: str = "refund") -> ScriptedModel:
    return ScriptedModel(model_id="generic.intent", reply=reply, usage=Usage(15, 5))


def cascade_scan(
    first: Fixed | KeywordClassifier, model: ScriptedModel, min_confidence: float = 0.5
) -> IntentScan:
    return IntentScan(
        classifier=Cascade(first, LLMClassifier(model, LABELS), min_confidence=min_confidence),
        catalogue=SEED,
    )


def test_a_confident_local_prediction_is_one_free_entry_and_no_model_call() -> None:
    model = intent_model()
    ledger = Ledger()

    out = cascade_scan(RULES, model).run(
        Request("hello, where is my parcel?", id="r1", tags={"tenant": "acme"}), ledger
    )

    assert (out.intent, out.confidence) == ("greeting", 1.0)
    assert model.prompts == []
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "intent_scan"
    assert entry.outcome == "passed"
    assert entry.cost == Decimal(0)
    assert entry.model is None and entry.usage is None
    assert entry.intent == "greeting"
    assert entry.latency_s >= 0
    assert dict(entry.tags) == {"tenant": "acme"}


def test_an_unconfident_local_prediction_is_one_priced_entry_for_the_model_call() -> None:
    model = intent_model(reply=" Refund.")
    ledger = Ledger()

    out = cascade_scan(RULES, model).run(
        Request("I want my money back", id="r1", tags={"tenant": "acme"}), ledger
    )

    assert (out.intent, out.confidence) == ("refund", 1.0)
    [prompt] = model.prompts
    assert prompt.user == "I want my money back"
    assert "Intents: greeting, refund, track_order" in prompt.system
    assert model.metadata[0]["stage"] == "intent_scan"
    assert model.metadata[0]["request_id"] == "r1"
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "intent_scan"
    assert entry.outcome == "passed"
    assert entry.model == "generic.intent"
    assert entry.usage == Usage(15, 5)
    # 20 tokens at $0.003 per 1K.
    assert entry.cost == Decimal("0.00006")
    assert entry.intent == "refund"
    assert dict(entry.tags) == {"tenant": "acme"}
    assert ledger.cost == Decimal("0.00006")


def test_the_model_is_asked_below_the_threshold_and_not_at_it() -> None:
    below, at = intent_model(), intent_model()
    ledger = Ledger()

    low = cascade_scan(Fixed("track_order", 0.49), below).run(Request("x", id="r1"), ledger)
    high = cascade_scan(Fixed("track_order", 0.5), at).run(Request("x", id="r2"), ledger)

    assert (low.intent, len(below.prompts)) == ("refund", 1)
    assert (high.intent, high.confidence, at.prompts) == ("track_order", 0.5, [])
    assert [(e.request_id, e.intent, e.cost) for e in ledger] == [
        ("r1", "refund", Decimal("0.00006")),
        ("r2", "track_order", Decimal(0)),
    ]


def test_an_unusable_model_reply_gives_the_default_and_is_still_paid_for() -> None:
    model = intent_model(reply="Probably about shipping")
    ledger = Ledger()

    out = cascade_scan(RULES, model).run(Request("hmm", id="r1"), ledger)

    assert (out.intent, out.confidence) == ("unknown", 0.0)
    [entry] = ledger.entries()
    assert (entry.intent, entry.cost, entry.model) == (
        "unknown",
        Decimal("0.00006"),
        "generic.intent",
    )


def test_min_confidence_zero_never_asks_and_one_asks_unless_certain() -> None:
    never, unsure, certain = intent_model(), intent_model(), intent_model()

    cascade_scan(Fixed("unknown", 0.0), never, 0.0).run(Request("x"), Ledger())
    cascade_scan(Fixed("greeting", 0.99), unsure, 1.0).run(Request("x"), Ledger())
    cascade_scan(Fixed("greeting", 1.0), certain, 1.0).run(Request("x"), Ledger())

    assert (len(never.prompts), len(unsure.prompts), len(certain.prompts)) == (0, 1, 0)


@pytest.mark.parametrize("min_confidence", [-0.01, 1.01, 5.0, math.nan])
def test_min_confidence_outside_zero_to_one_is_a_config_error(min_confidence: float) -> None:
    with pytest.raises(ConfigError, match="min_confidence must be within"):
        Cascade(RULES, LLMClassifier(intent_model(), LABELS), min_confidence=min_confidence)


def test_a_cascade_whose_model_cannot_be_priced_fails_at_construction() -> None:
    model = ScriptedModel(model_id="nobody.unpriced-model", reply="refund")

    with pytest.raises(ConfigError, match="'intent_scan' cannot price its model"):
        IntentScan(classifier=Cascade(RULES, LLMClassifier(model, LABELS), 0.5), catalogue=SEED)


# -- IntentScan(min_confidence=..., trusted=...) ---------------------------------------------


def test_an_unconfident_prediction_leaves_the_intent_unset_but_the_entry_keeps_the_label() -> None:
    ledger = Ledger()
    scan = IntentScan(classifier=Fixed("track_order", 0.5), min_confidence=0.8)

    out = scan.run(Request("where's my stuff", id="r1"), ledger)

    assert (out.intent, out.confidence) == (None, 0.5)
    [entry] = ledger.entries()
    assert (entry.intent, entry.cost, entry.outcome) == ("track_order", Decimal(0), "passed")


def test_a_prediction_at_the_threshold_keeps_its_intent() -> None:
    scan = IntentScan(classifier=Fixed("track_order", 0.8), min_confidence=0.8)

    assert scan.run(Request("x"), Ledger()).intent == "track_order"


def test_a_trusted_label_keeps_its_intent_however_unconfident() -> None:
    scan = IntentScan(classifier=Fixed("oos", 0.1), min_confidence=0.8, trusted=("oos",))
    ledger = Ledger()

    out = scan.run(Request("what's the weather on mars", id="r1"), ledger)

    assert (out.intent, out.confidence) == ("oos", 0.1)
    assert [e.intent for e in ledger] == ["oos"]


def test_trusted_does_not_protect_other_labels() -> None:
    scan = IntentScan(classifier=Fixed("refund", 0.1), min_confidence=0.8, trusted=("oos",))

    assert scan.run(Request("x"), Ledger()).intent is None


def test_min_confidence_applies_to_the_cascade_models_answer() -> None:
    model = intent_model(reply="no idea")
    scan = IntentScan(
        classifier=Cascade(Fixed("refund", 0.2), LLMClassifier(model, LABELS), 0.5),
        min_confidence=0.5,
        catalogue=SEED,
    )
    ledger = Ledger()

    out = scan.run(Request("x", id="r1"), ledger)

    assert (out.intent, out.confidence) == (None, 0.0)
    [entry] = ledger.entries()
    assert (entry.intent, entry.cost) == ("unknown", Decimal("0.00006"))


def bot(confidence: float, responder: ScriptedModel) -> Pipeline:
    return Pipeline(
        [
            IntentScan(classifier=Fixed("greeting", confidence), min_confidence=0.8),
            Canned(replies={"greeting": "Hello! How can I help?"}),
            Generate(model=responder, max_tokens=50, catalogue=SEED),
        ]
    )


def test_an_unconfident_greeting_is_answered_by_generate_not_canned() -> None:
    responder = ScriptedModel(
        model_id="generic.responder", reply="Let me check that for you.", usage=Usage(40, 10)
    )
    ledger = Ledger()

    result = bot(0.5, responder).run(Request("hi, my card was charged twice", id="r1"), ledger)

    assert (result.stage, result.text, result.model) == (
        "generate",
        "Let me check that for you.",
        "generic.responder",
    )
    [prompt] = responder.prompts
    assert prompt.user == "hi, my card was charged twice"
    assert [(e.stage, e.outcome, e.intent) for e in ledger] == [
        ("intent_scan", "passed", "greeting"),
        ("canned", "passed", None),
        ("generate", "answered", None),
    ]
    scan, canned, generate = ledger.entries()
    assert scan.cost == canned.cost == Decimal(0)
    assert canned.avoided_cost == Decimal(0)
    # 50 tokens at $0.006 per 1K.
    assert generate.cost == Decimal("0.0003")


def test_a_confident_greeting_is_answered_by_canned() -> None:
    responder = ScriptedModel(model_id="generic.responder", reply="-", usage=Usage(40, 10))
    ledger = Ledger()

    result = bot(0.9, responder).run(Request("hi", id="r1"), ledger)

    assert (result.stage, result.text) == ("canned", "Hello! How can I help?")
    assert responder.prompts == []
    assert [(e.stage, e.outcome, e.intent, e.cost) for e in ledger] == [
        ("intent_scan", "passed", "greeting", Decimal(0)),
        ("canned", "answered", "greeting", Decimal(0)),
    ]
    # What Generate would have cost: its scripted 50 tokens at $0.006 per 1K.
    assert ledger.entries()[1].avoided_cost == Decimal("0.0003")
