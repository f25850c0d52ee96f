import itertools
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import Catalogue, ConfigError, Ledger, Request, Usage, count_tokens
from chainkit.stages.compress import Compress, compress

SEED = Catalogue.load("seed-2024")
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
CLAUDE = "anthropic.claude-v2"  # counted by the 4-characters-per-token estimator

MEETING = "\n".join(
    [
        "Project Manager: Um, okay, so {disfmarker} so welcome to the {vocalsound} kick-off.",
        "Marketing: Mm-hmm.",
        "Project Manager: Today we decide the budget for the new remote control.",
        "Industrial Designer: Yeah.",
        "Industrial Designer: I I I think the remote should have a rubber case. [laughter]",
        "Marketing: Okay.",
        "Marketing: Uh, our research says users lose their remote control all the time.",
        "Marketing: Our research says users lose their remote control all the time.",
        "User Interface: The buttons should be large, and the {disfmarker} er the menu simple.",
        "Project Manager: The selling price is twenty five euros, and the cost limit is twelve.",
        "Industrial Designer: A kinetic battery would avoid replacing batteries. {pause}",
        "User Interface: Hmm. Speech recognition might help users find a lost remote.",
        "Project Manager: Right. We meet again in thirty minutes to pick the components.",
    ]
)
LABELS = {"Project Manager", "Marketing", "Industrial Designer", "User Interface"}

PROSE = (
    "Web Counts As A Baseline\n\n"
    "1 Introduction\nWeb counts correlate with corpus frequencies. They also predict human "
    "plausibility judgements. We test them on six tasks.\n\n"
    "2 Method\nWe query a search engine for n-gram counts. Counts are smoothed with add-one. "
    "The model picks the candidate with the highest count.\n\n"
    "3 Results\nWeb models beat corpus models on most tasks. They rarely beat supervised models. "
    "Web counts are therefore a baseline."
)


def sentences(text: str) -> list[str]:
    body = [line.split(": ", 1)[-1] for line in text.splitlines() if line.strip()]
    return [s for line in body for s in re.split(r"(?<=[.?!])\s+", line) if s]


def test_markers_are_stripped() -> None:
    out = compress(MEETING + "\nMarketing: Fine {gap} by me {comment} {nonvocalsound}.", 10_000)
    assert not re.search(r"\{\w+\}|\[laughter\]", out)
    assert "Fine by me." in out


def test_disfluencies_and_stutters_are_removed() -> None:
    out = compress(MEETING, 10_000)
    assert "Industrial Designer: I think the remote should have a rubber case." in out
    assert "Marketing: our research says users lose their remote control all the time." in out
    assert "the menu simple" in out
    assert not re.search(r"\b(um|uh|er|hmm)\b", out, re.IGNORECASE)
    assert "so so" not in out.lower()


def test_repeats_collapse_to_one_and_contentless_turns_go() -> None:
    out = compress(MEETING, 10_000)
    assert out.lower().count("users lose their remote control") == 1
    lines = out.splitlines()
    assert not any(line.endswith((": Mm-hmm.", ": Yeah.", ": Okay.", ": Right.")) for line in lines)
    assert len(lines) == 9  # 13 turns less the three backchannels and the repeated one


def test_near_identical_sentences_collapse() -> None:
    doc = (
        "A: The launch moves to the second week of March because of the audit.\n"
        "B: The launch moves to the second week in March because of the audit.\n"
        "C: Marketing needs the final price list by Friday."
    )
    out = compress(doc, 10_000)
    assert out.count("launch moves") == 1
    assert out.splitlines()[-1] == "C: Marketing needs the final price list by Friday."


@pytest.mark.parametrize("model_id", [MIXTRAL, CLAUDE, ""])
@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 13, 21, 40, 60, 100])
def test_the_budget_is_never_exceeded(model_id: str, budget: int) -> None:
    for doc in (MEETING, PROSE):
        out = compress(doc, budget, model_id)
        assert count_tokens(out, model_id) <= budget
        assert out or budget < 3


@pytest.mark.parametrize("budget", [1, 4, 7])
def test_a_budget_below_one_sentence_keeps_the_start_of_one(budget: int) -> None:
    out = compress(MEETING, budget, MIXTRAL)
    assert out and count_tokens(out, MIXTRAL) <= budget
    cleaned = compress(MEETING, 10_000, MIXTRAL).splitlines()
    assert any(line.startswith(out) or line.split(": ", 1)[1].startswith(out) for line in cleaned)


def test_a_document_within_budget_comes_back_cleaned_not_truncated() -> None:
    cleaned = compress(MEETING, 10_000, MIXTRAL)
    assert compress(MEETING, count_tokens(cleaned, MIXTRAL), MIXTRAL) == cleaned
    assert compress("The plan is final.", 50) == "The plan is final."


@pytest.mark.parametrize("budget", [20, 40, 70])
def test_order_and_speaker_labels_are_kept(budget: int) -> None:
    full = sentences(compress(MEETING, 10_000, MIXTRAL))
    out = compress(MEETING, budget, MIXTRAL)
    kept = sentences(out)
    assert 0 < len(kept) < len(full)
    positions = [full.index(s) for s in kept]
    assert positions == sorted(positions)
    for line in out.splitlines():
        label, _, body = line.partition(": ")
        assert label in LABELS and body


def test_prose_keeps_paragraphs_apart() -> None:
    cleaned = compress(PROSE, 10_000)
    assert cleaned == PROSE
    out = compress(PROSE, 45)
    assert count_tokens(out) <= 45
    assert "\n\n" in out
    positions = [PROSE.index(s) for s in sentences(out)]
    assert positions == sorted(positions)


def test_the_entry_records_tokens_read_and_written_and_the_input_cost_avoided() -> None:
    ledger = Ledger()
    request = Request("Summarise.", id="r1", document=MEETING, intent="summary", tags={"t": "a"})
    stage = Compress(budget=0.33, priced_as=MIXTRAL, catalogue=SEED)

    out = stage.run(request, ledger)

    tokens_in, tokens_out = count_tokens(MEETING, MIXTRAL), count_tokens(out.document, MIXTRAL)
    assert tokens_out <= int(0.33 * tokens_in) < tokens_in
    assert (out.id, out.text, out.intent) == ("r1", "Summarise.", "summary")
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "compress"
    assert entry.outcome == "passed"
    assert entry.model is None
    assert entry.cost == Decimal(0)
    assert entry.usage == Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    # Mixtral reads input at $0.00045 per 1K tokens in the seed catalogue.
    assert entry.avoided_cost == Decimal(tokens_in - tokens_out) * Decimal("0.00045") / 1000
    assert entry.estimated is False
    assert entry.intent == "summary"
    assert dict(entry.tags) == {"t": "a"}
    assert entry.latency_s > 0


def test_an_estimated_model_marks_the_entry_estimated() -> None:
    ledger = Ledger()
    out = Compress(budget=30, priced_as=CLAUDE, catalogue=SEED).run(
        Request("Summarise.", document=MEETING), ledger
    )
    [entry] = ledger.entries()
    assert entry.estimated is True
    assert entry.usage == Usage(count_tokens(MEETING), count_tokens(out.document or ""))
    assert count_tokens(out.document or "") <= 30


def test_without_a_document_the_request_passes_unchanged_with_a_free_entry() -> None:
    ledger = Ledger()
    request = Request("hi", id="r2", intent="greeting", tags={"t": "a"})

    out = Compress(budget=100, priced_as=MIXTRAL, catalogue=SEED).run(request, ledger)

    assert out is request
    [entry] = ledger.entries()
    assert (entry.request_id, entry.stage, entry.outcome) == ("r2", "compress", "passed")
    assert entry.cost == Decimal(0)
    assert entry.avoided_cost == Decimal(0)
    assert entry.usage is None and entry.model is None
    assert entry.intent == "greeting"
    assert dict(entry.tags) == {"t": "a"}


@pytest.mark.parametrize("budget", [0, -5, 0.0, 1.0, 1.5, -0.2, True, "100", None])
def test_a_bad_budget_is_a_config_error(budget: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        Compress(budget=budget, priced_as=MIXTRAL, catalogue=SEED)  # type: ignore[arg-type]


def test_an_unknown_priced_as_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mixtral-9x7b"):
        Compress(budget=100, priced_as="mistral.mixtral-9x7b", catalogue=SEED)


def test_compress_is_deterministic() -> None:
    runs = {compress(MEETING + "\n" + MEETING.upper(), 60, MIXTRAL) for _ in range(3)}
    assert len(runs) == 1


def test_on_real_meetings_a_third_of_the_tokens_keeps_most_of_the_rouge1_recall(
    shared_data: Path,
) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    path = shared_data / "qmsum" / "qmsum_meetings.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(encoding="utf-8") as f:
        meetings = [json.loads(line) for line in itertools.islice(f, 5)]
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    kept = []
    for meeting in meetings:
        document = meeting["document"]
        budget = int(0.33 * count_tokens(document, MIXTRAL))
        out = compress(document, budget, MIXTRAL)
        assert count_tokens(out, MIXTRAL) <= budget
        full = scorer.score(meeting["summary"], document)["rouge1"].recall
        kept.append(scorer.score(meeting["summary"], out)["rouge1"].recall / full)
    assert sum(kept) / len(kept) >= 0.85
