import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import ConfigError, Ledger, cli
from recipes import chatbot, summarisation


def run_json(capsys: pytest.CaptureFixture[str], main: Any, argv: list[str]) -> dict[str, Any]:
    assert main([*argv, "--format", "json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def variants(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in report["variants"]}


def stages(variant: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["stage"]: s for s in variant["by_stage"]}


def test_summarisation_seed_reproduces_the_article_with_its_own_prices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_json(capsys, summarisation.main, ["--scenario", "seed"])

    lazy, chained = report["variants"]
    assert (lazy["name"], chained["name"]) == ("lazy", "chained")
    assert lazy["requests"] == chained["requests"] == 200
    assert lazy["total_cost_usd"] == "9.00"
    assert chained["total_cost_usd"] == "4.27"
    assert chained["savings_pct"] == "52.6"
    # 10K in and 500 out on Mixtral, 200 times; then 500 in and 1K out on Sonnet, 200 times.
    assert stages(chained)["summarise"]["cost_usd"] == "0.97"
    assert stages(chained)["generate"]["cost_usd"] == "3.30"
    assert any("46" in note for note in report["notes"])


def test_summarisation_run_seed_prices_each_request() -> None:
    ledger = Ledger()

    report = summarisation.run_seed(4, ledger)

    lazy, chained = report.variants
    assert lazy.cost_per_request == Decimal("0.045")
    assert chained.cost_per_request == Decimal("0.02135")
    entries = ledger.entries()
    assert len(entries) == 4 + 2 * 4
    chained_ids = {e.request_id for e in entries if e.tags["variant"] == "chained"}
    for rid in chained_ids:
        assert [e.stage for e in entries if e.request_id == rid] == ["summarise", "generate"]
    # The article's comparison only holds for its 200 documents.
    assert not any("46" in note for note in report.notes)


def test_chatbot_seed_reproduces_the_article(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, chatbot.main, ["--scenario", "seed", "--traffic", "10000"])

    by_name = variants(report)
    single, smart = by_name["single-llm"], by_name["well-architected"]
    assert single["monthly_cost_usd"] == "1800.00"
    assert single["cost_per_request_usd"] == "0.006"
    assert smart["monthly_cost_usd"] == "63.00"
    assert smart["savings_pct"] == "96.5"
    assert report["assumptions"]["article_monthly_usd"] == "54.00"
    smart_stages = stages(smart)
    assert smart_stages["intent_scan"]["calls"] == smart["requests"]
    assert smart_stages["canned"]["answered"] == smart["requests"] // 4
    assert smart_stages["precomputed"]["answered"] == smart["requests"] // 4
    assert smart_stages["generate"]["answered"] == smart["requests"] // 2


def test_chatbot_demo_deflects_traffic_and_costs_less(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, chatbot.main, [])

    assert [v["name"] for v in report["variants"]] == ["single-llm", "well-architected"]
    single, smart = report["variants"]
    assert Decimal(smart["monthly_cost_usd"]) < Decimal(single["monthly_cost_usd"])
    assert Decimal(smart["savings_pct"]) > 0
    smart_stages = stages(smart)
    assert smart_stages["canned"]["answered"] > 0
    assert smart_stages["precomputed"]["answered"] > 0
    assert Decimal(smart_stages["canned"]["avoided_usd"]) > 0
    assert Decimal(smart_stages["precomputed"]["avoided_usd"]) > 0
    assert smart_stages["precompute"]["calls"] == len(chatbot.POLICY_QUESTIONS)
    assert Decimal(smart["setup_cost_usd"]) > 0
    assert report["assumptions"]["catalogue"] == "bedrock-2026-11-29"


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (summarisation.main, ["--scenario", "seed", "--documents", "10"]),
        (chatbot.main, ["--scenario", "seed", "--requests", "100"]),
        (chatbot.main, []),
    ],
)
def test_the_ledger_file_reports_the_same_totals(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, main: Any, argv: list[str]
) -> None:
    path = tmp_path / "run.db"
    printed = run_json(capsys, main, [*argv, "--ledger", str(path)])

    assert cli.main(["report", str(path), "--format", "json"]) == 0
    reread = json.loads(capsys.readouterr().out)

    totals = {
        name: (v["requests"], v["total_cost_usd"], v["setup_cost_usd"])
        for name, v in variants(printed).items()
    }
    assert totals == {
        name: (v["requests"], v["total_cost_usd"], v["setup_cost_usd"])
        for name, v in variants(reread).items()
    }


def test_the_demo_ledger_file_reports_the_same_baseline_and_savings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # `chainkit report run.db` "prints it again" (README): same variants, same baseline.
    path = tmp_path / "run.db"
    printed = run_json(capsys, chatbot.main, ["--ledger", str(path)])

    assert cli.main(["report", str(path), "--format", "json"]) == 0
    reread = json.loads(capsys.readouterr().out)

    assert [(v["name"], v["savings_pct"]) for v in reread["variants"]] == [
        (v["name"], v["savings_pct"]) for v in printed["variants"]
    ]


def test_a_recipe_will_not_overwrite_a_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.db"
    path.write_text("")

    assert chatbot.main(["--scenario", "seed", "--ledger", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="already exists"):  # with --debug, the error itself
        chatbot.main(["--scenario", "seed", "--ledger", str(path), "--debug"])


# -- a careless user's arguments: one line naming the value, exit status 2 ---------------------

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def assert_one_line(done: Any, *named: str) -> str:
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    for value in named:
        assert value in done.stderr
    line: str = done.stderr.strip()
    return line


COUNT = "is not a count: give a whole number of 1 or more"


@pytest.mark.parametrize(
    ("module", "args", "named"),
    [
        ("recipes.chatbot", ["--traffic", "-5"], f"argument --traffic: -5 {COUNT}"),
        ("recipes.chatbot", ["--traffic", "0"], f"argument --traffic: 0 {COUNT}"),
        ("recipes.chatbot", ["--scenario", "seed", "--requests", "0"], "--requests: 0 is not"),
        ("recipes.chatbot", ["--limit", "0"], f"argument --limit: 0 {COUNT}"),
        ("recipes.chatbot", ["--limit", "-1"], f"argument --limit: -1 {COUNT}"),
        ("recipes.chatbot", ["--limit", "-3"], f"argument --limit: -3 {COUNT}"),
        ("recipes.chatbot", ["--small-talk", "1.5"], "--small-talk: 1.5 is not a share"),
        ("recipes.summarisation", ["--documents", "0"], f"argument --documents: 0 {COUNT}"),
        ("recipes.summarisation", ["--limit", "-3"], f"argument --limit: -3 {COUNT}"),
        ("recipes.summarisation", ["--concurrency", "0"], f"--concurrency: 0 {COUNT}"),
        ("recipes.summarisation", ["--latency", "-1"], "--latency: -1 is not a duration"),
    ],
)
def test_counts_must_be_positive(module: str, args: list[str], named: str) -> None:
    line = assert_one_line(run_module(module, *args), named)
    assert line.startswith(f"python -m {module}: ")
    assert line.endswith(f"(see python -m {module} --help)")


@pytest.mark.parametrize("module", ["recipes.chatbot", "recipes.summarisation"])
def test_a_missing_data_dir_is_named(module: str) -> None:
    assert_one_line(
        run_module(module, "--data-dir", "/nonexistent"),
        "argument --data-dir: /nonexistent does not exist",
        "../shared/data",
    )


def test_an_unknown_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    done = run_module("recipes.summarisation", "--data-dir", str(tmp_path), "--dataset", "nosuch")
    line = assert_one_line(done, "'nosuch'", "qmsum", "scisummnet")
    assert line == (
        "python -m recipes.summarisation: Unknown dataset 'nosuch': give qmsum or scisummnet, or "
        "the path of an existing JSONL file of {id, document, summary} lines."
    )


def test_a_known_dataset_missing_from_the_data_dir_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "run.db"
    argv = ["--data-dir", str(tmp_path), "--dataset", "scisummnet", "--ledger", str(ledger)]
    assert summarisation.main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "scisummnet" / "scisummnet_250.jsonl") in err
    assert not ledger.exists()  # refused before a ledger was written


def test_a_dataset_path_is_read_as_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "mine.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"id": f"d{i}", "document": "Anna: the budget is twelve euros. " * 40})
            for i in range(2)
        ),
        encoding="utf-8",
    )
    report = run_json(capsys, summarisation.main, ["--data-dir", str(tmp_path), "--dataset",
                                                   str(docs)])  # fmt: skip
    assert report["assumptions"]["documents"] == 2


def _no_aws(**extra: str) -> dict[str, str]:
    """The environment of a machine without AWS set up: botocore finds no keys and no region."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",  # no instance-role lookup: nothing reaches the network
        **extra,
    )
    return env


def test_bedrock_without_a_region_says_to_pass_region(tmp_path: Path) -> None:
    ledger = tmp_path / "run.db"
    done = run_module(
        "recipes.chatbot", "--provider", "bedrock", "--ledger", str(ledger), env=_no_aws()
    )
    assert_one_line(done, "--provider bedrock needs an AWS region", "--region us-east-1")
    assert not ledger.exists()


@pytest.mark.parametrize("module", ["recipes.chatbot", "recipes.summarisation"])
def test_bedrock_without_credentials_says_how_to_get_them(module: str) -> None:
    done = run_module(module, "--provider", "bedrock", "--region", "us-east-1", env=_no_aws())
    assert_one_line(done, "found no AWS credentials", "AWS_PROFILE", "aws configure")


def test_debug_env_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    path.write_text("")
    done = run_module("recipes.chatbot", "--scenario", "seed", "--ledger", str(path),
                      env={**os.environ, "CHAINKIT_DEBUG": "1"})  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "already exists" in done.stderr


def test_recipe_help_has_no_markup() -> None:
    for module in ("recipes.chatbot", "recipes.summarisation"):
        done = run_module(module, "--help")
        assert done.returncode == 0
        assert "``" not in done.stdout and "::" not in done.stdout


# -- output --------------------------------------------------------------------------------


def test_recipe_markdown_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        summarisation.main(["--scenario", "seed", "--documents", "4", "--format", "markdown"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("| variant | requests | total | per request | savings |")
    assert "**lazy**" in out and "**chained**" in out
    assert "| summarise | 4 | 0 | 0.0% | 40,000 | 2,000 | $0.0194 | $0.00 |" in out
    assert "- Measured: lazy $0.18, chained $0.0854 for 4 documents" in out


def test_recipe_csv(capsys: pytest.CaptureFixture[str]) -> None:
    assert chatbot.main(["--scenario", "seed", "--requests", "8", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("single-llm", ""),
        ("single-llm", "generate"),
        ("well-architected", ""),
        ("well-architected", "intent_scan"),
        ("well-architected", "canned"),
        ("well-architected", "precomputed"),
        ("well-architected", "generate"),
    ]
    assert rows[0]["monthly_cost_usd"] == "1800.00"


def test_seed_notes_show_money_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, chatbot.main, ["--scenario", "seed", "--traffic", "10000"])
    assert report["notes"][0].startswith(
        "As run: single-llm $1,800.00/month, well-architected $63.00/month"
    )
    assert "adds $9.00/month" in report["notes"][1]


def test_a_long_recipe_run_off_a_terminal_writes_progress_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chainkit.pipeline.PROGRESS_EVERY_S", 0.0001)  # every result, here
    assert summarisation.main(["--scenario", "seed", "--documents", "3", "--format", "json"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "lazy: 3 of 3 requests (100.0%) done in" in "\n".join(err)
    assert any(line.startswith("chained: 1 of 3 requests (33.3%) in ") for line in err)
    assert any(line.endswith(" left") for line in err)
