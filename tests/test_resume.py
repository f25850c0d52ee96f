from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import (
    Catalogue,
    ConfigError,
    Generate,
    Ledger,
    Pipeline,
    Request,
    Resume,
    ScriptedModel,
    SQLiteLedger,
    Summarise,
    Usage,
)

# Every test here runs twice: through Pipeline.run, then through Pipeline.arun (both_ways).
pytestmark = pytest.mark.usefixtures("both_ways")

SEED = Catalogue.load("seed-2024")
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
ROOT = Path(__file__).resolve().parents[1]


class Boom(Exception):
    pass


def chained(fail_on: set[str] | None = None) -> tuple[Pipeline, ScriptedModel, ScriptedModel]:
    fail_on = fail_on or set()
    small = ScriptedModel(model_id=MIXTRAL, reply="summary", usage=Usage(10_000, 500))

    def report(prompt: object) -> str:
        if any(marker in str(prompt) for marker in fail_on):
            raise Boom("killed mid-run")
        return "report"

    strong = ScriptedModel(model_id=SONNET, reply=report, usage=Usage(500, 1_000))
    pipeline = Pipeline(
        [
            Summarise(model=small, max_tokens=500, catalogue=SEED),
            Generate(model=strong, max_tokens=1_000, catalogue=SEED),
        ]
    )
    return pipeline, small, strong


def requests(n: int) -> list[Request]:
    return [Request(f"write report {i}", id=f"doc-{i}", document=f"document {i}") for i in range(n)]


def test_resume_needs_a_persistent_ledger() -> None:
    pipeline, _, _ = chained()
    with pytest.raises(ConfigError, match="SQLiteLedger"):
        pipeline.run(requests(1)[0], Ledger(), resume=True)


def test_a_finished_run_is_not_paid_again(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    pipeline, small, strong = chained()
    keep = Resume(keep_text=True)
    with SQLiteLedger(path) as ledger:
        first = pipeline.run_batch(requests(20), ledger, resume=keep)
    pipeline, small, strong = chained()
    with SQLiteLedger(path) as ledger:
        again = pipeline.run_batch(requests(20), ledger, resume=keep)
        assert len(ledger) == 40  # 20 summaries + 20 reports, once each
        assert ledger.cost == Decimal("0.4270")  # 20 x the article's $0.02135
    assert [r.text for r in again] == [r.text for r in first]
    assert small.prompts == [] and strong.prompts == []


def test_an_interrupted_run_continues_after_its_last_saved_stage(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    keep = Resume(keep_text=True)
    pipeline, _, _ = chained(fail_on={"write report 7"})
    with SQLiteLedger(path) as ledger:
        out = pipeline.run_batch(requests(10), ledger, resume=keep, return_exceptions=True)
    assert isinstance(out[7], Exception)
    pipeline, small, strong = chained()
    with SQLiteLedger(path) as ledger:
        results = pipeline.run_batch(requests(10), ledger, resume=keep)
        # doc-7 was summarised (and paid) before the failure: only its report is new.
        assert [p.user for p in small.prompts] == []
        assert len(strong.prompts) == 1 and "Summary:\nsummary" in strong.prompts[0].user
        summaries = [e for e in ledger.entries() if e.stage == "summarise"]
        reports = [e for e in ledger.entries() if e.stage == "generate"]
        assert len(summaries) == 10
        assert [e.outcome for e in reports].count("answered") == 10
        assert [e.outcome for e in reports].count("failed") == 1  # kept: nothing is lost
    assert [r.stage for r in results] == ["generate"] * 10


def _report(*args: str, cwd: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "recipes.summarisation", *args, "--format", "json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout)


def _totals(report: dict[str, object]) -> dict[str, object]:
    variants = report["variants"]
    assert isinstance(variants, list)
    return {
        v["name"]: (
            v["requests"],
            v["total_cost_usd"],
            [(s["stage"], s["calls"]) for s in v["by_stage"]],
        )
        for v in variants
    }


def test_a_killed_run_restarted_reports_the_same_totals(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    with docs.open("w") as f:
        for i in range(12):
            text = "\n".join(
                f"Speaker {j % 3}: point {i}-{j} about budget item {j}." for j in range(120)
            )
            f.write(
                json.dumps({"id": f"m{i}", "document": text, "summary": f"budget items {i}"}) + "\n"
            )
    common = ["--data-dir", str(tmp_path), "--dataset", str(docs), "--concurrency", "2"]
    whole = _report(*common, "--ledger", str(tmp_path / "whole.db"), "--resume", cwd=ROOT)

    db = tmp_path / "killed.db"
    cmd = [
        sys.executable,
        "-m",
        "recipes.summarisation",
        *common,
        "--ledger",
        str(db),
        "--resume",
        "--latency",
        "0.02",
        "--format",
        "json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    entries = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if entries >= 20:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert entries >= 20

    restarted = _report(*common, "--ledger", str(db), "--resume", cwd=ROOT)
    assert _totals(restarted) == _totals(whole)


def test_precompute_on_resume_takes_its_replies_from_the_ledger(tmp_path: Path) -> None:
    from chainkit import ReplyStore, precompute

    path = tmp_path / "run.db"
    questions = {"returns_policy": "How do returns work?", "delivery_options": "How do you ship?"}
    stores = []
    for run in range(2):
        model = ScriptedModel(
            model_id=MIXTRAL, reply=lambda p: f"policy for {str(p)[-20:]}", usage=Usage(40, 60)
        )
        store = ReplyStore(tmp_path / f"store-{run}")
        stores.append(store)
        with SQLiteLedger(path) as ledger:
            for variant in ("a", "b"):  # two tag sets: two setups, each its own request
                precompute(store, questions, model=model, ledger=ledger, catalogue=SEED,
                           tags={"variant": variant}, resume=True)  # fmt: skip
            entries = ledger.entries()
        assert len(model.prompts) == (4 if run == 0 else 0)
        assert len(entries) == 4 and len({e.request_id for e in entries}) == 4
    assert [stores[1].get(i) for i in questions] == [stores[0].get(i) for i in questions]
    assert all(stores[1].get(i) for i in questions)
    for store in stores:
        store.close()
