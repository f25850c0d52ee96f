"""Regressions: each case an adversarial review of budgets (issue #10) found breaking a promise."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import Budget, ConfigError, Entry, Ledger, PostgresLedger, SQLiteLedger
from chainkit.errors import BudgetExceeded, LedgerError

NOV = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KINDS = ["memory", "sqlite", "postgres"]


class Clock:
    def __init__(self, now: datetime = NOV) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """A ledger of the kind the test is parametrized with, opened as often as asked."""
    kind = request.param
    opened: list[Ledger] = []
    schema = ""
    if kind == "postgres":
        schema = request.getfixturevalue("pg_schema")
        dsn = request.getfixturevalue("pg_dsn")

    def build(budgets: Any = (), **kw: Any) -> Ledger:
        if kind == "memory":
            ledger: Ledger = Ledger(budgets, **kw)
        elif kind == "sqlite":
            ledger = SQLiteLedger(tmp_path / "l.db", budgets=budgets, **kw)
        else:
            ledger = PostgresLedger(dsn, schema=schema, budgets=budgets, **kw)
        opened.append(ledger)
        return ledger

    yield build
    for ledger in opened:
        with contextlib.suppress(LedgerError):
            ledger.close()


def paid(cost: str, *, id: str | None = None, bound: str | None = None, **kw: Any) -> Entry:
    extra = {} if id is None else {"id": id}
    return Entry(
        "r", "generate", "answered", cost=Decimal(cost), model="m", time=kw.pop("time", NOV),
        bound=None if bound is None else Decimal(bound), **extra, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_a_new_limit_keeps_the_holds_of_calls_in_flight(make: Callable[..., Ledger]) -> None:
    ledger = make([Budget("1.00", name="b")], clock=Clock())
    first = ledger.reserve(Decimal("0.40"), {}, stage="generate", entry_id="c1")
    ledger.reserve(Decimal("0.40"), {}, stage="generate", entry_id="c2")
    ledger.add_budget(Budget("1.05", name="b"))  # raised while both calls run
    ledger.record(paid("0.10", id="c1", bound="0.40"), hold=first)
    (state,) = ledger.status()
    assert (state.spent, state.held) == (Decimal("0.10"), Decimal("0.40"))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Decimal("0.60"), {}, stage="generate")  # 0.10 + 0.40 + 0.60 > 1.05
    assert ledger.spent("b") == Decimal("0.10")
    # The same limit written otherwise is the same definition: nothing changes.
    ledger.add_budget(Budget("1.050", name="b"))
    assert ledger.status()[0].held == Decimal("0.40")


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_a_budget_with_a_new_tag_counts_its_entries_again(make: Callable[..., Ledger]) -> None:
    ledger = make([Budget("1.00", name="b")], clock=Clock())
    hold = ledger.reserve(Decimal("0.40"), {"tenant": "acme"}, stage="generate", entry_id="c1")
    ledger.record(paid("0.30", tags={"tenant": "globex"}))
    ledger.add_budget(Budget("1.00", name="b", tag=("tenant", "acme")))
    ledger.record(paid("0.10", id="c1", bound="0.40", tags={"tenant": "acme"}), hold=hold)
    (state,) = ledger.status()
    assert (state.spent, state.held) == (Decimal("0.10"), Decimal(0))


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_an_entry_is_charged_to_its_own_period_and_tags(make: Callable[..., Ledger]) -> None:
    clock = Clock(datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC))
    day = Budget("1.00", name="day", period="day")
    acme = Budget("1.00", name="acme", tag=("tenant", "acme"))
    ledger = make([day, acme], clock=clock)
    # Held without the tenant tag, before midnight; its entry comes after, tagged acme.
    hold = ledger.reserve(Decimal("0.05"), {}, stage="generate", entry_id="c1")
    clock.now += timedelta(seconds=2)
    ledger.record(
        paid("0.0315", id="c1", bound="0.05", tags={"tenant": "acme"}, time=clock.now), hold=hold
    )
    assert ledger.spent("day", datetime(2026, 11, 29, tzinfo=UTC)) == 0
    assert ledger.spent("day", datetime(2026, 11, 30, tzinfo=UTC)) == Decimal("0.0315")
    assert ledger.spent("acme") == Decimal("0.0315")
    assert all(s.held == 0 for s in ledger.status())


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_reservations_are_checked_before_anything_is_held(make: Callable[..., Ledger]) -> None:
    ledger = make([Budget("1.00", name="b")], clock=Clock())
    with pytest.raises(ConfigError, match="negative"):
        ledger.reserve(Decimal("-5"), {}, stage="generate")
    with pytest.raises(ConfigError, match="lease_s"):
        ledger.reserve(Decimal("0.5"), {}, stage="generate", lease_s=1e12)
    with pytest.raises(ConfigError, match="more than once"):
        ledger.reserve_many([{"amount": Decimal("0.2"), "stage": "g", "entry_id": "x"}] * 2)
    (state,) = ledger.status()
    assert (state.spent, state.held) == (Decimal(0), Decimal(0))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Decimal("5.50"), {}, stage="generate")


@pytest.mark.parametrize("make", KINDS, indirect=True)
def test_a_threshold_hook_that_raises_leaves_no_hold_behind(
    make: Callable[..., Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    def hook(event: object) -> None:
        raise RuntimeError("pager down")

    ledger = make([Budget("0.01", name="b")], clock=Clock(), on_threshold=hook)
    hold = ledger.reserve(Decimal("0.006"), {}, stage="generate", entry_id="c1")
    with caplog.at_level(logging.ERROR, logger="chainkit"):
        ledger.record(paid("0.006", id="c1", bound="0.006"), hold=hold)  # crosses 50%
    assert "on_threshold hook failed" in caplog.text
    (state,) = ledger.status()
    assert (state.spent, state.held) == (Decimal("0.006"), Decimal(0))
    assert [e.threshold for e in ledger.events()] == [Decimal("0.5")]


@pytest.mark.parametrize("make", ["sqlite", "postgres"], indirect=True)
def test_a_reservation_that_failed_is_not_made_later(
    make: Callable[..., Ledger], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ledger = make([Budget("0.01", name="b")], clock=Clock(), timeout_s=0.5)
    release = _hold_the_write_lock(request, tmp_path)
    with pytest.raises(LedgerError):
        ledger.reserve(Decimal("0.006"), {}, stage="generate", entry_id="r1")
    release()
    # The caller was told r1 failed (it called no model): nothing of it may be held later.
    second = ledger.reserve(Decimal("0.006"), {}, stage="generate", entry_id="r2")
    assert second is not None
    (state,) = ledger.status()
    assert state.held == Decimal("0.006")
    assert ledger.hold("r1") is None


@pytest.mark.parametrize("make", ["sqlite", "postgres"], indirect=True)
def test_entries_written_while_another_writer_held_the_lock_are_all_kept(
    make: Callable[..., Ledger], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ledger = make(timeout_s=0.5)
    ledger.record(paid("0.01", id="paid-0"))
    release = _hold_the_write_lock(request, tmp_path)
    with pytest.raises(LedgerError):
        ledger.record(paid("0.01", id="paid-1"))  # kept pending, not dropped
    release()
    for i in range(2, 6):
        ledger.record(paid("0.01", id=f"paid-{i}"))
    assert sorted(e.id for e in ledger.entries()) == [f"paid-{i}" for i in range(6)]
    assert ledger.pending == 0 and not ledger.rejected  # type: ignore[attr-defined]


def _hold_the_write_lock(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], None]:
    """Another writer takes the ledger's write lock until the returned function is called."""
    if isinstance(request.node.callspec.params["make"], str) and (
        request.node.callspec.params["make"] == "sqlite"
    ):
        other = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        def release() -> None:
            other.execute("ROLLBACK")
            other.close()

        return release
    import psycopg

    schema = request.getfixturevalue("pg_schema")
    locker = psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True)
    locker.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"chainkit:{schema}",))
    return locker.close


def test_a_constraint_broken_by_one_write_does_not_stop_the_others(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db", budgets=[Budget(1, name="b")])
    ledger.reserve(Decimal("0.1"), {}, stage="generate", entry_id="e1")
    with pytest.raises(LedgerError):  # a second hold with that id: refused alone
        ledger.reserve(Decimal("0.1"), {}, stage="generate", entry_id="e1")
    for i in range(5):
        ledger.record(paid("0.01", id=f"p{i}"))
    assert ledger.pending == 0
    ledger.close()
    with SQLiteLedger(tmp_path / "l.db", read_only=True) as again:
        assert len(again) == 5


def test_postgres_reconnects_after_the_server_ended_its_sessions(
    pg_dsn: str, pg_schema: str
) -> None:
    import psycopg

    ledger = PostgresLedger(pg_dsn, schema=pg_schema, budgets=[Budget(1, name="b")])
    ledger.record(paid("0.01", id="before"))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        # Only this ledger's sessions: other tests (and other runs) share the server.
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND application_name = %s",
            (f"chainkit:{pg_schema}",),
        ).fetchone()
        assert ended is not None and ended[0] >= 1
    recorded = 0
    for i in range(3):
        try:
            ledger.record(paid("0.01", id=f"after-{i}"))
            recorded += 1
        except LedgerError:
            pass  # the write that found the session gone: kept pending, written by the next
    assert recorded >= 2
    assert ledger.reserve(Decimal("0.01"), {}, stage="generate") is not None
    ledger.flush()
    assert sorted(e.id for e in ledger.entries()) == ["after-0", "after-1", "after-2", "before"]
    ledger.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("make", ["sqlite", "postgres"], indirect=True)
def test_threads_of_a_forked_child_all_find_the_ledger_reopened(
    make: Callable[..., Ledger],
) -> None:
    ledger = make([Budget(100, name="b")])
    ledger.record(paid("0.01", id="parent"))
    pid = os.fork()
    if pid == 0:  # the child: 8 threads make their first calls at once
        failures: list[BaseException] = []

        def call(i: int) -> None:
            try:
                hold = ledger.reserve(Decimal("0.01"), {}, stage="g", entry_id=f"k{i}")
                ledger.record(paid("0.01", id=f"k{i}", bound="0.01"), hold=hold)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        alive = any(t.is_alive() for t in threads)
        try:
            ledger.close()
        finally:
            os._exit(1 if failures or alive else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.record(paid("0.01", id="parent-after"))  # the parent's ledger still works
    assert len(ledger.entries()) == 10
