"""Run notebooks top to bottom and save them with their outputs, free of run-to-run noise.

    CHAINKIT_DATA_DIR=../shared/data .venv/bin/python scripts/render_notebooks.py notebooks/*.ipynb

``make notebooks`` runs this. Committed notebooks carry their tables and plots, so a reader on a
code host sees the comparison without running anything; execution counts, timings and kernel
versions are dropped so that a re-run changes a notebook only where its results change. A
notebook whose outputs name a local folder (the data, the checkout, a home directory) is not
written: that would leak a machine's layout into the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def local_paths() -> list[str]:
    """Folders of this machine that must not appear in committed outputs."""
    found = [str(Path.cwd().resolve()), str(Path.home())]
    data = os.environ.get("CHAINKIT_DATA_DIR")
    if data:
        found.append(str(Path(data).resolve()))
    return [p for p in found if p not in ("/", "")]


def render(path: Path) -> None:
    """Execute ``path`` in its own folder and write it back with its outputs."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    notebook.metadata = nbformat.from_dict(
        {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    )
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = None
    text = nbformat.writes(notebook)
    leaked = [p for p in local_paths() if p in text]
    if leaked:
        sys.exit(f"{path}: outputs name local folders {leaked}; not written")
    nbformat.validate(notebook)
    path.write_text(text, encoding="utf-8")
    print(f"rendered {path}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Render every notebook named on the command line."""
    if not argv:
        sys.exit("usage: render_notebooks.py NOTEBOOK.ipynb ...")
    if os.environ.get("CHAINKIT_DATA_DIR"):
        # The kernel runs in the notebook's folder: a relative data path must not move with it.
        os.environ["CHAINKIT_DATA_DIR"] = str(Path(os.environ["CHAINKIT_DATA_DIR"]).resolve())
    for name in argv:
        render(Path(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
