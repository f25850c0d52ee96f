from decimal import Decimal

import pytest

from chainkit import (
    BadResponse,
    Budget,
    BudgetExceeded,
    Catalogue,
    ConfigError,
    Generate,
    Ledger,
    OfflineModel,
    Prompt,
    ProviderError,
    Request,
    ScriptedModel,
    Throttled,
    Usage,
)
from chainkit.stages.calling import ModelCall

SEED = Catalogue.load("seed-2024")
PROMPT = Prompt("Answer.", "Where is my order?")


def raising(error: Exception) -> ScriptedModel:
    """A model that is called (it remembers the prompt) and then fails with ``error``."""

    def reply(prompt: Prompt) -> str:
        raise error

    return ScriptedModel(model_id="generic.powerful", reply=reply, usage=Usage(50, 50))


def call(model: ScriptedModel, ledger: Ledger, **kwargs: object) -> ModelCall:
    return ModelCall(
        stage="generate",
        model=model,
        catalogue=SEED,
        prompt=PROMPT,
        max_tokens=50,
        request=Request("Where is my order?", id="r1", intent="track_order", tags={"t": "a"}),
        ledger=ledger,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_successful_call_records_the_stage_outcome_once() -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50))
    ledger = Ledger()
    c = call(model, ledger, phase="setup")

    with c as completion:
        assert completion.text == "ok"
        assert c.cost == Decimal("0.006")
        c.record("passed", intent="other")

    [entry] = ledger.entries()
    assert (entry.stage, entry.outcome, entry.phase) == ("generate", "passed", "setup")
    assert entry.cost == Decimal("0.006")
    assert entry.usage == Usage(50, 50)
    assert entry.intent == "other"
    assert dict(entry.tags) == {"t": "a"}
    assert model.prompts == [PROMPT]


def test_record_twice_or_outside_the_block_is_a_mistake() -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50))
    ledger = Ledger()
    c = call(model, ledger)

    with pytest.raises(RuntimeError):
        c.record("answered")
    with c:
        c.record("answered")
        with pytest.raises(RuntimeError):
            c.record("answered")

    assert [e.outcome for e in ledger] == ["answered"]


def test_a_throttled_call_records_a_free_failed_entry() -> None:
    model = raising(Throttled("ThrottlingException on generic.powerful", attempts=3))
    ledger = Ledger()

    with pytest.raises(Throttled), call(model, ledger) as _:
        pytest.fail("the block must not run when the call failed")

    assert len(model.prompts) == 1
    [entry] = ledger.entries()
    assert entry.outcome == "failed"
    assert entry.cost == Decimal(0)
    assert entry.usage is None
    assert entry.model == "generic.powerful"
    assert entry.attempts == 3
    assert entry.intent == "track_order"
    assert ledger.cost == Decimal(0)


def test_a_provider_error_records_an_unknown_cost() -> None:
    model = raising(ProviderError("ServiceUnavailable on generic.powerful"))
    ledger = Ledger()

    with pytest.raises(ProviderError), call(model, ledger):
        pass

    [entry] = ledger.entries()
    assert entry.outcome == "failed"
    assert entry.cost is None
    assert entry.attempts == 1
    assert ledger.cost is None


def test_a_bad_response_through_generate_records_an_unknown_cost() -> None:
    model = raising(BadResponse("no usage in the reply"))
    ledger = Ledger()
    stage = Generate(model=model, max_tokens=50, catalogue=SEED)

    with pytest.raises(BadResponse):
        stage.run(Request("hi", id="r1"), ledger)

    assert [(e.stage, e.outcome, e.cost) for e in ledger] == [("generate", "failed", None)]


def test_a_throttled_call_gives_its_budget_hold_back() -> None:
    budget = Budget(Decimal("0.006"))
    ledger = Ledger(budgets=[budget])

    with pytest.raises(Throttled), call(raising(Throttled("slow down")), ledger):
        pass
    ok = call(ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50)), ledger)
    with ok:
        ok.record("answered")

    assert [(e.outcome, e.cost) for e in ledger] == [
        ("failed", Decimal(0)),
        ("answered", Decimal("0.006")),
    ]
    assert ledger.spent(budget) == Decimal("0.006")


def test_an_error_after_the_call_records_failed_with_the_real_cost() -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50))
    budget = Budget(Decimal("1"))
    ledger = Ledger(budgets=[budget])

    with pytest.raises(ValueError, match="cannot parse"), call(model, ledger):
        raise ValueError("cannot parse the reply")

    [entry] = ledger.entries()
    assert entry.outcome == "failed"
    assert entry.cost == Decimal("0.006")
    assert entry.usage == Usage(50, 50)
    assert ledger.spent(budget) == Decimal("0.006")


def test_a_prompt_that_does_not_fit_the_context_window_fails_before_any_call() -> None:
    # davinci has a context window of 2049 tokens in seed-2024.
    model = ScriptedModel(model_id="davinci", reply="x", usage=Usage(2_000, 10))
    ledger = Ledger()
    stage = Generate(model=model, max_tokens=100, catalogue=SEED)

    with pytest.raises(ConfigError, match="2049") as info:
        stage.run(Request("long", id="r1"), ledger)

    assert "davinci" in str(info.value)
    assert model.prompts == []
    assert ledger.cost == Decimal(0)
    assert all(e.outcome != "answered" for e in ledger)


def test_the_context_window_check_counts_the_offline_prompt() -> None:
    ledger = Ledger()
    stage = Generate(
        model=OfflineModel(model_id="davinci"), system="Answer.", max_tokens=100, catalogue=SEED
    )

    with pytest.raises(ConfigError, match="context window"):
        stage.run(Request("Read this.", id="r1", document="word " * 1_600), ledger)

    assert ledger.cost == Decimal(0)
    assert all(e.outcome != "answered" for e in ledger)


def test_a_prompt_that_exactly_fills_the_context_window_is_allowed() -> None:
    model = ScriptedModel(model_id="davinci", reply="x", usage=Usage(1_949, 10))
    ledger = Ledger()

    Generate(model=model, max_tokens=100, catalogue=SEED).run(Request("x", id="r1"), ledger)

    assert len(model.prompts) == 1
    assert [e.outcome for e in ledger] == ["answered"]


def test_a_refused_call_is_recorded_and_not_made() -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50))
    ledger = Ledger(budgets=[Budget(Decimal("0.0059"))])

    # Scripted usage is an exact count: 50 in + 50 out at $60 per 1M = $0.006, over $0.0059.
    with pytest.raises(BudgetExceeded, match=r"needs up to \$0\.006 "), call(model, ledger):
        pass

    assert model.prompts == []
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.usage) == ("refused", Decimal(0), None)
    assert entry.estimated is True


def test_an_unexpected_model_exception_is_recorded_and_releases_its_hold() -> None:
    # A transport may raise something other than a ProviderError (a bug, an unmapped SDK error).
    # Its spend must not go unrecorded, and recording the failure settles the budget hold.
    ledger = Ledger(budgets=[Budget(Decimal("0.012"))])

    failing = call(raising(RuntimeError("socket closed")), ledger)
    with pytest.raises(BadResponse, match="raised RuntimeError") as info, failing:
        pass
    assert isinstance(info.value.__cause__, RuntimeError)

    assert [(e.outcome, e.model) for e in ledger] == [("failed", "generic.powerful")]


def test_a_tag_named_like_a_chainkit_metadata_key_is_refused_before_any_call() -> None:
    # Overwritten, the tag would silently disagree with the ledger; it is refused instead.
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(5, 5))
    ledger = Ledger(budgets=[Budget(Decimal(1))])
    for key in ("stage", "request_id"):
        with pytest.raises(ConfigError, match=rf"tag named '{key}'.*Rename the tag\.$"):
            Generate(model=model, max_tokens=10, catalogue=SEED).run(
                Request("q", id="r1", tags={key: "x"}), ledger
            )
    assert model.prompts == []
    assert [(e.outcome, e.cost) for e in ledger.entries()] == [("refused", Decimal(0))] * 2
    assert ledger.cost == Decimal(0)


class _Picky(ScriptedModel):
    """A model whose provider refuses some metadata before sending anything."""

    def check_metadata(self, metadata: object) -> None:
        raise ConfigError("tenant too long for the provider; shorten it.")


def test_metadata_the_model_refuses_is_a_refused_call_at_no_cost() -> None:
    model = _Picky(model_id="generic.powerful", reply="ok", usage=Usage(5, 5))
    ledger = Ledger(budgets=[Budget(Decimal(1), name="all")])

    with pytest.raises(ConfigError, match="tenant too long"), call(model, ledger):
        pass

    assert model.prompts == []
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.usage) == ("refused", Decimal(0), None)
    assert entry.note == (
        "metadata refused: ConfigError: tenant too long for the provider; shorten it."
    )
    assert ledger.spent("all") == Decimal(0)
