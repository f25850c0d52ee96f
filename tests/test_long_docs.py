from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import Catalogue, ConfigError, Ledger
from recipes import long_docs, summarisation


def write_docs(path: Path, n: int, turns: int = 150) -> Path:
    with path.open("w") as f:
        for i in range(n):
            lines = [
                f"Speaker {j % 4}: {{disfmarker}} Um, item {j} of meeting {i} costs {j * 7} euros."
                for j in range(turns)
            ]
            f.write(
                json.dumps({"id": f"m{i}", "document": "\n".join(lines), "summary": f"Meeting {i}"})
                + "\n"
            )
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert summarisation.main([*args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_variant_runs_on_the_same_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = write_docs(tmp_path / "docs.jsonl", 5)
    report = run_json(capsys, "--data-dir", str(tmp_path), "--dataset", str(docs))
    variants = {v["name"]: v for v in report["variants"]}  # type: ignore[union-attr]
    assert list(variants) == ["lazy", "chained", "compressed-chained", "chained-batch"]
    assert all(v["requests"] == 5 for v in variants.values())
    cost = {name: Decimal(v["total_cost_usd"]) for name, v in variants.items()}
    assert cost["chained"] < cost["lazy"]
    assert cost["compressed-chained"] < cost["chained"]
    # Batch inference is priced at the batch tier: half of on-demand for these models.
    assert cost["chained-batch"] == cost["chained"] / 2
    compressed = variants["compressed-chained"]
    stages = [s["stage"] for s in compressed["by_stage"]]
    assert stages == ["compress", "summarise", "generate"]
    assert "compress_rouge1_recall_kept" in compressed["quality"]
    assert report["assumptions"]["documents"] == 5  # type: ignore[index]


def test_a_document_over_the_context_window_is_summarised_in_chunks(tmp_path: Path) -> None:
    # Titan Text Express has an 8K window: these ~9K-token meetings must be split.
    docs = write_docs(tmp_path / "docs.jsonl", 2, turns=700)
    ledger = Ledger()
    report, _ = long_docs.run(
        tmp_path, str(docs), ledger, summariser="amazon.titan-text-express-v1"
    )
    window = Catalogue.load().card("amazon.titan-text-express-v1").context_window
    chunks = [
        e for e in ledger.entries() if e.stage == "summarise" and e.tags.get("variant") == "chained"
    ]
    assert len(chunks) > 2  # map calls and a reduce call per document
    assert {e.note for e in chunks} >= {"chunk 1.1/2", "chunk 1.2/2", "chunk reduce"}
    assert all("chunk" not in e.tags for e in chunks)  # the request's tags stay the user's
    assert all(e.usage is not None and e.usage.input_tokens + 500 <= window for e in chunks)
    assert report.assumptions["largest_summariser_prompt_tokens"] <= window
    assert "chained-batch skipped" in " ".join(report.notes)  # Titan has no batch price


def test_unknown_dataset_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(ConfigError, match=f"No file at {missing}: give qmsum or scisummnet"):
        long_docs.run(tmp_path, str(missing), Ledger())
    with pytest.raises(ConfigError, match="Unknown dataset 'qmsun': give qmsum or scisummnet"):
        long_docs.run(tmp_path, "qmsun", Ledger())


def test_real_qmsum_meetings(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--data-dir", str(shared_data), "--dataset", "qmsum", "--limit", "4")
    _lazy, chained, compressed, _batch = report["variants"]  # type: ignore[misc]
    assert float(chained["savings_pct"]) >= 45
    assert float(compressed["savings_pct"]) > float(chained["savings_pct"])
    assert compressed["quality"]["compress_rouge1_recall_kept"] >= 0.85
