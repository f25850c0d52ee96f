from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import ConfigError, Entry, Ledger, Usage
from chainkit.finops import allocate

from .conftest import MakeLedger

T = datetime(2026, 11, 2, 12, tzinfo=UTC)


def serve(rid: str, stage: str, outcome: str, cost: Decimal | None, **tags: str) -> Entry:
    return Entry(
        request_id=rid,
        stage=stage,
        outcome=outcome,
        cost=cost,
        model="m" if stage == "generate" else None,
        usage=Usage(input_tokens=900, output_tokens=100) if stage == "generate" else None,
        tags=tags,
        time=T,
    )


def shop() -> list[Entry]:
    """acme: 3 requests (2 precomputed answers, 1 generated); globex: 1 generated; 1 setup."""
    return [
        serve("a1", "precomputed", "answered", Decimal(0), tenant="acme", conversation="c1"),
        serve("a2", "precomputed", "answered", Decimal(0), tenant="acme", conversation="c1"),
        serve("a3", "precomputed", "passed", Decimal(0), tenant="acme", conversation="c2"),
        serve("a3", "generate", "answered", Decimal("0.30"), tenant="acme", conversation="c2"),
        serve("g1", "precomputed", "passed", Decimal(0), tenant="globex"),
        serve("g1", "generate", "failed", Decimal("0.10"), tenant="globex"),
        Entry(
            request_id="setup",
            stage="precompute",
            outcome="answered",
            cost=Decimal("0.09"),
            phase="setup",
            time=T,
        ),
    ]


def test_setup_spend_is_borne_by_the_requests_the_precomputed_stage_answered(
    make_ledger: MakeLedger,
) -> None:
    ledger = make_ledger()
    ledger.record_many(shop())
    a = allocate(ledger, "tenant")
    rows = {r.key: r for r in a.rows}
    acme, globex = rows[("acme",)], rows[("globex",)]
    # Only acme's a1 and a2 were answered by precomputed replies: all $0.09 goes to acme.
    assert acme.amortised == Decimal("0.09") and globex.amortised == 0
    assert acme.direct == Decimal("0.30") and acme.cost == Decimal("0.39")
    assert acme.requests == 3 and acme.conversations == 2 and acme.resolved == 3
    assert acme.per_request == Decimal("0.13")
    assert acme.per_conversation == Decimal("0.195")
    assert acme.tokens == 1000 and acme.per_1k_tokens == Decimal("0.39")
    # globex's only request failed: nothing resolved, so no cost per resolved ticket.
    assert globex.resolved == 0 and globex.per_resolved is None
    assert globex.conversations == 1  # no conversation tag: the request is its own
    assert a.total == ledger.cost == Decimal("0.49")
    assert a.setup == Decimal("0.09") and a.unallocated == 0


def test_setup_without_a_served_stage_spreads_over_every_matching_request() -> None:
    entries = [
        serve("r1", "generate", "answered", Decimal("0.01"), tenant="a"),
        serve("r2", "generate", "answered", Decimal("0.01"), tenant="b"),
        serve("r3", "generate", "answered", Decimal("0.01"), tenant="b"),
        Entry(
            request_id="s",
            stage="batch_setup",
            outcome="answered",
            cost=Decimal("1"),
            phase="setup",
            time=T,
        ),
    ]
    a = allocate(entries, "tenant")
    rows = {r.key: r for r in a.rows}
    # Thirds have no exact decimal form; the shares still add up to the dollar exactly.
    assert rows[("b",)].amortised + rows[("a",)].amortised == Decimal(1)
    assert abs(rows[("a",)].amortised - Decimal(1) / 3) < Decimal("1e-18")
    assert a.total == Decimal("1.03")


def test_setup_of_a_tenant_no_request_has_is_unallocated_not_dropped() -> None:
    entries = [
        serve("r1", "generate", "answered", Decimal("0.01"), tenant="a"),
        Entry(
            request_id="s",
            stage="precompute",
            outcome="answered",
            cost=Decimal("0.5"),
            phase="setup",
            tags={"tenant": "gone"},
            time=T,
        ),
    ]
    a = allocate(entries, "tenant")
    assert a.unallocated == Decimal("0.5") and a.total == Decimal("0.51")


def test_unknown_cost_stays_unknown_with_its_bound() -> None:
    entries = [
        serve("r1", "generate", "answered", Decimal("0.01"), tenant="a"),
        Entry(
            request_id="r2",
            stage="generate",
            outcome="answered",
            cost=None,
            bound=Decimal("0.05"),
            tags={"tenant": "a"},
            time=T,
        ),
    ]
    a = allocate(entries, "tenant")
    (row,) = a.rows
    assert row.cost is None and row.per_request is None and row.unknown == 1
    assert row.cost_bound == Decimal("0.06")
    assert a.total is None and a.to_dict()["total_usd"] is None


def test_several_tags_and_missing_ones_and_unicode() -> None:
    entries = [
        serve("r1", "generate", "answered", Decimal("0.02"), tenant="日本 🚚", team="x"),
        serve("r2", "generate", "answered", Decimal("0.03"), tenant="日本 🚚"),
    ]
    a = allocate(entries, ["tenant", "team"])
    assert {r.key for r in a.rows} == {("日本 🚚", "x"), ("日本 🚚", None)}
    assert a.to_dict()["rows"][0]["tenant"] == "日本 🚚"


def test_empty_ledger_and_bad_keys() -> None:
    a = allocate(Ledger(), "tenant")
    assert a.rows == () and a.total == 0
    with pytest.raises(ConfigError, match="tag names"):
        allocate(Ledger(), [])
    with pytest.raises(ConfigError, match="tag names"):
        allocate(Ledger(), ["tenant", ""])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["precomputed", "generate"]),
            st.decimals(min_value=0, max_value=10, places=6),
        ),
        max_size=25,
    ),
    st.lists(st.decimals(min_value=0, max_value=10, places=6), max_size=4),
)
def test_allocated_totals_equal_the_ledgers_total(
    serves: list[tuple[str, str, Decimal]], setups: list[Decimal]
) -> None:
    entries = [
        serve(f"r{i}", stage, "answered", cost, tenant=t)
        for i, (t, stage, cost) in enumerate(serves)
    ] + [
        Entry(
            request_id=f"s{i}",
            stage="precompute",
            outcome="answered",
            cost=c,
            phase="setup",
            time=T,
        )
        for i, c in enumerate(setups)
    ]
    a = allocate(entries, "tenant")
    assert a.total == sum((e.cost or Decimal(0) for e in entries), Decimal(0))


def _setup(rid: str, cost: Decimal | None, bound: Decimal | None, **tags: str) -> Entry:
    return Entry(
        request_id=rid,
        stage="precompute",
        outcome="answered",
        cost=cost,
        bound=bound,
        phase="setup",
        tags=tags,
        time=T,
    )


@pytest.mark.parametrize(
    ("setup", "bound", "unallocated", "unallocated_bound"),
    [
        (_setup("s", None, Decimal("3"), tenant="b"), Decimal("3.5"), Decimal(0), Decimal(0)),
        (_setup("s", None, None, tenant="b"), None, Decimal(0), Decimal(0)),
        (_setup("s", None, None, tenant="nobody"), Decimal("0.5"), None, None),
        (_setup("s", None, Decimal("2"), tenant="nobody"), Decimal("0.5"), None, Decimal("2")),
    ],
)
def test_unknown_one_off_spend_stays_unknown(
    make_ledger: MakeLedger,
    setup: Entry,
    bound: Decimal | None,
    unallocated: Decimal | None,
    unallocated_bound: Decimal | None,
) -> None:
    ledger = make_ledger()
    ledger.record_many([serve("r1", "generate", "answered", Decimal("0.5"), tenant="b"), setup])
    ledger.flush()
    a = allocate(ledger, "tenant")
    (row,) = a.rows
    matched = setup.tags["tenant"] == "b"
    # Its bound is never booked as a cost, and an unbounded one never adds $0.
    assert a.setup is None and a.total is None
    assert row.cost == (None if matched else Decimal("0.5"))
    assert row.amortised == (None if matched else Decimal(0))
    assert row.unknown == (1 if matched else 0)
    assert row.cost_bound == bound
    assert a.unallocated == unallocated and a.unallocated_bound == unallocated_bound
    d = a.to_dict()
    assert d["total_usd"] is None and d["setup_usd"] is None
