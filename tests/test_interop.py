from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from langchain_aws import ChatBedrockConverse
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from pydantic import Field

from chainkit import (
    Canned,
    Catalogue,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Pipeline,
    ScriptedModel,
    Usage,
)
from chainkit.interop import LedgerCallbackHandler
from tests.providers.bedrock_http import CACHE_TTL_COSTS

BEDROCK_DATA = Path(__file__).resolve().parent / "data" / "bedrock"

SEED = Catalogue.load("seed-2024")
SONNET3 = "anthropic.claude-3-sonnet-20240229-v1:0"
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"


def bot() -> Pipeline:
    return Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"greeting": ["hello"]})),
            Canned(replies={"greeting": "Hi!"}),
            Generate(
                model=ScriptedModel(
                    model_id="generic.responder", reply="An answer.", usage=Usage(25, 25)
                ),
                max_tokens=25,
                catalogue=SEED,
            ),
        ]
    )


def test_pipeline_inside_an_lcel_chain_fills_its_ledger() -> None:
    ledger = Ledger()
    chain = RunnableLambda(lambda d: d["message"]) | bot().as_runnable(ledger) | str.upper
    assert chain.invoke({"message": "hello"}) == "HI!"
    assert chain.batch([{"message": "where is my order"}, {"message": "hello there"}]) == [
        "AN ANSWER.",
        "HI!",
    ]
    by_stage = ledger.by_stage()
    assert by_stage["intent_scan"].calls == 3
    assert by_stage["canned"].calls == 3
    assert by_stage["generate"].calls == 1
    assert by_stage["generate"].cost == Decimal("0.0003")  # 50 tokens at $0.006 per 1K
    # The canned answers record what the responder would have cost.
    assert by_stage["canned"].avoided_cost == Decimal("0.0006")


def ai(text: str, model: str, inp: int, out: int) -> AIMessage:
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out},
        response_metadata={"model_name": model},
    )


def test_callback_handler_records_a_two_call_chain_as_one_request() -> None:
    small = GenericFakeChatModel(messages=iter([ai("A short summary.", MIXTRAL, 10_000, 500)]))
    strong = GenericFakeChatModel(messages=iter([ai("The report.", SONNET3, 500, 1_000)]))
    chain = (
        ChatPromptTemplate.from_messages([("human", "Summarise: {doc}")])
        | small
        | StrOutputParser()
        | (lambda summary: [("human", f"Write a report from: {summary}")])
        | strong
        | StrOutputParser()
    )
    ledger = Ledger()
    handler = LedgerCallbackHandler(ledger, SEED, tags={"tenant": "acme"})
    assert chain.invoke({"doc": "..."}, config={"callbacks": [handler]}) == "The report."

    first, second = ledger.entries()
    assert (first.model, first.usage) == (MIXTRAL, Usage(10_000, 500))
    assert (second.model, second.usage) == (SONNET3, Usage(500, 1_000))
    assert first.cost == Decimal("0.00485")  # 10,000 x 0.00045/1K + 500 x 0.0007/1K
    assert second.cost == Decimal("0.0165")  # 500 x 0.003/1K + 1,000 x 0.015/1K
    assert first.request_id == second.request_id
    assert first.tags == {"tenant": "acme"}
    assert ledger.cost == Decimal("0.02135")  # the article's chained figure per document


def test_callback_handler_records_unknown_models_as_unknown_cost() -> None:
    model = GenericFakeChatModel(messages=iter([ai("ok", "gpt-9-preview", 10, 2)]))
    ledger = Ledger()
    model.invoke("hi", config={"callbacks": [LedgerCallbackHandler(ledger, SEED)]})
    (entry,) = ledger.entries()
    assert entry.model == "gpt-9-preview"
    assert entry.usage == Usage(10, 2)
    assert entry.cost is None
    assert ledger.cost is None


def test_callback_handler_maps_reported_names_to_catalogue_ids() -> None:
    model = GenericFakeChatModel(messages=iter([ai("ok", "claude-3-sonnet-latest", 1000, 0)]))
    ledger = Ledger()
    handler = LedgerCallbackHandler(ledger, SEED, model_ids={"claude-3-sonnet-latest": SONNET3})
    model.invoke("hi", config={"callbacks": [handler]})
    assert ledger.entries()[0].cost == Decimal("0.003")


@pytest.mark.parametrize("name", sorted(CACHE_TTL_COSTS))
def test_callback_handler_prices_langchain_aws_cache_writes_by_ttl(name: str) -> None:
    reply = json.loads((BEDROCK_DATA / f"{name}.json").read_text())
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        stubber.add_response("converse", reply, None)
        chat_model = ChatBedrockConverse(
            model="us.anthropic.claude-sonnet-4-20250514-v1:0",
            client=client,
            region_name="us-east-1",
        )
        ledger = Ledger()
        handler = LedgerCallbackHandler(ledger, Catalogue.load("bedrock-2026-11-29"))
        chat_model.invoke("What is the returns policy?", config={"callbacks": [handler]})
    (entry,) = ledger.entries()
    assert entry.usage is not None
    assert (entry.usage.input_tokens, entry.usage.cache_write_tokens) == (120, 1000)
    assert getattr(entry.usage, "cache_write_1h_tokens", 0) == (400 if "1h" in name else 0)
    assert entry.cost == Decimal(CACHE_TTL_COSTS[name])


def test_callback_handler_prices_an_openai_chat_model_from_genai_prices() -> None:
    class FakeOpenAI(GenericFakeChatModel):
        def _get_ls_params(self, stop: list[str] | None = None, **kwargs: object) -> Any:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params["ls_provider"] = "openai"
            return params

    chat_model = FakeOpenAI(messages=iter([ai("ok", "gpt-4o-mini-2024-07-18", 2_000, 100)]))
    ledger = Ledger()
    chat_model.invoke("hi", config={"callbacks": [LedgerCallbackHandler(ledger)]})
    (entry,) = ledger.entries()
    assert entry.model == "openai:gpt-4o-mini-2024-07-18"
    assert entry.cost == Decimal("0.00036")  # 2000 x 0.15 + 100 x 0.6 per million


# -- budgets through the callback handler ---------------------------------------------------------


class Counting(GenericFakeChatModel):
    """A fake chat model that counts the calls that reached it."""

    calls: int = 0

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super()._generate(*args, **kwargs)


def test_the_handler_refuses_a_call_over_budget_before_the_model_is_called() -> None:
    from chainkit import Budget, BudgetExceeded

    # Bound: every byte that may be sent (the message as LangChain holds it, 114 bytes as JSON,
    # and the call's parameters, 69), + 32 per message + 32 per call = 247 input tokens, and
    # 100 output tokens (max_tokens), on Claude 3 Sonnet ($3 / $15 per 1M): $0.002241.
    catalogue = Catalogue.load("bedrock-2026-11")
    tight = Ledger([Budget("0.0017")])
    model = Counting(messages=iter([ai("ok", SONNET3, 10, 5)]))
    handler = LedgerCallbackHandler(tight, catalogue=catalogue, model_ids={"x": SONNET3})
    config: Any = {"callbacks": [handler], "metadata": {"ls_model_name": "x"}}
    with pytest.raises(BudgetExceeded, match=r"needs up to \$0\.002241"):
        model.invoke("hi", config=config, max_tokens=100)
    assert model.calls == 0
    assert [(e.outcome, e.cost) for e in tight] == [("refused", Decimal(0))]

    roomy = Ledger([Budget("0.003")])
    handler = LedgerCallbackHandler(roomy, catalogue=catalogue, model_ids={"x": SONNET3})
    config = {"callbacks": [handler], "metadata": {"ls_model_name": "x"}}
    model.invoke("hi", config=config, max_tokens=100)
    [entry] = roomy.entries()
    assert (entry.outcome, entry.cost, entry.bound) == (
        "answered", Decimal("0.000105"), Decimal("0.002241"),
    )  # fmt: skip
    assert roomy.spent("ledger") == Decimal("0.000105")


def test_the_handler_cannot_bound_a_call_without_max_tokens_and_says_so() -> None:
    from chainkit import Budget, BudgetExceeded

    ledger = Ledger([Budget(1)])
    handler = LedgerCallbackHandler(
        ledger, catalogue=Catalogue.load("bedrock-2026-11"), model_ids={"x": SONNET3}
    )
    model = Counting(messages=iter([ai("ok", SONNET3, 10, 5)]))
    config: Any = {"callbacks": [handler], "metadata": {"ls_model_name": "x"}}
    with pytest.raises(BudgetExceeded, match="set max_tokens"):
        model.invoke("hi", config=config)
    assert model.calls == 0


def test_the_handlers_bound_counts_tool_definitions_and_tool_calls() -> None:
    """Tools and tool calls are sent and billed: an honest bill never exceeds the bound."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from chainkit import Budget

    class Honest(BaseChatModel):
        """Bills every byte it was sent (the most a byte-level tokenizer could)."""

        @property
        def _llm_type(self) -> str:
            return "honest"

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:  # fmt: skip
            sent = [[m.content, getattr(m, "tool_calls", None)] for m in messages]
            used = len(json.dumps([sent, kwargs.get("tools")]).encode())
            out = kwargs.get("max_tokens", 0)
            usage = {"input_tokens": used, "output_tokens": out, "total_tokens": used + out}
            reply = AIMessage(content="x", usage_metadata=usage)  # type: ignore[arg-type]
            return ChatResult(generations=[ChatGeneration(message=reply)])

    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 2_000,
              "parameters": {"type": "object", "properties": {}}}} for i in range(10)]  # fmt: skip
    history = [
        HumanMessage("hi"),
        AIMessage(content="", tool_calls=[{"name": "f", "id": "c1", "args": {"b": "y" * 20_000}}]),
        ToolMessage("ok", tool_call_id="c1"),
    ]
    for prompt, params in [("hi", {"tools": tools}), (history, {})]:
        ledger = Ledger([Budget(1)])
        handler = LedgerCallbackHandler(
            ledger, catalogue=Catalogue.load("bedrock-2026-11"), model_ids={"x": SONNET3}
        )
        config: Any = {"callbacks": [handler], "metadata": {"ls_model_name": "x"}}
        Honest().invoke(prompt, config=config, max_tokens=100, **params)
        [entry] = ledger.entries()
        assert entry.cost is not None and entry.bound is not None
        assert entry.cost <= entry.bound and "over_estimate" not in entry.flags


# -- pricing what LangChain reports exactly, or recording it as unknown --------------------------


class FakeOpenAIChat(GenericFakeChatModel):
    """A fake chat model LangChain traces as OpenAI's (``ls_provider="openai"``), as ChatOpenAI."""

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"
        return params


class NChoices(FakeOpenAIChat):
    """One call with two choices, each carrying the call's usage, as langchain-openai does."""

    usages: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        generations = [
            ChatGeneration(
                message=AIMessage(
                    f"choice {i}",
                    usage_metadata=usage,  # type: ignore[arg-type]
                    response_metadata={"model_name": "gpt-4o-mini-2024-07-18"},
                )
            )
            for i, usage in enumerate(self.usages)
        ]
        return ChatResult(generations=generations)


def _their(model: str, provider: str = "openai", **usage: int) -> Decimal:
    import genai_prices

    return genai_prices.calc_price(
        genai_prices.Usage(**usage), model, provider_id=provider
    ).total_price


def test_a_call_with_n_choices_is_one_entry_with_its_usage_counted_once() -> None:
    usage = {"input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200}
    ledger = Ledger()
    chat = NChoices(messages=iter([]), usages=[usage, usage])
    chat.invoke("hi", config={"callbacks": [LedgerCallbackHandler(ledger)]})
    (entry,) = ledger.entries()
    assert entry.usage == Usage(1000, 200)
    assert entry.cost == Decimal("0.00027") == _their("gpt-4o-mini", input_tokens=1000,
                                                      output_tokens=200)  # fmt: skip


def test_choices_reporting_different_usage_are_one_entry_of_unknown_cost() -> None:
    first = {"input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200}
    second = {"input_tokens": 1000, "output_tokens": 90, "total_tokens": 1090}
    ledger = Ledger()
    NChoices(messages=iter([]), usages=[first, second]).invoke(
        "hi", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert (entry.usage, entry.cost) == (None, None)
    assert "different usage" in entry.note


def _tiered(tier: str) -> AIMessage:
    # As langchain-openai maps a priority or flex call: 10,000 prompt tokens, 8,000 of them cached.
    return AIMessage(
        "ok",
        response_metadata={"model_name": "gpt-4o-mini-2024-07-18", "service_tier": tier},
        usage_metadata={
            "input_tokens": 10_000,
            "output_tokens": 500,
            "total_tokens": 10_500,
            "input_token_details": {f"{tier}_cache_read": 8_000, tier: 2_000},  # type: ignore[typeddict-item]
            "output_token_details": {tier: 500},  # type: ignore[typeddict-item]
        },
    )


def test_the_handler_prices_openai_priority_calls_with_their_cache_reads() -> None:
    import genai_prices

    ledger = Ledger()
    FakeOpenAIChat(messages=iter([_tiered("priority")])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert entry.usage == Usage(2_000, 500, cache_read_tokens=8_000)
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=10_000, output_tokens=500, cache_read_tokens=8_000),
        "gpt-4o-mini",
        provider_id="openai",
        price_context={"service_tier": "priority"},
    ).total_price
    # 2,000 x 0.25 + 8,000 x 0.125 + 500 x 1.00 per million, at the priority tier.
    assert entry.cost == theirs == Decimal("0.002")


def test_a_flex_call_on_a_model_without_a_flex_price_is_unknown_not_standard() -> None:
    ledger = Ledger()
    FakeOpenAIChat(messages=iter([_tiered("flex")])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert entry.usage == Usage(2_000, 500, cache_read_tokens=8_000)
    assert entry.cost is None
    assert "'flex'" in entry.note


def test_the_handler_takes_the_tier_the_call_asked_for() -> None:
    reply = ai("ok", "gpt-4o-mini-2024-07-18", 1_000_000, 0)
    ledger = Ledger()
    FakeOpenAIChat(messages=iter([reply])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}, service_tier="priority"
    )
    assert ledger.entries()[0].cost == Decimal("0.25")  # priority input, not 0.15 standard


def test_a_tier_chainkit_has_no_price_for_is_unknown() -> None:
    reply = ai("ok", "gpt-4o-mini-2024-07-18", 1_000, 0)
    reply.response_metadata["service_tier"] = "scale"
    ledger = Ledger()
    FakeOpenAIChat(messages=iter([reply])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert entry.cost is None
    assert "'scale'" in entry.note


def test_audio_tokens_are_never_priced_as_text() -> None:
    reply = AIMessage(
        "ok",
        response_metadata={"model_name": "gpt-audio"},
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 500,
            "total_tokens": 1500,
            "input_token_details": {"audio": 800},
            "output_token_details": {"audio": 400},
        },
    )
    ledger = Ledger()
    FakeOpenAIChat(messages=iter([reply])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert entry.usage == Usage(1000, 500)
    assert entry.cost is None
    assert "audio" in entry.note


def _converse(model: str, region: str) -> tuple[Any, Stubber]:
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 1_000_000, "outputTokens": 0, "totalTokens": 1_000_000},
        "metrics": {"latencyMs": 1},
    }
    client = boto3.client("bedrock-runtime", region_name=region)
    stubber = Stubber(client)
    stubber.add_response("converse", reply, None)
    stubber.activate()
    return ChatBedrockConverse(model=model, client=client, region_name=region), stubber


def test_the_handler_prices_a_bedrock_call_in_the_chat_models_region() -> None:
    llama = "meta.llama3-8b-instruct-v1:0"
    chat, _ = _converse(llama, "eu-west-1")
    ledger = Ledger()
    chat.invoke("hi", config={"callbacks": [LedgerCallbackHandler(ledger)]})
    (entry,) = ledger.entries()
    assert entry.cost == Catalogue.load().cost(llama, Usage(1_000_000, 0), region="eu-west-1")
    assert entry.cost == Decimal("0.32")  # eu-west-1's rate; us-east-1 charges 0.30


def test_the_handler_refuses_a_us_profile_from_an_eu_region_before_the_call() -> None:
    from chainkit import ConfigError

    chat, stubber = _converse("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "eu-west-1")
    ledger = Ledger()
    with pytest.raises(ConfigError, match="cannot be called from region 'eu-west-1'"):
        chat.invoke("hi", config={"callbacks": [LedgerCallbackHandler(ledger)]})
    with pytest.raises(AssertionError):  # its reply is still queued: Bedrock was never called
        stubber.assert_no_pending_responses()
    (entry,) = ledger.entries()
    assert (entry.outcome, entry.cost) == ("refused", Decimal(0))


def test_azure_openai_is_priced_as_genai_prices_prices_it() -> None:
    class FakeAzure(GenericFakeChatModel):
        def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params["ls_provider"] = "azure"
            return params

    ledger = Ledger()
    FakeAzure(messages=iter([ai("ok", "gpt-4o-mini-2024-07-18", 2000, 100)])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    theirs = _their("gpt-4o-mini", "azure", input_tokens=2000, output_tokens=100)
    assert entry.cost == theirs == Decimal("0.00036")


def test_an_openai_fine_tune_name_with_colons_is_priced() -> None:
    name = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    ledger = Ledger()
    FakeOpenAIChat(messages=iter([ai("ok", name, 2000, 100)])).invoke(
        "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    (entry,) = ledger.entries()
    assert entry.model == "openai:" + name
    assert entry.cost == _their(name, input_tokens=2000, output_tokens=100) == Decimal("0.00072")


@pytest.mark.parametrize("mapped", ["gpt-4o-mini", "openai:gpt-4o-mini"])
def test_model_ids_may_map_to_genai_prices_ids(mapped: str) -> None:
    ledger = Ledger()
    handler = LedgerCallbackHandler(ledger, model_ids={"my-gpt-alias": mapped})
    FakeOpenAIChat(messages=iter([ai("ok", "my-gpt-alias", 2000, 100)])).invoke(
        "q", config={"callbacks": [handler]}
    )
    (entry,) = ledger.entries()
    assert entry.model == "openai:gpt-4o-mini"
    assert entry.cost == Decimal("0.00036")


MALFORMED: dict[str, dict[str, Any]] = {
    "text counts": {"input_tokens": "12k", "output_tokens": 10},
    "fractional counts": {"input_tokens": 1000.9, "output_tokens": 10},
    "none counts": {"input_tokens": None, "output_tokens": None, "input_token_details": None},
    "missing input": {"output_tokens": 10},
    "negative output": {"input_tokens": 100, "output_tokens": -10},
    "negative cache read": {
        "input_tokens": 100,
        "output_tokens": 10,
        "input_token_details": {"cache_read": -5},
    },
    "details a list": {"input_tokens": 100, "output_tokens": 1, "input_token_details": [1, 2]},
    "booleans": {"input_tokens": True, "output_tokens": False},
    "beyond any model": {"input_tokens": 10**12 + 1, "output_tokens": 1},
    "emoji": {"input_tokens": "🙂", "output_tokens": "\ud800"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_usage_is_recorded_as_unknown_and_never_raised(name: str) -> None:
    reply = AIMessage("ok", response_metadata={"model_name": "us." + SONNET3})
    reply.usage_metadata = MALFORMED[name]  # type: ignore[assignment]  # as a rebuilt reply may
    ledger = Ledger()
    answer = GenericFakeChatModel(messages=iter([reply])).invoke(
        "hi", config={"callbacks": [LedgerCallbackHandler(ledger)]}
    )
    assert answer.content == "ok"
    (entry,) = ledger.entries()
    assert (entry.outcome, entry.usage, entry.cost) == ("answered", None, None)
    assert "malformed" in entry.note or "inconsistent" in entry.note


def test_whole_number_floats_are_counts() -> None:
    reply = ai("ok", SONNET3, 0, 0)
    reply.usage_metadata = {"input_tokens": 1000.0, "output_tokens": 0}  # type: ignore[typeddict-item]
    ledger = Ledger()
    GenericFakeChatModel(messages=iter([reply])).invoke(
        "hi", config={"callbacks": [LedgerCallbackHandler(ledger, SEED)]}
    )
    assert ledger.entries()[0].cost == Decimal("0.003")


def test_the_handler_prices_time_of_day_models_at_the_calls_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime

    import chainkit.interop

    class FakeDeepSeek(GenericFakeChatModel):
        def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params["ls_provider"] = "deepseek"
            return params

    costs = []
    for hour in (2, 18):
        at = datetime.now(UTC).replace(hour=hour, minute=0)
        monkeypatch.setattr(chainkit.interop, "_now", lambda at=at: at)
        ledger = Ledger()
        FakeDeepSeek(messages=iter([ai("ok", "deepseek-chat", 1_000_000, 1_000_000)])).invoke(
            "q", config={"callbacks": [LedgerCallbackHandler(ledger)]}
        )
        costs.append(ledger.entries()[0].cost)
    # 0.27 + 1.10 at the 00:30-16:30 UTC price, 0.135 + 0.55 off-peak.
    assert costs == [Decimal("1.37"), Decimal("0.685")]
