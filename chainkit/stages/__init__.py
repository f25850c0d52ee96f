"""Pipeline stages, one module per kind."""

from chainkit.stages.answering import CostEstimator, EarlyAnswer
from chainkit.stages.canned import Canned
from chainkit.stages.generate import Generate
from chainkit.stages.intent_scan import (
    Classifier,
    IntentScan,
    KeywordClassifier,
    LLMClassifier,
    Prediction,
    PromptClassifier,
)
from chainkit.stages.precomputed import Precomputed, ReplyStore, precompute
from chainkit.stages.summarise import Summarise

__all__ = [
    "Canned",
    "Classifier",
    "CostEstimator",
    "EarlyAnswer",
    "Generate",
    "IntentScan",
    "KeywordClassifier",
    "LLMClassifier",
    "Precomputed",
    "Prediction",
    "PromptClassifier",
    "ReplyStore",
    "Summarise",
    "precompute",
]
