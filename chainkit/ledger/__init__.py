"""The ledger: one record of what every stage spent and avoided, and budgets over it.

``Ledger`` keeps entries in memory; ``SQLiteLedger`` keeps them in a file every process on a host
shares; ``PostgresLedger`` in a database every host shares. All aggregate by stage, model,
intent, tag and day, keep budgets, and export JSON and CSV.

>>> from decimal import Decimal
>>> from chainkit import Entry, Ledger
>>> ledger = Ledger()
>>> ledger.record(Entry(request_id="r1", stage="canned", outcome="answered", cost=Decimal(0)))
>>> ledger.cost
Decimal('0')
"""

from chainkit.ledger.budgets import Budget, BudgetEvent, BudgetState, Hold
from chainkit.ledger.core import Ledger, Totals, totals
from chainkit.ledger.postgres import PostgresLedger
from chainkit.ledger.sqlite import SQLiteLedger

__all__ = [
    "Budget",
    "BudgetEvent",
    "BudgetState",
    "Hold",
    "Ledger",
    "PostgresLedger",
    "SQLiteLedger",
    "Totals",
    "totals",
]
