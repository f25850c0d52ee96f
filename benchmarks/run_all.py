"""Run chainkit's five overhead benchmarks (issue #6) with one command; write their results.

The committed ``benchmarks/results/overhead.md`` and ``overhead.json`` come from::

    .venv/bin/python benchmarks/run_all.py

which takes 1.5 to 5 minutes on 2 cores, depending on what else runs. Each benchmark runs in its
own process (so one's heap and threads do not blur the next): ``bench_overhead.py`` (1, 2),
``bench_ledger.py`` (3) and ``bench_batch.py`` (4, and 5 in a further fresh process). Every
figure is printed as it comes; a missed target reads ``MISSED`` and does not fail the run.
``--quick`` is a smoke run with fewer iterations and 100,000 ledger entries; it writes to
``/tmp/bench/results`` unless ``--results-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def machine() -> dict[str, Any]:
    """Where the figures were measured: cores, CPU model, Python, load, chainkit's commit."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        nproc = len(os.sched_getaffinity(0))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "chainkit"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        commit += " (chainkit/ has uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    try:
        from importlib.metadata import version

        langchain = version("langchain-core")
    except Exception:
        langchain = "not installed"
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": nproc,
        "cpu": model,
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "langchain_core": langchain,
        "chainkit_commit": commit,
    }


def run_part(script: str, args: list[str]) -> dict[str, Any]:
    """Run one benchmark script in its own process, its output passing through; return its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=SCRATCH_DIR) as out:
        cmd = [sys.executable, str(HERE / script), *args, "--json", out.name]
        print(f"\n### {script} {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"### {script}: {time.perf_counter() - t0:.0f} s", flush=True)
        data: dict[str, Any] = json.loads(Path(out.name).read_text(encoding="utf-8"))
    return data


SCRATCH_DIR = Path("/tmp/bench")


def shown(row: dict[str, Any]) -> str:
    """A row's value with its unit."""
    value, unit = row["value"], row["unit"]
    if unit in ("/s", "req/s"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "entries":
        return f"{value:,.0f}"
    return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"


def note(row: dict[str, Any]) -> str:
    """The row's note (such as CPU time on a busy machine) in parentheses, if any."""
    return f" ({row['note']})" if row.get("note") else ""


def verdict(row: dict[str, Any]) -> str:
    """``met``, ``MISSED`` or a dash."""
    return "—" if row["met"] is None else ("met" if row["met"] else "**MISSED**")


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown page: header, then one table row per figure."""
    m = report["machine"]
    lines = [
        "# chainkit overhead benchmarks (issue #6)",
        "",
        f"- command: `{report['command']}` (from the repository root; {report['seconds']:.0f} s)",
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gb']} GB; {m['os']}",
        f"- Python {m['python']} ({m['implementation']}), langchain-core {m['langchain_core']}",
        f"- chainkit commit: {m['chainkit_commit']}",
        f"- date: {report['date']}; load average {report['load_before']} before, "
        f"{report['load_after']} after",
        "",
        "| benchmark | figure | value | target | met? |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['benchmark']} | {row['figure']}{note(row)} | {shown(row)} "
            f"| {row['target'] or '—'} "
            f"| {verdict(row)} |"
        )
    d = report["details"]
    lines += [
        "",
        "Benchmark 1: "
        f"{d['overhead']['samples_per_variant']:,} requests per variant in "
        f"{d['overhead']['rounds']} interleaved rounds; models `OfflineModel"
        f"({d['overhead']['model']!r})`, zero latency; identical answers from the three: "
        f"{d['overhead']['same_answers']}. chainkit writes "
        f"{len(d['overhead']['chainkit_entries_per_request'])} ledger entries per request "
        f"({', '.join(d['overhead']['chainkit_entries_per_request'])}).",
        "",
        "Benchmark 5, RSS along the stream (results: MB): "
        + ", ".join(f"{s['results']:,}: {s['rss_kb'] / 1024:.1f}" for s in d["memory_samples"])
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the five benchmarks; print every figure; write ``overhead.md`` and ``overhead.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--results-dir", help="where to write (default: benchmarks/results)")
    args = parser.parse_args(argv)
    SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    default_dir = SCRATCH_DIR / "results" if args.quick else HERE / "results"
    results_dir = Path(args.results_dir) if args.results_dir else default_dir
    python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else "python"
    command = shlex.join([python, "benchmarks/run_all.py", *sys.argv[1:]])
    quick = ["--quick"] if args.quick else []

    started = datetime.now(UTC)
    load_before = [round(x, 2) for x in os.getloadavg()]
    where = machine()
    t0 = time.perf_counter()
    overhead = run_part("bench_overhead.py", quick)
    ledger = run_part("bench_ledger.py", ["--entries", "100000"] if args.quick else [])
    batch = run_part("bench_batch.py", quick)
    seconds = time.perf_counter() - t0
    rows = overhead["rows"] + ledger["rows"] + batch["rows"]
    report = {
        "command": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "machine": where,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "details": {
            "overhead": overhead["details"],
            "ledger": ledger["details"],
            "memory_samples": batch["memory_samples"],
        },
    }

    after = machine()["chainkit_commit"]
    if after != where["chainkit_commit"]:
        # Someone committed while the benchmarks ran: say so rather than mislabel the figures.
        where["chainkit_commit"] += f", then {after} before the run ended: figures are mixed"
        print(f"\nWARNING: chainkit changed during the run ({where['chainkit_commit']})")
    print("\n### summary")
    for row in rows:
        target = f"target {row['target']}" if row["target"] else ""
        print(
            f"  {row['benchmark']:<22} {row['figure']:<58} {shown(row):>16}  {target:<22} "
            f"{verdict(row).strip('*')}{note(row)}"
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "overhead.json").write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    (results_dir / "overhead.md").write_text(markdown(report), "utf-8")
    print(
        f"\nwrote {results_dir / 'overhead.md'} and {results_dir / 'overhead.json'} "
        f"({seconds:.0f} s)"
    )


if __name__ == "__main__":
    main()
