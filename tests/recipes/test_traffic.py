"""The support bot over simulated days: real pipeline runs, replayed, then analysed."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import SQLiteLedger
from chainkit.finops import Traffic, recorded
from recipes import traffic as recipe


def test_simulated_days_give_forecast_anomaly_and_measured_figures(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.db"
    code = recipe.main(
        [
            "--days",
            "28",
            "--per-day",
            "150",
            "--data-dir",
            str(shared_data),
            "--ledger",
            str(path),
            "--format",
            "json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    traffic = Traffic(days=28, per_day=150)
    injected = traffic.start + timedelta(days=21)  # three quarters through
    assert out["injected"]["day"] == injected.isoformat()
    with SQLiteLedger(path, read_only=True) as ledger:
        entries = ledger.entries()
        # One entry per stage a request went through, over the 28 days (setup the day before).
        days = {e.time.date() for e in entries if e.phase == "serve"}
        assert days == set(traffic.dates())
        assert {e.time.hour for e in entries if e.phase == "serve"} >= set(range(7, 20))
        requests = {e.request_id for e in entries if e.phase == "serve"}
        assert len(requests) == out["traffic"]["interactions"] == sum(traffic.volumes())
        assert {e.stage for e in entries if e.phase == "setup"} == {"precompute"}
        # On the injected day acme's requests never meet a precomputed answer; others' do.
        that_day = [e for e in entries if e.time.date() == injected and e.phase == "serve"]
        answered = {(e.tags["tenant"], e.stage) for e in that_day if e.outcome == "answered"}
        assert ("acme", "precomputed") not in answered and ("globex", "precomputed") in answered
        assert Decimal(out["allocation"]["total_usd"]) == ledger.cost
        # The anomaly found is the injected one, and it is kept in the ledger.
        found = recorded(ledger)
    drops = [a for a in found if a.kind == "deflection_drop"]
    assert [(a.when, a.scope) for a in drops] == [(injected, ("stage", "precomputed"))]
    assert out["run_recall"] == 1.0
    assert [a["when"] for a in out["anomalies"]] == [a.when.isoformat() for a in found]
    f = out["forecast"]
    assert f["month_end"]["date"] == "2026-09-30" and len(f["observed"]) == 29
    assert 0 <= out["forecast_coverage"]["0.8"] <= 1 and out["forecast_coverage"]["forecasts"] > 0
    assert out["synthetic_detection"]["injections"] == 12


def test_the_table_report_closes_with_the_measured_figures(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = recipe.main(["--days", "28", "--per-day", "100", "--data-dir", str(shared_data)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Cost by tenant" in out and "Forecast (80% interval" in out
    note = out.strip().splitlines()[-1]
    assert note.startswith("Note: forecast coverage") and "precision" in note and "recall" in note


def test_too_few_days_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        recipe.main(["--days", "10"])
    assert exc.value.code == 2
    assert "at least 28 days" in capsys.readouterr().err
