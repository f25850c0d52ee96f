import re
from decimal import Decimal

import pytest

from chainkit import (
    Catalogue,
    ConfigError,
    Generate,
    Ledger,
    OfflineModel,
    Pipeline,
    Request,
    ScriptedModel,
    Summarise,
    Usage,
    count_tokens,
)

SEED = Catalogue.load("seed-2024")
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
DOCUMENT = "The board met on Monday. Revenue rose 4%. Hiring is frozen until March."


def mixtral(reply: str = "Revenue rose 4%.") -> ScriptedModel:
    return ScriptedModel(model_id=MIXTRAL, reply=reply, usage=Usage(10_000, 500))


def test_without_a_document_summarise_passes_with_one_free_entry() -> None:
    model = mixtral()
    ledger = Ledger()
    request = Request("What happened?", id="r1", intent="ask", tags={"tenant": "acme"})

    out = Summarise(model=model, catalogue=SEED).run(request, ledger)

    assert out is request
    assert model.prompts == []
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "summarise"
    assert entry.outcome == "passed"
    assert entry.cost == Decimal(0)
    assert entry.model is None and entry.usage is None
    assert entry.intent == "ask"
    assert dict(entry.tags) == {"tenant": "acme"}


def test_with_a_document_summarise_asks_the_model_and_prices_the_call() -> None:
    model = mixtral()
    ledger = Ledger()
    request = Request("Report on this.", id="r1", document=DOCUMENT, tags={"variant": "chained"})

    out = Summarise(model=model, max_tokens=500, catalogue=SEED).run(request, ledger)

    assert out.summary == "Revenue rose 4%."
    assert (out.id, out.text, out.document) == ("r1", "Report on this.", DOCUMENT)
    [prompt] = model.prompts
    assert prompt.user == DOCUMENT
    assert "at most 500 tokens" in prompt.system
    [entry] = ledger.entries()
    assert entry.stage == "summarise"
    assert entry.outcome == "passed"
    assert entry.model == MIXTRAL
    assert entry.usage == Usage(10_000, 500)
    # 10K input tokens at $0.00045 per 1K plus 500 output tokens at $0.0007 per 1K.
    assert entry.cost == Decimal("0.00485")
    assert entry.attempts == 1
    assert dict(entry.tags) == {"variant": "chained"}


def test_generate_after_summarise_reads_the_summary_not_the_document() -> None:
    summariser = mixtral()
    writer = ScriptedModel(model_id=SONNET, reply="report", usage=Usage(500, 1_000))
    chained = Pipeline(
        [
            Summarise(model=summariser, max_tokens=500, catalogue=SEED),
            Generate(model=writer, max_tokens=1_000, catalogue=SEED),
        ]
    )
    ledger = Ledger()

    result = chained.run(Request("Report on this.", id="r1", document=DOCUMENT), ledger)

    assert (result.text, result.stage, result.model) == ("report", "generate", SONNET)
    [prompt] = writer.prompts
    assert "Summary:\nRevenue rose 4%." in prompt.user
    assert DOCUMENT not in prompt.user
    assert [(e.stage, e.cost) for e in ledger] == [
        ("summarise", Decimal("0.00485")),
        ("generate", Decimal("0.0165")),
    ]
    assert ledger.cost == Decimal("0.02135")


def test_summarise_over_the_offline_mistral_model_counts_exactly() -> None:
    model = OfflineModel(model_id=MIXTRAL)
    stage = Summarise(model=model, max_tokens=20, catalogue=SEED)
    ledger = Ledger()

    out = stage.run(Request("Report.", id="r1", document=DOCUMENT), ledger)

    assert out.summary
    assert all(s in DOCUMENT for s in re.split(r"(?<=[.!?])\s+", out.summary))
    [entry] = ledger.entries()
    assert entry.estimated is False
    prompt = stage.prompt(DOCUMENT)
    assert entry.usage == Usage(
        count_tokens(prompt.system, MIXTRAL) + count_tokens(DOCUMENT, MIXTRAL),
        count_tokens(out.summary, MIXTRAL),
    )
    assert entry.usage.output_tokens <= 20


def test_summarise_rejects_a_bad_max_tokens_and_an_unpriced_model() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        Summarise(model=mixtral(), max_tokens=0, catalogue=SEED)
    with pytest.raises(ConfigError, match="summarise"):
        Summarise(model=ScriptedModel(model_id="mixtral-9x9"), catalogue=SEED)
