"""chainkit: LLM pipelines that cost as little as they can, with a ledger of every token.

>>> from chainkit import Canned, Generate, IntentScan, KeywordClassifier, Ledger, OfflineModel
>>> from chainkit import Pipeline, Request
>>> bot = Pipeline([
...     IntentScan(classifier=KeywordClassifier({"greeting": ["hello", "hi"]})),
...     Canned(replies={"greeting": "Hello! How can I help?"}),
...     Generate(model=OfflineModel(model_id="amazon.nova-micro-v1:0"), max_tokens=200),
... ])
>>> ledger = Ledger()
>>> bot.run(Request("hi there"), ledger).stage
'canned'
>>> [e.stage for e in ledger]
['intent_scan', 'canned']
"""

from chainkit.classify import LocalClassifier
from chainkit.errors import (
    AlreadyAnswered,
    BadResponse,
    BudgetExceeded,
    ChainkitError,
    ConfigError,
    NoAnswer,
    ProviderError,
    Throttled,
)
from chainkit.ledger import Budget, Ledger, PostgresLedger, SQLiteLedger, Totals
from chainkit.pipeline import Answered, Pipeline, Resume, Stage, TextDelta
from chainkit.pricing import Catalogue, ModelCard, Price, Tier
from chainkit.providers import Completion, Model, OfflineModel, Prompt, ScriptedModel
from chainkit.records import Conversation, Entry, Request, Result, Turn, Usage
from chainkit.report import Report
from chainkit.stages import (
    AnswerStore,
    Canned,
    Cascade,
    Classifier,
    Compress,
    FactRule,
    Generate,
    History,
    IntentScan,
    KeywordClassifier,
    LLMClassifier,
    Lookup,
    Precomputed,
    Prediction,
    PromptClassifier,
    ReplyStore,
    SemanticCache,
    Summarise,
    precompute,
)
from chainkit.tokens import count_tokens

__version__ = "0.1.0"

__all__ = [
    "AlreadyAnswered",
    "AnswerStore",
    "Answered",
    "BadResponse",
    "Budget",
    "BudgetExceeded",
    "Canned",
    "Cascade",
    "Catalogue",
    "ChainkitError",
    "Classifier",
    "Completion",
    "Compress",
    "ConfigError",
    "Conversation",
    "Entry",
    "FactRule",
    "Generate",
    "History",
    "IntentScan",
    "KeywordClassifier",
    "LLMClassifier",
    "Ledger",
    "LocalClassifier",
    "Lookup",
    "Model",
    "ModelCard",
    "NoAnswer",
    "OfflineModel",
    "Pipeline",
    "PostgresLedger",
    "Precomputed",
    "Prediction",
    "Price",
    "Prompt",
    "PromptClassifier",
    "ProviderError",
    "ReplyStore",
    "Report",
    "Request",
    "Result",
    "Resume",
    "SQLiteLedger",
    "ScriptedModel",
    "SemanticCache",
    "Stage",
    "Summarise",
    "TextDelta",
    "Throttled",
    "Tier",
    "Totals",
    "Turn",
    "Usage",
    "count_tokens",
    "precompute",
]
