"""Budgets as hard limits: periods, scopes, holds with leases, unknown costs, thresholds, restarts.

Each test runs on the in-memory ledger, on SQLite (the budget lives in the file, for every
process on the host) and on PostgreSQL (in the database, for every host).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import (
    Budget,
    BudgetExceeded,
    Catalogue,
    ConfigError,
    Entry,
    Generate,
    Ledger,
    PostgresLedger,
    Request,
    ScriptedModel,
    SQLiteLedger,
    Usage,
)
from chainkit.ledger.budgets import BudgetEvent

SEED = Catalogue.load("seed-2024")
NOV = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: datetime = NOV) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


Make = Callable[..., Ledger]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    opened: list[Ledger] = []
    schema = request.getfixturevalue("pg_schema") if request.param == "postgres" else ""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    def build(budgets: Any = (), path: str = "b.db", **kwargs: Any) -> Ledger:
        if request.param == "memory":
            ledger: Ledger = Ledger(budgets, **kwargs)
        elif request.param == "postgres":
            ledger = PostgresLedger(dsn, schema=schema, budgets=budgets, **kwargs)
        else:
            ledger = SQLiteLedger(tmp_path / path, budgets=budgets, **kwargs)
        opened.append(ledger)
        return ledger

    yield build
    for ledger in opened:
        ledger.close()


def entry(cost: Decimal | None, *, bound: Decimal | None = None, **fields: Any) -> Entry:
    fields.setdefault("time", NOV)
    return Entry("r", "generate", "answered", cost=cost, bound=bound, model="m", **fields)


# -- limits, scopes and holds ---------------------------------------------------------------------


def test_a_hold_counts_until_settled_and_the_limit_is_exact(make: Make) -> None:
    ledger = make([Budget(5, name="bot")], clock=Clock())
    first = ledger.reserve(Decimal(3), {}, stage="generate")
    assert first is not None and first.amount == 3
    with pytest.raises(BudgetExceeded, match=re.escape("($3.00 more in flight)")):
        ledger.reserve(Decimal("2.01"), {}, stage="generate")
    second = ledger.reserve(Decimal(2), {}, stage="generate")  # 3 + 2 = 5: exactly the limit
    ledger.record(entry(Decimal(1), id=first.id), hold=first)
    ledger.release(second)
    ledger.release(second)  # twice is harmless
    assert ledger.spent("bot") == 1
    ledger.reserve(Decimal(4), {}, stage="generate")
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Decimal("0.000001"), {}, stage="generate")


def test_the_refusal_says_what_was_spent_held_and_needed_with_the_digits_that_matter(
    make: Make,
) -> None:
    ledger = make([Budget("0.00005", name="tiny")], clock=Clock())
    ledger.record(entry(Decimal("0.0000412")))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Decimal("0.0000123"), {}, stage="generate", model="amazon.nova-micro")
    message = str(info.value)
    for part in ["'tiny'", "spent $0.0000412", "of $0.00005", "needs up to $0.0000123",
                 "stage 'generate'", "nothing was sent", "cheaper model"]:  # fmt: skip
        assert part in message, message
    assert "$0.0000 " not in message


def test_a_tag_scoped_budget_counts_and_holds_only_its_tag(make: Make) -> None:
    acme = Budget(1, tag=("tenant", "acme"))
    ledger = make([acme], clock=Clock())
    ledger.record(entry(Decimal(100), tags={"tenant": "globex"}))
    assert ledger.spent(acme) == 0
    assert ledger.reserve(Decimal(50), {"tenant": "globex"}, stage="generate") is None
    ledger.reserve(Decimal("0.6"), {"tenant": "acme"}, stage="generate")
    with pytest.raises(BudgetExceeded, match="tenant=acme"):
        ledger.reserve(Decimal("0.5"), {"tenant": "acme", "user": "u1"}, stage="generate")


def test_several_budgets_apply_at_once_and_the_tightest_decides(make: Make) -> None:
    app = Budget(10, name="app/day", period="day")
    tenant = Budget(1, tag=("tenant", "acme"), period="month")
    ledger = make([app, tenant], clock=Clock())
    hold = ledger.reserve(Decimal("0.9"), {"tenant": "acme"}, stage="g")
    assert hold is not None and {p[0] for p in hold.periods} == {"app/day", "tenant=acme/month"}
    with pytest.raises(BudgetExceeded, match="tenant=acme/month"):
        ledger.reserve(Decimal("0.2"), {"tenant": "acme"}, stage="g")
    ledger.reserve(Decimal("9"), {"tenant": "globex"}, stage="g")  # only the app's budget
    with pytest.raises(BudgetExceeded, match="app/day"):
        ledger.reserve(Decimal("0.2"), {"tenant": "globex"}, stage="g")


def test_an_unknown_price_is_refused_only_where_a_budget_applies(make: Make) -> None:
    ledger = make([Budget(5, tag=("tenant", "acme"))], clock=Clock())
    with pytest.raises(BudgetExceeded, match="price is unknown"):
        ledger.reserve(None, {"tenant": "acme"}, stage="generate")
    assert ledger.reserve(None, {"tenant": "globex"}, stage="generate") is None


def test_an_unknown_cost_counts_at_its_bound_and_does_not_block(make: Make) -> None:
    budget = Budget(1)
    ledger = make([budget], clock=Clock())
    hold = ledger.reserve(Decimal("0.25"), {}, stage="generate")
    assert hold is not None
    # A 5xx after sending: cost unknown, counted at what was held for it.
    ledger.record(entry(None, bound=Decimal("0.25"), id=hold.id), hold=hold)
    assert ledger.spent(budget) == Decimal("0.25")
    ledger.reserve(Decimal("0.75"), {}, stage="generate")  # later calls go on while it fits
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Decimal("0.01"), {}, stage="generate")


def test_a_budget_added_later_counts_what_is_recorded_in_its_period(make: Make) -> None:
    clock = Clock()
    ledger = make(clock=clock)
    ledger.record(entry(Decimal("4.5"), tags={"tenant": "acme"}))
    ledger.record(entry(Decimal("9"), tags={"tenant": "globex"}))
    ledger.record(entry(Decimal("7"), tags={"tenant": "acme"}, time=NOV - timedelta(days=40)))
    budget = Budget(5, tag=("tenant", "acme"), period="month")
    ledger.add_budget(budget)
    assert budget in ledger.budgets
    assert ledger.spent(budget) == Decimal("4.5")  # October's $7 is another period
    with pytest.raises(BudgetExceeded, match=re.escape("spent $4.50")):
        ledger.reserve(Decimal("0.6"), {"tenant": "acme"}, stage="generate")


@pytest.mark.parametrize(
    ("limit", "message"),
    [(Decimal(-1), "negative"), (5.0, "float"), (True, "bool"), ("five", "not an amount")],
)
def test_a_limit_is_money_given_exactly(limit: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Budget(limit, name="bad")


def test_limits_given_as_int_or_str_are_exact() -> None:
    assert Budget(5).limit == Decimal(5)
    assert Budget("0.05").limit == Decimal("0.05")
    with pytest.raises(ConfigError, match="period"):
        Budget(5, period="week")  # type: ignore[arg-type]


# -- periods, restarts, thresholds ----------------------------------------------------------------


def test_a_monthly_budget_starts_again_with_the_month(make: Make) -> None:
    clock = Clock(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    ledger = make([Budget(1, period="month")], clock=clock)
    hold = ledger.reserve(Decimal(1), {}, stage="g")
    assert hold is not None
    ledger.record(entry(Decimal(1), id=hold.id, time=clock.now), hold=hold)
    with pytest.raises(BudgetExceeded, match="2026-11"):
        ledger.reserve(Decimal("0.01"), {}, stage="g")
    clock.now = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    assert ledger.reserve(Decimal(1), {}, stage="g") is not None


def test_a_spent_monthly_budget_is_still_spent_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "restart.db"
    with SQLiteLedger(path, budgets=[Budget(1, period="month")], clock=clock) as first:
        hold = first.reserve(Decimal(1), {}, stage="g")
        assert hold is not None
        first.record(entry(Decimal(1), id=hold.id), hold=hold)
    # A new process, which does not even name the budget: it is in the file.
    with SQLiteLedger(path, clock=clock) as second:
        assert [b.name for b in second.budgets] == ["ledger/month"]
        with pytest.raises(BudgetExceeded):
            second.reserve(Decimal("0.01"), {}, stage="g")
        clock.now = datetime(2026, 12, 1, tzinfo=UTC)
        assert second.reserve(Decimal(1), {}, stage="g") is not None


def test_each_threshold_is_crossed_once_recorded_and_passed_to_the_hook(make: Make) -> None:
    seen: list[BudgetEvent] = []
    ledger = make([Budget(10, name="team", period="day")], clock=Clock(), on_threshold=seen.append)
    for cost in ["4", "1", "2", "1.5", "1.5"]:
        hold = ledger.reserve(Decimal(cost), {}, stage="g")
        assert hold is not None
        ledger.record(entry(Decimal(cost), id=hold.id), hold=hold)
    assert [(e.budget, e.period, e.threshold) for e in seen] == [
        ("team", "2026-11-29", Decimal("0.5")),
        ("team", "2026-11-29", Decimal("0.8")),
        ("team", "2026-11-29", Decimal("1")),
    ]
    assert [e.spent for e in seen] == [Decimal(5), Decimal("8.5"), Decimal(10)]
    assert [(e.budget, e.threshold) for e in ledger.events()] == [
        (e.budget, e.threshold) for e in seen
    ]
    assert "reached 80% of $10.00" in str(seen[1])


# -- leases: a holder that dies ------------------------------------------------------------------


def test_a_hold_whose_holder_died_expires_into_an_entry_at_its_bound(make: Make) -> None:
    clock = Clock()
    ledger = make([Budget(1)], clock=clock)
    lost = ledger.reserve(Decimal("0.4"), {"tenant": "a"}, stage="generate", model="m",
                          request_id="q1", lease_s=60)  # fmt: skip
    assert lost is not None
    clock.now += timedelta(seconds=61)
    # The next reservation finds the dead hold: it becomes an entry of unknown cost at $0.40.
    ledger.reserve(Decimal("0.5"), {}, stage="generate")
    stand_in = next(e for e in ledger.entries() if e.id == lost.id)
    assert (stand_in.outcome, stand_in.cost, stand_in.bound) == ("failed", None, Decimal("0.4"))
    assert stand_in.flags == ("lease_expired",) and stand_in.request_id == "q1"
    assert ledger.spent("ledger") == Decimal("0.4")
    with pytest.raises(BudgetExceeded):  # 0.4 spent + 0.5 held + 0.2 > 1: no phantom release
        ledger.reserve(Decimal("0.2"), {}, stage="generate")


def test_a_late_real_entry_replaces_its_stand_in_and_the_budget_follows(make: Make) -> None:
    clock = Clock()
    ledger = make([Budget(1)], clock=clock)
    slow = ledger.reserve(Decimal("0.4"), {}, stage="generate", lease_s=60)
    assert slow is not None
    clock.now += timedelta(seconds=61)
    ledger.reserve(Decimal("0.1"), {}, stage="generate")  # expires the slow call's hold
    assert ledger.spent("ledger") == Decimal("0.4")
    # The slow call was alive after all: its real entry replaces the stand-in, once.
    ledger.record(entry(Decimal("0.15"), id=slow.id), hold=slow)
    mine = [e for e in ledger.entries() if e.id == slow.id]
    assert len(mine) == 1 and mine[0].cost == Decimal("0.15")
    assert "reconciled" in mine[0].flags
    assert ledger.spent("ledger") == Decimal("0.15")
    assert ledger.totals().cost == Decimal("0.15")
    assert ledger.totals().calls == 1


# -- through a stage ------------------------------------------------------------------------------


def test_a_stage_holds_the_bound_and_settles_the_real_cost(make: Make) -> None:
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 20))
    budget = Budget("0.0120")
    ledger = make([budget], clock=Clock())
    stage = Generate(model=model, catalogue=SEED, max_tokens=50)
    # Held: 50 in (scripted: an exact count) + 50 out at $60/1M = $0.006; billed 70 = $0.0042.
    stage.run(Request("a", id="r1"), ledger)
    assert ledger.spent(budget) == Decimal("0.0042")
    stage.run(Request("b", id="r2"), ledger)
    with pytest.raises(BudgetExceeded):  # 0.0084 spent + 0.006 > 0.012
        stage.run(Request("c", id="r3"), ledger)
    assert len(model.prompts) == 2
    assert [e.outcome for e in ledger.entries()] == ["answered", "answered", "refused"]
    held = [e.bound for e in ledger.entries() if e.outcome == "answered"]
    assert held == [Decimal("0.006"), Decimal("0.006")]


def test_a_reply_over_its_bound_is_recorded_as_it_is_and_flagged(make: Make) -> None:
    # A provider reporting more output than max_tokens (it happens): the truth is recorded.
    model = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 80))
    ledger = make([Budget(1)], clock=Clock())
    Generate(model=model, catalogue=SEED, max_tokens=50).run(Request("a"), ledger)
    [e] = ledger.entries()
    assert e.cost == Decimal("0.0078") and e.bound == Decimal("0.006")
    assert e.flags == ("over_estimate",)
    assert ledger.spent("ledger") == Decimal("0.0078")
