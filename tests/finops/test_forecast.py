from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from chainkit import Budget, ConfigError, Entry, Ledger
from chainkit.finops import (
    Traffic,
    backtest,
    forecast,
    forecast_budgets,
    forecast_by,
    forecast_series,
    synthetic_entries,
)
from chainkit.finops.series import daily_spend

from .conftest import MakeLedger

START = date(2026, 9, 1)


def day_entries(days: int, *, tenant: str = "acme", scale: float = 1.0) -> list[Entry]:
    """One entry per day: $10 growing 1% a day, weekends at half, a small fixed wobble."""
    out = []
    for i in range(days):
        d = START + timedelta(days=i)
        level = 10 * scale * 1.01**i * (0.5 if d.weekday() >= 5 else 1.0)
        wobble = 1 + 0.03 * math.sin(i * 2.1)
        out.append(
            Entry(
                request_id=f"{tenant}{i}",
                stage="generate",
                outcome="answered",
                cost=Decimal(f"{level * wobble:.6f}"),
                tags={"tenant": tenant},
                time=datetime(d.year, d.month, d.day, 12, tzinfo=UTC),
            )
        )
    return out


def test_forecast_follows_growth_and_weekends_on_every_ledger(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.record_many(day_entries(50))  # 1 Sep .. 20 Oct
    f = forecast(ledger, level=0.8)
    assert f.observed[0] == (START, Decimal("10.000000"))
    assert len(f.observed) == 50 and f.level == 0.8
    assert "weekday effects" in f.method
    # Bands run from 21 Oct to the end of November; each is ordered and near the truth.
    assert f.bands[0].day == date(2026, 10, 21) and f.bands[-1].day == date(2026, 11, 30)
    for b in f.bands[:7]:
        i = (b.day - START).days
        truth = 10 * 1.01**i * (0.5 if b.day.weekday() >= 5 else 1.0)
        assert b.low <= b.mid <= b.high
        assert abs(float(b.mid) - truth) / truth < 0.06
    # Month end: October's 20 observed days exactly, plus the band of the 11 left.
    october = sum((v for d, v in f.observed if d.month == 10 and v is not None), Decimal(0))
    rest = sum(b.mid for b in f.bands if b.day.month == 10)
    assert f.month_end.day == date(2026, 10, 31)
    assert f.month_end.low < f.month_end.mid < f.month_end.high
    assert abs(f.month_end.mid - (october + rest)) / f.month_end.mid < Decimal("0.02")
    assert f.next_month.day == date(2026, 11, 30)
    nov = sum(
        10 * 1.01 ** (d - 0) * (0.5 if (START + timedelta(days=d)).weekday() >= 5 else 1)
        for d in range(61, 91)
    )
    assert float(f.next_month.low) < nov < float(f.next_month.high)


def test_the_same_forecast_from_every_kind_of_ledger(make_ledger: MakeLedger) -> None:
    entries = day_entries(30)
    ledger = make_ledger()
    ledger.record_many(entries)
    assert forecast(ledger) == forecast(entries)


def test_a_month_already_over_has_an_exact_month_end() -> None:
    f = forecast(day_entries(30))  # 1..30 September: the month is complete
    september = sum((v for _, v in f.observed if v is not None), Decimal(0))
    assert f.month_end.day == date(2026, 9, 30)
    assert f.month_end.low == f.month_end.mid == f.month_end.high == september


def test_wider_level_gives_a_wider_band() -> None:
    entries = day_entries(40)
    narrow, wide = forecast(entries, level=0.8), forecast(entries, level=0.95)
    assert (
        wide.next_month.high - wide.next_month.low > narrow.next_month.high - narrow.next_month.low
    )


def test_one_off_setup_spend_counts_this_month_but_is_not_projected() -> None:
    entries = day_entries(40)
    setup = Entry(
        request_id="s",
        stage="precompute",
        outcome="answered",
        cost=Decimal(500),
        phase="setup",
        time=datetime(2026, 10, 3, tzinfo=UTC),
    )
    plain, with_setup = forecast(entries), forecast([*entries, setup])
    assert with_setup.month_end.mid == plain.month_end.mid + 500
    assert with_setup.next_month == plain.next_month
    assert (
        dict(with_setup.observed)[date(2026, 10, 3)]
        == dict(plain.observed)[date(2026, 10, 3)] + 500
    )


def test_per_tag_and_per_budget() -> None:
    entries = day_entries(35) + day_entries(35, tenant="globex", scale=0.1)
    by = forecast_by(entries, "tenant")
    assert set(by) == {"acme", "globex"} and by["globex"].scope == ("tenant", "globex")
    assert by["globex"].next_month.mid < by["acme"].next_month.mid / 5
    one = forecast(entries, tag=("tenant", "globex"))
    assert one == by["globex"]
    ledger = Ledger(
        [
            Budget(Decimal(100), name="acme-low", period="month", tag=("tenant", "acme")),
            Budget(Decimal(10_000), name="all", period="month"),
            Budget(Decimal(1), name="daily", period="day"),
        ]
    )
    ledger.record_many(entries)
    fb = forecast_budgets(ledger)
    assert fb["acme-low"].p_over_limit == 1.0  # spends ~$280 in October
    assert fb["all"].p_over_limit == 0.0
    # A daily budget compares the next day's spend (~$12) with its limit.
    assert fb["daily"].p_over_limit == 1.0 and fb["daily"].limit == 1
    assert fb["daily"].period == "day"
    assert fb["acme-low"].month_end == by["acme"].month_end


def test_a_through_after_the_last_day_is_refused() -> None:
    # A day after the last entry's is not a complete day of no spend: it is not known yet.
    with pytest.raises(ConfigError, match=r"2027-06-01 is after .* last day .* \(2026-09-30\)"):
        forecast(day_entries(30), through=date(2027, 6, 1))
    f = forecast(day_entries(30), through=date(2026, 9, 25))
    assert f.bands[0].day == date(2026, 9, 26)


def test_too_little_history_and_bad_levels() -> None:
    with pytest.raises(ConfigError, match="at least 3 days"):
        forecast(Ledger())
    with pytest.raises(ConfigError, match="has 2"):
        forecast(day_entries(2))
    with pytest.raises(ConfigError, match="level"):
        forecast(day_entries(10), level=1.0)
    short = forecast(day_entries(5))
    assert short.method.startswith("log-linear trend on 5") is False  # under 7 days: a level
    assert short.method.startswith("mean daily rate on 5 days")


def test_unknown_costs_count_at_their_bound_and_unbounded_days_are_left_out() -> None:
    entries = day_entries(20)
    bounded = Entry(
        request_id="u",
        stage="generate",
        outcome="answered",
        cost=None,
        bound=Decimal(3),
        time=entries[5].time,
    )
    unbounded = Entry(
        request_id="v", stage="generate", outcome="answered", cost=None, time=entries[6].time
    )
    series = daily_spend([*entries, bounded, unbounded])["all"]
    assert series[START + timedelta(days=5)] == entries[5].cost + 3  # type: ignore[operator]
    assert series[START + timedelta(days=6)] is None
    f = forecast_series(series)
    assert dict(f.observed)[START + timedelta(days=6)] is None
    assert f.month_end.mid > 0


def test_backtest_coverage_on_simulated_traffic_is_near_nominal() -> None:
    entries = synthetic_entries(Traffic(days=70, per_day=400, seed=3))
    series = daily_spend(entries)["all"]
    result = backtest(series, levels=(0.8, 0.95), min_history=28, horizon=7, step=3)
    # Origins 28, 31, ... 67, each checked on up to 7 days that follow it within the 70.
    assert result["forecasts"] == sum(min(7, 70 - o) for o in range(28, 70, 3))
    # Nominal 80% and 95%: a calibrated band covers about that; a broken one far less or all.
    assert 0.6 <= result["0.8"] <= 0.97
    assert 0.85 <= result["0.95"] <= 1.0
    assert result["0.95"] >= result["0.8"]
    assert result["mape"] < 0.2


def _at(when: datetime, cost: Decimal | None, rid: str, **tags: str) -> Entry:
    return Entry(
        request_id=rid, stage="generate", outcome="answered", cost=cost, tags=tags, time=when
    )


def test_today_is_not_a_complete_day_by_default(make_ledger: MakeLedger) -> None:
    # $1 an hour for 40 days, read at 02:30 on 30 November: today has $3 so far, not a day.
    now = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    start = now.replace(minute=0) - timedelta(days=40)
    ledger = make_ledger()
    ledger.record_many([_at(start + timedelta(hours=h), Decimal(1), f"r{h}") for h in range(961)])
    ledger.flush()
    f = forecast(ledger, now=now)
    assert f.bands[0].day == date(2026, 11, 30)  # today is forecast, not observed-complete
    assert dict(f.observed)[date(2026, 11, 30)] == Decimal(3)
    # 29 complete days of $24 plus today's whole day: ~$720, never $699 (today as a whole day).
    assert Decimal(715) < f.month_end.low <= f.month_end.mid <= f.month_end.high < Decimal(725)
    # The same ledger read tomorrow: the 30th was the last complete day.
    assert forecast(ledger, now=now + timedelta(days=1)).bands[0].day == date(2026, 12, 1)


def test_future_dated_entries_are_left_out_with_a_note() -> None:
    entries = [*day_entries(35), _at(datetime(2030, 1, 1, tzinfo=UTC), Decimal(5), "late")]
    f = forecast(entries, now=datetime(2026, 11, 1, tzinfo=UTC))
    assert f.month_end.day == date(2026, 10, 31)  # not 2030
    assert f.notes == ("1 entry dated after now (2026-11-01T00:00:00+00:00) left out",)
    alone = forecast(day_entries(35), now=datetime(2026, 11, 1, tzinfo=UTC))
    assert (f.month_end, f.next_month, alone.notes) == (alone.month_end, alone.next_month, ())


def test_a_day_of_unbounded_unknown_spend_keeps_its_known_part_and_says_lower_bound() -> None:
    # $8 a day in November; on the 14th also one call of unknown cost and no bound.
    entries = [
        _at(datetime(2026, 11, 1 + d, 12, tzinfo=UTC), Decimal(8), f"a{d}", tenant="acme")
        for d in range(14)
    ] + [_at(datetime(2026, 11, 14, 13, tzinfo=UTC), None, "unk", tenant="acme")]
    ledger = Ledger([Budget(Decimal(300), name="acme", period="month", tag=("tenant", "acme"))])
    ledger.record_many(entries)
    f = forecast_budgets(ledger, now=datetime(2026, 11, 20, tzinfo=UTC))["acme"]
    assert dict(f.observed)[date(2026, 11, 14)] is None
    assert f.lower_bound and f.p_over_limit is None  # not 0%: the unknown call could be anything
    assert f.month_end.mid >= 14 * 8  # the known $8 of the 14th is counted
    low = Ledger([Budget(Decimal(50), name="acme", period="month", tag=("tenant", "acme"))])
    low.record_many(entries)
    # Over on the known part alone: over, whatever the unknown call cost.
    assert forecast_budgets(low, now=datetime(2026, 11, 20, tzinfo=UTC))["acme"].p_over_limit == 1


def test_a_sparse_new_tenant_does_not_explode() -> None:
    t = datetime(2026, 10, 1, 12, tzinfo=UTC)
    entries = [_at(t + timedelta(days=d), Decimal(1), f"s{d}", tenant="steady") for d in range(8)]
    entries += [_at(t + timedelta(days=d), Decimal("0.004"), f"n{d}", tenant="new") for d in (4, 7)]
    f = forecast_by(entries, "tenant")["new"]
    # Its days start at its first entry: 0.004, 0, 0, 0.004 -> about $0.002 a day.
    assert f.observed[0][0] == date(2026, 10, 5)
    assert f.method.startswith("mean daily rate on 4 days (2 with spend")
    assert Decimal("0.01") < f.next_month.mid < Decimal("0.2")
    assert f.next_month.high < Decimal(1)


def test_a_steep_short_trend_is_capped() -> None:
    # Spend doubling every day for three weeks: the projection is held to 2x a week.
    t = datetime(2026, 10, 1, 12, tzinfo=UTC)
    entries = [_at(t + timedelta(days=d), Decimal(2) ** d / 1000, f"r{d}") for d in range(21)]
    f = forecast(entries)
    assert "growth capped at 2x a week" in f.method
    last_day = Decimal(2) ** 20 / 1000
    assert f.next_month.high < last_day * 30 * 2**6  # uncapped: ~2^40 times more


def test_intermittent_spend_is_forecast_at_its_mean_rate() -> None:
    # $1 every third day: about $10 a month, not $0.11 (the log model's median of zeros).
    t = datetime(2026, 9, 1, 12, tzinfo=UTC)
    entries = [_at(t + timedelta(days=d), Decimal(1), f"r{d}") for d in range(0, 60, 3)]
    f = forecast(entries)
    assert f.method.startswith("mean daily rate")
    assert Decimal(7) < f.next_month.mid < Decimal(13)
    assert f.next_month.low < Decimal(10) < f.next_month.high


def test_every_budget_is_forecast_against_its_own_period() -> None:
    entries = day_entries(35)
    ledger = Ledger(
        [
            Budget(Decimal(5), name="daily", period="day"),
            Budget(Decimal(100_000), name="ever"),
            Budget(Decimal(10), name="ever-low"),
            Budget(Decimal(150), name="nobody", period="month", tag=("tenant", "nobody")),
        ]
    )
    ledger.record_many(entries)
    fb = forecast_budgets(ledger)
    assert set(fb) == {"daily", "ever", "ever-low", "nobody"}
    assert fb["daily"].p_over_limit == 1.0 and fb["daily"].period == "day"  # ~$13 next day
    assert fb["ever"].p_over_limit == 0.0 and fb["ever"].period is None
    assert fb["ever-low"].p_over_limit == 1.0
    nobody = fb["nobody"]
    assert nobody.p_over_limit == 0.0 and nobody.limit == 150
    assert all(v == 0 for _, v in nobody.observed) and nobody.month_end.high == 0
