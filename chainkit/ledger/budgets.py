"""Budgets: hard limits per period and scope, kept by the ledger's store for every process.

A budget is checked before a call from the most the call can cost (its *bound*) and settled after
it from what it did cost. Holds live in the store with a lease: a holder that dies leaves a hold
that expires into an entry of unknown cost counted at its bound, never a refusal forever and
never a silent release. An unknown cost counts at its bound; it does not block later calls.

The rules are written once here, against :class:`BudgetState`, the store's view of one budget in
one period. Each store applies them inside its own atomic step (a lock in memory, one write
transaction in SQLite, row locks in PostgreSQL), so every thread, process and host sees one
budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any, Literal

from chainkit.errors import BudgetExceeded, ConfigError
from chainkit.money import CONTEXT, check_money, usd
from chainkit.records import Entry, check_text

__all__ = [
    "Budget",
    "BudgetEvent",
    "BudgetState",
    "Hold",
    "Period",
    "settle",
]

Period = Literal["day", "month"]
"""Calendar periods in UTC; a budget without one (``None``) covers all time."""

DEFAULT_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))


def _limit(value: object, name: str) -> Decimal:
    if isinstance(value, bool | float):
        raise ConfigError(
            f"Budget {name!r}: limit {value!r} is a {type(value).__name__}; pass a Decimal, an int "
            "or a str (Decimal('5.00'), 5 or '5.00'): a float cannot hold most amounts exactly."
        )
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError as exc:  # decimal.InvalidOperation for "five"
        raise ConfigError(f"Budget {name!r}: limit {value!r} is not an amount of money.") from exc
    checked = check_money(amount, f"Budget {name!r} limit")
    assert checked is not None
    return checked


@dataclass(frozen=True, slots=True)
class Budget:
    """A hard spending limit over a period (UTC calendar day or month, or all time) and a scope.

    The scope is the whole ledger, or the entries carrying one tag (a tenant). ``thresholds``
    are the shares of the limit whose crossing is recorded as a :class:`BudgetEvent` and passed
    to the ledger's ``on_threshold`` hook, once per period.

    >>> Budget(5, period="month", tag=("tenant", "acme")).name
    'tenant=acme/month'
    >>> Budget("0.50").applies({"tenant": "globex"})
    True
    """

    limit: Decimal
    name: str = ""
    period: Period | None = None
    tag: tuple[str, str] | None = None
    thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if self.period not in (None, "day", "month"):
            raise ConfigError(
                f"Budget period {self.period!r} is not one of 'day', 'month' or None (all time)."
            )
        if self.tag is not None:
            if not isinstance(self.tag, tuple) or len(self.tag) != 2:
                raise ConfigError(f"Budget tag must be a (key, value) pair, got {self.tag!r}.")
            check_text(self.tag[0], "Budget tag key")
            check_text(self.tag[1], "Budget tag value", empty=True)
        name = self.name
        if not name:
            scope = "ledger" if self.tag is None else f"{self.tag[0]}={self.tag[1]}"
            name = scope if self.period is None else f"{scope}/{self.period}"
            object.__setattr__(self, "name", name)
        check_text(name, "Budget name")
        object.__setattr__(self, "limit", _limit(self.limit, name))
        shares = []
        for share in self.thresholds:
            if isinstance(share, float | bool):
                raise ConfigError(f"Budget {name!r}: threshold {share!r} must be a Decimal.")
            value = Decimal(share)
            if not 0 < value <= 1:
                raise ConfigError(
                    f"Budget {name!r}: threshold {share!r} is not a share of the limit in (0, 1]."
                )
            shares.append(value)
        object.__setattr__(self, "thresholds", tuple(sorted(set(shares))))

    def applies(self, tags: Mapping[str, str]) -> bool:
        """Whether entries with ``tags`` count against this budget."""
        return self.tag is None or tags.get(self.tag[0]) == self.tag[1]

    def period_of(self, when: datetime) -> str:
        """The period ``when`` falls in: ``"2026-11"``, ``"2026-11-29"``, or ``"all"``."""
        if self.period is None:
            return "all"
        day = when.astimezone(UTC).date().isoformat()
        return day[:7] if self.period == "month" else day

    def to_json(self) -> str:
        """The definition as the store keeps it."""
        # Canonical numbers: $0.05 and $0.050 are the same definition, for every process.
        return json.dumps(
            {
                "limit": _plain(self.limit),
                "period": self.period,
                "tag": None if self.tag is None else list(self.tag),
                "thresholds": [_plain(t) for t in self.thresholds],
            },
            sort_keys=True,
        )

    def same_scope(self, other: Budget) -> bool:
        """Whether ``other`` counts the same entries (same period and tag): its states hold."""
        return (self.period, self.tag) == (other.period, other.tag)

    @classmethod
    def from_json(cls, name: str, text: str) -> Budget:
        """A definition the store kept."""
        data = json.loads(text)
        tag = data["tag"]
        return cls(
            Decimal(data["limit"]),
            name=name,
            period=data["period"],
            tag=None if tag is None else (tag[0], tag[1]),
            thresholds=tuple(Decimal(t) for t in data["thresholds"]),
        )


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """A budget's spend crossed one of its thresholds in one period (recorded once)."""

    budget: str
    period: str
    threshold: Decimal
    spent: Decimal
    limit: Decimal
    time: datetime

    def __str__(self) -> str:
        share = f"{(self.threshold * 100).normalize():f}%"
        return (
            f"Budget {self.budget!r} ({self.period}) reached {share} of {usd(self.limit)}: "
            f"spent {usd(self.spent, digits=8)}."
        )


@dataclass(slots=True)
class BudgetState:
    """One budget in one period: what was spent (unknown costs at their bound) and is held."""

    budget: Budget
    period: str
    spent: Decimal = Decimal(0)
    held: Decimal = Decimal(0)
    changed: bool = False


@dataclass(slots=True)
class Hold:
    """Money set aside for one call until its entry is recorded, released, or the lease ends.

    ``id`` is the id the call's entry will carry, so that a hold that expires becomes that entry
    (cost unknown, at its bound) and a late real entry replaces it.
    """

    id: str
    amount: Decimal
    periods: tuple[tuple[str, str], ...]  # (budget name, period) pairs it holds against
    expires: datetime
    request_id: str = ""
    stage: str = ""
    model: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    phase: str = "serve"
    intent: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    open: bool = True

    def expired_entry(self) -> Entry:
        """The entry a hold becomes when its holder never settled it: cost unknown, at its bound."""
        return Entry(
            request_id=self.request_id or self.id,
            stage=self.stage or "expired",
            outcome="failed",
            cost=None,
            model=self.model,
            bound=self.amount,
            intent=self.intent,
            tags=self.tags,
            phase="setup" if self.phase == "setup" else "serve",
            time=self.created,
            id=self.id,
            flags=("lease_expired",),
            note=(
                f"hold expired at {self.expires.isoformat()}: its holder never recorded the call; "
                "counted at its bound until the real cost is known"
            ),
        )

    def to_json(self) -> str:
        """The hold's details as the store keeps them."""
        return json.dumps(
            {
                "periods": [list(p) for p in self.periods],
                "request_id": self.request_id,
                "stage": self.stage,
                "model": self.model,
                "tags": dict(self.tags),
                "phase": self.phase,
                "intent": self.intent,
                "created": self.created.isoformat(),
            },
            ensure_ascii=True,
        )

    @classmethod
    def from_json(cls, hold_id: str, amount: str, expires: str, text: str) -> Hold:
        """A hold the store kept."""
        data = json.loads(text)
        return cls(
            id=hold_id,
            amount=Decimal(amount),
            periods=tuple((p[0], p[1]) for p in data["periods"]),
            expires=datetime.fromisoformat(expires),
            request_id=data["request_id"],
            stage=data["stage"],
            model=data["model"],
            tags=data["tags"],
            phase=data["phase"],
            intent=data["intent"],
            created=datetime.fromisoformat(data["created"]),
        )


# -- the rules, once ------------------------------------------------------------------------------

StateOf = Callable[[Budget, str], BudgetState]
"""The store's view of a budget in a period (created, with what is recorded already, if new)."""


def applying(budgets: Iterable[Budget], tags: Mapping[str, str]) -> list[Budget]:
    """The budgets that entries with ``tags`` count against."""
    return [b for b in budgets if b.applies(tags)]


def _plain(amount: Decimal) -> str:
    """``amount`` without trailing zeros or an exponent (``0.050`` and ``5E-2`` read ``0.05``)."""
    text = format(amount.normalize(CONTEXT), "f") if amount else "0"
    return text


MAX_LEASE_S = 366 * 86_400.0
"""The longest a hold may last (a year): longer says a mistake, not a call under way."""


def check_reservation(amount: object, lease_s: object) -> None:
    """Refuse a reservation whose amount is not money (or unknown) or whose lease is not time."""
    if amount is not None:
        check_money(amount, "The amount to reserve")
    if (
        isinstance(lease_s, bool)
        or not isinstance(lease_s, int | float)
        or not -MAX_LEASE_S <= lease_s <= MAX_LEASE_S
    ):
        raise ConfigError(
            f"lease_s must be a number of seconds of at most {MAX_LEASE_S:,.0f} (a year), got "
            f"{lease_s!r}."
        )


def check(
    states: Sequence[BudgetState], amount: Decimal | None, *, stage: str, model: str | None
) -> None:
    """Raise ``BudgetExceeded`` if holding ``amount`` would take any state over its limit."""
    with localcontext(CONTEXT):
        for state in states:
            budget = state.budget
            if amount is None:
                raise _refusal(
                    state,
                    amount,
                    f"Budget {budget.name!r} cannot be kept on a call whose price is unknown "
                    f"(model {model!r}, stage {stage!r}): nothing was sent. Price the model in the "
                    "catalogue (or pass catalogue=), or set max_tokens so the call has a bound.",
                )
            if state.spent + state.held + amount > budget.limit:
                held = f" ({usd(state.held, digits=8)} more in flight)" if state.held else ""
                spent, limit = usd(state.spent, digits=8), usd(budget.limit, digits=8)
                if spent == limit and state.spent != budget.limit:
                    # Rounded alike ($50.00 of $50.00): show the exact amounts instead.
                    spent, limit = f"${_plain(state.spent)}", f"${_plain(budget.limit)}"
                raise _refusal(
                    state,
                    amount,
                    f"Budget {budget.name!r} ({state.period}) would be exceeded: spent "
                    f"{spent}{held} of {limit}, this "
                    f"call needs up to {usd(amount, digits=8)} (stage {stage!r}, model "
                    f"{model!r}); nothing was sent. Raise the limit or route to a cheaper model.",
                )


def _refusal(state: BudgetState, amount: Decimal | None, message: str) -> BudgetExceeded:
    """``BudgetExceeded`` with ``message`` and the figures behind it, for callers to report."""
    exc = BudgetExceeded(message)
    exc.budget, exc.period, exc.limit = state.budget.name, state.period, state.budget.limit
    exc.spent, exc.held, exc.needed = state.spent, state.held, amount
    return exc


def hold(states: Sequence[BudgetState], amount: Decimal) -> None:
    """Set ``amount`` aside in every state (after :func:`check` said yes)."""
    with localcontext(CONTEXT):
        for state in states:
            state.held += amount
            state.changed = True


def charge(entry: Entry) -> Decimal:
    """What an entry counts against a budget: its cost, or its bound when the cost is unknown."""
    if entry.cost is not None:
        return entry.cost
    return entry.bound if entry.bound is not None else Decimal(0)


def settle(
    states: Sequence[BudgetState],
    *,
    release: Decimal,
    spend: Decimal,
    now: datetime,
) -> list[BudgetEvent]:
    """Move ``release`` out of held and add ``spend`` to spent; return the thresholds crossed."""
    events = []
    with localcontext(CONTEXT):
        for state in states:
            before = state.spent
            state.held = max(Decimal(0), state.held - release)
            state.spent += spend
            state.changed = True
            limit = state.budget.limit
            for share in state.budget.thresholds:
                mark = limit * share
                if before < mark <= state.spent:
                    events.append(
                        BudgetEvent(state.budget.name, state.period, share, state.spent, limit, now)
                    )
    return events


def spent_of(entries: Iterable[Entry], budget: Budget, period: str) -> Decimal:
    """What recorded entries count against ``budget`` in ``period`` (for a state made now)."""
    with localcontext(CONTEXT):
        total = Decimal(0)
        for e in entries:
            if budget.applies(e.tags) and budget.period_of(e.time) == period:
                total += charge(e)
        return total


def describe(value: Any) -> str:
    """A budget or its name, for messages."""
    return value.name if isinstance(value, Budget) else str(value)
