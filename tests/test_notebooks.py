"""The notebooks run top to bottom on the real data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("chatbot_variants.ipynb", {}),
        # A sample of meetings keeps the suite quick; the recipe runs all 232 (see README).
        ("summarisation_variants.ipynb", {"CHAINKIT_NOTEBOOK_LIMIT": "20"}),
    ],
)
def test_notebook_executes(
    name: str, env: dict[str, str], shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("CHAINKIT_DATA_DIR", str(shared_data))
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
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
