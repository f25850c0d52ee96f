"""The `chainkit` command: price listings and reports on saved ledgers."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import pytest

from chainkit import ConfigError, Entry, SQLiteLedger, Usage
from chainkit.cli import count, explain, main, run_command
from chainkit.report import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- prices --------------------------------------------------------------------------------------


def test_prices_table_defaults_to_bedrock(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "prices")
    assert (code, err) == (0, "")
    assert out.startswith("catalogue bedrock-2026-11-29:")
    row = next(line for line in out.splitlines() if line.startswith("anthropic.claude-sonnet-4-2"))
    assert row.split() == [
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "us-east-1",
        "on_demand",
        "3.00",
        "15.00",
        "0.30/3.75/6.00",
        "200,000",
        "2025-07-20",
        "low",
        "https://github.com/convo-lang/convo-lang/blob/091db5838d43329ba83c26c8bcf77a6216c0a624/"
        "packages/convo-lang-bedrock/bedrock-pricing.md",
    ]
    assert "marked low" in out.splitlines()[-1]


def test_prices_table_marks_only_low_confidence_rows(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "prices", "--catalogue", "bedrock-2026-11-29")
    rows = [line.split() for line in out.splitlines() if line.startswith("amazon.nova-micro")]
    assert [(r[1], r[8]) for r in rows if len(r) == 10] == [("us-west-2", "low")]
    assert any(r[1] == "us-east-1" and r[8].startswith("https://") for r in rows)


def test_prices_markdown_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    _, md, _ = _run(capsys, "prices", "--provider", "meta", "--format", "markdown")
    lines = md.splitlines()
    assert lines[2].startswith("| model id | region | tier |")
    assert all(line.startswith("| meta.") for line in lines[4:-2])
    _, csv_out, _ = _run(capsys, "prices", "--format", "csv", "--provider", "Anthropic")
    rows = list(csv.reader(io.StringIO(csv_out)))
    assert rows[0][-3:] == ["date", "conf", "source"]
    sonnet_45 = {r[1]: r for r in rows[1:] if r[0].startswith("anthropic.claude-sonnet-4-5")}
    assert (sonnet_45["global"][3], sonnet_45["us"][3], sonnet_45["eu"][4]) == (
        "3.00",
        "3.30",
        "16.50",
    )


def test_prices_unknown_provider_lists_providers(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "prices", "--provider", "nobody")
    assert code == 2
    assert "'nobody'" in err
    assert "Anthropic" in err


def test_prices_table_seed_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "prices", "--catalogue", "seed-2024")
    assert code == 0
    assert out.startswith("catalogue seed-2024: 11 models.")
    row = next(line for line in out.splitlines() if line.startswith("anthropic.claude-v2 "))
    assert row.split()[:8] == [
        "anthropic.claude-v2",
        "*",
        "on_demand",
        "8.00",
        "24.00",
        "-/-/-",
        "100,000",
        "2024-03-13",
    ]
    assert row.split()[-1].startswith("https://")


def test_prices_json_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "prices", "--catalogue", "seed-2024", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["catalogue"] == "seed-2024"
    models = {m["id"]: m for m in data["models"]}
    assert len(models) == 11
    (price,) = models["anthropic.claude-v2"]["prices"]
    assert price["input_per_mtok"] == "8.00"
    assert price["output_per_mtok"] == "24.00"
    assert price["cache_read_per_mtok"] is None
    assert price["effective_date"] == "2024-03-13"
    assert price["source_url"].startswith("https://")
    assert models["anthropic.claude-3-haiku-20240307-v1:0"]["prices"][0]["input_per_mtok"] == "0.25"


def test_prices_json_bedrock(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "prices", "--catalogue", "bedrock-2026-11", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["catalogue"] == "bedrock-2026-11"
    models = {m["id"]: m for m in data["models"]}
    sonnet = models["anthropic.claude-sonnet-4-20250514-v1:0"]
    assert "us.anthropic.claude-sonnet-4-20250514-v1:0" in sonnet["aliases"]
    assert sonnet["prices"][0]["cache_read_per_mtok"] == "0.30"
    assert sonnet["prices"][0]["cache_write_per_mtok"] == "3.75"
    tiers = {p["tier"] for p in models["amazon.nova-micro-v1:0"]["prices"]}
    assert tiers == {"on_demand", "batch"}


def test_prices_unknown_catalogue_exits_2_with_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "prices", "--catalogue", "nope")
    assert code == 2
    assert out == ""
    assert err.startswith("chainkit: ")
    assert "'nope'" in err
    assert "bedrock-2026-11" in err
    assert "seed-2024" in err


def test_prices_from_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "catalogue": "mine",
                "unit_tokens": 1000,
                "models": [
                    {
                        "id": "acme.small",
                        "name": "Small",
                        "provider": "Acme",
                        "context_window": 4096,
                        "prices": [
                            {
                                "region": "*",
                                "tier": "on_demand",
                                "input": "0.0001",
                                "output": "0.0002",
                                "source_url": "https://acme.example/prices",
                                "effective_date": "2025-01-01",
                            }
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    code, out, _ = _run(capsys, "prices", "--catalogue", str(path), "--format", "json")
    assert code == 0
    (model,) = json.loads(out)["models"]
    assert model["prices"][0]["input_per_mtok"] == "0.10"


def test_prices_malformed_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    code, _, err = _run(capsys, "prices", "--catalogue", str(path))
    assert code == 2
    assert str(path) in err


# -- report --------------------------------------------------------------------------------------


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """Four requests per variant: the article's single model against an intent-routed chain."""
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as ledger:
        for i in range(4):
            ledger.record(
                Entry(f"s{i}", "generate", "answered", Decimal("0.006"),
                      model="generic.powerful", usage=Usage(50, 50), tags={"variant": "single"})
            )  # fmt: skip
            tags = {"variant": "chained"}
            ledger.record(
                Entry(f"c{i}", "intent", "passed", Decimal("0.0003"), model="generic.intent",
                      usage=Usage(80, 20), tags=tags)
            )  # fmt: skip
            if i < 2:
                ledger.record(
                    Entry(f"c{i}", "canned", "answered", Decimal(0),
                          avoided_cost=Decimal("0.006"), tags=tags)
                )  # fmt: skip
            else:
                ledger.record(
                    Entry(f"c{i}", "generate", "answered", Decimal("0.0012"),
                          model="generic.responder", usage=Usage(150, 50), tags=tags)
                )  # fmt: skip
    return path


def test_report_table(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "report", str(ledger_file), "--traffic", "10000")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    single = next(line for line in lines if line.startswith("single"))
    chained = next(line for line in lines if line.startswith("chained"))
    assert "$1,800.00" in single
    assert "$270.00" in chained
    assert chained.endswith("85.0%")
    assert "per month @ 10,000/day" in out


def test_report_json(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "report", str(ledger_file), "--traffic", "10000", "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    variants = {v["name"]: v for v in data["variants"]}
    assert list(variants) == ["single", "chained"]
    assert variants["single"]["monthly_cost_usd"] == "1800.00"
    assert variants["chained"]["cost_per_request_usd"] == "0.0009"
    assert variants["chained"]["monthly_cost_usd"] == "270.00"
    assert variants["chained"]["savings_pct"] == "85.0"
    assert data["assumptions"]["traffic_per_day"] == 10_000


def test_report_without_traffic_has_no_projection(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "report", str(ledger_file), "--format", "json")
    assert code == 0
    variant = json.loads(out)["variants"][0]
    assert variant["total_cost_usd"] == "0.024"
    assert "monthly_cost_usd" not in variant


def test_report_other_variant_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(Entry("r1", "generate", "answered", Decimal("0.25"), tags={"tenant": "a"}))
        ledger.record(Entry("r2", "generate", "answered", Decimal("0.75"), tags={"tenant": "b"}))
    code, out, _ = _run(capsys, "report", str(path), "--variant-tag", "tenant", "--format", "json")
    assert code == 0
    names = [(v["name"], v["total_cost_usd"]) for v in json.loads(out)["variants"]]
    assert names == [("a", "0.25"), ("b", "0.75")]


def test_report_missing_file_exits_2_naming_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.db"
    code, out, err = _run(capsys, "report", str(path))
    assert code == 2
    assert out == ""
    assert str(path) in err
    assert "a recipe wrote with --ledger" in err
    assert not path.exists()


def test_report_on_non_database_file_exits_2_naming_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a ledger\n" * 100, encoding="utf-8")
    code, _, err = _run(capsys, "report", str(path))
    assert code == 2
    assert str(path) in err


def test_report_on_a_foreign_database_exits_2_and_leaves_it_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib
    import sqlite3

    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (sku TEXT, price REAL)")  # a table named like ours
    db.commit()
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, out, err = _run(capsys, "report", str(path))
    assert (code, out) == (2, "")
    assert "not a chainkit ledger" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert not Path(f"{path}-wal").exists()


def test_report_reads_a_ledger_without_changing_it(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    before = hashlib.sha256(ledger_file.read_bytes()).hexdigest()
    code, _, _ = _run(capsys, "report", str(ledger_file), "--format", "json")
    assert code == 0
    assert hashlib.sha256(ledger_file.read_bytes()).hexdigest() == before


def test_report_baseline_is_the_one_named_never_chosen_by_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "runs.db"
    with SQLiteLedger(path) as ledger:
        # The cheap variant was served first; the lazy one is the baseline people mean.
        for i in range(4):
            ledger.record(
                Entry(f"c{i}", "generate", "answered", cost=Decimal("0.01"),
                      tags={"variant": "chained"})
            )  # fmt: skip
        for i in range(4):
            ledger.record(
                Entry(f"l{i}", "generate", "answered", cost=Decimal("0.04"),
                      tags={"variant": "lazy"})
            )  # fmt: skip
    code, out, _ = _run(capsys, "report", str(path), "--format", "json")
    first = json.loads(out)["variants"]
    assert code == 0 and [v["name"] for v in first] == ["chained", "lazy"]
    assert first[1]["savings_pct"] == "-300.0"  # the first served, whatever it costs
    code, out, _ = _run(capsys, "report", str(path), "--baseline", "lazy", "--format", "json")
    named = json.loads(out)["variants"]
    assert code == 0 and [v["name"] for v in named] == ["lazy", "chained"]
    assert named[1]["savings_pct"] == "75.0"
    code, _, err = _run(capsys, "report", str(path), "--baseline", "nosuch")
    assert code == 2 and "'nosuch'" in err and "chained, lazy" in err


def test_report_markdown_has_every_table(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "report", str(ledger_file), "--traffic", "10000", "--format",
                          "markdown")  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("| variant | requests | total |")
    assert "| single | 4 | $0.024 | $0.006 | $1,800.00 | 0.0% |" in lines
    assert "**single**" in lines and "**chained**" in lines
    assert sum(line.startswith("| stage |") for line in lines) == 2
    assert "| canned | 2 | 2 | 50.0% | 0 | 0 | $0.00 | $0.012 |" in out


def test_report_csv_rows_per_variant_and_stage(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "report", str(ledger_file), "--traffic", "10000", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("single", ""),
        ("single", "generate"),
        ("chained", ""),
        ("chained", "intent"),
        ("chained", "canned"),
        ("chained", "generate"),
    ]
    assert (rows[0]["monthly_cost_usd"], rows[2]["savings_pct"]) == ("1800.00", "85.0")


def test_report_traffic_must_be_a_count(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("0", "-5", "ten"):
        with pytest.raises(SystemExit) as exit_:
            main(["report", str(ledger_file), "--traffic", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert err == (
            f"chainkit report: argument --traffic: {bad} is not a count: give a whole number of 1 "
            "or more (see chainkit report --help)\n"
        )


def test_count_takes_whole_numbers_of_one_or_more() -> None:
    assert (count("1"), count("10_000")) == (1, 10_000)
    for bad in ("0", "-1", "-3", "1.5", "", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a count"):
            count(bad)


# -- errors a user can fix: one line, exit status 2 ------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chainkit.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE entries (sku TEXT, price REAL)")  # a table named like ours
    db.commit()
    db.close()
    return path


def test_report_on_a_foreign_database_is_one_line_from_the_command(tmp_path: Path) -> None:
    path = _foreign(tmp_path)
    done = _cli("report", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"chainkit: {path} is an SQLite database but not a chainkit")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _foreign(tmp_path)
    with pytest.raises(ConfigError, match="not a chainkit ledger"):
        main(["report", str(path), "--debug"])
    with pytest.raises(ConfigError, match="not a chainkit ledger"):
        main(["--debug", "report", str(path)])
    done = _cli("report", str(path), env={**os.environ, "CHAINKIT_DEBUG": "1"})
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_output_cut_short_by_head_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    with SQLiteLedger(path) as ledger:  # a report far larger than a pipe's buffer
        ledger.record_many(
            Entry(f"r{i}", "generate", "answered", Decimal("0.001"), tags={"variant": f"v{i}"})
            for i in range(400)
        )
    command = f"{sys.executable} -m chainkit.cli report {path} --format json | head -c 10"
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert (done.stdout, done.stderr) == ('{\n  "varia', "")


def test_a_closed_stdout_ends_with_status_1_and_nothing_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def work() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    assert run_command(work, prog="chainkit") == 1
    assert capsys.readouterr().err == ""


def test_version_is_the_installed_package_version() -> None:
    done = _cli("--version")
    assert (done.returncode, done.stdout) == (0, f"chainkit {version('chainkit')}\n")


def test_help_texts_are_clean() -> None:
    top = _cli("--help").stdout
    assert "``" not in top and "List model prices" in top
    prices = _cli("prices", "--help").stdout
    assert "with their prices per million tokens" in prices  # a description, not just usage
    report = _cli("report", "--help").stdout
    assert "{table,markdown,json,csv,html}" in report


def test_known_aws_and_sqlite_errors_are_explained_in_one_line() -> None:
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    region = explain(NoRegionError())
    assert region is not None and "--region" in region
    keys = explain(NoCredentialsError())
    assert keys is not None and "AWS_PROFILE" in keys
    refused = explain(
        ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "not authorised"}}, "Converse"
        )
    )
    assert refused is not None
    assert refused.startswith("AWS refused Converse: AccessDeniedException: not authorised.")
    assert "Model access" in refused
    locked = explain(sqlite3.OperationalError("database is locked"))
    assert locked is not None and locked.startswith("SQLite: database is locked.")
    assert explain(KeyError("a bug")) is None  # a bug keeps its traceback


def test_an_unexplained_error_keeps_its_traceback() -> None:
    def work() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command(work, prog="chainkit")


def test_multi_line_messages_become_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def work() -> int:
        raise ConfigError("first line\n  second line")

    assert run_command(work, prog="chainkit") == 2
    assert capsys.readouterr().err == "chainkit: first line second line\n"


def test_prices_csv_keeps_each_price_in_its_own_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "prices", "--catalogue", "genai-prices@2026-11-29", "--format",
                        "csv")  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    money_columns = [c for c in rows[0] if "$/" in c]
    assert len(money_columns) == 7
    for row in rows:
        for column in money_columns:  # a number or nothing, never "1.00 +$12.00/1k requests"
            assert row[column] == "" or Decimal(row[column]) >= 0, (row["model id"], column)
        assert row["long-context tiers"].isdigit()
        assert row["context"] == "" or row["context"].isdigit()
    priced = [r for r in rows if r["$/1k requests"]]
    # Perplexity's sonar models charge per request besides their tokens.
    assert {r["model id"] for r in priced} >= {"perplexity:sonar", "perplexity:sonar-pro"}


def test_a_genai_prices_catalogue_name_with_an_empty_date_is_refused() -> None:
    from chainkit import Catalogue

    with pytest.raises(ConfigError, match="names no date after '@'"):
        Catalogue.load("genai-prices@")


@pytest.mark.parametrize("fmt", ["table", "json", "html"])
def test_report_out_never_writes_over_the_ledger_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(
            Entry(request_id="r", stage="generate", outcome="answered", cost=Decimal("0.01"))
        )
    before = path.read_bytes()
    link = tmp_path / "link.db"
    link.symlink_to(path)
    for out in (path, link, tmp_path / "." / "run.db"):
        code, _, err = _run(capsys, "report", str(path), "--format", fmt, "--out", str(out))
        assert code == 2 and "would destroy it" in err
    assert path.read_bytes() == before
    # --by writes to --out too.
    other = tmp_path / "by.csv"
    code, _, _ = _run(capsys, "report", str(path), "--by", "conversation", "--format", "csv",
                      "--out", str(other))  # fmt: skip
    assert code == 0 and other.exists()


@pytest.mark.parametrize("by", ["conversation", "tenant"])
def test_report_by_with_html_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], by: str
) -> None:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(
            Entry(request_id="r", stage="generate", outcome="answered", cost=Decimal("0.01"))
        )
    code, out, err = _run(capsys, "report", str(path), "--by", by, "--format", "html")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "--by-tag" in err
