import chainkit.finops


def test_finops_exports_exactly_its_public_api() -> None:
    assert chainkit.finops.__all__ == sorted(chainkit.finops.__all__)
    assert set(chainkit.finops.__all__) >= {
        "Allocation",
        "AllocationRow",
        "Anomaly",
        "Band",
        "Forecast",
        "Injection",
        "Thresholds",
        "Traffic",
        "allocate",
        "anomalies_of",
        "backtest",
        "detect",
        "forecast",
        "forecast_budgets",
        "forecast_by",
        "forecast_series",
        "recorded",
        "score_detections",
        "synthetic_entries",
        "times_in_day",
    }
    for name in chainkit.finops.__all__:
        assert getattr(chainkit.finops, name).__doc__, name
