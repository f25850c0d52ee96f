from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path

import pytest

from chainkit import Catalogue, ConfigError, Entry, Ledger, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.commitments import (
    Commitments,
    ModelOptions,
    commitments,
    provisioned_prices,
    traffic_profile,
)
from chainkit.report import QUOTIENT
from tests.finops.conftest import filled

CAT = Catalogue.load()
EXPRESS = "amazon.titan-text-express-v1"
MICRO = "amazon.nova-micro-v1:0"
SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
T0 = datetime(2026, 11, 2, 9, 0, 12, tzinfo=UTC)


def ramp(model: str = EXPRESS, minutes: int = 100) -> list[Entry]:
    """A call a minute from 09:00 UTC for ``minutes`` minutes; the m-th has (m+1) x 1,100 tokens."""
    entries = []
    for m in range(minutes):
        usage = Usage(1_000 * (m + 1), 100 * (m + 1))
        entries.append(
            Entry(
                f"r{m}",
                "generate",
                "answered",
                CAT.cost(model, usage),
                model=model,
                usage=usage,
                time=T0 + timedelta(minutes=m),
            )
        )
    return entries


def options(result: Commitments, model: str) -> ModelOptions:
    return next(m for m in result.models if m.model == model)


def test_profile_of_a_ramp_by_hand() -> None:
    p = options(commitments(ramp()), EXPRESS).profile
    assert p.minutes == 100
    assert p.prompt_tokens == 5_050_000 and p.output_tokens == 505_000
    assert p.mean_tpm == Decimal(55_550)  # 5,555,000 tokens over 100 minutes
    assert p.p95_tpm == 104_500  # nearest rank 95 of 100: the 95th minute
    assert (p.p95_prompt_tpm, p.p95_output_tpm) == (95_000, 9_500)
    assert (p.max_tpm, p.max_prompt_tpm, p.max_output_tpm) == (110_000, 100_000, 10_000)
    # 09:00-09:59 holds minutes 1..60 of the ramp, 10:00-10:39 minutes 61..100.
    assert dict(p.by_hour) == {9: Decimal(1_100 * 1_830) / 60, 10: Decimal(1_100 * 3_220) / 40}


def test_idle_minutes_count_and_times_are_bucketed_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    calls = [
        (datetime(2026, 11, 2, 18, 0, 59, tzinfo=tokyo), 10, 0),  # 09:00 UTC
        (datetime(2026, 11, 2, 9, 0, 1, tzinfo=UTC), 20, 5),
        (datetime(2026, 11, 2, 9, 19, 0, tzinfo=UTC), 30, 0),
    ]
    p = traffic_profile("m", calls)
    assert p.start == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert p.minutes == 20  # 09:00 to 09:19, the 18 idle minutes included
    assert p.mean_tpm == Decimal("3.25")  # 65 tokens / 20 minutes
    assert p.p95_tpm == 30 and p.max_tpm == 35  # rank 19 of 20 is the 30-token minute
    empty = traffic_profile("m", [])
    assert empty.minutes == 0 and empty.mean_tpm == 0 and empty.start is None


def test_monthly_cost_of_each_tier_is_the_repriced_span_scaled_to_730_hours() -> None:
    entries = ramp(MICRO)
    result = commitments(entries)
    micro = options(result, MICRO)
    cost = sum((e.cost for e in entries if e.cost is not None), Decimal(0))
    by_name = {o.name: o for o in micro.options}
    assert by_name["on-demand"].monthly == cost * 43_800 / 100
    assert by_name["batch"].monthly == cost * 43_800 / 100 / 2
    assert by_name["flex"].monthly is None and "no flex price" in by_name["flex"].note
    assert by_name["provisioned"].monthly is None
    assert by_name["provisioned"].note.startswith("no PT price")


def test_provisioned_throughput_sized_for_the_p95_peak_with_its_break_even() -> None:
    result = commitments(ramp(), input_tpm_per_unit=50_000, output_tpm_per_unit=5_000)
    express = options(result, EXPRESS)
    on_demand = express.on_demand
    assert on_demand == Decimal("1.313") * 43_800 / 100  # $1.01 input + $0.303 output
    pt = {o.name: o for o in express.options if o.name.startswith("PT")}
    assert list(pt) == ["PT no commitment", "PT 1-month commitment", "PT 6-month commitment"]
    month = pt["PT 1-month commitment"]
    assert month.hourly == Decimal("18.40")
    assert month.units == 2  # ceil(95,000 / 50,000) and ceil(9,500 / 5,000)
    assert month.monthly == Decimal("18.40") * 730 * 2
    assert month.serves_peak is True
    assert month.effective_date == date(2025, 3, 9)
    assert month.source_url.startswith("https://github.com/sungminna/GapS/")
    with localcontext(QUOTIENT):
        expected = Decimal("18.40") * 730 / on_demand * Decimal(55_550)  # type: ignore[operator]
    assert month.break_even_tpm == expected
    # At break-even one unit would need to serve the p95 of 23x the traffic: never pays off.
    assert "never pays off" in month.note
    assert pt["PT 6-month commitment"].monthly == Decimal("14.80") * 730 * 2


def test_break_even_is_reachable_when_a_unit_is_large_enough() -> None:
    result = commitments(ramp(), input_tpm_per_unit=10_000_000, output_tpm_per_unit=1_000_000)
    six = next(o for o in options(result, EXPRESS).options if o.name == "PT 6-month commitment")
    assert six.units == 1 and "never pays off" not in six.note
    assert six.break_even_tpm is not None and six.break_even_tpm > Decimal(55_550)


def test_says_plainly_when_provisioned_units_cannot_serve_the_peak() -> None:
    result = commitments(ramp(), input_tpm_per_unit=50_000, output_tpm_per_unit=5_000, units=1)
    month = next(o for o in options(result, EXPRESS).options if o.name == "PT 1-month commitment")
    assert month.serves_peak is False
    assert "CANNOT serve the p95 peak" in month.note and "2 unit(s) needed" in month.note
    assert "CANNOT serve the p95 peak" in result.to_table()
    # Sized for p95, the busiest minute (100,000 prompt TPM) still overflows 2 x 48,000.
    sized = commitments(ramp(), input_tpm_per_unit=48_000, output_tpm_per_unit=5_000)
    month = next(o for o in options(sized, EXPRESS).options if o.name == "PT 1-month commitment")
    assert month.units == 2 and month.serves_peak is True
    assert "not the busiest minute" in month.note and "throttled" in month.note


def test_without_capacity_units_are_not_guessed() -> None:
    result = commitments(ramp())
    month = next(o for o in options(result, EXPRESS).options if o.name == "PT 1-month commitment")
    assert month.units is None and month.monthly is None and month.serves_peak is None
    assert "one unit $13,432.00/month" in month.note
    assert month.break_even_tpm is not None  # the unit price alone gives the break-even traffic
    assert "AWS does not publish" in result.to_table()
    with pytest.raises(ConfigError, match="Give both"):
        commitments(ramp(), input_tpm_per_unit=1_000)
    with pytest.raises(ConfigError, match="units must be a whole number"):
        commitments(ramp(), units=0)


def test_a_region_without_a_pt_price_says_so() -> None:
    result = commitments(ramp(), region="eu-central-1")
    express = options(result, EXPRESS)
    assert express.on_demand is not None  # Titan Express is priced on demand in Frankfurt
    assert express.options[-1].note.startswith("no PT price in eu-central-1")


def test_a_swap_profiles_the_new_models_traffic() -> None:
    result = commitments(
        ramp(SONNET4),
        swaps={SONNET4: EXPRESS},
        input_tpm_per_unit=50_000,
        output_tpm_per_unit=5_000,
    )
    assert [m.model for m in result.models] == [EXPRESS]
    assert result.models[0].estimated
    assert result.models[0].on_demand == Decimal("1.313") * 43_800 / 100


def test_same_figures_from_every_store(store: Callable[[], Ledger]) -> None:
    expected = commitments(ramp(), input_tpm_per_unit=50_000, output_tpm_per_unit=5_000)
    ledger = filled(store, ramp())
    got = commitments(ledger, input_tpm_per_unit=50_000, output_tpm_per_unit=5_000)
    assert got.to_dict() == expected.to_dict()


def test_an_empty_ledger_has_no_models_in_every_format(store: Callable[[], Ledger]) -> None:
    empty = commitments(store())
    assert empty.models == ()
    for fmt in ("table", "markdown", "json", "csv"):
        assert empty.render(fmt)


def test_every_bundled_pt_price_is_sourced_dated_and_names_a_catalogued_model() -> None:
    known = {
        card.id
        for name in Catalogue.names()
        if name != "genai-prices"
        for card in Catalogue.load(name)
    }
    prices = provisioned_prices()
    assert prices
    for model, rows in prices.items():
        assert rows
        for p in rows:
            assert p.model_id in known, p.model_id
            assert p.source_url.startswith("https://")
            assert date(2024, 1, 1) <= p.effective_date <= date(2026, 11, 30)
            assert p.term in ("none", "1-month", "6-month") and p.hourly > 0
        assert model == rows[0].model_id or model.startswith(rows[0].model_id)


def test_a_malformed_pt_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "pt.json"
    bad.write_text(
        json.dumps(
            {
                "description": "x",
                "capacity_source": "x",
                "hours_per_month": 730,
                "models": [
                    {
                        "id": "m",
                        "name": "m",
                        "prices": [
                            {
                                "region": "us-east-1",
                                "term": "3-year",
                                "hourly": "1",
                                "source_url": "https://x",
                                "effective_date": "2025-01-01",
                            }
                        ],
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="Malformed Provisioned Throughput price file"):
        provisioned_prices(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        provisioned_prices(tmp_path / "missing.json")


def test_cli_commitments_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as ledger:
        for e in ramp():
            ledger.record(e)
    args = ["commitments", str(path), "--input-tpm-per-unit", "50000"]
    assert main([*args, "--output-tpm-per-unit", "5000", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (model,) = data["models"]
    assert model["profile"]["p95_tpm"] == 104_500
    month = next(o for o in model["options"] if o["option"] == "PT 1-month commitment")
    assert month["monthly"] == "26864.00" and month["units"] == 2
    assert month["effective_date"] == "2025-03-09"
    assert main([*args, "--output-tpm-per-unit", "5000", "--units", "1"]) == 0
    assert "CANNOT serve the p95 peak" in capsys.readouterr().out
    assert main(args) == 2
    assert "Give both" in capsys.readouterr().err
    assert main(["commitments", str(path), "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("model,option,monthly") and len(rows) == 1 + 4 + 3
    assert math.isclose(float(rows[1].split(",")[2]), 1.313 * 438)


def test_tags_select_the_traffic_profiled() -> None:
    entries = [
        dataclasses.replace(e, tags={"variant": "a" if i % 2 else "b"})
        for i, e in enumerate(ramp())
    ]
    only_a = commitments(entries, tags={"variant": "a"})
    assert options(only_a, EXPRESS).profile.prompt_tokens == sum(
        1_000 * (m + 1) for m in range(1, 100, 2)
    )


def bursts(days: int = 2) -> list[Entry]:
    """Titan Express: a day's 45.6M tokens in its first hour (760K a minute), idle otherwise."""
    usage = Usage(720_000, 40_000)
    cost = CAT.cost(EXPRESS, usage)
    return [
        Entry(
            f"b{d}-{m}",
            "generate",
            "answered",
            cost,
            model=EXPRESS,
            usage=usage,
            time=datetime(2026, 11, 2 + d, 0, m, tzinfo=UTC),
        )
        for d in range(days)
        for m in range(60)
    ] + [
        Entry(
            "end",
            "generate",
            "answered",
            CAT.cost(EXPRESS, Usage(1, 1)),
            model=EXPRESS,
            usage=Usage(1, 1),
            time=datetime(2026, 11, 2 + days - 1, 23, 59, tzinfo=UTC),
        )
    ]


def test_bursty_traffic_is_sized_for_its_busy_minutes_not_shown_as_a_saving() -> None:
    # 120 busy minutes of 2,880: the p95 over the whole span is 0, yet one unit of 20,000 TPM
    # cannot serve 720,000 prompt tokens a minute. PT must not be shown as saving money.
    result = commitments(bursts(), input_tpm_per_unit=20_000, output_tpm_per_unit=20_000)
    express = options(result, EXPRESS)
    p = express.profile
    assert p.p95_tpm == 0 and p.active_minutes == 121
    assert (p.p95_active_prompt_tpm, p.p95_active_output_tpm) == (720_000, 40_000)
    on_demand = express.on_demand
    assert on_demand is not None
    for o in express.options:
        if o.name.startswith("PT"):
            assert o.units == 36 and o.serves_peak is True  # ceil(720,000 / 20,000)
            assert o.monthly is not None and o.monthly > on_demand
            assert "never pays off" in o.note
    one = commitments(bursts(), input_tpm_per_unit=20_000, output_tpm_per_unit=20_000, units=1)
    for o in options(one, EXPRESS).options:
        if o.name.startswith("PT"):
            assert o.serves_peak is False and "CANNOT serve the p95 peak" in o.note
    table = one.to_table()
    assert "cannot serve" in table and "-18.7%" not in table and "%" in table


def test_short_spans_warn_and_unchecked_units_say_so() -> None:
    result = commitments(ramp(), units=3)
    month = next(o for o in options(result, EXPRESS).options if o.name == "PT 1-month commitment")
    assert month.units == 3 and month.monthly == Decimal("18.40") * 730 * 3
    assert "whether 3 unit(s) serve the peak is unknown" in month.note
    table = result.to_table()
    assert "PT rows price the 3 unit(s) given, unchecked" in table
    assert "show one unit" not in table
    assert "WARNING: the ledger spans less than a day" in table  # 100 minutes
    assert json.loads(result.to_json())["warnings"] == result.warnings != []
    assert "WARNING" not in commitments(bursts()).to_table()
