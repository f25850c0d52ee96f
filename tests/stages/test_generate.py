from decimal import Decimal

import pytest

from chainkit import (
    Budget,
    BudgetExceeded,
    Catalogue,
    ConfigError,
    Generate,
    Ledger,
    OfflineModel,
    Prompt,
    Request,
    ScriptedModel,
    Usage,
)

SEED = Catalogue.load("seed-2024")


def powerful() -> ScriptedModel:
    return ScriptedModel(
        model_id="generic.powerful", reply="Your order ships today.", usage=Usage(50, 50)
    )


def test_generate_answers_with_one_priced_entry() -> None:
    model = powerful()
    ledger = Ledger()
    request = Request("Where is my order?", id="r1", intent="track_order", tags={"tenant": "acme"})

    result = Generate(model=model, max_tokens=50, catalogue=SEED).run(request, ledger)

    assert (result.text, result.stage, result.model) == (
        "Your order ships today.",
        "generate",
        "generic.powerful",
    )
    assert result.request is request
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "generate"
    assert entry.outcome == "answered"
    assert entry.model == "generic.powerful"
    assert entry.usage == Usage(50, 50)
    # 100 tokens at $0.06 per 1K.
    assert entry.cost == Decimal("0.006")
    assert entry.avoided_cost == Decimal(0)
    assert entry.intent == "track_order"
    assert entry.attempts == 1
    assert entry.estimated is False
    assert dict(entry.tags) == {"tenant": "acme"}
    assert entry.phase == "serve"


def test_generate_prompt_has_facts_then_summary_then_the_ask() -> None:
    model = powerful()
    stage = Generate(model=model, system="Be brief.", catalogue=SEED)

    stage.run(
        Request(
            "Where is it?",
            id="r1",
            facts=("order 10234 shipped", "carrier: DPD"),
            summary="Customer waits for a parcel.",
            document="the long thread",
        ),
        Ledger(),
    )

    assert model.prompts == [
        Prompt(
            "Be brief.",
            "Facts:\n- order 10234 shipped\n- carrier: DPD\n\n"
            "Summary:\nCustomer waits for a parcel.\n\nWhere is it?",
        )
    ]


def test_generate_reads_the_document_when_there_is_no_summary() -> None:
    model = powerful()

    Generate(model=model, catalogue=SEED).run(
        Request("Summarise it.", id="r1", document="Revenue rose."), Ledger()
    )

    assert model.prompts[0].user == "Document:\nRevenue rose.\n\nSummarise it."


def test_estimate_cost_uses_the_typical_output_length() -> None:
    stage = Generate(
        model=OfflineModel(model_id="generic.powerful"),
        system="Answer.",
        max_tokens=300,
        typical_output_tokens=100,
        catalogue=SEED,
    )
    default = Generate(
        model=OfflineModel(model_id="generic.powerful"),
        system="Answer.",
        max_tokens=300,
        catalogue=SEED,
    )

    # 2 + 2 input tokens (4 characters a token) plus the output length, at $0.06 per 1K.
    assert stage.estimate_cost(Request("hello")) == Decimal("0.00624")
    assert default.estimate_cost(Request("hello")) == Decimal("0.01824")


def test_generate_with_an_unknown_model_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"generic\.powerfull") as info:
        Generate(model=ScriptedModel(model_id="generic.powerfull"), catalogue=SEED)
    # The message names the closest known ids.
    assert "Closest: generic.powerful" in str(info.value)


def test_generate_defaults_to_the_current_catalogue() -> None:
    with pytest.raises(ConfigError, match="bedrock-2026-11"):
        Generate(model=powerful())
    Generate(model=OfflineModel(model_id="amazon.nova-micro-v1:0"))


def test_generate_rejects_a_max_tokens_below_one() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        Generate(model=powerful(), max_tokens=0, catalogue=SEED)


def test_a_budget_below_the_estimate_refuses_before_the_call() -> None:
    model = powerful()
    ledger = Ledger(budgets=[Budget(Decimal("0.005"), name="support-bot")])
    stage = Generate(model=model, max_tokens=50, catalogue=SEED)

    with pytest.raises(BudgetExceeded, match="support-bot") as info:
        stage.run(Request("Where is my order?", id="r1", tags={"tenant": "acme"}), ledger)

    assert "generate" in str(info.value)
    assert model.prompts == []
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "generate"
    assert entry.outcome == "refused"
    assert entry.cost == Decimal(0)
    assert entry.model == "generic.powerful"
    assert entry.usage is None
    assert dict(entry.tags) == {"tenant": "acme"}


def test_a_budget_is_checked_against_the_worst_case_estimate() -> None:
    # The offline reply would be a few tokens, but the bound assumes all 1,000 output tokens and,
    # with no exact count, one token per byte of the prompt plus 32 per message and 32 per call:
    # (7 + 2 + 2 x 32 + 32) + 1,000 = 1,105 tokens at $60 per 1M is $0.0663, over $0.01.
    ledger = Ledger(budgets=[Budget(Decimal("0.01"))])
    stage = Generate(
        model=OfflineModel(model_id="generic.powerful"),
        system="Answer.",
        max_tokens=1_000,
        catalogue=SEED,
    )

    with pytest.raises(BudgetExceeded, match=r"needs up to \$0\.0663 "):
        stage.run(Request("hi", id="r1"), ledger)

    assert [(e.outcome, e.cost) for e in ledger] == [("refused", Decimal(0))]


def test_a_budget_allows_calls_up_to_its_limit_exactly() -> None:
    model = powerful()
    budget = Budget(Decimal("0.012"))
    ledger = Ledger(budgets=[budget])
    stage = Generate(model=model, max_tokens=50, catalogue=SEED)

    stage.run(Request("one", id="r1"), ledger)
    stage.run(Request("two", id="r2"), ledger)
    with pytest.raises(BudgetExceeded):
        stage.run(Request("three", id="r3"), ledger)

    assert len(model.prompts) == 2
    assert [e.outcome for e in ledger] == ["answered", "answered", "refused"]
    assert ledger.spent(budget) == Decimal("0.012")


def test_a_tagged_budget_only_limits_its_tag() -> None:
    model = powerful()
    ledger = Ledger(budgets=[Budget(Decimal(0), name="acme", tag=("tenant", "acme"))])
    stage = Generate(model=model, max_tokens=50, catalogue=SEED)

    stage.run(Request("hi", id="other", tags={"tenant": "globex"}), ledger)
    with pytest.raises(BudgetExceeded, match="acme"):
        stage.run(Request("hi", id="acme", tags={"tenant": "acme"}), ledger)

    assert len(model.prompts) == 1
    assert [(e.request_id, e.outcome) for e in ledger] == [
        ("other", "answered"),
        ("acme", "refused"),
    ]
