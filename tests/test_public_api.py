import chainkit

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert chainkit.__all__ == EXPECTED
    assert sorted(chainkit.__all__) == chainkit.__all__


def test_every_name_is_importable() -> None:
    for name in chainkit.__all__:
        assert getattr(chainkit, name) is not None


def test_error_tree() -> None:
    assert issubclass(chainkit.ConfigError, chainkit.ChainkitError)
    assert issubclass(chainkit.BudgetExceeded, chainkit.ChainkitError)
    assert issubclass(chainkit.NoAnswer, chainkit.ChainkitError)
    assert issubclass(chainkit.Throttled, chainkit.ProviderError)
    assert issubclass(chainkit.BadResponse, chainkit.ProviderError)
    assert issubclass(chainkit.ProviderError, chainkit.ChainkitError)
