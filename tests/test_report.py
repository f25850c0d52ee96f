"""Reports: variant totals, per-request cost, projections, savings, setup spend, shapes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from decimal import Decimal

import pytest

from chainkit import ConfigError, Entry, Ledger, Report, Usage
from chainkit.report import CSV_COLUMNS


def _record(
    ledger: Ledger,
    request_id: str,
    stage: str,
    cost: Decimal | None,
    **fields: object,
) -> None:
    ledger.record(
        Entry(
            request_id=request_id,
            stage=stage,
            outcome=fields.pop("outcome", "answered"),  # type: ignore[arg-type]
            cost=cost,
            **fields,  # type: ignore[arg-type]
        )
    )


def single_llm() -> Ledger:
    """The article's baseline: every interaction goes to the powerful model ($0.006 each)."""
    ledger = Ledger()
    for i in range(4):
        _record(ledger, f"s{i}", "generate", Decimal("0.006"), model="generic.powerful",
                usage=Usage(50, 50), tags={"variant": "single"})  # fmt: skip
    return ledger


def chained() -> Ledger:
    """Intent scan on all four; two answered canned, two by the responder."""
    ledger = Ledger()
    tags = {"variant": "chained"}
    for i in range(4):
        _record(ledger, f"c{i}", "intent", Decimal("0.0003"), model="generic.intent",
                usage=Usage(80, 20), outcome="passed", tags=tags)  # fmt: skip
        if i < 2:
            _record(ledger, f"c{i}", "canned", Decimal(0), avoided_cost=Decimal("0.006"),
                    tags=tags)  # fmt: skip
        else:
            _record(ledger, f"c{i}", "generate", Decimal("0.0012"), model="generic.responder",
                    usage=Usage(150, 50), tags=tags)  # fmt: skip
    return ledger


@pytest.fixture
def report() -> Report:
    return Report.build([("single", single_llm()), ("chained", chained())], traffic_per_day=10_000)


def test_totals_and_cost_per_request(report: Report) -> None:
    single, chain = report.variants
    assert (single.name, single.requests) == ("single", 4)
    assert single.total_cost == Decimal("0.024")
    assert single.cost_per_request == Decimal("0.006")
    assert (chain.name, chain.requests) == ("chained", 4)
    assert chain.total_cost == Decimal("0.0036")
    assert chain.cost_per_request == Decimal("0.0009")


def test_daily_and_monthly_projection_over_30_days(report: Report) -> None:
    single, chain = report.variants
    assert single.daily_cost == Decimal(60)
    assert single.monthly_cost == Decimal(1800)
    assert chain.daily_cost == Decimal(9)
    assert chain.monthly_cost == Decimal(270)


def test_no_projection_without_traffic() -> None:
    (variant,) = Report.build([("single", single_llm())]).variants
    assert variant.daily_cost is None
    assert variant.monthly_cost is None
    assert variant.cost_per_request == Decimal("0.006")


def test_savings_against_first_variant(report: Report) -> None:
    single, chain = report.variants
    assert single.savings_pct == Decimal("0.0")
    assert chain.savings_pct == Decimal("85.0")


def test_savings_quantised_to_a_tenth() -> None:
    base, cheap = Ledger(), Ledger()
    _record(base, "b", "generate", Decimal("0.003"))
    _record(cheap, "c", "generate", Decimal("0.001"))
    _, variant = Report.build([("base", base), ("cheap", cheap)]).variants
    assert variant.savings_pct == Decimal("66.7")
    assert str(variant.savings_pct) == "66.7"


def test_savings_negative_when_dearer_than_baseline() -> None:
    base, dear = Ledger(), Ledger()
    _record(base, "b", "generate", Decimal("0.004"))
    _record(dear, "d", "generate", Decimal("0.005"))
    assert Report.build([("base", base), ("dear", dear)]).variants[1].savings_pct == Decimal(
        "-25.0"
    )


def test_by_stage_lines(report: Report) -> None:
    lines = {line.stage: line for line in report.variants[1].by_stage}
    assert list(lines) == ["intent", "canned", "generate"]
    assert (lines["intent"].calls, lines["intent"].answered) == (4, 0)
    assert (lines["intent"].input_tokens, lines["intent"].output_tokens) == (320, 80)
    assert lines["intent"].cost == Decimal("0.0012")
    assert (lines["canned"].answered, lines["canned"].cost) == (2, Decimal(0))
    assert lines["canned"].avoided_cost == Decimal("0.012")
    assert lines["generate"].cost == Decimal("0.0024")


def test_unknown_cost_gives_none_fields_and_unknown_in_table() -> None:
    unpriced = chained()
    _record(unpriced, "c9", "generate", None, model="unpriced.model", tags={"variant": "x"})
    report = Report.build([("single", single_llm()), ("unpriced", unpriced)], traffic_per_day=100)
    variant = report.variants[1]
    assert variant.requests == 5
    assert variant.total_cost is None
    assert variant.cost_per_request is None
    assert variant.daily_cost is None
    assert variant.monthly_cost is None
    assert variant.savings_pct is None
    row = next(line for line in report.to_table().splitlines() if line.startswith("unpriced"))
    assert "unknown" in row
    assert row.rstrip().endswith("-")
    data = report.to_dict()["variants"][1]
    assert data["total_cost_usd"] is None
    assert data["monthly_cost_usd"] is None
    assert data["savings_pct"] is None


def test_unknown_baseline_leaves_every_saving_unknown() -> None:
    base = Ledger()
    _record(base, "b", "generate", None)
    report = Report.build([("base", base), ("chained", chained())])
    assert [v.savings_pct for v in report.variants] == [None, None]


def test_setup_entries_excluded_from_per_request_cost() -> None:
    ledger = chained()
    _record(ledger, "precompute-1", "precompute", Decimal("0.5"), phase="setup",
            model="generic.responder", usage=Usage(40_000, 43_333))  # fmt: skip
    report = Report.build([("chained", ledger)], traffic_per_day=10_000)
    (variant,) = report.variants
    assert variant.requests == 4
    assert variant.total_cost == Decimal("0.0036")
    assert variant.cost_per_request == Decimal("0.0009")
    assert variant.monthly_cost == Decimal(270)
    assert variant.setup_cost == Decimal("0.5")
    assert "precompute" in [line.stage for line in variant.by_stage]
    assert "one-off setup $0.50" in report.to_table()
    assert report.to_dict()["variants"][0]["setup_cost_usd"] == "0.50"


def test_variant_without_setup_has_zero_setup_cost(report: Report) -> None:
    assert report.variants[0].setup_cost == Decimal(0)
    assert "one-off setup" not in report.to_table()


def test_build_accepts_plain_entry_lists() -> None:
    report = Report.build([("single", single_llm().entries())], traffic_per_day=10_000)
    assert report.variants[0].monthly_cost == Decimal(1800)


def test_to_dict_shape(report: Report) -> None:
    data = json.loads(report.to_json())
    assert set(data) == {"variants", "assumptions", "notes"}
    assert [v["name"] for v in data["variants"]] == ["single", "chained"]
    variant = data["variants"][1]
    assert set(variant) == {
        "name",
        "requests",
        "total_cost_usd",
        "cost_per_request_usd",
        "cost_per_request_p50_usd",
        "cost_per_request_p90_usd",
        "daily_cost_usd",
        "monthly_cost_usd",
        "savings_pct",
        "setup_cost_usd",
        "by_stage",
    }
    stage = variant["by_stage"][0]
    assert set(stage) == {
        "stage",
        "calls",
        "answered",
        "share",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "avoided_usd",
        "latency_ms_p50",
        "latency_ms_mean",
    }
    assert data["assumptions"] == {"traffic_per_day": 10_000, "days_per_month": 30}


def test_to_dict_money_as_decimal_strings(report: Report) -> None:
    single, chain = report.to_dict()["variants"]
    assert single["monthly_cost_usd"] == "1800.00"
    assert single["cost_per_request_usd"] == "0.006"
    assert chain["total_cost_usd"] == "0.0036"
    assert chain["cost_per_request_usd"] == "0.0009"
    assert chain["daily_cost_usd"] == "9.00"
    assert chain["monthly_cost_usd"] == "270.00"
    assert chain["savings_pct"] == "85.0"
    assert chain["requests"] == 4
    canned = next(s for s in chain["by_stage"] if s["stage"] == "canned")
    assert (canned["cost_usd"], canned["avoided_usd"]) == ("0.00", "0.012")
    assert Decimal(chain["monthly_cost_usd"]) == Decimal(270)


def test_to_dict_without_traffic_has_no_projection_keys() -> None:
    data = Report.build([("single", single_llm())]).to_dict()
    assert "monthly_cost_usd" not in data["variants"][0]
    assert "daily_cost_usd" not in data["variants"][0]
    assert data["assumptions"] == {}


def test_to_dict_keeps_given_assumptions_and_notes() -> None:
    report = Report.build(
        [("single", single_llm())],
        traffic_per_day=10,
        assumptions={"days_per_month": 31, "source": "article"},
        notes=["a note"],
    )
    data = report.to_dict()
    assert data["assumptions"] == {"days_per_month": 31, "source": "article", "traffic_per_day": 10}
    assert data["notes"] == ["a note"]


def test_from_ledger_groups_by_variant_tag() -> None:
    ledger = Ledger()
    for source in (single_llm(), chained()):
        for entry in source:
            ledger.record(entry)
    report = Report.from_ledger(ledger, traffic_per_day=10_000)
    assert [v.name for v in report.variants] == ["single", "chained"]
    assert [v.monthly_cost for v in report.variants] == [Decimal(1800), Decimal(270)]
    assert report.variants[1].savings_pct == Decimal("85.0")


def test_from_ledger_variants_sets_order_and_baseline() -> None:
    ledger = Ledger()
    for source in (single_llm(), chained()):
        for entry in source:
            ledger.record(entry)
    _record(ledger, "other", "generate", Decimal(1), tags={"variant": "ignored"})
    report = Report.from_ledger(ledger, variants=["chained", "single"])
    assert [v.name for v in report.variants] == ["chained", "single"]
    assert report.variants[0].savings_pct == Decimal("0.0")
    # (0.0009 - 0.006) / 0.0009 = -566.66...%
    assert report.variants[1].savings_pct == Decimal("-566.7")


def test_from_ledger_untagged_entries_form_all() -> None:
    ledger = Ledger()
    _record(ledger, "r1", "generate", Decimal("0.25"))
    _record(ledger, "r2", "generate", Decimal("0.75"), tags={"team": "x"})
    report = Report.from_ledger(ledger)
    assert [(v.name, v.requests, v.total_cost) for v in report.variants] == [("all", 2, Decimal(1))]


def test_from_ledger_other_tag() -> None:
    ledger = Ledger()
    _record(ledger, "r1", "generate", Decimal("0.25"), tags={"tenant": "acme"})
    _record(ledger, "r2", "generate", Decimal("0.75"), tags={"tenant": "globex"})
    report = Report.from_ledger(ledger, tag="tenant")
    assert [(v.name, v.total_cost) for v in report.variants] == [
        ("acme", Decimal("0.25")),
        ("globex", Decimal("0.75")),
    ]


def test_to_table_contains_the_figures(report: Report) -> None:
    table = report.to_table()
    assert "per month @ 10,000/day" in table
    single_row = next(line for line in table.splitlines() if line.startswith("single"))
    assert "$0.024 " in single_row
    assert "$0.006 " in single_row
    assert "$1,800.00" in single_row
    assert "0.0%" in single_row
    chained_row = next(line for line in table.splitlines() if line.startswith("chained"))
    assert "$0.0036" in chained_row
    assert "$0.0009 " in chained_row
    assert "$270.00" in chained_row
    assert chained_row.endswith("85.0%")
    canned_row = next(line for line in table.splitlines() if line.strip().startswith("canned"))
    assert canned_row.split()[-3:-1] == ["$0.00", "$0.012"]  # cost, avoided; then p50 ms


def test_to_markdown_has_every_table_the_terminal_shows(report: Report) -> None:
    lines = report.to_markdown().splitlines()
    assert lines[0] == (
        "| variant | requests | total | per request | per month @ 10,000/day | savings |"
    )
    assert lines[1] == "| --- |" + " ---: |" * 5
    assert lines[2] == "| single | 4 | $0.024 | $0.006 | $1,800.00 | 0.0% |"
    assert lines[3] == "| chained | 4 | $0.0036 | $0.0009 | $270.00 | 85.0% |"
    # Then, as on the terminal, a table of stages for each variant.
    assert lines.count("**single**") == lines.count("**chained**") == 1
    stage_heads = [i for i, line in enumerate(lines) if line.startswith("| stage |")]
    assert len(stage_heads) == 2
    chained_stages = lines[stage_heads[1] + 2 : stage_heads[1] + 5]
    assert [row.split(" | ")[0] for row in chained_stages] == ["| intent", "| canned", "| generate"]
    canned = chained_stages[1].split(" | ")
    assert canned[1:8] == ["2", "2", "50.0%", "0", "0", "$0.00", "$0.012"]
    table_rows = [line for line in report.to_table().splitlines() if line.strip()]
    markdown_rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(markdown_rows) == len(table_rows) - 2  # the table's two variant titles


def test_to_markdown_keeps_quality_and_notes_and_escapes_pipes() -> None:
    ledger = single_llm()
    (variant,) = Report.build([("a|b", ledger)]).variants
    variant = dataclasses.replace(variant, quality={"rouge1_f": 0.41234})
    text = Report((variant,), notes=("measured offline",)).to_markdown()
    assert "| a\\|b | 4 |" in text
    assert "Quality: rouge1 f 0.412." in text
    assert text.endswith("\n- measured offline")
    assert "per month" not in text  # no traffic, no projection column (as in the table)


def test_unknown_setup_cost_is_shown_as_unknown_not_hidden() -> None:
    ledger = chained()
    _record(ledger, "precompute-1", "precompute", None, phase="setup", model="unpriced.model")
    report = Report.build([("chained", ledger)])
    (variant,) = report.variants
    assert variant.setup_cost is None
    assert variant.cost_per_request == Decimal("0.0009")
    assert "one-off setup unknown" in report.to_table()


def test_stage_share_is_answered_over_requests_and_quality_is_reported() -> None:
    ledger = Ledger()
    for i in range(4):
        ledger.record(Entry(f"r{i}", "intent_scan", "passed", cost=Decimal(0), latency_s=0.001))
        if i == 0:
            ledger.record(Entry(f"r{i}", "canned", "answered", cost=Decimal(0)))
    report = Report.build([("bot", ledger)])
    variant = dataclasses.replace(report.variants[0], quality={"intent_accuracy": 0.75})
    data = Report((variant,)).to_dict()["variants"][0]
    canned = next(s for s in data["by_stage"] if s["stage"] == "canned")
    scan = next(s for s in data["by_stage"] if s["stage"] == "intent_scan")
    assert canned["share"] == 0.25
    # Percentiles come from 2%-wide histogram buckets (what a store can keep): within 1%.
    assert scan["latency_ms_p50"] == pytest.approx(1.0, rel=0.01)
    assert data["quality"] == {"intent_accuracy": 0.75}
    assert "intent accuracy 0.750" in Report((variant,)).to_table()


def test_cost_per_request_percentiles_are_nearest_rank() -> None:
    ledger = Ledger()
    for i, cents in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]):
        ledger.record(Entry(f"r{i}", "generate", "answered", cost=Decimal(cents) / 100))
    (variant,) = Report.build([("v", ledger)]).variants
    assert variant.cost_p50 == Decimal("0.05")
    assert variant.cost_p90 == Decimal("0.09")


def _tiny() -> Report:
    """The README's bot: a free canned reply that avoided $0.0000288, one call of $0.000002835."""
    ledger = Ledger()
    _record(ledger, "r1", "canned", Decimal(0), avoided_cost=Decimal("0.000028805"))
    _record(ledger, "r2", "generate", Decimal("0.000002835"), model="amazon.nova-micro-v1:0",
            usage=Usage(33, 12))  # fmt: skip
    return Report.build([("bot", ledger)], traffic_per_day=10_000)


def test_small_amounts_show_significant_digits_never_zero() -> None:
    report = _tiny()
    for text in (report.to_table(), report.to_markdown()):
        assert "$0.0000 " not in text and "$0.0000|" not in text
        assert "$0.0000288" in text  # avoided by the canned reply, to 4 significant digits
        assert "$0.000002835" in text  # the model call, exactly
        assert "$0.000001418" in text  # per request: 0.0000014175 to 4 significant digits
        assert "$0.4252" in text  # a month at 10,000/day: 0.42525, under a dollar
        assert "$0.00 " in text or "$0.00 |" in text  # a free stage is zero, plainly


def test_large_amounts_show_cents_and_separators() -> None:
    ledger = Ledger()
    _record(ledger, "r1", "generate", Decimal("12345.678912"))
    row = Report.build([("v", ledger)]).to_table().splitlines()[1]
    assert row.split()[2:4] == ["$12,345.68", "$12,345.68"]


def test_json_money_is_exact_never_rounded() -> None:
    report = _tiny()
    (variant,) = report.to_dict()["variants"]
    assert variant["total_cost_usd"] == "0.000002835"
    assert variant["cost_per_request_usd"] == "0.0000014175"
    assert variant["daily_cost_usd"] == "0.014175"  # not rounded to the cent
    assert variant["monthly_cost_usd"] == "0.42525"
    canned = next(s for s in variant["by_stage"] if s["stage"] == "canned")
    assert canned["avoided_usd"] == "0.000028805"
    # A repeating quotient keeps 20 significant digits, however small (it used to be cut to ten
    # places, which left nothing of it); the total stays exact.
    ledger = Ledger()
    for i, cost in enumerate(["0.000000000001", "0.000000000002", "0.000000000004"]):
        _record(ledger, f"r{i}", "generate", Decimal(cost))
    (thirds,) = Report.build([("v", ledger)]).to_dict()["variants"]
    assert thirds["cost_per_request_usd"] == "0.0000000000023333333333333333333"
    assert Decimal(thirds["total_cost_usd"]) == Decimal("7E-12")


def test_traffic_must_be_a_positive_count() -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match=f"got {bad!r}"):
            Report.build([("single", single_llm())], traffic_per_day=bad)  # type: ignore[arg-type]


def test_to_csv_has_a_row_per_variant_and_per_stage(report: Report) -> None:
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("single", ""),
        ("single", "generate"),
        ("chained", ""),
        ("chained", "intent"),
        ("chained", "canned"),
        ("chained", "generate"),
    ]
    chained_row = rows[2]
    assert (chained_row["requests"], chained_row["cost_usd"]) == ("4", "0.0036")
    assert (chained_row["cost_per_request_usd"], chained_row["monthly_cost_usd"]) == (
        "0.0009",
        "270.00",
    )
    assert (chained_row["savings_pct"], chained_row["calls"]) == ("85.0", "")
    canned = rows[4]
    assert (canned["calls"], canned["answered"], canned["share"]) == ("2", "2", "0.5")
    assert (canned["cost_usd"], canned["avoided_usd"], canned["requests"]) == ("0.00", "0.012", "")
    # A variant's stage costs add up to its serving cost (no setup here).
    stage_sum = sum(Decimal(r["cost_usd"]) for r in rows[3:6])
    assert stage_sum == Decimal(chained_row["cost_usd"])


def test_to_csv_stage_costs_include_setup() -> None:
    ledger = chained()
    _record(ledger, "precompute-1", "precompute", Decimal("0.5"), phase="setup")
    rows = list(csv.DictReader(io.StringIO(Report.build([("chained", ledger)]).to_csv())))
    variant, stages = rows[0], rows[1:]
    assert (variant["cost_usd"], variant["setup_cost_usd"]) == ("0.0036", "0.50")
    assert sum(Decimal(r["cost_usd"]) for r in stages) == Decimal("0.5036")
    assert variant["monthly_cost_usd"] == ""  # no traffic given: no projection
