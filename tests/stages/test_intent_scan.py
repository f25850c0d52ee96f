from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import (
    Catalogue,
    ConfigError,
    Conversation,
    IntentScan,
    KeywordClassifier,
    Ledger,
    LLMClassifier,
    Prompt,
    Request,
    ScriptedModel,
    Turn,
    Usage,
)
from chainkit.stages.intent_scan import Prediction, _at_most_words, _twelfths

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


# -- how many words a turn holds, whatever its script (the follow-up gate) -------------------


@pytest.mark.parametrize(
    ("text", "twelfths"),
    [
        ("and the second one?", 48),  # spaced scripts: whitespace-separated words, as before
        ("et pour l'autre ?", 36),  # a lone "?" is no word
        ("?! …", 0),
        ("", 0),
        ("2つ目はどうですか？", 12 + 8 + 7 * 6),  # "2", one Han character, seven kana  # noqa: RUF001
        ("先週注文した商品がまだ届いていないのですが、どうなっていますか", 7 * 8 + 23 * 6),
        ("那另一个呢？", 5 * 8),  # noqa: RUF001
        ("我想取消我昨天下的订单，请帮我处理一下", 18 * 8),  # noqa: RUF001
        ("iPhoneの画面が割れた", 12 + 3 * 8 + 4 * 6),  # mixed scripts: Latin word, Han, kana
        ("注文12345と67890", 2 * 8 + 12 + 6 + 12),
        ("주문 취소 해주세요", 36),  # Hangul is written with spaces
        ("ขอบคุณครับ", 10 * 3),  # Thai: no spaces, a quarter word per character
        ("same question 😅", 36),  # an emoji is a word of its own
        ("👍👍👍", 12),
        ("👍 👍 👍", 36),
        ("👨‍👩‍👧 ❤️", 24),  # ZWJ sequence, variation selector
        ("\ud83d and \udfff", 36),  # lone surrogates count as a word each, never raise
    ],
)
def test_words_are_counted_by_script(text: str, twelfths: int) -> None:
    assert _twelfths(text) == twelfths
    assert _at_most_words(text, 6) is (twelfths <= 72)


ANY_CHAR = st.one_of(
    st.characters(),
    st.sampled_from("日本語のテキスト中文한국어ไทย😅👍❤️\u200d？、。 \t\n"),  # noqa: RUF001
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates
)


@settings(max_examples=100, deadline=None)
@given(st.text(ANY_CHAR, max_size=40), st.text(ANY_CHAR, max_size=40), st.integers(1, 12))
def test_word_counts_add_up_across_a_space_and_the_gate_agrees(a: str, b: str, limit: int) -> None:
    # A space ends every word, so two texts joined by one hold the words of both.
    assert _twelfths(f"{a} {b}") == _twelfths(a) + _twelfths(b)
    assert _at_most_words(a, limit) is (_twelfths(a) <= 12 * limit)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9']{0,7}", fullmatch=True), max_size=12))
def test_spaced_words_count_one_each(words: list[str]) -> None:
    assert _twelfths(" ".join(words)) == 12 * len(words)


class Asked:
    """A free classifier that is never sure and remembers every text it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def predict(self, text: str) -> Prediction:
        self.asked.append(text)
        return Prediction("track_order" if "order" in text else "unknown", 0.9 * ("order" in text))


@pytest.mark.parametrize(
    ("turn", "joined"),
    [
        ("2つ目はどうですか？", True),  # noqa: RUF001
        ("那另一个呢？", True),  # noqa: RUF001
        ("and this one? 🙏", True),
        ("先週注文した商品がまだ届いていないのですが、どうなっていますか", False),
        ("我想取消我昨天下的订单，请帮我处理一下", False),  # noqa: RUF001
        ("can you recommend a good italian restaurant near the station", False),
    ],
)
def test_only_short_turns_are_joined_to_the_previous_one_in_any_script(
    turn: str, joined: bool
) -> None:
    clf = Asked()
    conversation = Conversation("c", turns=(Turn("user", "where is my order", "track_order"),))
    ledger = Ledger()
    stage = IntentScan(classifier=clf, follow_up="join", follow_up_words=6)
    out = stage.run(conversation.request(turn, id="r"), ledger)
    assert clf.asked == [turn, *([f"where is my order\n{turn}"] if joined else [])]
    assert out.intent == ("track_order" if joined else "unknown")
    [entry] = ledger.entries()
    assert entry.intent == out.intent and entry.cost == Decimal(0)
