import re
from pathlib import Path

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
