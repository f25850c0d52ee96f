"""The async path against the sync one, and how an async Bedrock call is best made.

Committed results (``benchmarks/results/async.md`` and ``async.json``) come from::

    .venv/bin/python benchmarks/bench_async.py

(about a minute on 2 cores). ``--requests``, ``--latency`` and ``--concurrency`` change the
workload; ``--results-dir`` where the results go.

1. **Throughput with the offline model's latency.** ``IntentScan`` (keywords), ``Canned`` (a
   miss) and ``Generate`` on ``OfflineModel("amazon.nova-micro-v1:0", latency_s=L)``: every
   request makes one model call of ``L`` seconds. ``run_batch`` (a thread per slot, the call's
   latency slept) against ``arun_many`` (one thread, the latency awaited), at the same
   concurrency and at 8x it, into an in-memory ``Ledger`` and an ``SQLiteLedger``. The ideal wall
   time is ``requests x L / concurrency``.
2. **Bedrock transport.** A real ``BedrockModel`` on a real boto3 client, talking HTTP to a
   stand-in Converse endpoint on 127.0.0.1 (a separate process; each reply after ``L`` seconds,
   with a recorded reply body), so that botocore's signing, serialisation and parsing all run.
   Three ways for the async path to make the blocking boto3 call: a daemon thread per call (what
   ``ModelCall`` does for a model without ``acomplete``; chosen), the loop's default executor (a
   shared pool of ``min(32, cpus + 4)`` threads), and for reference the sync ``run_batch``.
   aiobotocore, the third candidate, is measured by ``bench_bedrock_transport.py`` in a scratch
   venv: its releases pin botocore below the one boto3 needs here (``pip install --dry-run
   aiobotocore`` would downgrade botocore to 1.43.117 under boto3 1.44.8), so it cannot share an
   environment with chainkit's bedrock extra.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chainkit import (  # noqa: E402
    Canned,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    OfflineModel,
    Pipeline,
    Request,
    SQLiteLedger,
)

REPLY = json.loads((ROOT / "tests" / "data" / "bedrock" / "converse_plain.json").read_text())

SERVER = textwrap.dedent(
    """
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    latency, body = float(sys.argv[1]), sys.argv[2].encode()

    class Converse(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), Converse)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
    """
)


def requests(n: int) -> list[Request]:
    return [Request(f"Where is my order {10000 + i}? It was due on Monday.") for i in range(n)]


def offline_bot(latency: float) -> Pipeline:
    return Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"greeting": ["hello"]})),
            Canned(replies={"greeting": "Hello!"}),
            Generate(
                model=OfflineModel(model_id="amazon.nova-micro-v1:0", latency_s=latency),
                max_tokens=100,
            ),
        ]
    )


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def part_offline(n: int, latency: float, concurrency: int, scratch: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bot = offline_bot(latency)
    for kind in ("memory", "sqlite"):
        for label, many, slots in (
            ("run_batch (threads)", False, concurrency),
            ("arun_many", True, concurrency),
            ("run_batch (threads)", False, concurrency * 8),
            ("arun_many", True, concurrency * 8),
        ):
            path = scratch / f"{kind}-{label[:4]}-{slots}.db"
            ledger = Ledger() if kind == "memory" else SQLiteLedger(path)
            batch = requests(n)
            if many:
                seconds = timed(
                    lambda b=batch, lg=ledger, c=slots: asyncio.run(
                        bot.arun_many(b, lg, concurrency=c, progress=False)
                    )
                )
            else:
                seconds = timed(
                    lambda b=batch, lg=ledger, c=slots: bot.run_batch(
                        b, lg, concurrency=c, progress=False
                    )
                )
            assert len(ledger.entries()) == 3 * n
            ledger.close()
            ideal = n * latency / slots
            rows.append(
                {
                    "part": "offline",
                    "ledger": kind,
                    "how": label,
                    "concurrency": slots,
                    "requests": n,
                    "seconds": round(seconds, 3),
                    "per_s": round(n / seconds, 1),
                    "ideal_s": round(ideal, 3),
                    "efficiency": round(ideal / seconds, 3),
                }
            )
            print(rows[-1], flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def part_bedrock(n: int, latency: float, concurrency: int) -> list[dict[str, Any]]:
    import boto3
    from botocore.config import Config

    from chainkit.providers.bedrock import BedrockModel

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(latency), json.dumps(REPLY), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{port}",
            config=Config(max_pool_connections=concurrency, retries={"total_max_attempts": 1}),
        )
        model = BedrockModel(
            "anthropic.claude-3-haiku-20240307-v1:0", client=client, count_tokens=False
        )
        bot = Pipeline([Generate(model=model, max_tokens=200)])
        bot.run(Request("warm up"), Ledger())

        def executor_model() -> Any:
            pooled = BedrockModel(
                "anthropic.claude-3-haiku-20240307-v1:0", client=client, count_tokens=False
            )

            async def acomplete(prompt: Any, **kwargs: Any) -> Any:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    None, functools.partial(pooled.complete, prompt, **kwargs)
                )

            pooled.acomplete = acomplete  # type: ignore[attr-defined]
            return pooled

        pooled_bot = Pipeline([Generate(model=executor_model(), max_tokens=200)])
        for label, run in (
            (
                "run_batch (sync, threads)",
                lambda lg: bot.run_batch(requests(n), lg, concurrency=concurrency, progress=False),
            ),
            (
                "arun_many, a thread per call (chosen)",
                lambda lg: asyncio.run(
                    bot.arun_many(requests(n), lg, concurrency=concurrency, progress=False)
                ),
            ),
            (
                "arun_many, the loop's default executor",
                lambda lg: asyncio.run(
                    pooled_bot.arun_many(requests(n), lg, concurrency=concurrency, progress=False)
                ),
            ),
        ):
            ledger = Ledger()
            seconds = timed(lambda lg=ledger, r=run: r(lg))
            assert len(ledger.entries()) == n and all(e.cost for e in ledger.entries())
            ideal = n * latency / concurrency
            rows.append(
                {
                    "part": "bedrock",
                    "ledger": "memory",
                    "how": label,
                    "concurrency": concurrency,
                    "requests": n,
                    "seconds": round(seconds, 3),
                    "per_s": round(n / seconds, 1),
                    "ideal_s": round(ideal, 3),
                    "efficiency": round(ideal / seconds, 3),
                }
            )
            print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait()
    return rows


def write(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", "benchmarks/bench_async.py", *sys.argv[1:]])
    meta = {
        "command": command,
        "nproc": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_average": round(os.getloadavg()[0], 2),
        "latency_s": args.latency,
    }
    (out / "async.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# The async path: throughput, and the Bedrock transport",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Machine: nproc {meta['nproc']}, Python {meta['python']}, {meta['date']}, load average "
        f"{meta['load_average']} at the end (other processes share the machine). Each request "
        f"makes one model call of {args.latency * 1000:g} ms.",
        "",
        "| part | ledger | how | concurrency | requests | wall s | req/s | ideal s | efficiency |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['part']} | {r['ledger']} | {r['how']} | {r['concurrency']} | {r['requests']} "
            f"| {r['seconds']} | {r['per_s']} | {r['ideal_s']} | {r['efficiency']} |"
        )
    (out / "async.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Run both parts and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-async-") as scratch:
        rows = part_offline(args.requests, args.latency, args.concurrency, Path(scratch))
    rows += part_bedrock(args.requests, args.latency, args.concurrency)
    write(rows, args, args.results_dir)


if __name__ == "__main__":
    main()
