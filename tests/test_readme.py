import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _without_latency(text: str) -> list[list[str]]:
    """The table's cells, the last column (p50 ms, which varies from run to run) left out."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return [
        row[:-1] if row[-1].replace(".", "").isdigit() and "." in row[-1] else row for row in rows
    ]


def test_readme_example_runs(capsys) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("Hello! How can I help?\n")
    assert "intent_scan" in out and "canned" in out and "generate" in out
    # Every amount that is not zero shows its digits: the canned reply avoided $0.0000288.
    assert "$0.0000 " not in out and "$0.0000288" in out
    # The README shows what the example prints.
    shown = re.search(
        r"```python\n.*?```\n\nIt prints.*?```text\n(.*?)```", README.read_text(), re.S
    )
    assert shown is not None
    assert _without_latency(out) == _without_latency(shown.group(1))


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make check" in README.read_text()
    assert ci.strip().endswith("make check")


def test_readme_says_how_to_run_the_notebooks() -> None:
    readme = README.read_text()
    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for notebook in sorted((README.parent / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in readme
    assert "jupyter execute" in readme
    assert "pip install -e '.[notebooks]'" in readme
    # `jupyter execute` comes with nbclient; the kernel with ipykernel.
    assert {"nbclient", "ipykernel"} <= {re.split(r"[<>=\[]", d)[0] for d in extras["notebooks"]}
    assert "make notebooks" in readme
    assert "notebooks:" in (README.parent / "Makefile").read_text()


def make_dry_run(folder: Path, target: str) -> str:
    done = subprocess.run(
        ["make", "-n", target], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile and pyproject.toml of this checkout, in a scratch folder with no venv yet."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(README.parent / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (1_000_000, 1_000_000))
    return tmp_path


def mark_installed(folder: Path, *markers: str) -> None:
    venv = folder / ".venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").touch()
    for marker in markers:
        (venv / marker).touch()


def test_make_demo_installs_only_the_package(checkout: Path) -> None:
    demo = make_dry_run(checkout, "demo")

    assert "-m venv .venv" in demo  # a fresh machine: the venv first
    assert "pip install --quiet -e .\n" in demo
    assert "[dev]" not in demo
    assert "-m recipes.chatbot" in demo


def test_make_check_after_demo_installs_dev(checkout: Path) -> None:
    mark_installed(checkout, ".installed-demo")

    check = make_dry_run(checkout, "check")

    assert check.count("pip install --quiet -e '.[dev]'") == 1
    assert "-m venv" not in check


def test_make_demo_after_check_installs_nothing(checkout: Path) -> None:
    mark_installed(checkout, ".installed-dev", ".installed-demo")

    assert "pip install" not in make_dry_run(checkout, "demo")
    assert "pip install" not in make_dry_run(checkout, "check")
