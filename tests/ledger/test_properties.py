"""Properties: an SQLite ledger answers exactly what the in-memory one does, for any entries.

Entries are arbitrary within what an Entry accepts: any Unicode in ids, names and tag keys and
values (Japanese, emoji, tabs, backslashes, quotes), costs with up to 24 decimal places or unknown,
any timezone, repeated ids. Money and counts must be equal exactly, not approximately.
"""

from __future__ import annotations

import decimal
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import Catalogue, Entry, Ledger, Report, SQLiteLedger, Usage
from chainkit.records import FLAGS

# Characters an id, name or tag may hold: any but NUL and lone surrogates.
TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
NAMES = st.one_of(
    st.sampled_from(["generate", "canned", "日本", "🚚", 'a"b', "a\\b", "tab\there", "région"]),
    st.text(TEXT, min_size=1, max_size=12),
)
MONEY = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=0, max_value=1, places=24, allow_nan=False, allow_infinity=False),
)
TAGS = st.dictionaries(NAMES, st.text(TEXT, max_size=8), max_size=3)
WHEN = st.builds(
    lambda minutes, offset: (
        datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    ).astimezone(timezone(timedelta(minutes=offset))),
    st.integers(0, 60 * 24 * 40),
    st.integers(-12 * 60, 14 * 60),
)
ENTRY = st.builds(
    Entry,
    request_id=st.one_of(st.sampled_from(["r1", "r2", "注文-3"]), NAMES),
    stage=st.sampled_from(["intent_scan", "canned", "summarise", "generate", "日本語"]),
    outcome=st.sampled_from(["answered", "passed", "failed", "refused"]),
    cost=MONEY,
    model=st.one_of(st.none(), st.sampled_from(["m1", "anthropic.claude-v2", "模型"])),
    usage=st.one_of(
        st.none(),
        st.builds(
            lambda i, o, r, w, share, q: Usage(i, o, r, w, w * share // 4, q),
            *[st.integers(0, 10**7)] * 4,
            st.integers(0, 4),
            st.integers(0, 50),
        ),
    ),
    avoided_cost=MONEY,
    bound=MONEY,
    estimated=st.booleans(),
    latency_s=st.floats(0, 30, allow_nan=False),
    attempts=st.integers(0, 5),
    intent=st.one_of(st.none(), NAMES),
    tags=TAGS,
    phase=st.sampled_from(["serve", "setup"]),
    time=WHEN,
    flags=st.lists(st.sampled_from(sorted(FLAGS)), max_size=2, unique=True).map(tuple),
)


def both(entries: list[Entry], directory: str) -> tuple[Ledger, SQLiteLedger]:
    memory = Ledger()
    sql = SQLiteLedger(Path(directory) / "p.db")
    for i, e in enumerate(entries):
        memory.record(e)
        sql.record(e)
        if i % 7 == 3:
            sql.record(e)  # the same entry again: stored once
    return memory, sql


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, max_size=25))
def test_sql_aggregations_equal_in_memory_ones_exactly(entries: list[Entry]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        memory, sql = both(entries, directory)
        try:
            assert sql.totals() == memory.totals()
            assert sql.by_stage() == memory.by_stage()
            assert sql.by_model() == memory.by_model()
            assert sql.by_intent() == memory.by_intent()
            assert sql.by_day() == memory.by_day()
            for key in {k for e in entries for k in e.tags} | {"absent"}:
                assert sql.by_tag(key) == memory.by_tag(key), key
            assert sql.entries() == memory.entries()
            assert len(sql) == len(memory) == len({e.id for e in entries})
            for tag in [None, "variant", *{k for e in entries for k in e.tags}]:
                a = Report.from_ledger(sql, tag=tag or "variant", traffic_per_day=1000)
                b = Report.from_ledger(memory, tag=tag or "variant", traffic_per_day=1000)
                assert a.to_dict() == b.to_dict()
        finally:
            sql.close()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(ENTRY, min_size=1, max_size=10),
    st.integers(1, 8),
    st.sampled_from([decimal.ROUND_DOWN, decimal.ROUND_UP, decimal.ROUND_HALF_EVEN]),
)
def test_sums_do_not_depend_on_the_callers_decimal_context(
    entries: list[Entry], precision: int, rounding: str
) -> None:
    expected = Ledger()
    expected.record_many(entries)
    want = expected.totals()
    catalogue = Catalogue.load("seed-2024")
    price = catalogue.cost("anthropic.claude-v2", Usage(11_000, 4_000))
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.rounding = precision, rounding
        ledger = Ledger()
        ledger.record_many(entries)
        assert ledger.totals() == want
        assert catalogue.cost("anthropic.claude-v2", Usage(11_000, 4_000)) == price
        assert Report.build([("x", ledger)]).to_dict() == Report.build([("x", expected)]).to_dict()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(entries=st.lists(ENTRY, max_size=25))
def test_postgres_aggregations_equal_in_memory_ones_exactly(
    entries: list[Entry], pg_dsn: str
) -> None:
    import uuid

    import psycopg

    from chainkit import PostgresLedger

    schema = f"p_{uuid.uuid4().hex[:12]}"
    memory = Ledger()
    pg = PostgresLedger(pg_dsn, schema=schema)
    try:
        for i, e in enumerate(entries):
            memory.record(e)
            pg.record(e)
            if i % 5 == 2:
                pg.record(e)  # stored once
        assert pg.totals() == memory.totals()
        assert pg.by_stage() == memory.by_stage()
        assert pg.by_day() == memory.by_day()
        for key in {k for e in entries for k in e.tags} | {"absent"}:
            assert pg.by_tag(key) == memory.by_tag(key), key
        assert pg.entries() == memory.entries()
        a = Report.from_ledger(pg, traffic_per_day=1000).to_dict()
        assert a == Report.from_ledger(memory, traffic_per_day=1000).to_dict()
    finally:
        pg.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
