from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from chainkit import ConfigError, Entry, Ledger
from chainkit.finops import (
    Anomaly,
    Injection,
    Thresholds,
    Traffic,
    anomalies_of,
    detect,
    recorded,
    score_detections,
    synthetic_entries,
)

from .conftest import MakeLedger

TRAFFIC = Traffic(days=45, per_day=300, seed=5)
SMALL = Traffic(days=36, per_day=150, seed=5)  # what the tests write to SQL ledgers


def day(i: int) -> date:
    return TRAFFIC.start + timedelta(days=i)


def test_clean_traffic_raises_no_alarm() -> None:
    assert anomalies_of(synthetic_entries(TRAFFIC)) == []


def test_a_tenants_spike_is_found_on_its_day_and_scope() -> None:
    found = anomalies_of(synthetic_entries(TRAFFIC, [Injection("spike", 30, 3.0, "globex")]))
    assert {(a.when, a.scope, a.kind) for a in found} >= {(day(30), ("tenant", "globex"), "spike")}
    assert all(a.when == day(30) for a in found)
    spike = next(a for a in found if a.scope == ("tenant", "globex"))
    assert spike.observed > 2 * spike.expected and spike.score >= 4


def test_a_deflection_collapse_names_the_stage() -> None:
    found = anomalies_of(synthetic_entries(TRAFFIC, [Injection("deflection_drop", 25, 4.0)]))
    drop = [a for a in found if a.kind == "deflection_drop"]
    assert [(a.when, a.scope) for a in drop] == [(day(25), ("stage", "precomputed"))]
    # 35% of requests usually; a quarter of that on the day.
    assert Decimal("0.3") < drop[0].expected < Decimal("0.4")
    assert drop[0].observed < Decimal("0.13")


def test_a_models_cost_per_call_doubling_is_a_unit_cost_jump() -> None:
    found = anomalies_of(synthetic_entries(TRAFFIC, [Injection("unit_cost_jump", 33, 2.0)]))
    jump = [a for a in found if a.kind == "unit_cost_jump"]
    assert [(a.when, a.scope) for a in jump] == [(day(33), ("model", "amazon.nova-micro-v1:0"))]
    assert 1.6 < jump[0].observed / jump[0].expected < 2.2


def test_small_injections_are_missed_and_that_is_measured() -> None:
    found = anomalies_of(synthetic_entries(TRAFFIC, [Injection("spike", 30, 1.05)]))
    scores = score_detections([([(day(30), "spike")], found)])
    assert scores["recall"] == 0.0 and scores["injections"] == 1


def test_score_detections_counts_true_false_and_recalled() -> None:
    a = Anomaly(day(3), ("tenant", "x"), "spike", Decimal(2), Decimal(1), 5.0)
    b = Anomaly(day(4), ("total", "all"), "spike", Decimal(2), Decimal(1), 5.0)
    c = Anomaly(day(3), ("stage", "p"), "deflection_drop", Decimal("0.1"), Decimal("0.3"), 6.0)
    s = score_detections([([(day(3), "unit_cost_jump")], [a, b, c]), ([], [b])])
    assert s["true_detections"] == 2 and s["false_detections"] == 2
    assert s["precision"] == 0.5 and s["recall"] == 0.0  # no unit_cost_jump found on day 3


def test_hourly_detection_finds_the_day_of_a_collapse() -> None:
    entries = synthetic_entries(
        Traffic(days=16, per_day=2000, seed=2), [Injection("deflection_drop", 15, 4.0)]
    )
    found = anomalies_of(entries, every="hour")
    assert found and all(isinstance(a.when, datetime) for a in found)
    drops = [a for a in found if a.kind == "deflection_drop"]
    assert drops and {a.when.date() for a in drops} == {day(15)}  # type: ignore[union-attr]


def test_detect_records_events_once_and_calls_the_hook_once(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.record_many(synthetic_entries(SMALL, [Injection("spike", 30, 4.0)]))
    heard: list[Anomaly] = []
    first = detect(ledger, on_anomaly=heard.append)
    assert first and heard == first
    again = detect(ledger, on_anomaly=heard.append)
    assert again == first and heard == first  # nothing new: the hook is not called again
    assert recorded(ledger) == first
    key = first[0].key
    assert key.startswith(f"anomaly:{day(30).isoformat()}:spike:")
    assert json.loads(ledger.recorded_events("anomaly:")[key])["kind"] == "spike"


def test_events_outlive_the_process_in_a_durable_ledger(tmp_path: object) -> None:
    from pathlib import Path

    from chainkit import SQLiteLedger

    path = Path(str(tmp_path)) / "a.db"
    with SQLiteLedger(path) as ledger:
        ledger.record_many(synthetic_entries(SMALL, [Injection("spike", 30, 4.0)]))
        found = detect(ledger)
    with SQLiteLedger(path, read_only=True) as again:
        assert recorded(again) == found
        with pytest.raises(ConfigError, match="read-only"):
            again.record_event("anomaly:x", "{}")


def test_a_failing_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger()
    ledger.record_many(synthetic_entries(TRAFFIC, [Injection("spike", 30, 3.0)]))

    def boom(a: Anomaly) -> None:
        raise RuntimeError("pager down")

    with caplog.at_level(logging.ERROR, logger="chainkit"):
        found = detect(ledger, on_anomaly=boom)
    assert found and "on_anomaly hook failed" in caplog.text
    assert recorded(ledger) == found


def test_record_event_keys_and_bodies_are_checked(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.record_event("anomaly:日本 🚚", json.dumps({"note": "é"}))
    ledger.record_event("other:1", "x")
    assert ledger.recorded_events("anomaly:") == {"anomaly:日本 🚚": '{"note": "\\u00e9"}'}
    assert set(ledger.recorded_events()) == {"anomaly:日本 🚚", "other:1"}
    ledger.record_event("other:1", "y")  # the same key replaces
    assert ledger.recorded_events("other:") == {"other:1": "y"}
    with pytest.raises(ConfigError):
        ledger.record_event("bad\ud800", "x")
    with pytest.raises(ConfigError):
        ledger.record_event("", "x")
    with pytest.raises(ConfigError):
        ledger.record_event("k", "lone \udfff")


def test_foreign_events_under_the_prefix_are_skipped_with_a_warning(
    make_ledger: MakeLedger, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = make_ledger()
    good = Anomaly(day(3), ("tenant", "acme"), "spike", Decimal(5), Decimal(1), 9.0)
    ledger.record_event(good.key, json.dumps(good.to_dict()))
    ledger.record_event("anomaly:x", "not json")
    ledger.record_event("anomaly:y", "[1, 2]")
    no_score = {k: v for k, v in good.to_dict().items() if k != "score"}
    ledger.record_event("anomaly:z", json.dumps(no_score))
    ledger.record_event("anomaly:w", json.dumps({**good.to_dict(), "kind": "latency_jump"}))
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="chainkit"):
        assert recorded(ledger, skipped=skipped) == [good]
    assert sorted(skipped) == ["anomaly:w", "anomaly:x", "anomaly:y", "anomaly:z"]
    assert sum("not a readable anomaly" in r.getMessage() for r in caplog.records) == 4


def test_empty_ledgers_short_series_and_bad_arguments() -> None:
    assert detect(Ledger()) == []
    assert anomalies_of(synthetic_entries(Traffic(days=10, per_day=50))) == []
    with pytest.raises(ConfigError, match="per 'day' or per 'hour'"):
        anomalies_of([], every="week")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Unknown anomaly kinds"):
        anomalies_of([], kinds=["outage"])
    with pytest.raises(ConfigError, match="z must be > 0"):
        Thresholds(z=0)


def test_round_trip_of_an_anomaly() -> None:
    a = Anomaly(
        datetime(2026, 9, 1, 13, tzinfo=UTC),
        ("model", "m:1"),
        "unit_cost_jump",
        Decimal("0.002"),
        Decimal("0.001"),
        7.25,
    )
    assert Anomaly.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_unknown_costs_count_at_their_bound_in_spend() -> None:
    entries = synthetic_entries(TRAFFIC)
    t = datetime.combine(day(40), datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    big = Entry(
        request_id="u",
        stage="generate",
        outcome="answered",
        cost=None,
        bound=Decimal(5),
        tags={"tenant": "acme"},
        time=t,
    )
    found = anomalies_of([*entries, big])
    assert {(a.when, a.scope) for a in found} >= {(day(40), ("tenant", "acme"))}


def _extra(rid: str, cost: str, when: datetime, phase: str = "serve", **tags: str) -> Entry:
    return Entry(
        request_id=rid,
        stage="generate" if phase == "serve" else "precompute",
        outcome="answered",
        cost=Decimal(cost),
        phase=phase,
        tags=tags,
        time=when,
    )


@pytest.mark.parametrize(("offset", "phase"), [(0, "setup"), (0, "serve"), (20, "setup")])
def test_a_big_earlier_day_does_not_hide_a_later_spike(offset: int, phase: str) -> None:
    traffic = Traffic(days=40, per_day=60, start=date(2026, 9, 20))
    base = synthetic_entries(traffic, [Injection("spike", 35, 5.0, "acme")])
    when = datetime(2026, 9, 20, 12, tzinfo=UTC) + timedelta(days=offset)
    big = _extra("x", "0.7", when, phase, tenant="acme")
    found = anomalies_of([*base, big])
    spikes = {(a.when, a.scope) for a in found if a.kind == "spike"}
    # The spike of 25 October (5x acme) is found, on acme and on the total.
    assert {(date(2026, 10, 25), ("tenant", "acme")), (date(2026, 10, 25), ("total", "all"))} <= (
        spikes
    )
    # Setup spend is paid once by design: never a spike itself.
    if phase == "setup":
        assert all(a.when != big.time.date() for a in found)


def test_a_hundredfold_day_on_intermittent_spend_is_a_spike() -> None:
    t = datetime(2026, 10, 1, 12, tzinfo=UTC)
    entries = [_extra(f"r{d}", "1", t + timedelta(days=d), tenant="a") for d in range(0, 60, 2)]
    entries.append(_extra("big", "50", t + timedelta(days=61), tenant="a"))
    found = anomalies_of(entries)
    assert [(a.when, a.scope, a.observed, a.expected) for a in found] == [
        (date(2026, 12, 1), ("tenant", "a"), Decimal(50), Decimal(1)),
        (date(2026, 12, 1), ("total", "all"), Decimal(50), Decimal(1)),
    ]
