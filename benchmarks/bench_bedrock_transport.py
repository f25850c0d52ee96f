"""Async Bedrock transports compared: boto3 in threads against aiobotocore, on loopback HTTP.

aiobotocore pins botocore below the version chainkit's boto3 needs, so it cannot be installed
beside chainkit; this script needs neither chainkit nor boto3 (only botocore, and aiobotocore
for its row) and runs in a scratch environment. The committed results came from::

    python3.11 -m venv /tmp/aiovenv && /tmp/aiovenv/bin/pip install aiobotocore
    /tmp/aiovenv/bin/python benchmarks/bench_bedrock_transport.py

Each row makes ``--calls`` Converse calls, at most ``--concurrency`` at once, from one event
loop, to a stand-in endpoint on 127.0.0.1 (a separate process, replying after ``--latency``
seconds with a recorded Converse body), so that signing, serialisation and parsing all run:

- ``a thread per call``: a daemon thread runs the blocking botocore call and hands the reply to
  the loop (what chainkit's async path does for ``BedrockModel``);
- ``a 32-thread pool``: ``run_in_executor`` on a pool as large as the concurrency;
- ``aiobotocore``: the native async client (aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BODY = (ROOT / "tests" / "data" / "bedrock" / "converse_plain.json").read_text()
SERVER = textwrap.dedent(
    """
    import sys, time
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
REQUEST = {
    "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
    "messages": [{"role": "user", "content": [{"text": "Where is my order 10234?"}]}],
    "inferenceConfig": {"maxTokens": 200},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            reply = await call()
            assert reply["usage"]["outputTokens"] > 0

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return time.perf_counter() - started


def config(concurrency: int) -> Any:
    from botocore.config import Config

    return Config(max_pool_connections=concurrency, retries={"total_max_attempts": 1})


async def thread_per_call(url: str, calls: int, concurrency: int) -> float:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url, config=config(concurrency)
    )
    loop = asyncio.get_running_loop()

    def call() -> Awaitable[Any]:
        future: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                reply = client.converse(**REQUEST)
                loop.call_soon_threadsafe(future.set_result, reply)
            except BaseException as exc:
                loop.call_soon_threadsafe(future.set_exception, exc)

        threading.Thread(target=run, daemon=True).start()
        return future

    await call()  # warm up: the first call loads the service model
    return await drive(call, calls, concurrency)


async def pool(url: str, calls: int, concurrency: int) -> float:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url, config=config(concurrency)
    )
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(concurrency) as executor:

        def call() -> Awaitable[Any]:
            return loop.run_in_executor(executor, lambda: client.converse(**REQUEST))

        await call()
        return await drive(call, calls, concurrency)


async def aiobotocore_native(url: str, calls: int, concurrency: int) -> float:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url, config=config(concurrency)
    ) as client:

        def call() -> Awaitable[Any]:
            return client.converse(**REQUEST)  # type: ignore[no-any-return]

        await call()
        return await drive(call, calls, concurrency)


def main() -> None:
    """Measure each transport available here and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.latency), BODY, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    transports: list[tuple[str, Any]] = [
        ("a thread per call (chainkit)", thread_per_call),
        (f"a {args.concurrency}-thread pool", pool),
    ]
    try:
        import aiobotocore

        transports.append((f"aiobotocore {aiobotocore.__version__}", aiobotocore_native))
    except ImportError:
        print("aiobotocore is not installed here: its row is left out", file=sys.stderr)
    rows = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        times: dict[str, list[float]] = {name: [] for name, _ in transports}
        for _ in range(args.rounds):  # interleaved, so that the machine's load hits all alike
            for name, run in transports:
                times[name].append(asyncio.run(run(url, args.calls, args.concurrency)))
        for name, _ in transports:
            best = sorted(times[name])[len(times[name]) // 2]
            rows.append((name, best, args.calls / best))
            print(f"{name}: median {best:.3f} s, {args.calls / best:.0f} calls/s", flush=True)
    finally:
        server.terminate()
        server.wait()
    import botocore

    ideal = args.calls * args.latency / args.concurrency
    lines = [
        "# Async Bedrock transports: boto3 in threads against aiobotocore",
        "",
        "Command (from the repository root, in a scratch venv with aiobotocore): "
        f"`{' '.join(['python', 'benchmarks/bench_bedrock_transport.py', *sys.argv[1:]])}`",
        "",
        f"Machine: nproc {len(os.sched_getaffinity(0))}, Python {sys.version.split()[0]}, "
        f"botocore {botocore.__version__}, {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "
        f"{os.getloadavg()[0]:.2f} (other processes share the machine). {args.calls} Converse "
        f"calls of {args.latency * 1000:g} ms over loopback HTTP, {args.concurrency} at once; "
        f"median of {args.rounds} interleaved rounds; the ideal is {ideal:.3f} s.",
        "",
        "| transport | wall s | calls/s | efficiency |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {n} | {s:.3f} | {r:.0f} | {ideal / s:.2f} |" for n, s, r in rows),
    ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "bedrock_transport.md").write_text("\n".join(lines) + "\n")
    (args.results_dir / "bedrock_transport.json").write_text(
        json.dumps(
            [{"transport": n, "seconds": round(s, 4), "per_s": round(r, 1)} for n, s, r in rows],
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
