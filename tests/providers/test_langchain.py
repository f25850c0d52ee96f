from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from chainkit import BadResponse, Catalogue, ConfigError, Generate, Ledger, Prompt, Request, Usage
from chainkit.providers.langchain import LangChainModel, usage_from_langchain
from tests.providers.bedrock_http import CACHE_TTL_COSTS
from tests.providers.conftest import BEDROCK_DATA

SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
CATALOGUE = Catalogue.load("bedrock-2026-11")


def reply(text: str, usage: dict[str, object] | None, **metadata: str) -> AIMessage:
    return AIMessage(content=text, usage_metadata=usage, response_metadata=metadata)  # type: ignore[arg-type]


def fake(*messages: AIMessage) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(messages))


def test_cached_tokens_are_not_counted_twice() -> None:
    # LangChain's input_tokens includes cache reads and writes; chainkit's excludes them.
    usage = usage_from_langchain(
        {
            "input_tokens": 3120,
            "output_tokens": 300,
            "total_tokens": 3420,
            "input_token_details": {"cache_read": 2000, "cache_creation": 1000},
        },
        SONNET4,
    )
    assert usage == Usage(120, 300, cache_read_tokens=2000, cache_write_tokens=1000)


def test_inconsistent_usage_is_a_bad_response() -> None:
    with pytest.raises(BadResponse, match="inconsistent"):
        usage_from_langchain(
            {"input_tokens": 10, "output_tokens": 1, "input_token_details": {"cache_read": 50}},
            SONNET4,
        )


def test_generate_through_a_langchain_model_is_priced_like_bedrock() -> None:
    usage = {
        "input_tokens": 3120,
        "output_tokens": 300,
        "total_tokens": 3420,
        "input_token_details": {"cache_read": 2000, "cache_creation": 1000},
    }
    model = LangChainModel(fake(reply("Thirty days.", usage)), model_id=SONNET4)
    ledger = Ledger()
    result = Generate(model=model, max_tokens=300, catalogue=CATALOGUE).run(Request("q"), ledger)
    assert result.text == "Thirty days."
    (entry,) = ledger.entries()
    assert entry.usage == Usage(120, 300, 2000, 1000)
    assert entry.cost == Decimal("0.00921")  # the same call as Bedrock's cached reply


def test_model_id_comes_from_the_reply_when_none_is_given() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100}
    haiku = "anthropic.claude-3-haiku-20240307-v1:0"
    chat = _Remembering()
    chat.reply = reply("ok", usage, model_name=haiku)
    completion = LangChainModel(chat).complete(Prompt("", "q"), max_tokens=100)
    assert completion.model_id == haiku


def test_an_explicit_model_id_is_what_the_call_is_priced_as() -> None:
    # langchain-aws names the base model of an application inference profile that routes through
    # the global profile; the caller said "global.", and that is what AWS bills.
    usage = {"input_tokens": 1_000_000, "output_tokens": 0, "total_tokens": 1_000_000}
    s45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
    model = LangChainModel(fake(reply("ok", usage, model_name=s45)), model_id="global." + s45)
    ledger = Ledger()
    Generate(model=model, max_tokens=10).run(Request("hi"), ledger)
    (entry,) = ledger.entries()
    assert entry.model == "global." + s45
    assert entry.cost == Catalogue.load().cost("global." + s45, Usage(1_000_000, 0))
    assert entry.cost == Decimal("3")  # the global rate, not the geographic 3.3


def test_reply_without_usage_metadata_is_a_bad_response() -> None:
    model = LangChainModel(fake(reply("ok", None)), model_id=SONNET4)
    with pytest.raises(BadResponse, match="usage_metadata"):
        model.complete(Prompt("", "q"), max_tokens=10)


def test_a_chat_model_without_a_model_name_needs_model_id() -> None:
    with pytest.raises(ConfigError, match="model_id="):
        LangChainModel(fake())


def test_errors_are_mapped_into_the_chainkit_tree() -> None:
    class RateLimitError(Exception):
        pass

    class Exploding(GenericFakeChatModel):
        def _generate(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise RateLimitError("slow down")

    from chainkit import Throttled

    model = LangChainModel(Exploding(messages=iter([])), model_id=SONNET4)
    with pytest.raises(Throttled, match="RateLimitError"):
        model.complete(Prompt("", "q"), max_tokens=10)


# -- langchain-aws ChatBedrockConverse on a stubbed Bedrock client -------------------------------

CURRENT = Catalogue.load("bedrock-2026-11-29")


def converse_chat_model(reply: dict[str, object]) -> Any:
    """A real ChatBedrockConverse whose boto3 client is answered by botocore's Stubber."""
    from langchain_aws import ChatBedrockConverse

    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response("converse", reply, None)
    stubber.activate()
    return ChatBedrockConverse(model="us." + SONNET4, client=client, region_name="us-east-1")


@pytest.mark.parametrize("name", sorted(CACHE_TTL_COSTS))
def test_langchain_aws_cache_details_are_cache_writes(bedrock_reply: Any, name: str) -> None:
    chat_model = converse_chat_model(bedrock_reply(name))
    ledger = Ledger()
    stage = Generate(model=LangChainModel(chat_model), max_tokens=200, catalogue=CURRENT)
    stage.run(Request("What is the returns policy?"), ledger)
    (entry,) = ledger.entries()
    assert entry.model == "us." + SONNET4
    assert entry.usage is not None
    assert (entry.usage.input_tokens, entry.usage.cache_write_tokens) == (120, 1000)
    assert entry.usage.cache_write_1h_tokens == (400 if "1h" in name else 0)
    assert entry.cost == Decimal(CACHE_TTL_COSTS[name])


def test_ttl_split_is_read_from_ephemeral_keys() -> None:
    # langchain-aws and langchain-anthropic zero cache_creation when they split writes by TTL.
    usage = usage_from_langchain(
        {
            "input_tokens": 3120,
            "output_tokens": 300,
            "total_tokens": 3420,
            "input_token_details": {
                "cache_read": 2000,
                "cache_creation": 0,
                "ephemeral_5m_input_tokens": 600,
                "ephemeral_1h_input_tokens": 400,
            },
        },
        SONNET4,
    )
    assert usage == Usage(120, 300, 2000, 1000, cache_write_1h_tokens=400)


def test_ttl_split_alongside_the_total_is_not_counted_twice() -> None:
    usage = usage_from_langchain(
        {
            "input_tokens": 1100,
            "output_tokens": 1,
            "input_token_details": {"cache_creation": 1000, "ephemeral_5m_input_tokens": 1000},
        },
        SONNET4,
    )
    assert usage == Usage(100, 1, 0, 1000)


# -- the catalogue follows the chat model's provider ---------------------------------------------


class FakeOpenAI(GenericFakeChatModel):
    """A fake chat model that LangChain traces as OpenAI's gpt-4o-mini, as ChatOpenAI is."""

    model_name: str = "gpt-4o-mini"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"
        params["ls_model_name"] = self.model_name
        return params


def test_openai_chat_model_is_priced_from_genai_prices() -> None:
    import genai_prices

    usage = {
        "input_tokens": 1_200,
        "output_tokens": 350,
        "total_tokens": 1_550,
        "input_token_details": {"cache_read": 800},
    }
    chat_model = FakeOpenAI(
        messages=iter([reply("ok", usage, model_name="gpt-4o-mini-2024-07-18")])
    )
    model = LangChainModel(chat_model)
    assert model.model_id == "openai:gpt-4o-mini"
    assert model.catalogue.name.startswith("genai-prices-")
    ledger = Ledger()
    Generate(model=model, max_tokens=100).run(Request("hi"), ledger)
    (entry,) = ledger.entries()
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1_200, output_tokens=350, cache_read_tokens=800),
        "gpt-4o-mini",
        provider_id="openai",
    ).total_price
    # LangChain counts the 800 cached tokens in its 1,200: 400*0.15 + 350*0.6 + 800*0.075 = 330
    assert entry.cost == theirs == Decimal("0.00033")


def test_bedrock_chat_model_keeps_the_bedrock_catalogue() -> None:
    chat_model = converse_chat_model(json.loads((BEDROCK_DATA / "converse_plain.json").read_text()))
    model = LangChainModel(chat_model)
    assert model.catalogue is Catalogue.load()
    assert (model.model_id, model.region) == ("us." + SONNET4, "us-east-1")


def test_explicit_catalogue_is_kept() -> None:
    model = LangChainModel(FakeOpenAI(messages=iter([])), catalogue=CATALOGUE, model_id=SONNET4)
    assert (model.catalogue, model.model_id) == (CATALOGUE, SONNET4)


class _Remembering:
    """A chat model stand-in that remembers the run config it was invoked with."""

    model_id = SONNET4

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []
        self.reply = reply("ok", {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6})

    def invoke(self, messages: Any, *, config: dict[str, Any], max_tokens: int) -> AIMessage:
        self.configs.append(config)
        return self.reply


def test_private_tags_are_left_out_of_the_run_metadata() -> None:
    chat = _Remembering()
    model = LangChainModel(chat, private_tags=("customer_email",), catalogue=CATALOGUE)
    ledger = Ledger()
    tags = {"tenant": "acme", "customer_email": "jane@example.com"}
    Generate(model=model, max_tokens=10).run(Request("q", id="r1", tags=tags), ledger)

    assert chat.configs == [
        {"metadata": {"tenant": "acme", "stage": "generate", "request_id": "r1"}}
    ]
    assert ledger.entries()[0].tags == tags
    with pytest.raises(ConfigError, match="private_tags must be a collection"):
        LangChainModel(chat, private_tags="customer_email")


# -- what cannot be priced exactly is unknown, never a guess --------------------------------------


def _tiered(tier: str) -> AIMessage:
    return reply(
        "ok",
        {
            "input_tokens": 10_000,
            "output_tokens": 500,
            "total_tokens": 10_500,
            "input_token_details": {f"{tier}_cache_read": 8_000, tier: 2_000},
            "output_token_details": {tier: 500},
        },
        model_name="gpt-4o-mini-2024-07-18",
        service_tier=tier,
    )


def test_openai_priority_cache_reads_are_cache_reads() -> None:
    model = LangChainModel(FakeOpenAI(messages=iter([_tiered("priority")])), tier="priority")
    ledger = Ledger()
    Generate(model=model, max_tokens=500).run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert entry.usage == Usage(2_000, 500, cache_read_tokens=8_000)
    assert entry.cost == Decimal("0.002")  # 2,000 x 0.25 + 8,000 x 0.125 + 500 x 1.00 per million


def test_a_reply_at_another_tier_than_the_model_is_priced_at_is_unknown() -> None:
    model = LangChainModel(FakeOpenAI(messages=iter([_tiered("priority")])))
    ledger = Ledger()
    Generate(model=model, max_tokens=500).run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert entry.cost is None
    assert "tier='priority'" in entry.note


def test_audio_tokens_make_a_langchain_models_cost_unknown() -> None:
    usage = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "total_tokens": 1500,
        "input_token_details": {"audio": 800},
        "output_token_details": {"audio": 400},
    }
    model = LangChainModel(FakeOpenAI(messages=iter([reply("ok", usage)])))
    ledger = Ledger()
    Generate(model=model, max_tokens=500).run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert (entry.usage, entry.cost) == (Usage(1000, 500), None)
    assert "audio" in entry.note


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 1000.9, "output_tokens": 10},
        {"input_tokens": None, "output_tokens": None},
        {"output_tokens": 10},
        {"input_tokens": "1000", "output_tokens": 10},
        {"input_tokens": True, "output_tokens": 1},
        {"input_tokens": 100, "output_tokens": 1, "input_token_details": [1, 2]},
        {"input_tokens": 100, "output_tokens": 1, "output_token_details": "audio"},
        {"input_tokens": 100, "output_tokens": 1, "input_token_details": {"cache_read": 1.5}},
    ],
)
def test_malformed_usage_is_a_bad_response_not_a_guess(usage: dict[str, Any]) -> None:
    with pytest.raises(BadResponse, match="malformed"):
        usage_from_langchain(usage, SONNET4)


def test_a_long_running_model_prices_each_call_at_its_own_days_prices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import genai_prices

    from chainkit import pricing_genai

    class FakeGemini(GenericFakeChatModel):
        model_name: str = "gemini-4-argon"

        def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params["ls_provider"] = "google_genai"
            return params

    usage = {"input_tokens": 400_000, "output_tokens": 100_000, "total_tokens": 500_000}
    monkeypatch.setattr(pricing_genai, "_today", lambda: date(2026, 11, 30))
    stage = Generate(model=LangChainModel(FakeGemini(messages=iter([reply("ok", usage)]))),
                     max_tokens=100_000)  # fmt: skip
    monkeypatch.setattr(pricing_genai, "_today", lambda: date(2026, 12, 1))  # the next morning
    ledger = Ledger()
    stage.run(Request("q"), ledger)
    prices = {
        day: genai_prices.calc_price(
            genai_prices.Usage(input_tokens=400_000, output_tokens=100_000),
            "gemini-4-argon",
            provider_id="google",
            genai_request_timestamp=datetime(2026, 12, day, 12, tzinfo=UTC)
            if day == 1
            else datetime(2026, 11, 30, 12, tzinfo=UTC),
        ).total_price
        for day in (30, 1)
    }
    assert prices[1] != prices[30]  # genai-prices changes this model's price on 2026-12-01
    assert ledger.entries()[0].cost == prices[1]
