"""FinOps on the ledger: FOCUS export, reconciliation with AWS, metrics, allocation and forecasts.

Every function here reads a ledger (in memory, SQLite or PostgreSQL) through its public reading
API, so the same analysis runs wherever the entries are kept.
"""

__all__: list[str] = []
