"""The header every committed benchmark result starts with: command, machine, versions, date."""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import sklearn


def header(title: str, script: str) -> list[str]:
    """The report's title, the command that produced it, the machine and the date."""
    command = " ".join([".venv/bin/python", f"benchmarks/{script}", *sys.argv[1:]])
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as file:
        cpu = next((line.split(":", 1)[1].strip() for line in file if "model name" in line), cpu)
    return [
        f"# {title}",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Machine: nproc {len(os.sched_getaffinity(0))}, {cpu}; "
        f"Python {platform.python_version()}, "
        f"numpy {np.__version__}, scikit-learn {sklearn.__version__}; "
        f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; load average at start "
        f"{os.getloadavg()[0]:.2f} (other processes share the machine).",
        "",
    ]
