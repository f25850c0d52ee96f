import re

import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from chainkit import Completion, Model, OfflineModel, Prompt, ScriptedModel, Usage, count_tokens
from chainkit.providers.offline import extract

MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
NOVA = "amazon.nova-micro-v1:0"
SENTENCE = re.compile(r"(?<=[.!?])\s+")
TEXT = (
    "Order 10234 was placed on Monday. The customer paid by card. The parcel left the Lyon "
    "warehouse on Tuesday! Tracking shows the parcel in Paris. Why has the parcel not arrived? "
    "The customer asks for a refund if the parcel is late. Our policy allows refunds within 30 "
    "days. The carrier is DPD. DPD delivers in three to five days. The customer lives in Nantes."
)
PROMPT = Prompt("Answer the customer's question from the thread.", TEXT)


def test_offline_model_is_a_model() -> None:
    assert isinstance(OfflineModel(model_id=NOVA), Model)
    assert isinstance(ScriptedModel(model_id=NOVA), Model)


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
def test_the_same_prompt_gets_the_same_reply(model_id: str) -> None:
    first = OfflineModel(model_id=model_id).complete(PROMPT, max_tokens=40)
    second = OfflineModel(model_id=model_id).complete(PROMPT, max_tokens=40)

    assert first.text
    assert (first.text, first.usage) == (second.text, second.usage)


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
@pytest.mark.parametrize("max_tokens", [8, 15, 30, 60, 1_000])
def test_every_reply_sentence_comes_from_the_prompt(model_id: str, max_tokens: int) -> None:
    text = OfflineModel(model_id=model_id).complete(PROMPT, max_tokens=max_tokens).text

    assert text
    for sentence in SENTENCE.split(text):
        assert sentence in TEXT


def test_a_large_budget_keeps_every_sentence_in_order() -> None:
    text = OfflineModel(model_id=NOVA).complete(PROMPT, max_tokens=10_000).text

    assert text == TEXT


def test_the_reply_prefers_sentences_about_what_the_prompt_is_about() -> None:
    assert extract("Cats purr. Dogs bark loudly at cats. Cats sleep.", budget=6) == (
        "Cats purr. Cats sleep."
    )


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
def test_the_reply_never_exceeds_max_tokens(model_id: str, max_tokens: int) -> None:
    completion = OfflineModel(model_id=model_id).complete(PROMPT, max_tokens=max_tokens)

    assert count_tokens(completion.text, model_id) <= max_tokens
    assert completion.usage.output_tokens == count_tokens(completion.text, model_id)


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
def test_the_reply_never_exceeds_output_tokens(model_id: str) -> None:
    model = OfflineModel(model_id=model_id, output_tokens=12)

    completion = model.complete(PROMPT, max_tokens=500)

    assert completion.text
    assert count_tokens(completion.text, model_id) <= 12
    assert model.estimate(PROMPT, max_tokens=500).output_tokens == 12
    assert model.estimate(PROMPT, max_tokens=5).output_tokens == 5


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
def test_a_sentence_longer_than_the_budget_is_cut_to_a_prefix(model_id: str) -> None:
    long = " ".join(f"word{i}" for i in range(200)) + "."
    completion = OfflineModel(model_id=model_id).complete(Prompt("", long), max_tokens=10)

    assert completion.text
    assert long.startswith(completion.text)
    assert count_tokens(completion.text, model_id) <= 10


def test_an_empty_prompt_gets_an_empty_reply() -> None:
    completion = OfflineModel(model_id=NOVA).complete(Prompt("System.", ""), max_tokens=50)

    assert completion.text == ""
    assert completion.usage == Usage(2, 0)


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
def test_input_usage_counts_the_system_and_the_user_turn(model_id: str) -> None:
    completion = OfflineModel(model_id=model_id).complete(PROMPT, max_tokens=30)

    assert completion.usage.input_tokens == count_tokens(PROMPT.system, model_id) + count_tokens(
        PROMPT.user, model_id
    )
    assert completion.model_id == model_id
    assert completion.attempts == 1


def test_other_families_are_estimated_at_four_characters_a_token() -> None:
    completion = OfflineModel(model_id=NOVA).complete(PROMPT, max_tokens=30)

    assert completion.estimated is True
    assert completion.usage.input_tokens == -(-len(PROMPT.system) // 4) + -(-len(TEXT) // 4)
    assert completion.usage.output_tokens == -(-len(completion.text) // 4)


def test_mistral_ids_are_counted_with_the_real_tokenizer() -> None:
    raw = MistralTokenizer.v1().instruct_tokenizer.tokenizer

    def real(text: str) -> int:
        return len(raw.encode(text, bos=False, eos=False))

    completion = OfflineModel(model_id=MIXTRAL).complete(PROMPT, max_tokens=30)

    assert completion.estimated is False
    assert completion.usage.input_tokens == real(PROMPT.system) + real(TEXT)
    assert completion.usage.output_tokens == real(completion.text)
    # The real count is not the estimator's, or this test would prove nothing.
    assert completion.usage.input_tokens != -(-len(PROMPT.system) // 4) + -(-len(TEXT) // 4)


@pytest.mark.parametrize("model_id", [NOVA, MIXTRAL])
def test_the_estimate_bounds_the_usage(model_id: str) -> None:
    model = OfflineModel(model_id=model_id)

    estimate = model.estimate(PROMPT, max_tokens=25)
    usage = model.complete(PROMPT, max_tokens=25).usage

    assert estimate.input_tokens == usage.input_tokens
    assert estimate.output_tokens == 25
    assert usage.output_tokens <= estimate.output_tokens


def test_latency_is_simulated() -> None:
    completion = OfflineModel(model_id=NOVA, latency_s=0.02).complete(PROMPT, max_tokens=10)

    assert completion.latency_s >= 0.02


def test_scripted_model_remembers_prompts_and_reports_its_usage() -> None:
    model = ScriptedModel(
        model_id="generic.intent", reply=lambda p: p.user.upper(), usage=Usage(15, 5)
    )

    completion = model.complete(Prompt("Label it.", "refund"), max_tokens=8)

    assert completion == Completion("REFUND", Usage(15, 5), "generic.intent", estimated=False)
    assert model.prompts == [Prompt("Label it.", "refund")]
    assert model.estimate(Prompt("x", "y"), max_tokens=100) == Usage(15, 5)


@pytest.mark.parametrize(("model_id", "estimated"), [(NOVA, True), (MIXTRAL, False)])
def test_scripted_model_counts_usage_when_none_is_scripted(model_id: str, estimated: bool) -> None:
    model = ScriptedModel(model_id=model_id, reply="The parcel is in Paris.")

    completion = model.complete(PROMPT, max_tokens=50)

    assert completion.usage == Usage(
        count_tokens(PROMPT.system, model_id) + count_tokens(PROMPT.user, model_id),
        count_tokens("The parcel is in Paris.", model_id),
    )
    assert completion.estimated is estimated
    assert model.estimate(PROMPT, max_tokens=50).output_tokens == 50
