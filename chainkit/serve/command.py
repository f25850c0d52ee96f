"""``chainkit serve``: a bot behind uvicorn, recording into a ledger.

::

    chainkit serve                                   # the offline support bot, in-memory ledger
    chainkit serve --ledger serve.db --port 8000 --tenant-limit 5.00
    chainkit serve --ledger postgresql://chainkit@db:5432/finops --bot mybot:make_bot

``--bot module:function`` names a factory called as ``function(ledger, latency_s=...)`` that
returns a ``Pipeline``, or a context manager giving one (closed when the server stops). The
default, ``recipes.serve:support_bot``, is the offline support bot: nothing reaches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from chainkit.errors import ConfigError
from chainkit.ledger import Budget, Ledger, PostgresLedger, SQLiteLedger
from chainkit.pipeline import Pipeline

__all__ = ["add_command", "main", "open_ledger"]

DEFAULT_BOT = "recipes.serve:support_bot"


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of USD: give e.g. 5.00")
    return value


def _tenant_budget(text: str) -> tuple[str, Decimal]:
    tenant, sep, limit = text.rpartition("=")
    if not sep or not tenant:
        raise argparse.ArgumentTypeError(f"{text!r} is not TENANT=USD: give e.g. acme=50.00")
    return tenant, _amount(limit)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chainkit serve`` (and ``python -m recipes.serve``)."""
    parser.add_argument(
        "--ledger",
        default=None,
        help="SQLite file (created, or continued) or postgresql:// DSN; in memory if left out",
    )
    parser.add_argument(
        "--schema", default="chainkit", help="PostgreSQL: the ledger's schema (default chainkit)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any)")
    parser.add_argument(
        "--bot", default=DEFAULT_BOT, help=f"module:function making the pipeline ({DEFAULT_BOT})"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.2,
        help="the offline model's simulated seconds per call (default 0.2)",
    )
    parser.add_argument(
        "--tenant-header", default="X-Tenant", help="header naming the tenant (X-Tenant)"
    )
    parser.add_argument("--default-tenant", default=None, help="tenant when the header is absent")
    parser.add_argument(
        "--tenant",
        action="append",
        default=None,
        dest="tenants",
        metavar="NAME",
        help="serve only these tenants (repeatable; others get 403): the header is not "
        "authenticated, so without a list any name is a tenant with its own --tenant-limit",
    )
    parser.add_argument(
        "--tenant-limit",
        type=_amount,
        default=None,
        help="a budget in USD for every tenant, per --tenant-period",
    )
    parser.add_argument(
        "--tenant-period", choices=["day", "month", "all"], default="month", help="(month)"
    )
    parser.add_argument(
        "--budget",
        type=_tenant_budget,
        action="append",
        default=[],
        metavar="TENANT=USD",
        help="a monthly budget for one tenant (repeatable)",
    )
    parser.add_argument(
        "--keep-text",
        action="store_true",
        help="keep conversations' texts in the ledger so they survive a restart (off: no "
        "customer text at rest)",
    )
    parser.add_argument("--max-conversations", type=int, default=10_000)
    parser.add_argument("--max-turns", type=int, default=50)
    parser.add_argument("--replies", default=None, help="folder of the precomputed replies")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    parser.add_argument(
        "--threads",
        type=int,
        default=64,
        help="worker threads for ledger writes (64): about the requests in flight at once",
    )


def open_ledger(where: str | None, schema: str = "chainkit") -> Ledger:
    """The service's ledger: in memory, an SQLite file (created or continued), or PostgreSQL."""
    if where is None:
        return Ledger()
    if where.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(where, schema=schema)
    return SQLiteLedger(Path(where))


def _factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--bot {spec!r} is not module:function; e.g. {DEFAULT_BOT}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--bot {spec!r}: cannot import {module_name!r} ({exc}).") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--bot {spec!r}: {module_name} has no function {attr!r}.")
    return factory


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; return the exit status."""
    import uvicorn

    from chainkit.serve.app import create_app

    if not 0 <= args.port <= 65_535:
        raise ConfigError(f"--port {args.port} is not a port: give 0 to 65535.")
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be 1 or more.")
    factory = _factory(args.bot)
    period = None if args.tenant_period == "all" else args.tenant_period
    with contextlib.ExitStack() as stack:
        ledger = open_ledger(args.ledger, args.schema)
        stack.callback(ledger.close)
        for tenant, limit in args.budget:
            ledger.add_budget(Budget(limit, period="month", tag=("tenant", tenant)))
        options: dict[str, Any] = {"latency_s": args.latency}
        if args.bot == DEFAULT_BOT and args.replies:
            options["replies"] = Path(args.replies)
        made = factory(ledger, **options)
        pipeline = made if isinstance(made, Pipeline) else stack.enter_context(made)
        if not isinstance(pipeline, Pipeline):
            raise ConfigError(
                f"--bot {args.bot!r} made a {type(pipeline).__name__}, not a Pipeline."
            )
        app = create_app(
            pipeline,
            ledger,
            tenant_header=args.tenant_header,
            default_tenant=args.default_tenant,
            tenants=args.tenants,
            tenant_limit=args.tenant_limit,
            tenant_period=period,
            keep_text=args.keep_text,
            max_conversations=args.max_conversations,
            max_turns=args.max_turns,
        )
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            access_log=not args.no_access_log,
            log_level="info",
        )
        # uvicorn re-raises the SIGINT it handled once it has shut down (as uvicorn.run does,
        # that is the normal way out).
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(uvicorn.Server(config), args.threads))
    return 0


async def _serve(server: Any, threads: int) -> None:
    # Ledger commits, reservations and conversation writes run in the loop's default executor
    # (asyncio.to_thread): its default of min(32, cpus + 4) threads queues them behind each
    # other under load, so it gets one thread per request that may be in flight.
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(threads, thread_name_prefix="chainkit-serve") as pool:
        loop.set_default_executor(pool)
        await server.serve()


def add_command(sub: Any) -> None:
    """Register ``serve`` on the ``chainkit`` command's subparsers."""
    parser = sub.add_parser(
        "serve",
        help="serve a bot over HTTP (the offline support bot by default)",
        description="Serve a pipeline over HTTP: POST /v1/chat (JSON), POST /v1/chat/stream "
        "(Server-Sent Events), GET /healthz, GET /metrics (Prometheus). Every stage records "
        "into the ledger; per-tenant budgets answer 429 when a call would exceed them.",
    )
    add_arguments(parser)
    parser.set_defaults(run=lambda args: ("", serve(args)))


def main(argv: Sequence[str] | None = None, *, prog: str = "chainkit serve") -> int:
    """Run ``chainkit serve`` on its own (``python -m recipes.serve``)."""
    from chainkit.cli import ArgumentParser, run_command

    parser = ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: serve(args), prog=prog, debug=getattr(args, "debug", False))
