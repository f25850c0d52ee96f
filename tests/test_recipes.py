import json
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


def test_a_recipe_will_not_overwrite_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    path.write_text("")

    with pytest.raises(ConfigError, match="already exists"):
        chatbot.main(["--scenario", "seed", "--ledger", str(path)])
