"""The recipes ship with the package: `import recipes` works wherever the interpreter starts."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_elsewhere(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from ``cwd``, with no PYTHONPATH to lean on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_recipes_import_from_another_folder(tmp_path: Path) -> None:
    where = run_elsewhere("import chainkit; print(chainkit.__file__)", tmp_path)
    installed = Path(where.stdout.strip()).parent if where.returncode == 0 else None
    if installed != ROOT / "chainkit":
        pytest.skip(
            f"this interpreter's chainkit is {installed or 'not installed'}, not this checkout's: "
            "`pip install -e .` here to test the installed layout"
        )

    probe = run_elsewhere(
        "import recipes, recipes.chatbot; print(recipes.__file__); "
        "print(recipes.chatbot.DEMO_TRAFFIC.is_file())",
        tmp_path,
    )

    assert probe.returncode == 0, probe.stderr
    module, traffic = probe.stdout.split()
    assert Path(module) == ROOT / "recipes" / "__init__.py"
    assert traffic == "True"


def test_a_normal_install_ships_the_recipes_and_their_data() -> None:
    setuptools = pytest.importorskip("setuptools")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # pyproject's package discovery is setuptools' namespace-aware find.
    found = setuptools.find_namespace_packages(ROOT, include=config["packages"]["find"]["include"])
    assert {"chainkit", "recipes", "recipes.data"} <= set(found)
    assert not [name for name in found if name.split(".")[0] not in ("chainkit", "recipes")]
    shipped = config["package-data"]["recipes"]
    data = [p.relative_to(ROOT / "recipes") for p in (ROOT / "recipes" / "data").iterdir()]
    assert data and all(any(p.match(pattern) for pattern in shipped) for p in data)
