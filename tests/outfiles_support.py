"""What the write_atomically tests share: a script in a process of its own, a refused rename."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args`` from the repository root; a hang is a test failure."""
    try:
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: a writer waited forever")


def refuse_rename(code: int) -> Callable[[str, str], None]:
    """An ``os.replace`` that fails with ``code``: EBUSY as over a bind mount, EPERM as in /tmp."""

    def refuse(src: str, dst: str) -> None:
        raise OSError(code, os.strerror(code), src, None, dst)

    return refuse
