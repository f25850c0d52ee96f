"""Pipeline stages, one module per kind."""

from chainkit.stages.answering import CostEstimator, EarlyAnswer
from chainkit.stages.canned import Canned
from chainkit.stages.compress import Compress
from chainkit.stages.generate import Generate
from chainkit.stages.history import History
from chainkit.stages.intent_scan import (
    Cascade,
    Classifier,
    IntentScan,
    KeywordClassifier,
    LLMClassifier,
    Prediction,
    PromptClassifier,
)
from chainkit.stages.lookup import FactRule, Lookup
from chainkit.stages.precomputed import Precomputed, ReplyStore, precompute
from chainkit.stages.semantic_cache import AnswerStore, SemanticCache
from chainkit.stages.summarise import Summarise

__all__ = [
    "AnswerStore",
    "Canned",
    "Cascade",
    "Classifier",
    "Compress",
    "CostEstimator",
    "EarlyAnswer",
    "FactRule",
    "Generate",
    "History",
    "IntentScan",
    "KeywordClassifier",
    "LLMClassifier",
    "Lookup",
    "Precomputed",
    "Prediction",
    "PromptClassifier",
    "ReplyStore",
    "SemanticCache",
    "Summarise",
    "precompute",
]
