"""FinOps on the ledger: FOCUS export, reconciliation with AWS, metrics, allocation and forecasts.

Every function here reads a ledger (in memory, SQLite or PostgreSQL) through its public reading
API, so the same analysis runs wherever the entries are kept.
"""

from chainkit.finops.allocation import Allocation, AllocationRow, allocate
from chainkit.finops.anomalies import (
    Anomaly,
    Thresholds,
    anomalies_of,
    detect,
    recorded,
    score_detections,
)
from chainkit.finops.forecast import (
    Band,
    Forecast,
    backtest,
    forecast,
    forecast_budgets,
    forecast_by,
    forecast_series,
)
from chainkit.finops.simulate import Injection, Traffic, synthetic_entries, times_in_day

__all__: list[str] = [
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
]
