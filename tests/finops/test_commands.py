from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import PostgresLedger, SQLiteLedger
from chainkit.cli import main
from chainkit.finops import Injection, Traffic, synthetic_entries

TRAFFIC = Traffic(days=36, per_day=150, seed=5)


@pytest.fixture(scope="module")
def entries() -> list:  # type: ignore[type-arg]
    return synthetic_entries(TRAFFIC, [Injection("spike", 30, 4.0)])


@pytest.fixture
def db(tmp_path: Path, entries: list) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as ledger:
        ledger.record_many(entries)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_report_by_tenant_in_every_format(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant", "--format", "json")
    assert code == 0
    data = json.loads(out)
    with SQLiteLedger(db, read_only=True) as ledger:
        assert Decimal(data["total_usd"]) == ledger.cost
        requests = len({e.request_id for e in ledger.iter_entries()})
    assert {r["tenant"] for r in data["rows"]} == {"acme", "globex", "initech"}
    assert sum(r["requests"] for r in data["rows"]) == requests
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sum(Decimal(r["cost"]) for r in rows) == Decimal(data["total_usd"])
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant")
    assert out.startswith("Cost by tenant") and "acme" in out and "per request" in out
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant", "--format", "markdown")
    assert "| tenant | requests |" in out


def test_forecast_command(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "forecast", str(db), "--format", "json", "--level", "0.95")
    assert code == 0
    (f,) = json.loads(out)
    assert f["level"] == 0.95 and len(f["observed"]) == 36
    assert f["month_end"]["date"] == "2026-10-31"
    assert Decimal(f["month_end"]["low"]) <= Decimal(f["month_end"]["mid"])
    code, out, _ = run(capsys, "forecast", str(db), "--by", "tenant")
    assert "tenant=acme" in out and "tenant=initech" in out
    code, out, _ = run(capsys, "forecast", str(db), "--tag", "tenant=globex", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["kind"] for r in rows} == {"observed", "forecast", "month_end", "next_month"}
    assert {r["scope"] for r in rows} == {"tenant=globex"}


def test_anomalies_command_records_then_lists(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "anomalies", str(db), "--no-record", "--format", "json")
    assert code == 0 and json.loads(out)
    code, out, _ = run(capsys, "anomalies", str(db), "--recorded", "--format", "json")
    assert json.loads(out) == []  # --no-record recorded nothing
    code, found, _ = run(capsys, "anomalies", str(db), "--format", "json")
    code, listed, _ = run(capsys, "anomalies", str(db), "--recorded", "--format", "json")
    assert json.loads(listed) == json.loads(found)
    # The showback report shows what was recorded.
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant", "--format", "json")
    assert json.loads(out)["anomalies"] == json.loads(found)
    code, out, _ = run(capsys, "report", str(db), "--by", "tenant")
    assert "Anomalies recorded" in out and "tenant=acme" in out
    assert any(
        a["scope"] == ["tenant", "acme"] and a["when"] == "2026-10-01" for a in json.loads(found)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forecast", "{missing}"], "No ledger at"),
        (["forecast", "{db}", "--level", "95"], "--level '95' is not a share"),
        (["forecast", "{db}", "--tag", "acme"], "give KEY=VALUE"),
        (["forecast", "{db}", "--through", "yesterday"], "is not a date"),
        (["forecast", "{db}", "--tag", "tenant=nobody"], "at least 3 days"),
        (["anomalies", "{db}", "--z", "-1"], "positive number"),
        (["report", "{db}", "--by", ","], "names no tag"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.format(db=db, missing=tmp_path / "nope.db") for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_commands_read_a_postgres_ledger(
    pg_dsn: str,
    pg_schema: str,
    entries: list,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        ledger.record_many(entries)
        cost = ledger.cost
    code, out, _ = run(
        capsys, "report", pg_dsn, "--schema", pg_schema, "--by", "tenant", "--format", "json"
    )
    assert code == 0 and Decimal(json.loads(out)["total_usd"]) == cost
    code, out, _ = run(capsys, "forecast", pg_dsn, "--schema", pg_schema, "--format", "json")
    assert code == 0 and json.loads(out)[0]["month_end"]["date"] == "2026-10-31"
    code, out, _ = run(capsys, "anomalies", pg_dsn, "--schema", pg_schema, "--format", "json")
    assert code == 0 and json.loads(out)
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        assert ledger.recorded_events("anomaly:") and ledger.cost == cost


def test_the_html_report_draws_the_forecast_and_the_recorded_anomalies(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    code, _, _ = run(capsys, "report", str(db), "--format", "html", "--out", str(page))
    before = page.read_text(encoding="utf-8")
    assert code == 0 and 'class="forecast"' in before and 'class="anomaly"' not in before
    code, _, _ = run(capsys, "anomalies", str(db), "--format", "json")  # records them
    assert code == 0
    code, _, _ = run(capsys, "report", str(db), "--format", "html", "--out", str(page))
    after = page.read_text(encoding="utf-8")
    # The injected spike (day 30) is marked on the spend chart.
    assert code == 0 and after.count('class="anomaly"') >= 1


def test_the_html_report_of_a_ledger_too_short_to_forecast_has_no_band(
    tmp_path: Path,
    entries: list,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    path = tmp_path / "short.db"
    first = min(e.time.date() for e in entries)
    with SQLiteLedger(path) as ledger:
        ledger.record_many(e for e in entries if e.time.date() == first)
    page = tmp_path / "report.html"
    code, _, err = run(capsys, "report", str(path), "--format", "html", "--out", str(page))
    assert code == 0, err
    assert 'class="forecast"' not in page.read_text(encoding="utf-8")


def test_every_report_format_reads_a_postgres_ledger(
    pg_dsn: str, pg_schema: str, entries: list, tmp_path: Path,  # type: ignore[type-arg]
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        ledger.record_many(entries[:500])
        cost = ledger.cost
    code, out, err = run(capsys, "report", pg_dsn, "--schema", pg_schema, "--format", "json")
    assert code == 0, err
    assert sum(Decimal(v["total_cost_usd"]) for v in json.loads(out)["variants"]) == cost
    page = tmp_path / "r.html"
    code, _, err = run(capsys, "report", pg_dsn, "--schema", pg_schema, "--format", "html",
                       "--out", str(page))  # fmt: skip
    assert code == 0, err
    assert "<svg" in page.read_text(encoding="utf-8")


def test_an_unreadable_anomaly_event_is_skipped_with_a_note(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "anomalies", str(db))
    assert code == 0
    with SQLiteLedger(db) as ledger:
        ledger.record_event("anomaly:2026-10-01:latency:total=all", '{"kind": "latency"}')
    code, out, _ = run(capsys, "anomalies", str(db), "--recorded")
    assert code == 0 and "spike" in out
    assert "note: 1 recorded event(s) under anomaly: are not readable" in out
    code, out, _ = run(capsys, "anomalies", str(db), "--recorded", "--format", "json")
    assert json.loads(out)["skipped"] == ["anomaly:2026-10-01:latency:total=all"]
    html = db.with_suffix(".html")
    code, out, _ = run(capsys, "report", str(db), "--format", "html", "--out", str(html))
    assert code == 0 and html.stat().st_size > 0


def test_report_by_cells_are_safe_and_unambiguous(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from chainkit import Entry

    path = tmp_path / "odd.db"
    t = datetime(2026, 10, 1, tzinfo=UTC)
    tenants = ["=HYPERLINK(1)", "two\nlines", "(none)", None]
    with SQLiteLedger(path) as ledger:
        for i, tenant in enumerate(tenants):
            ledger.record(
                Entry(
                    request_id=f"r{i}",
                    stage="canned",
                    outcome="answered",
                    cost=Decimal("0.5"),
                    tags={} if tenant is None else {"tenant": tenant},
                    time=t,
                )
            )
    code, out, _ = run(capsys, "report", str(path), "--by", "tenant", "--format", "csv")
    assert code == 0
    cells = [r["tenant"] for r in csv.DictReader(io.StringIO(out))]
    # A formula is neutralised; "(none)" is a tenant, the entry without one is —untagged—.
    assert sorted(cells) == sorted(
        ["'=HYPERLINK(1)", "two\nlines", "(none)", "\u2014untagged\u2014"]
    )
    code, out, _ = run(capsys, "report", str(path), "--by", "tenant")
    assert "two\\nlines" in out and len(out.splitlines()) == 2 + len(tenants)
    # No tokens to divide by: per 1K tokens is n/a, not unknown.
    assert "n/a" in out and "unknown" not in out.split("\n", 2)[2]
    code, out, _ = run(capsys, "report", str(path), "--by", "tenant", "--format", "markdown")
    assert "two\\nlines" in out


def test_anomaly_keys_do_not_collide() -> None:
    from datetime import date

    from chainkit.finops import Anomaly

    def key(scope: tuple[str, str]) -> str:
        return Anomaly(date(2026, 10, 1), scope, "spike", Decimal(2), Decimal(1), 5.0).key

    assert key(("tenant", "a=b")) != key(("tenant=a", "b"))
    assert key(("tenant", "a")) == 'anomaly:2026-10-01:spike:["tenant","a"]'


def test_allocate_by_a_comma_string_is_refused_with_a_hint(entries: list) -> None:  # type: ignore[type-arg]
    from chainkit import ConfigError
    from chainkit.finops import allocate

    with pytest.raises(ConfigError, match=r"by=\['tenant', 'feature'\]"):
        allocate(entries, "tenant,feature")
    assert allocate(entries, ["tenant", "feature"]).by == ("tenant", "feature")
