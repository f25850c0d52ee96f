"""FOCUS 1.2 export: exact costs, the spec's column rules, every ledger, and the validator."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import Catalogue, ConfigError, Entry, Ledger, PostgresLedger, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.focus import FOCUS_COLUMNS, focus_rows, write_focus

CATALOGUE = Catalogue.load()
T0 = datetime(2026, 11, 3, 9, 15, tzinfo=UTC)
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
SONNET4_US = "us.anthropic.claude-sonnet-4-20250514-v1:0"
NOVA = "amazon.nova-micro-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-text-express-v1"  # priced higher in eu-central-1 than in the US
TAGS_JP = {"tenant": "日本の店 🚚", "チーム": "サポート", "emoji": "🙂👍"}


def entry(
    model: str | None,
    usage: Usage | None,
    *,
    tier: str = "on_demand",
    region: str | None = None,
    minutes: int = 0,
    stage: str = "generate",
    tags: dict[str, str] | None = None,
    cost: Decimal | str | None = "price",
    **kw: Any,
) -> Entry:
    if cost == "price":
        assert model is not None and usage is not None
        cost = CATALOGUE.cost(model, usage, tier=tier, region=region)  # type: ignore[arg-type]
    return Entry(
        request_id=kw.pop("request_id", f"r{minutes}-{stage}-{model}"),
        stage=stage,
        outcome=kw.pop("outcome", "answered"),
        cost=cost,  # type: ignore[arg-type]
        model=model,
        usage=usage,
        tags={"tenant": "acme"} if tags is None else tags,
        time=T0 + timedelta(minutes=minutes),
        **kw,
    )


def sample() -> list[Entry]:
    """Entries of every kind the export must handle."""
    return [
        entry(SONNET, Usage(1234, 567, 2000, 300)),
        entry(SONNET, Usage(1234, 567), tier="batch", minutes=5),
        entry(SONNET4_US, Usage(10_001, 333, 777, 45), tags=TAGS_JP, minutes=70),
        entry(NOVA, Usage(51, 7), stage="intent"),
        entry(NOVA, Usage(51, 9), stage="intent", minutes=2),
        entry(TITAN, Usage(99, 13), region="eu-central-1", minutes=3),
        entry(None, None, stage="canned", cost=Decimal(0), avoided_cost=Decimal("0.0123")),
        entry(None, None, stage="canned", cost=Decimal(0), avoided_cost=None, minutes=1),
        entry(HAIKU, Usage(5, 5), cost=Decimal("0.000123"), minutes=4),  # no catalogue price
        entry(HAIKU, Usage(7, 5), cost=Decimal("0.000123"), minutes=6),
    ]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A function that fills a fresh ledger of each kind with entries."""
    made: list[Ledger] = []
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")

    def make(entries: list[Entry]) -> Ledger:
        if request.param == "memory":
            ledger: Ledger = Ledger()
        elif request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / f"l{len(made)}.db")
        else:
            ledger = PostgresLedger(dsn, schema=f"{schema}_{len(made)}")
        ledger.record_many(entries)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()
    if request.param == "postgres":
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(len(made)):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema}_{i} CASCADE")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def dec(text: str) -> Decimal:
    return Decimal(text)


# -- exact money -----------------------------------------------------------------------------


def test_billed_cost_sums_to_the_ledger_total_exactly_on_every_ledger(
    make_ledger: Any, tmp_path: Path
) -> None:
    ledger = make_ledger(sample())
    out = tmp_path / "focus.csv"
    summary = write_focus(ledger, out)
    rows = read_csv(out)
    assert ledger.cost is not None and ledger.cost > 0
    assert sum(dec(r["BilledCost"]) for r in rows) == ledger.cost
    assert summary.billed_cost == summary.ledger_cost == ledger.cost
    assert summary.entries == len(sample()) and summary.rows == len(rows)
    # Every entry's facts are on one row only: calls and avoided costs add up over the file.
    assert sum(int(r["x_Calls"]) for r in rows) == len(sample())
    assert sum(dec(r["x_AvoidedCost"]) for r in rows) == Decimal("0.0123")
    assert sum(int(r["x_AvoidedCostUnknown"]) for r in rows) == 1


def test_each_row_is_quantity_times_unit_price_exactly(tmp_path: Path) -> None:
    write_focus(sample(), tmp_path / "f.csv")
    for r in read_csv(tmp_path / "f.csv"):
        cost = dec(r["BilledCost"])
        assert dec(r["PricingQuantity"]) * dec(r["ListUnitPrice"]) == dec(r["ListCost"]) == cost
        assert dec(r["PricingQuantity"]) * dec(r["ContractedUnitPrice"]) == dec(r["ContractedCost"])
        assert cost == dec(r["EffectiveCost"]) == dec(r["PricingCurrencyEffectiveCost"])
        assert r["PricingCurrencyListUnitPrice"] == r["ListUnitPrice"]


def test_an_entry_is_split_into_its_token_classes_at_catalogue_prices() -> None:
    usage = Usage(1234, 567, 2000, 300)
    rows, _ = focus_rows([entry(SONNET, usage)])
    price = CATALOGUE.price(SONNET)
    by_class = {r["x_TokenClass"]: r for r in rows}
    assert set(by_class) == {"input", "output", "cache_read", "cache_write"}
    expected = {
        "input": (1234, price.input),
        "output": (567, price.output),
        "cache_read": (2000, price.cache_read),
        "cache_write": (300, price.cache_write),
    }
    for klass, (tokens, per_million) in expected.items():
        r = by_class[klass]
        assert r["PricingQuantity"] == r["ConsumedQuantity"] == tokens
        assert r["ListUnitPrice"] * 1_000_000 == per_million
        assert r["PricingUnit"] == r["ConsumedUnit"] == "Tokens"  # FOCUS UnitFormat: one noun
        assert r["SkuMeter"].endswith("Tokens") and r["SkuMeter"] != "Tokens"
    assert sum(r["BilledCost"] for r in rows) == CATALOGUE.cost(SONNET, usage)
    # The cache read is priced at its own (discounted) rate, never at $0 nor the input rate.
    assert 0 < by_class["cache_read"]["ListUnitPrice"] < by_class["input"]["ListUnitPrice"]


def test_the_tier_and_region_are_found_from_the_price_that_reproduces_the_cost() -> None:
    rows, _ = focus_rows(
        [
            entry(SONNET, Usage(1000, 100), tier="batch"),
            entry(TITAN, Usage(1000, 100), region="eu-central-1"),
        ]
    )
    batch = [r for r in rows if r["x_Model"] == SONNET]
    assert {r["x_PricingTier"] for r in batch} == {"batch"}
    assert all(r["SkuPriceId"].endswith("|batch") for r in batch)
    batch_price = CATALOGUE.price(SONNET, tier="batch")
    assert {r["ListUnitPrice"] * 1_000_000 for r in batch} == {
        batch_price.input,
        batch_price.output,
    }
    titan = [r for r in rows if r["x_Model"] == TITAN]
    assert {(r["RegionId"], r["RegionName"], r["x_RegionSource"]) for r in titan} == {
        ("eu-central-1", "Europe (Frankfurt)", "price")
    }
    assert {r["PricingCategory"] for r in rows} == {"Standard"}


def test_a_region_given_settles_prices_many_regions_share() -> None:
    usage = Usage(1000, 100)
    plain, _ = focus_rows([entry(HAIKU, usage)])
    # Without a region, a price three regions share tells none of them: RegionId stays empty
    # and SkuId names every region the price is (the ledger does not record the region).
    assert {(r["RegionId"], r["RegionName"], r["x_RegionSource"]) for r in plain} == {
        (None, None, "unknown")
    }
    assert {r["SkuId"].split("|")[2] for r in plain} == {"eu-central-1+us-east-1+us-west-2"}
    given, _ = focus_rows([entry(HAIKU, usage)], region="us-west-2")
    assert {r["RegionId"] for r in given} == {"us-west-2"}
    assert {r["SkuId"].split("|")[2] for r in given} == {"us-west-2"}


def test_a_cost_no_catalogue_reproduces_is_written_per_call_exactly() -> None:
    rows, summary = focus_rows(sample())
    ledger_rows = [r for r in rows if r["x_CostSource"] == "ledger" and r["x_Model"] == HAIKU]
    assert len(ledger_rows) == 1  # two calls at the same cost share one row
    (r,) = ledger_rows
    assert (r["PricingUnit"], r["PricingQuantity"], r["ListUnitPrice"]) == (
        "Requests",
        2,
        Decimal("0.000123"),
    )
    assert r["BilledCost"] == Decimal("0.000246")
    assert (r["ConsumedUnit"], r["ConsumedQuantity"]) == ("Tokens", 22)
    assert r["x_TokenClass"] == "all" and r["x_PricingTier"] is None
    assert summary.ledger_priced_entries == 2


def test_free_stages_are_chainkit_rows_at_zero_with_their_avoided_cost() -> None:
    rows, _ = focus_rows(sample())
    canned = [r for r in rows if r["x_Stage"] == "canned"]
    assert {(r["ProviderName"], r["InvoiceIssuerName"], r["BilledCost"]) for r in canned} == {
        ("chainkit", "chainkit", Decimal(0))
    }
    assert sum(r["x_Calls"] for r in canned) == 2
    assert sum(r["x_Answered"] for r in canned) == 2


def test_providers_services_and_publishers() -> None:
    rows, _ = focus_rows(sample())
    bedrock = [r for r in rows if r["x_Model"] not in (None,)]
    assert {(r["ProviderName"], r["ServiceName"]) for r in bedrock} == {("AWS", "Amazon Bedrock")}
    publishers = {
        r["x_Model"]: r["PublisherName"] for r in bedrock if r["x_CostSource"] != "ledger"
    }
    assert publishers[SONNET] == "Anthropic" and publishers[NOVA] == "Amazon"


# -- unknown costs -----------------------------------------------------------------------------


def unknown_sample() -> list[Entry]:
    return [
        *sample(),
        entry(SONNET, None, cost=None, bound=Decimal("0.045"), outcome="failed", minutes=8),
        entry(SONNET, None, cost=None, bound=Decimal("0.045"), outcome="failed", minutes=9),
    ]


def test_unknown_costs_are_refused_by_default_with_the_numbers(make_ledger: Any) -> None:
    ledger = make_ledger(unknown_sample())
    with pytest.raises(ConfigError, match=r"2 ledger entries have unknown cost \(at most \$0\.090"):
        focus_rows(ledger)


def test_unknown_costs_omitted_leave_the_known_total(make_ledger: Any) -> None:
    ledger = make_ledger(unknown_sample())
    rows, summary = focus_rows(ledger, unknown="omit")
    known = sum(e.cost for e in sample() if e.cost is not None)
    assert sum(r["BilledCost"] for r in rows) == known == summary.billed_cost
    assert ledger.cost is None and summary.ledger_cost is None  # the ledger's total is unknown
    assert (summary.unknown_entries, summary.unknown_bound) == (2, Decimal("0.090"))


def test_unknown_costs_at_their_bound_sum_to_the_ledger_cost_bound(make_ledger: Any) -> None:
    ledger = make_ledger(unknown_sample())
    rows, _ = focus_rows(ledger, unknown="bound")
    assert sum(r["BilledCost"] for r in rows) == ledger.totals().cost_bound
    bound = [r for r in rows if r["x_CostStatus"] == "bound"]
    assert [(r["PricingQuantity"], r["ListUnitPrice"], r["BilledCost"]) for r in bound] == [
        (2, Decimal("0.045"), Decimal("0.090"))
    ]
    with pytest.raises(ConfigError, match="no bound"):
        focus_rows([entry(SONNET, None, cost=None, outcome="failed")], unknown="bound")


# -- tags, time, empty -----------------------------------------------------------------------


def test_japanese_and_emoji_tags_are_the_focus_json_object(
    make_ledger: Any, tmp_path: Path
) -> None:
    ledger = make_ledger([entry(SONNET4_US, Usage(10, 2), tags=TAGS_JP)])
    write_focus(ledger, tmp_path / "f.csv")
    raw = (tmp_path / "f.csv").read_bytes().decode("utf-8")
    assert "日本の店 🚚" in raw  # UTF-8 as is, not \\u escapes
    rows = read_csv(tmp_path / "f.csv")
    assert {json.dumps(json.loads(r["Tags"]), sort_keys=True) for r in rows} == {
        json.dumps(TAGS_JP, sort_keys=True)
    }


def test_rows_are_split_by_tag_set_and_hour_and_merged_within_them() -> None:
    rows, _ = focus_rows(
        [
            entry(NOVA, Usage(10, 1), stage="intent", minutes=0),
            entry(NOVA, Usage(20, 2), stage="intent", minutes=30),  # same hour: merged
            entry(NOVA, Usage(40, 4), stage="intent", minutes=61),  # next hour
            entry(NOVA, Usage(80, 8), stage="intent", tags={"tenant": "other"}),
        ]
    )
    inputs = sorted(
        (r["ChargePeriodStart"], r["Tags"], r["PricingQuantity"])
        for r in rows
        if r["x_TokenClass"] == "input"
    )
    assert inputs == [
        ("2026-11-03T09:00:00Z", '{"tenant": "acme"}', 30),
        ("2026-11-03T09:00:00Z", '{"tenant": "other"}', 80),
        ("2026-11-03T10:00:00Z", '{"tenant": "acme"}', 40),
    ]
    day, _ = focus_rows([entry(NOVA, Usage(10, 1), minutes=m) for m in (0, 61, 300)], period="day")
    assert {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in day} == {
        ("2026-11-03T00:00:00Z", "2026-11-04T00:00:00Z")
    }
    assert [r["PricingQuantity"] for r in day if r["x_TokenClass"] == "input"] == [30]


def test_billing_periods_are_calendar_months_in_utc() -> None:
    late = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    e = Entry("r", "generate", "answered", cost=Decimal(1), model="m", usage=None, time=late)
    e2 = Entry(
        "r2", "generate", "answered", cost=Decimal(1), model="m", time=late + timedelta(hours=1)
    )
    rows, _ = focus_rows([e, e2])
    assert sorted((r["BillingPeriodStart"], r["BillingPeriodEnd"]) for r in rows) == [
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ]


def test_an_empty_ledger_has_no_rows_and_no_file_is_written(
    make_ledger: Any, tmp_path: Path
) -> None:
    rows, summary = focus_rows(make_ledger([]))
    assert rows == []
    assert (summary.rows, summary.billed_cost, summary.ledger_cost) == (0, 0, 0)
    # A header-only file fails the FinOps validator (its rules need a row), so it is refused.
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=r"Nothing to write .* 0 entries"):
        write_focus(make_ledger([]), out / "f.csv")
    assert list(out.iterdir()) == []  # no file, and no temporary file left behind


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="period"):
        focus_rows([], period="week")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown="):
        focus_rows([], unknown="zero")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="billing_account_id"):
        focus_rows([], billing_account_id=" ")


# -- the specification's column rules -----------------------------------------------------

MANDATORY = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory",
    "ServiceName",
]  # fmt: skip
# Conditional columns the applicability criteria of a token ledger switch on (see
# /work/shared/FOCUS.md): usage measurement, unit pricing, a public price list, several pricing
# categories, regions and tags; and the recommended ones.
CONDITIONAL = [
    "ConsumedQuantity", "ConsumedUnit", "ListUnitPrice", "ContractedUnitPrice", "PricingCategory",
    "SkuId", "SkuPriceId", "SkuMeter", "SkuPriceDetails", "RegionId", "RegionName", "Tags",
    "PricingCurrency", "PricingCurrencyListUnitPrice", "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost", "InvoiceId", "ChargeFrequency", "ServiceSubcategory",
]  # fmt: skip
NOT_NULL = [c for c in MANDATORY if c != "ChargeClass"] + [
    # Not null for Usage rows that are not corrections (every row here).
    "ConsumedQuantity", "ConsumedUnit", "ListUnitPrice", "ContractedUnitPrice", "PricingCategory",
    "SkuId", "SkuPriceId", "PricingCurrency", "ChargeFrequency",
]  # fmt: skip
DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SERVICE_CATEGORIES = {"AI and Machine Learning"}


def check_spec(rows: list[dict[str, str]]) -> None:
    """Every FOCUS 1.2 column rule the export's rows can break, checked row by row."""
    by_price: dict[str, set[tuple[str, str, str]]] = {}
    for r in rows:
        for c in NOT_NULL:
            assert r[c] != "", (c, r)
        assert r["ChargeClass"] == ""  # no correction
        assert r["CommitmentDiscountStatus"] == ""
        assert r["ChargeCategory"] == "Usage" and r["ChargeFrequency"] == "Usage-Based"
        assert r["BillingCurrency"] == r["PricingCurrency"] == "USD"
        for c in ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd"):
            assert DATETIME.fullmatch(r[c]), (c, r[c])
        assert r["ChargePeriodStart"] < r["ChargePeriodEnd"]
        assert r["BillingPeriodStart"] <= r["ChargePeriodStart"] < r["BillingPeriodEnd"]
        assert r["InvoiceIssuerName"] == r["ProviderName"]  # billed by the provider itself
        assert r["ServiceCategory"] in SERVICE_CATEGORIES
        assert r["PricingCategory"] in {"Standard", "Dynamic", "Committed", "Other"}
        # Decimals carry a point (CSV readers infer types); prices are non-negative.
        for c in ("BilledCost", "ListCost", "ContractedCost", "EffectiveCost", "ListUnitPrice",
                  "ContractedUnitPrice", "PricingQuantity", "ConsumedQuantity"):  # fmt: skip
            assert "." in r[c] and "E" not in r[c].upper() and dec(r[c]) >= 0, (c, r[c])
        assert dec(r["PricingQuantity"]) * dec(r["ListUnitPrice"]) == dec(r["ListCost"])
        assert dec(r["PricingQuantity"]) * dec(r["ContractedUnitPrice"]) == dec(r["ContractedCost"])
        # Identifiers never look like numbers (a reader would type them as such).
        for c in ("BillingAccountId", "SkuId", "SkuPriceId", "RegionId"):
            if r[c]:
                assert not re.fullmatch(r"[\d.eE+-]+", r[c]), (c, r[c])
                assert r[c] == r[c].strip()
        # Key-value columns are JSON objects; SkuPriceDetails' own keys are x_ prefixed.
        tags = json.loads(r["Tags"])
        assert isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
        details = json.loads(r["SkuPriceDetails"])
        assert isinstance(details, dict) and all(k.startswith("x_") for k in details)
        assert bool(r["RegionId"]) == bool(r["RegionName"])
        assert all(c.startswith("x_") for c in r if c not in MANDATORY + CONDITIONAL
                   and c != "CommitmentDiscountStatus")  # fmt: skip
        if r["x_CostSource"] != "ledger":
            by_price.setdefault(r["SkuPriceId"], set()).add(
                (r["SkuId"], r["ListUnitPrice"], r["PricingUnit"])
            )
    # One SkuId, one list price and one unit per SkuPriceId.
    assert all(len(v) == 1 for v in by_price.values()), by_price


def test_every_row_follows_the_spec_rules(tmp_path: Path) -> None:
    write_focus(unknown_sample(), tmp_path / "f.csv", unknown="bound", region="us-east-1")
    rows = read_csv(tmp_path / "f.csv")
    assert list(rows[0]) == FOCUS_COLUMNS
    assert set(MANDATORY + CONDITIONAL) <= set(FOCUS_COLUMNS)
    check_spec(rows)


def test_sku_ids_are_stable_per_model_region_and_token_class() -> None:
    rows, _ = focus_rows(
        [entry(NOVA, Usage(10, 1), stage="intent", minutes=m, tags={"t": str(m)}) for m in (0, 90)]
        + [entry(NOVA, Usage(10, 1), tier="batch", stage="intent")],
        region="us-east-1",
    )
    skus = {(r["ChargePeriodStart"], r["x_TokenClass"], r["x_PricingTier"]): r for r in rows}
    assert (
        skus[("2026-11-03T09:00:00Z", "input", "on_demand")]["SkuId"]
        == (skus[("2026-11-03T10:00:00Z", "input", "on_demand")]["SkuId"])
    )
    assert (
        skus[("2026-11-03T09:00:00Z", "input", "on_demand")]["SkuId"]
        == skus[("2026-11-03T09:00:00Z", "input", "batch")]["SkuId"]
    )
    assert (
        skus[("2026-11-03T09:00:00Z", "input", "on_demand")]["SkuPriceId"]
        != skus[("2026-11-03T09:00:00Z", "input", "batch")]["SkuPriceId"]
    )


MODELS = [SONNET, SONNET4_US, NOVA, HAIKU, TITAN]


@st.composite
def priced_entries(draw: st.DrawFn) -> list[Entry]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        model = draw(st.sampled_from(MODELS))
        card = CATALOGUE.card(model)
        price = draw(st.sampled_from([p for p in card.prices if "-" in p.region]))
        has_cache = price.cache_read is not None and price.cache_write is not None
        usage = Usage(
            draw(st.integers(0, 10**7)),
            draw(st.integers(0, 10**5)),
            draw(st.integers(0, 10**6)) if has_cache else 0,
            draw(st.integers(0, 10**5)) if has_cache else 0,
        )
        cost = price.cost(usage)
        out.append(
            Entry(
                f"r{i}",
                "generate",
                "answered",
                cost=cost,
                model=model,
                usage=usage,
                tags={"tenant": draw(st.sampled_from(["a", "日本", "🚚"]))},
                time=T0 + timedelta(minutes=draw(st.integers(0, 3000))),
            )
        )
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(priced_entries())
def test_property_billed_cost_is_exact_and_rows_follow_the_spec(entries: list[Entry]) -> None:
    rows, summary = focus_rows(entries)
    total = sum((e.cost for e in entries if e.cost is not None), Decimal(0))
    assert summary.billed_cost == total == sum((r["BilledCost"] for r in rows), Decimal(0))
    tokens = sum(e.usage.total_tokens for e in entries if e.usage is not None)
    assert sum(r["PricingQuantity"] for r in rows if r["PricingUnit"] != "Requests") <= tokens
    for r in rows:
        assert r["PricingQuantity"] * r["ListUnitPrice"] == r["ListCost"]


# -- Parquet ----------------------------------------------------------------------------------


def test_parquet_keeps_exact_decimals(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    summary = write_focus(sample(), tmp_path / "f.parquet")
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column_names == FOCUS_COLUMNS
    billed = table.column("BilledCost").to_pylist()
    assert sum(billed) == summary.billed_cost == sum(e.cost for e in sample() if e.cost is not None)
    tags = [json.loads(t) for t in table.column("Tags").to_pylist()]
    assert {"tenant": "acme"} in tags


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"chainkit\[finops\]"):
        write_focus(sample(), tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


# -- the command -----------------------------------------------------------------------------


def test_chainkit_export_focus_prints_the_sums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SQLiteLedger(tmp_path / "l.db") as ledger:
        ledger.record_many(sample())
        total = ledger.cost
    out = tmp_path / "f.csv"
    assert main(["export", str(tmp_path / "l.db"), "--format", "focus", "--out", str(out),
                 "--summary-format", "json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["billed_cost"] == printed["ledger_cost"] == str(total)
    assert sum(dec(r["BilledCost"]) for r in read_csv(out)) == total
    for fmt in ("table", "markdown", "csv"):
        assert main(["export", str(tmp_path / "l.db"), "--format", "focus", "--out", str(out),
                     "--summary-format", fmt, "--period", "day"]) == 0  # fmt: skip
        assert str(total) in capsys.readouterr().out


def test_chainkit_export_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SQLiteLedger(tmp_path / "l.db") as ledger:
        ledger.record_many(unknown_sample())
    db = str(tmp_path / "l.db")
    out = str(tmp_path / "f.csv")
    assert main(["export", db, "--format", "focus", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--unknown omit" in err and "2 ledger entries" in err
    assert main(["export", db, "--format", "focus"]) == 2
    assert "pass --out FILE" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.db"), "--format", "focus", "--out", out]) == 2
    assert "No ledger at" in capsys.readouterr().err
    assert main(["export", db, "--format", "focus", "--out", out, "--unknown", "bound"]) == 0


def test_chainkit_export_reads_a_postgres_ledger(
    pg_dsn: str, pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        ledger.record_many(sample())
        total = ledger.cost
    out = tmp_path / "f.csv"
    assert main(["export", pg_dsn, "--schema", pg_schema, "--format", "focus", "--out", str(out),
                 "--summary-format", "json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["billed_cost"] == str(total)


# -- the support chatbot recipe, end to end ----------------------------------------------------


@pytest.mark.parametrize("scenario", ["demo", "data"])
def test_support_chatbot_ledger_exports_to_its_exact_total(
    tmp_path: Path, scenario: str, request: pytest.FixtureRequest
) -> None:
    from recipes import chatbot

    db = tmp_path / "bot.db"
    argv = ["--ledger", str(db), "--format", "json"]
    if scenario == "data":  # the support bot on real traffic (recipes/support_bot.py)
        argv += ["--data-dir", str(request.getfixturevalue("shared_data"))]
    assert chatbot.main(argv) == 0
    with SQLiteLedger(db, read_only=True) as ledger:
        total = ledger.cost
        entries = len(ledger)
        summary = write_focus(ledger, tmp_path / "bot.csv")
    rows = read_csv(tmp_path / "bot.csv")
    assert total is not None and total > 0
    assert sum(dec(r["BilledCost"]) for r in rows) == total == summary.billed_cost
    assert summary.entries == entries == sum(int(r["x_Calls"]) for r in rows)
    assert summary.ledger_priced_entries == 0  # every model cost explained by a catalogue price
    check_spec(rows)


# -- the FinOps Foundation's validator --------------------------------------------------------

VALIDATOR_ENV = "CHAINKIT_FOCUS_VALIDATOR"
CRITERIA = (
    "USAGE_MEASUREMENT_SUPPORTED,UNIT_PRICING_SUPPORTED,PUBLIC_PRICE_LIST_SUPPORTED,"
    "MULTIPLE_PRICING_CATEGORIES_SUPPORTED,REGION_SUPPORTED,TAGGING_SUPPORTED"
)
# InvoiceId-C-004-C (must be null) and -C-005-C (must not be null) sit under one OR rule, which
# passes; one leaf always fails. The validator's own contradiction, not the file's.
VALIDATOR_CONTRADICTIONS = {"InvoiceId-C-005-C"}


def run_validator(path: Path) -> tuple[dict[str, int], set[str]]:
    exe = os.environ.get(VALIDATOR_ENV)
    if not exe:
        pytest.skip(
            f"the FOCUS validator is a separate tool (Python >= 3.12, its own venv): set "
            f"{VALIDATOR_ENV} to its focus-validator executable (see README, FinOps)"
        )
    rules = Path(exe).resolve().parents[1] / "lib"
    found = sorted(rules.glob("python3*/site-packages/focus_validator"))
    assert found, f"no focus_validator package beside {exe}"
    work = path.parent / "validator"
    work.mkdir(exist_ok=True)
    # It reads its currency codes relative to the working directory.
    (work / "focus_validator").symlink_to(found[0], target_is_directory=True)
    done = subprocess.run(
        [exe, "--data-file", str(path), "--block-download", "--validate-version", "1.2",
         "--applicability-criteria", CRITERIA],
        cwd=work, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = done.stdout + done.stderr
    totals = re.search(r"Total: (\d+) \| Pass: (\d+) \| Fail: (\d+) \| Skipped: (\d+)", text)
    assert totals, text[-2000:]
    failed = set(re.findall(r"❌ (\S+): FAIL", text))
    names = ("total", "pass", "fail", "skipped")
    return dict(zip(names, map(int, totals.groups()), strict=True)), failed


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_finops_foundation_validator_accepts_the_file(tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"focus{suffix}"
    write_focus(unknown_sample(), path, unknown="bound", region="us-east-1")
    totals, failed = run_validator(path)
    assert failed <= VALIDATOR_CONTRADICTIONS, failed
    assert totals["pass"] > 200


# -- regions, prices and periods, after an adversarial review -----------------------------------

S45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.mark.parametrize(
    "bad", ["mars-1", "US-EAST-1", "eu", "global", "", " us-east-1", "us-east-9"]
)
def test_a_region_that_is_not_an_aws_region_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="not an AWS region"):
        focus_rows([entry(NOVA, Usage(10, 1))], region=bad)


def test_a_given_region_never_contradicts_the_price_that_reproduces_the_cost() -> None:
    # Titan costs more in eu-central-1: an eu-central-1 cost exported "from us-east-1" keeps
    # its price's region, flagged; a us-east-1 cost (us-east-1 and us-west-2 share the price)
    # exported "from eu-central-1" cannot be placed: no RegionId, flagged.
    eu, _ = focus_rows([entry(TITAN, Usage(1000, 100), region="eu-central-1")], region="us-east-1")
    assert {(r["RegionId"], r["x_RegionSource"]) for r in eu} == {("eu-central-1", "conflict")}
    us, _ = focus_rows([entry(TITAN, Usage(1000, 100))], region="eu-central-1")
    assert {(r["RegionId"], r["RegionName"], r["x_RegionSource"]) for r in us} == {
        (None, None, "conflict")
    }
    # The unit price stays the one that reproduces the cost.
    assert {r["ListUnitPrice"] * 1_000_000 for r in us} == {
        CATALOGUE.price(TITAN).input,
        CATALOGUE.price(TITAN).output,
    }
    # A geography's price applies in each of its regions.
    eu45, _ = focus_rows([entry(S45, Usage(1000, 100), region="eu")], region="eu-west-1")
    assert {(r["RegionId"], r["x_RegionSource"]) for r in eu45} == {("eu-west-1", "given")}


def test_without_a_region_a_shared_price_leaves_region_id_empty() -> None:
    s35 = "anthropic.claude-3-5-sonnet-20241022-v2:0"
    # Priced for us-west-2, at the rate us-east-1 shares: the ledger cannot tell which.
    rows, _ = focus_rows([entry(s35, Usage(1000, 100), region="us-west-2")])
    assert {(r["RegionId"], r["x_RegionSource"]) for r in rows} == {(None, "unknown")}
    assert {r["SkuId"].split("|")[2] for r in rows} == {"us-east-1+us-west-2"}


def test_a_geographic_profile_price_is_never_a_us_sku() -> None:
    for profile in ("eu", "jp"):
        model = f"{profile}.{S45}"
        rows, _ = focus_rows([entry(model, Usage(1000, 100))])
        assert {r["SkuId"].split("|")[2] for r in rows} == {profile}, model
        assert {r["RegionId"] for r in rows} == {None}
    # The base model id priced at the eu rate, which four other geographies share: every one.
    rows, _ = focus_rows([entry(S45, Usage(1000, 100), region="eu")])
    assert {r["SkuId"].split("|")[2] for r in rows} == {"apac+au+eu+jp+us"}


def test_equal_ledger_prices_are_one_sku_price_whatever_their_trailing_zeros(
    make_ledger: Any,
) -> None:
    calls = [
        entry(HAIKU, Usage(1, 1), cost=Decimal("0.10000"), request_id="a"),
        entry(HAIKU, Usage(1, 1), cost=Decimal("0.1"), request_id="b"),
        entry(HAIKU, Usage(1, 1), cost=Decimal("1E+1"), request_id="c"),
    ]
    rows, _ = focus_rows(make_ledger(calls))
    assert sorted((r["SkuPriceId"].split("|")[-1], r["PricingQuantity"]) for r in rows) == [
        ("0.1", 2),
        ("10", 1),
    ]


def test_a_model_less_cost_is_not_called_free() -> None:
    rows, _ = focus_rows(
        [
            entry(None, None, stage="canned", cost=Decimal(0)),
            entry(None, None, stage="webhook", cost=Decimal("0.002")),
        ]
    )
    described = {r["x_Stage"]: r["ChargeDescription"] for r in rows}
    assert described["canned"] == "Requests of free stage (stage canned)"
    assert "free" not in described["webhook"]


def test_since_and_until_select_entries_and_keep_whole_charge_periods(make_ledger: Any) -> None:
    calls = [entry(NOVA, Usage(10, m + 1), minutes=m) for m in (0, 40, 70, 130)]
    since, until = T0 + timedelta(minutes=30), T0 + timedelta(minutes=100)
    rows, summary = focus_rows(make_ledger(calls), since=since, until=until)
    assert summary.entries == 2
    assert summary.billed_cost == calls[1].cost + calls[2].cost  # type: ignore[operator]
    assert {(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in rows} == {
        ("2026-11-03T09:00:00Z", "2026-11-03T10:00:00Z"),
        ("2026-11-03T10:00:00Z", "2026-11-03T11:00:00Z"),
    }
    with pytest.raises(ConfigError, match="timezone"):
        focus_rows([], since=datetime(2026, 1, 1))
