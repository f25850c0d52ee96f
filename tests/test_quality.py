import sys
from decimal import Decimal

import pytest

from chainkit import ConfigError, Entry
from chainkit.quality import IntentQuality, intent_quality, rouge
from chainkit.records import Outcome, Phase


def entry(
    rid: str,
    stage: str,
    outcome: Outcome = "passed",
    intent: str | None = None,
    phase: Phase = "serve",
) -> Entry:
    return Entry(rid, stage, outcome, cost=Decimal(0), intent=intent, phase=phase)


def scan(rid: str, intent: str | None) -> Entry:
    return entry(rid, "intent_scan", intent=intent)


def test_accuracy_counts_in_scope_requests_only_and_recall_out_of_scope_only() -> None:
    truth = {"a": "refund", "b": "track_order", "c": "greeting", "d": "oos", "e": "oos"}
    entries = [
        scan("a", "refund"),
        scan("b", "refund"),
        scan("c", "greeting"),
        scan("d", "oos"),
        scan("e", "greeting"),
    ]

    q = intent_quality(entries, truth)

    assert (q.requests, q.in_scope, q.out_of_scope) == (5, 3, 2)
    assert q.intent_accuracy == 2 / 3
    assert q.oos_recall == 1 / 2
    assert (q.wrong_early, q.wrong_early_rate) == (0, 0.0)


def test_in_scope_requests_refused_unlabelled_or_unscanned_count_as_wrong() -> None:
    truth = {"a": "refund", "b": "refund", "c": "refund", "d": "refund"}
    entries = [scan("a", "refund"), scan("b", "oos"), scan("c", None)]

    q = intent_quality(entries, truth)

    assert q.intent_accuracy == 1 / 4
    # No out-of-scope traffic at all.
    assert q.out_of_scope == 0


def test_wrong_early_answers_count_answered_canned_and_precomputed_entries_only() -> None:
    truth = {"a": "oos", "b": "track_order", "c": "refund", "d": "greeting", "e": "refund"}
    entries = [
        scan("a", "greeting"),
        entry("a", "canned", "answered", "greeting"),  # wrong, answered early
        scan("b", "track_order"),
        entry("b", "canned", "passed", "track_order"),
        entry("b", "precomputed", "answered", "track_order"),  # right
        scan("c", "track_order"),
        entry("c", "canned", "passed", "track_order"),  # wrong, but passed on
        entry("c", "precomputed", "answered", "track_order"),  # wrong, answered early
        scan("d", "refund"),
        entry("d", "lookup", "answered", "refund"),  # not an early stage
        scan("e", "track_order"),
        entry("e", "generate", "answered", "track_order"),  # the model answers: not early
    ]

    q = intent_quality(entries, truth)

    assert q.wrong_early == 2
    # As a share of all five labelled requests, not of the three answered early.
    assert q.wrong_early_rate == 2 / 5
    assert q.intent_accuracy == 1 / 4
    assert q.oos_recall == 0.0


def test_setup_entries_and_requests_outside_the_truth_are_ignored() -> None:
    truth = {"a": "refund", "b": "oos"}
    entries = [
        entry("seed", "precomputed", "answered", "greeting", phase="setup"),
        entry("a", "precomputed", "answered", "greeting", phase="setup"),
        scan("a", "refund"),
        scan("b", "oos"),
        entry("a", "intent_scan", "passed", "greeting", phase="setup"),
        scan("z", "greeting"),
        entry("z", "canned", "answered", "greeting"),
    ]

    q = intent_quality(entries, truth)

    assert (q.requests, q.in_scope, q.out_of_scope) == (2, 1, 1)
    assert (q.intent_accuracy, q.oos_recall) == (1.0, 1.0)
    assert (q.wrong_early, q.wrong_early_rate) == (0, 0.0)


def test_a_variant_without_an_intent_scan_has_no_accuracy_or_recall() -> None:
    truth = {"a": "refund", "b": "oos"}
    entries = [
        entry("a", "generate", "answered"),
        entry("b", "canned", "answered", "greeting"),
    ]

    q = intent_quality(entries, truth)

    assert (q.intent_accuracy, q.oos_recall) == (None, None)
    assert (q.wrong_early, q.wrong_early_rate) == (1, 0.5)


def test_empty_truth_gives_a_zero_rate() -> None:
    q = intent_quality([scan("a", "refund"), entry("a", "canned", "answered", "x")], {})

    assert q == IntentQuality(
        requests=0,
        in_scope=0,
        out_of_scope=0,
        intent_accuracy=None,
        oos_recall=None,
        wrong_early=0,
        wrong_early_rate=0.0,
    )


def test_stage_names_and_the_out_of_scope_label_can_be_chosen() -> None:
    truth = {"a": "refund", "b": "none_of_these"}
    entries = [
        entry("a", "router", intent="refund"),
        entry("b", "router", intent="none_of_these"),
        scan("a", "greeting"),
        entry("b", "faq", "answered", "refund"),
        entry("a", "canned", "answered", "greeting"),
    ]

    q = intent_quality(
        entries,
        truth,
        out_of_scope="none_of_these",
        intent_stage="router",
        early_stages=("faq",),
    )

    assert (q.in_scope, q.out_of_scope) == (1, 1)
    assert (q.intent_accuracy, q.oos_recall) == (1.0, 1.0)
    assert (q.wrong_early, q.wrong_early_rate) == (1, 0.5)


def test_to_dict_is_plain_data() -> None:
    q = intent_quality([scan("a", "refund"), scan("b", "oos")], {"a": "refund", "b": "oos"})

    assert q.to_dict() == {
        "requests": 2,
        "in_scope": 1,
        "out_of_scope": 1,
        "intent_accuracy": 1.0,
        "oos_recall": 1.0,
        "wrong_early": 0,
        "wrong_early_rate": 0.0,
    }


def test_rouge_without_rouge_score_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if not installed
    metrics = ("rougeLsum",)  # a set no other test scored, so nothing is cached

    with pytest.raises(ConfigError, match=r"pip install 'chainkit\[rouge\]'"):
        rouge("a summary", "a reference", metrics)
