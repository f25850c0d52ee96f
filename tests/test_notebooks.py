"""The notebooks run top to bottom on the real data, and are committed with what they show."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["chatbot_variants.ipynb", "summarisation_variants.ipynb"]


def outputs(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]


def markdown_outputs(notebook: dict[str, Any]) -> list[str]:
    return [
        "".join(o["data"]["text/markdown"])
        for o in outputs(notebook)
        if "data" in o and "text/markdown" in o["data"]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_imports_recipes_without_path_edits(name: str) -> None:
    notebook = json.loads((NOTEBOOKS / name).read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "from recipes import" in code
    assert "sys.path" not in code


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_shows_its_tables_and_plots(name: str) -> None:
    text = (NOTEBOOKS / name).read_text()
    notebook = json.loads(text)
    found = outputs(notebook)
    assert not [o for o in found if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in found), "committed without its plots"
    tables = markdown_outputs(notebook)
    assert tables and all("| --- |" in t for t in tables), "committed without its tables"
    assert not [t for t in tables if re.search(r"\b(None|nan)\b", t)]
    # Nothing that churns from run to run or names this machine's folders.
    assert all(
        c.get("execution_count") is None for c in notebook["cells"] if c["cell_type"] == "code"
    )
    assert all("execution" not in c["metadata"] for c in notebook["cells"])
    assert set(notebook["metadata"]) == {"kernelspec", "language_info"}
    for folder in (ROOT, Path.home(), ROOT.parent / "shared" / "data"):
        assert str(folder) not in text


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("chatbot_variants.ipynb", {}),
        # A sample of meetings keeps the suite quick; the committed outputs ran all 232.
        ("summarisation_variants.ipynb", {"CHAINKIT_NOTEBOOK_LIMIT": "20"}),
    ],
)
def test_notebook_executes(
    name: str, env: dict[str, str], shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("CHAINKIT_DATA_DIR", str(shared_data))
    # The kernel imports this checkout, whichever one the interpreter was installed from
    # (test_installed.py checks that an installed chainkit brings `recipes` without this).
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *([path] if path else [])]))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    found = [dict(o) for o in outputs(notebook)]
    assert not [o for o in found if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in found), "no plot was drawn"
    assert not [t for t in markdown_outputs(notebook) if "None" in t]
