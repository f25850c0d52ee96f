"""Load test of ``chainkit serve``: concurrent multi-turn conversations over loopback HTTP.

Committed results (``benchmarks/results/serve.md`` and ``serve.json``) come from::

    .venv/bin/python benchmarks/bench_serve.py

(about a minute on 2 cores). It starts ``chainkit serve`` (the offline support bot, its model
answering after ``--latency`` seconds, 0.2 by default, streamed a word at a time) in a
subprocess on 127.0.0.1 with a fresh SQLite ledger, then runs ``--clients`` concurrent clients
(32) in one asyncio process with httpx. Each client holds ``--conversations`` conversations (5)
of ``--turns`` turns (4) one after another, each turn drawn (seeded) from greetings and thanks
(answered by ``Canned``), policy questions (``Precomputed``) and order questions (``Generate``);
conversations alternate between ``POST /v1/chat`` (JSON) and ``POST /v1/chat/stream`` (SSE,
read to its last event), half the clients starting with each. ``--seconds`` bounds the run
(clients stop starting turns after it).

It reports throughput, p50/p99 latency by answer path and endpoint (and the time to the first
SSE event), errors, and then, with the server stopped, checks the ledger: every answered request
has exactly one entry per stage it went through (``history``, ``intent_scan``, ``canned``, and
``precomputed`` and ``generate`` as far as it got), the very entries its response named, and the
ledger holds no serving entry of a request no client sent: nothing lost, nothing doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chainkit import SQLiteLedger  # noqa: E402

WARM_S = 1.0
STAGES = ("history", "intent_scan", "canned", "precomputed", "generate")
MESSAGES = {
    "canned": ["hi there", "hello!", "thanks, that helps", "thank you"],
    "precomputed": [
        "What delivery options do you offer?",
        "What is your refund policy?",
        "Can I pay with paypal?",
    ],
    "generate": [
        "Where is my order 10234? It was due on Monday.",
        "My parcel arrived damaged, what can I do about it?",
        "Can you change the address on order 5521 to my office?",
        "I was charged twice for order 7781, please look into it.",
    ],
}


@dataclass
class Sample:
    """One request as the client saw it."""

    endpoint: str
    status: int
    seconds: float
    path: str = ""
    request_id: str = ""
    entry_ids: list[str] = field(default_factory=list)
    first_event_s: float | None = None
    error: str = ""
    at: float = 0.0  # when it was sent, in seconds from the start of the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def turn(
    client: httpx.AsyncClient,
    endpoint: str,
    message: str,
    tenant: str,
    cid: str | None,
) -> tuple[Sample, str | None]:
    body: dict[str, Any] = {"message": message}
    if cid is not None:
        body["conversation_id"] = cid
    headers = {"X-Tenant": tenant.encode()}  # UTF-8 bytes: httpx sends str headers as ASCII
    started = time.perf_counter()
    if endpoint == "chat":
        response = await client.post("/v1/chat", json=body, headers=headers)
        elapsed = time.perf_counter() - started
        data = response.json()
        if response.status_code != 200:
            return Sample(endpoint, response.status_code, elapsed, error=data.get("error", "")), cid
        return Sample(
            endpoint, 200, elapsed, data["stage"], data["request_id"],
            [e["id"] for e in data["entries"]],
        ), data["conversation_id"]  # fmt: skip
    first: float | None = None
    answer: dict[str, Any] | None = None
    async with client.stream("POST", "/v1/chat/stream", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            elapsed = time.perf_counter() - started
            return Sample(endpoint, response.status_code, elapsed, error=response.text[:80]), cid
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if first is None:
                    first = time.perf_counter() - started
            elif line.startswith("data: ") and event in ("answer", "error"):
                answer = json.loads(line[6:]) if event == "answer" else None
                if event == "error":
                    return Sample(endpoint, 200, time.perf_counter() - started,
                                  error=json.loads(line[6:])["error"]), cid  # fmt: skip
    elapsed = time.perf_counter() - started
    if answer is None:
        return Sample(endpoint, 200, elapsed, error="stream ended without an answer"), cid
    return Sample(
        endpoint, 200, elapsed, answer["stage"], answer["request_id"],
        [e["id"] for e in answer["entries"]], first,
    ), answer["conversation_id"]  # fmt: skip


async def client_run(
    url: str, index: int, args: argparse.Namespace, started: float, out: list[Sample]
) -> None:
    stop_at = started + args.seconds
    rng = random.Random(args.seed * 1000 + index)
    tenant = ("acme", "globex", "日本の店 🚚")[index % 3]
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for c in range(args.conversations):
            # Half the clients start with JSON, half with SSE: both see the opening burst.
            endpoint = "chat" if (c + index) % 2 == 0 else "stream"
            cid: str | None = None
            for _ in range(args.turns):
                if time.perf_counter() > stop_at:
                    return
                path = rng.choices(list(MESSAGES), weights=(3, 3, 4))[0]
                message = rng.choice(MESSAGES[path])
                at = time.perf_counter() - started
                try:
                    sample, cid = await turn(client, endpoint, message, tenant, cid)
                except httpx.HTTPError as exc:
                    sample = Sample(endpoint, 0, 0.0, error=f"{type(exc).__name__}: {exc}")
                sample.at = at
                out.append(sample)


def check_ledger(db: Path, samples: list[Sample]) -> dict[str, Any]:
    """One entry per stage per answered request, the ones it named; nothing else served."""
    ledger = SQLiteLedger(db, read_only=True)
    try:
        by_request: dict[str, list[Any]] = defaultdict(list)
        setup = 0
        for e in ledger.iter_entries():
            if e.phase != "serve":
                setup += 1
                continue
            by_request[e.request_id].append(e)
        cost = ledger.totals().cost
    finally:
        ledger.close()
    answered = {s.request_id: s for s in samples if s.status == 200 and not s.error}
    problems: list[str] = []
    for rid, s in answered.items():
        got = by_request.get(rid, [])
        stages = [e.stage for e in got]
        want = list(STAGES[: STAGES.index(s.path) + 1])
        if sorted(stages) != sorted(want):
            problems.append(f"{rid}: stages {stages}, expected {want}")
        if sorted(e.id for e in got) != sorted(s.entry_ids):
            problems.append(f"{rid}: entry ids differ from the response's")
    strays = sorted(set(by_request) - set(answered))
    for rid in strays:
        problems.append(f"{rid}: in the ledger, answered to no client")
    return {
        "requests_answered": len(answered),
        "requests_in_ledger": len(by_request),
        "serve_entries": sum(len(v) for v in by_request.values()),
        "setup_entries": setup,
        "problems": problems[:20],
        "problem_count": len(problems),
        "exactly_one_entry_per_stage_per_request": not problems,
        "ledger_cost_usd": None if cost is None else str(cost),
    }


def summarise(samples: list[Sample], wall: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200 and not s.error]
    groups: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        groups[f"{s.path} (all)"].append(s.seconds)
        groups[f"{s.path} ({s.endpoint})"].append(s.seconds)
    groups["all"] = [s.seconds for s in ok]
    # The opening burst (every client connecting and sending at once) apart: the steady state.
    for s in ok:
        if s.at >= WARM_S:
            groups[f"{s.path} (all, sent after {WARM_S:g} s)"].append(s.seconds)
    groups[f"all (sent after {WARM_S:g} s)"] = [s.seconds for s in ok if s.at >= WARM_S]
    firsts = [s.first_event_s for s in ok if s.first_event_s is not None and s.path == "generate"]
    rows = {
        name: {
            "count": len(v),
            "p50_ms": round(1000 * (pct(v, 50) or 0), 1),
            "p99_ms": round(1000 * (pct(v, 99) or 0), 1),
            "mean_ms": round(1000 * statistics.fmean(v), 1),
        }
        for name, v in sorted(groups.items())
    }
    if firsts:
        rows["generate (stream, first event)"] = {
            "count": len(firsts),
            "p50_ms": round(1000 * (pct(firsts, 50) or 0), 1),
            "p99_ms": round(1000 * (pct(firsts, 99) or 0), 1),
            "mean_ms": round(1000 * statistics.fmean(firsts), 1),
        }
    errors = Counter(f"{s.status} {s.error}" for s in samples if s.status != 200 or s.error)
    return {
        "requests": len(samples),
        "answered": len(ok),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 1),
        "paths": dict(Counter(s.path for s in ok)),
        "latency": rows,
        "errors": dict(errors),
    }


def render(result: dict[str, Any]) -> str:
    a, run, ledger = result["args"], result["run"], result["ledger"]
    lines = [
        "# Load test: `chainkit serve` on loopback",
        "",
        f"Command (from the repository root): `{result['command']}`",
        "",
        f"Machine: nproc {result['machine']['nproc']}, Python {result['machine']['python']}, "
        f"{result['machine']['date']}, load average {result['machine']['load_start']:.2f} at "
        f"the start and {result['machine']['load_end']:.2f} at the end (other processes share "
        "the machine; the clients run on it too).",
        "",
        f"Workload: {a['clients']} concurrent clients, each {a['conversations']} conversations "
        f"of {a['turns']} turns (alternately JSON and SSE, half the clients starting with "
        f"each), three tenants; the offline model answers after {a['latency']} s (streamed a "
        "word at a time); one uvicorn worker with 64 threads for ledger writes; fresh SQLite "
        "ledger (every entry committed before its response).",
        "",
        f"**{run['answered']} requests answered of {run['requests']} in {run['wall_s']} s: "
        f"{run['requests_per_s']} req/s.** Paths: "
        + ", ".join(f"{k} {v}" for k, v in sorted(run["paths"].items()))
        + f". Errors: {run['errors'] or 'none'}. CPU used during the run: server "
        f"{run['server_cpu_s']} s, clients {run['client_cpu_s']} s (of {run['wall_s']} s wall "
        "on 2 cores).",
        "",
        "| path (endpoint) | requests | p50 ms | p99 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in run["latency"].items():
        lines.append(
            f"| {name} | {row['count']} | {row['p50_ms']} | {row['p99_ms']} | {row['mean_ms']} |"
        )
    verdict = "yes" if ledger["exactly_one_entry_per_stage_per_request"] else "NO"
    if ledger["problem_count"]:
        verdict += f" ({ledger['problem_count']} problems: {ledger['problems'][:3]})"
    lines += [
        "",
        "Ledger after the run (server stopped, file read back): "
        f"{ledger['requests_in_ledger']} requests with {ledger['serve_entries']} serving "
        f"entries (plus {ledger['setup_entries']} setup entries: the precomputed replies); "
        "exactly one entry per stage per request, the ones each response named, and none "
        f"for a request no client got an answer to: **{verdict}**. Spend recorded: "
        f"${ledger['ledger_cost_usd']}.",
        "",
    ]
    return "\n".join(lines)


async def load(url: str, args: argparse.Namespace) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i in range(args.clients):
            group.create_task(client_run(url, i, args, started, samples))
    return samples, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=120.0, help="bound on the run's time")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        db, port = Path(tmp) / "serve.db", free_port()
        log = Path(tmp) / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "chainkit.cli", "serve", "--ledger", str(db), "--port",
                 str(port), "--latency", str(args.latency), "--no-access-log", "--replies",
                 str(Path(tmp) / "replies"), "--max-conversations", "100000"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            server_cpu = cpu_seconds(server.pid)
            client_cpu = time.process_time()
            samples, wall = asyncio.run(load(url, args))
            client_cpu = time.process_time() - client_cpu
            server_cpu = cpu_seconds(server.pid) - server_cpu
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        ledger = check_ledger(db, samples)
        traceback = "Traceback" in log.read_text()
    result = {
        "command": " ".join([".venv/bin/python", "benchmarks/bench_serve.py", *sys.argv[1:]]),
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
        },
        "args": {k: v for k, v in vars(args).items() if k != "results_dir"},
        "run": {
            **summarise(samples, wall),
            "server_cpu_s": round(server_cpu, 2),
            "client_cpu_s": round(client_cpu, 2),
        },
        "ledger": ledger,
        "server_traceback": traceback,
        "metrics_lines": len(metrics.splitlines()),
    }
    text = render(result)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "serve.md").write_text(text, encoding="utf-8")
    (args.results_dir / "serve.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return 0 if ledger["exactly_one_entry_per_stage_per_request"] and not traceback else 1


if __name__ == "__main__":
    raise SystemExit(main())
