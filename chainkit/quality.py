"""Quality of a routing pipeline against the truth: is the cheap path answering correctly?

>>> from decimal import Decimal
>>> from chainkit import Entry
>>> def entry(rid, stage, outcome):
...     return Entry(rid, stage, outcome, cost=Decimal(0), intent="greeting")
>>> steps = [("intent_scan", "passed"), ("canned", "answered")]
>>> entries = [entry(rid, stage, outcome) for rid in "ab" for stage, outcome in steps]
>>> q = intent_quality(entries, {"a": "greeting", "b": "oos"})
>>> q.intent_accuracy, q.oos_recall, q.wrong_early_rate
(1.0, 0.0, 0.5)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from chainkit.errors import ConfigError
from chainkit.records import Entry

__all__ = ["IntentQuality", "intent_quality", "rouge"]


@dataclass(frozen=True, slots=True)
class IntentQuality:
    """How a variant labelled and answered labelled traffic.

    ``intent_accuracy``: share of in-scope requests whose predicted intent was right (an in-scope
    request refused as out of scope, or left unlabelled, counts as wrong). ``oos_recall``: share
    of out-of-scope requests labelled out of scope. ``wrong_early_rate``: share of all requests
    answered by a free early stage (canned, precomputed) for an intent that was not theirs.
    ``None`` where the variant predicts no intents, or there is nothing of that kind to score.
    """

    requests: int
    in_scope: int
    out_of_scope: int
    intent_accuracy: float | None
    oos_recall: float | None
    wrong_early: int
    wrong_early_rate: float

    def to_dict(self) -> dict[str, Any]:
        """As a plain dict, for JSON."""
        return asdict(self)


def intent_quality(
    entries: Iterable[Entry],
    truth: Mapping[str, str],
    *,
    out_of_scope: str = "oos",
    intent_stage: str = "intent_scan",
    early_stages: tuple[str, ...] = ("canned", "precomputed"),
) -> IntentQuality:
    """Score the entries of one variant against ``truth`` (request id to true intent)."""
    predicted: dict[str, str | None] = {}
    early: dict[str, str | None] = {}
    for e in entries:
        if e.phase != "serve" or e.request_id not in truth:
            continue
        if e.stage == intent_stage:
            predicted[e.request_id] = e.intent
        elif e.stage in early_stages and e.outcome == "answered":
            early[e.request_id] = e.intent
    requests = len(truth)
    in_scope = [rid for rid, label in truth.items() if label != out_of_scope]
    oos = [rid for rid, label in truth.items() if label == out_of_scope]
    accuracy = recall = None
    if predicted and in_scope:
        accuracy = sum(predicted.get(r) == truth[r] for r in in_scope) / len(in_scope)
    if predicted and oos:
        recall = sum(predicted.get(r) == out_of_scope for r in oos) / len(oos)
    wrong = sum(1 for rid, intent in early.items() if intent != truth[rid])
    return IntentQuality(
        requests=requests,
        in_scope=len(in_scope),
        out_of_scope=len(oos),
        intent_accuracy=accuracy,
        oos_recall=recall,
        wrong_early=wrong,
        wrong_early_rate=wrong / requests if requests else 0.0,
    )


@functools.cache
def _scorer(metrics: tuple[str, ...]) -> Any:
    # rouge-score is Google's reference implementation; imported lazily as an optional extra.
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ConfigError(
            "ROUGE needs rouge-score, which is not installed: pip install 'chainkit[rouge]'."
        ) from exc

    return rouge_scorer.RougeScorer(list(metrics), use_stemmer=True)


def rouge(
    candidate: str, reference: str, metrics: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
) -> dict[str, float]:
    """ROUGE recall and F1 of ``candidate`` against ``reference`` (``rouge-score``).

    ROUGE-L is quadratic in length: score a whole 30K-token document with ``("rouge1",)``.
    Needs ``pip install 'chainkit[rouge]'``.
    """
    scores = _scorer(metrics).score(reference, candidate)
    out: dict[str, float] = {}
    for name, score in scores.items():
        out[f"{name}_recall"] = float(score.recall)
        out[f"{name}_f"] = float(score.fmeasure)
    return out
