"""Budgets in an SQL store: the rules of :mod:`chainkit.ledger.budgets`, inside one transaction.

The caller holds the store's write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction
with the ledger's advisory lock), so reading a budget's state, deciding and writing it back is one
atomic step for every process and host that shares the store. The SQL is portable: ``?``
placeholders (translated for drivers that want ``%s``) and ``ON CONFLICT`` upserts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Protocol

from chainkit.ledger.budgets import Budget, BudgetEvent, BudgetState, Hold
from chainkit.money import CONTEXT

__all__ = ["Connection", "SQLBook"]

NO_HOLDS = datetime.max.replace(tzinfo=UTC)
"""The next expiry when there is no hold at all."""


class Connection(Protocol):
    """What the book needs of a database connection (sqlite3's, or an adapter of psycopg's)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any:
        """Run one statement; the result has ``fetchone``, ``fetchall`` and ``rowcount``."""
        ...


class SQLBook:
    """The budgets of an SQL store, read and written inside the caller's write transaction."""

    def __init__(
        self,
        db: Connection,
        spent_from: Callable[[Budget, str], Decimal],
        budgets: Mapping[str, Budget] | None = None,
        known: Mapping[tuple[str, str], tuple[Decimal, Decimal]] | None = None,
    ) -> None:
        self.db = db
        self.spent_from = spent_from
        self.budgets = dict(budgets) if budgets is not None else read_budgets(db)
        self.states: dict[tuple[str, str], BudgetState] = {}
        # (spent, held) as this connection committed them, while no other connection wrote.
        self.known = known or {}
        self._holds: list[Hold] | None = None
        self.not_before: datetime | None = None
        """Set by a caller that knows no hold expires before then (skips the query)."""
        self.next_expiry: datetime | None = None
        # One statement per transaction, not one per hold: under threads every statement is
        # a GIL hand-off, which costs more than the SQL.
        self._puts: dict[str, Hold] = {}  # new holds, inserted together before holds are read
        self._taken: dict[str, Decimal | None] = {}  # prefetched by take_all (None: gone)
        self._absent: set[tuple[str, str]] = set()  # states with no row (not made yet)

    def _put_now(self) -> None:
        if self._puts:
            puts, self._puts = list(self._puts.values()), {}
            self.db.executemany(  # type: ignore[attr-defined]
                "INSERT INTO holds (id, amount, expires, details) VALUES (?, ?, ?, ?)",
                [(h.id, str(h.amount), _utc(h.expires), h.to_json()) for h in puts],
            )

    def _all_holds(self) -> list[Hold]:
        self._put_now()
        if self._holds is None:
            self._holds = [
                Hold.from_json(*row)
                for row in self.db.execute("SELECT id, amount, expires, details FROM holds")
            ]
        return self._holds

    def state(self, budget: Budget, period: str, *, create: bool = True) -> BudgetState | None:
        """A budget's state in a period, made from what is recorded if new (and ``create``)."""
        key = (budget.name, period)
        state = self.states.get(key)
        if state is not None:
            return state
        known = self.known.get(key)
        if known is not None:
            state = self.states[key] = BudgetState(budget, period, *known)
            return state
        if not create and key in self._absent:
            return None
        row = self.db.execute(
            "SELECT spent, held FROM budget_state WHERE budget = ? AND period = ?", key
        ).fetchone()
        if row is not None:
            state = BudgetState(budget, period, Decimal(row[0]), Decimal(row[1]))
        elif not create:
            self._absent.add(key)  # asked for every entry of a batch: looked up once
            return None
        else:
            with localcontext(CONTEXT):
                held = sum((h.amount for h in self._all_holds() if key in h.periods), Decimal(0))
            state = BudgetState(budget, period, self.spent_from(budget, period), held, True)
        self.states[key] = state
        return state

    def states_of(self, hold: Hold) -> list[BudgetState]:
        """The states a hold holds against (budgets removed since are skipped)."""
        found = []
        for name, period in hold.periods:
            budget = self.budgets.get(name)
            if budget is not None:
                state = self.state(budget, period)
                assert state is not None
                found.append(state)
        return found

    def existing(self, tags: Mapping[str, str], when: datetime) -> list[BudgetState]:
        """The states an entry without a hold counts against: those already made.

        A state made later counts the entry from what is recorded, so it is not counted twice.
        """
        found = []
        for budget in self.budgets.values():
            if budget.applies(tags):
                state = self.state(budget, budget.period_of(when), create=False)
                if state is not None:
                    found.append(state)
        return found

    def take(self, hold: Hold | str) -> Hold | None:
        """Remove a hold and return it (``None`` if it is gone: settled, released or expired).

        Given the :class:`Hold` itself (as the process that made it has it), one statement says
        whether it still stands; given only its id, its details are read from the store.
        """
        if isinstance(hold, Hold):
            if hold.id in self._puts:  # made in this transaction (and given back: all or none)
                held: Hold | None = self._puts.pop(hold.id)
            elif hold.id in self._taken:
                amount = self._taken.pop(hold.id)
                held = None if amount is None else dataclasses.replace(hold, amount=amount)
            else:
                row = self.db.execute(
                    "DELETE FROM holds WHERE id = ? RETURNING amount", (hold.id,)
                ).fetchone()
                held = None if row is None else dataclasses.replace(hold, amount=Decimal(row[0]))
        else:
            self._put_now()
            row = self.db.execute(
                "SELECT id, amount, expires, details FROM holds WHERE id = ?", (hold,)
            ).fetchone()
            if row is not None:
                self.db.execute("DELETE FROM holds WHERE id = ?", (hold,))
            held = None if row is None else Hold.from_json(*row)
        if held is not None and self._holds is not None:
            self._holds = [h for h in self._holds if h.id != held.id]
        return held

    def take_all(self, holds: Sequence[Hold]) -> None:
        """Remove these holds in one statement; :meth:`take` then answers for each."""
        ids = list({h.id for h in holds if h.id not in self._puts and h.id not in self._taken})
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            self._taken.update(dict.fromkeys(part))
            for hold_id, amount in self.db.execute(
                f"DELETE FROM holds WHERE id IN ({marks}) RETURNING id, amount", part
            ).fetchall():
                self._taken[hold_id] = Decimal(amount)
        if self._holds is not None and ids:
            gone = set(ids)
            self._holds = [h for h in self._holds if h.id not in gone]

    def put(self, hold: Hold) -> None:
        """Keep a new hold (inserted with the others of the transaction)."""
        self._puts[hold.id] = hold
        if self._holds is not None:
            self._holds.append(hold)

    def expired(self, now: datetime) -> list[Hold]:
        """Remove and return the holds whose lease has ended by ``now``."""
        if self.not_before is not None and now < self.not_before:
            return []  # no hold can have expired yet (the caller knows every hold's lease)
        self._put_now()
        rows = self.db.execute(
            "SELECT id, amount, expires, details FROM holds WHERE expires <= ?", (_utc(now),)
        ).fetchall()
        holds = [Hold.from_json(*row) for row in rows]
        for held in holds:
            self.db.execute("DELETE FROM holds WHERE id = ?", (held.id,))
        if holds and self._holds is not None:
            gone = {h.id for h in holds}
            self._holds = [h for h in self._holds if h.id not in gone]
        return holds

    def expired_all(self, now: datetime) -> list[Hold]:
        """Remove and return every hold whose lease has ended; note when the next one ends."""
        found = self.expired_ignoring_hint(now)
        row = self.db.execute("SELECT MIN(expires) FROM holds").fetchone()
        # No hold at all: none can expire until one is made (which lowers the mark) or another
        # connection writes (which clears it).
        self.next_expiry = (
            NO_HOLDS if row is None or row[0] is None else datetime.fromisoformat(row[0])
        )
        return found

    def expired_ignoring_hint(self, now: datetime) -> list[Hold]:
        """Like :meth:`expired`, but look whatever ``not_before`` says."""
        hint, self.not_before = self.not_before, None
        try:
            return self.expired(now)
        finally:
            self.not_before = hint

    def write(self, events: Sequence[BudgetEvent]) -> list[BudgetEvent]:
        """Write new holds and changed states; record the crossings; return those not before."""
        self._put_now()
        for state in self.states.values():
            if state.changed:
                later(self.db)(
                    "INSERT INTO budget_state (budget, period, spent, held) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (budget, period) DO UPDATE SET spent = excluded.spent, "
                    "held = excluded.held",
                    (state.budget.name, state.period, str(state.spent), str(state.held)),
                )
                state.changed = False
        new = []
        for event in events:
            cursor = self.db.execute(
                "INSERT INTO budget_events (budget, period, threshold, spent, limit_usd, time) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (budget, period, threshold) DO NOTHING",
                (
                    event.budget,
                    event.period,
                    str(event.threshold),
                    str(event.spent),
                    str(event.limit),
                    event.time.isoformat(),
                ),
            )
            if cursor.rowcount == 1:  # the first to cross it, in any process
                new.append(event)
        return new


def later(db: Any) -> Callable[..., Any]:
    """How to run a statement whose result nobody reads.

    Queued where the driver can pipeline it with the next statement (PostgreSQL: a round trip
    saved), else run at once (SQLite).
    """
    return getattr(db, "execute_later", db.execute)  # type: ignore[no-any-return]


def read_budgets(db: Connection) -> dict[str, Budget]:
    """The budget definitions in the store."""
    rows = db.execute("SELECT name, definition FROM budgets").fetchall()
    return {name: Budget.from_json(name, definition) for name, definition in rows}


def define(db: Connection, budgets: Sequence[Budget]) -> None:
    """Store budget definitions (a changed one starts its periods again from the entries)."""
    for budget in budgets:
        row = db.execute("SELECT definition FROM budgets WHERE name = ?", (budget.name,)).fetchone()
        definition = budget.to_json()
        if row is not None and row[0] == definition:
            continue
        db.execute(
            "INSERT INTO budgets (name, definition) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            (budget.name, definition),
        )
        if row is None or not Budget.from_json(budget.name, row[0]).same_scope(budget):
            # Other entries count now: its states are made again from the entries and holds.
            # (A new limit or new thresholds change nothing of what was spent and held.)
            db.execute("DELETE FROM budget_state WHERE budget = ?", (budget.name,))


def events_of(rows: Sequence[Sequence[Any]]) -> list[BudgetEvent]:
    """Threshold crossings as stored (``budget_events`` rows)."""
    return [
        BudgetEvent(b, p, Decimal(t), Decimal(s), Decimal(lim), datetime.fromisoformat(when))
        for b, p, t, s, lim, when in rows
    ]


def _utc(when: datetime) -> str:
    # One format and zone, so that text comparison is time comparison.
    return when.astimezone(UTC).isoformat()


def dumps(value: Any) -> str:
    """JSON for the store (ASCII, so any text survives any driver)."""
    return json.dumps(value, ensure_ascii=True, sort_keys=True)
