"""Probe for issue #10 (budgets that are hard limits): each measured defect, re-run on this code.

One scenario per bullet of the issue's "Measured" list; every figure is measured when the script
runs. Each row gives the scenario, the figure, the value now, what the issue measured before and
the target::

    .venv/bin/python benchmarks/probe_budgets.py [--format table|markdown|json|csv]
    CHAINKIT_PG_DSN=$(scripts/postgres) .venv/bin/python benchmarks/probe_budgets.py  # + PostgreSQL

Bedrock is a real boto3 ``bedrock-runtime`` client whose HTTP send is answered locally (botocore's
``before-send`` event: botocore still serialises, signs and parses), so calls go through the real
``BedrockModel`` code. Its replies report the worst usage that is physically possible: input
tokens = UTF-8 bytes of every text sent plus a template overhead of 32 tokens per message and 32
per call (the allowance the README documents), output = ``maxTokens`` (or more, where a scenario
says so). With ``CHAINKIT_PG_DSN`` set, the multi-process scenario also runs on PostgreSQL in a
fresh schema, dropped afterwards. Nothing leaves the machine; scratch files go to ``/tmp``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from chainkit import (
    Budget,
    BudgetExceeded,
    Catalogue,
    Entry,
    Generate,
    Ledger,
    Pipeline,
    PostgresLedger,
    Request,
    ScriptedModel,
    SQLiteLedger,
    Usage,
)

ROOT = Path(__file__).resolve().parents[1]
NOVA_PRO = "amazon.nova-pro-v1:0"  # $0.80 in / $3.20 out per 1M tokens in us-east-1
NOVA_MICRO = "amazon.nova-micro-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PER_MESSAGE, PER_CALL = 32, 32  # template overhead, tokens (README: "32 per message and per call")


@dataclass
class Row:
    """One scenario (or one variant of it): its figures, what the issue measured, the target."""

    scenario: str
    figures: dict[str, Any]
    before: str
    target: str

    @property
    def figure(self) -> str:
        """The figures' names."""
        return " / ".join(self.figures)

    @property
    def value(self) -> str:
        """The figures' values, in the same order."""
        return " / ".join(_text(v) for v in self.figures.values())


# -- output ----------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact
    if isinstance(value, float):
        return round(value, 3)
    return value


COLUMNS = ("scenario", "figure", "value", "before (issue)", "target")


def render(rows: list[Row], fmt: str) -> str:
    cells = [(r.scenario, r.figure, r.value, r.before, r.target) for r in rows]
    if fmt == "json":
        return json.dumps(
            [
                {
                    "scenario": r.scenario,
                    "figure": r.figure,
                    "value": r.value,
                    "figures": {k: _json_value(v) for k, v in r.figures.items()},
                    "before": r.before,
                    "target": r.target,
                }
                for r in rows
            ],
            indent=2,
            ensure_ascii=False,
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(cells)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |"
            for row in cells
        ]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in (COLUMNS, *cells)) for i in range(len(COLUMNS))]
    lines = []
    for row in (COLUMNS, *cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- a Bedrock client answered locally -------------------------------------------------------------


class _Raw:
    """An HTTP body for botocore to read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, amt: int = 1024, decode_content: bool = True) -> Iterator[bytes]:
        """The body in chunks."""
        for i in range(0, len(self._data), amt):
            yield self._data[i : i + amt]

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body."""
        if amt is None:
            data, self._data = self._data, b""
        else:
            data, self._data = self._data[:amt], self._data[amt:]
        return data

    def close(self) -> None:
        """Nothing to close."""


@dataclass
class Bedrock:
    """What the local Bedrock saw: request ids, and how its replies were made."""

    output_factor: Decimal = Decimal(1)  # reported output = maxTokens x this
    fail_ids: frozenset[str] = frozenset()  # answered with HTTP 500 after "running"
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> Any:
        """A bedrock-runtime client whose Converse calls this object answers."""
        import boto3
        from botocore.awsrequest import AWSResponse

        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            aws_access_key_id="probe",
            aws_secret_access_key="probe",
        )

        def send(request: Any, **_: Any) -> Any:
            body = json.loads(request.body)
            request_id = body.get("requestMetadata", {}).get("request_id", "?")
            with self.lock:
                self.seen.append(request_id)
            texts = [b["text"] for b in body.get("system", []) if "text" in b]
            texts += [c["text"] for m in body["messages"] for c in m["content"] if "text" in c]
            messages = len(body["messages"]) + (1 if body.get("system") else 0)
            tokens_in = sum(len(t.encode("utf-8")) for t in texts)
            tokens_in += PER_MESSAGE * messages + PER_CALL
            tokens_out = int(body["inferenceConfig"]["maxTokens"] * self.output_factor)
            if request_id in self.fail_ids:
                error = {"message": "We encountered an internal error. Try again."}
                headers = {
                    "content-type": "application/json",
                    "x-amzn-ErrorType": "InternalServerException",
                }
                return AWSResponse(request.url, 500, headers, _Raw(json.dumps(error).encode()))
            reply = {
                "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                "stopReason": "max_tokens",
                "usage": {
                    "inputTokens": tokens_in,
                    "outputTokens": tokens_out,
                    "totalTokens": tokens_in + tokens_out,
                },
                "metrics": {"latencyMs": 1},
            }
            headers = {"content-type": "application/json"}
            return AWSResponse(request.url, 200, headers, _Raw(json.dumps(reply).encode()))

        client.meta.events.register("before-send.bedrock-runtime.Converse", send)
        return client

    def model(self, model_id: str = NOVA_PRO, **kwargs: Any) -> Any:
        """A ``BedrockModel`` on such a client."""
        from chainkit.providers.bedrock import BedrockModel

        return BedrockModel(
            model_id,
            client=self.client(),
            count_tokens=False,  # the case: no CountTokens, the offline estimate
            wait_initial=0,
            wait_max=0,
            **kwargs,
        )


def spent_of(entries: list[Entry]) -> Decimal:
    """Recorded spend: known costs, and unknown ones at their bound (as budgets count them)."""
    return sum(
        (e.cost if e.cost is not None else (e.bound or Decimal(0)) for e in entries), Decimal(0)
    )


def over(spent: Decimal, limit: Decimal) -> Decimal:
    return max(Decimal(0), spent - limit)


# -- 1. prompts that the chars/4 estimate undercounts ----------------------------------------------

PROMPTS = {
    "Japanese": ("注文10234はどこですか？配送状況を教えてください。", "spend $0.1047 (2.09x)"),  # noqa: RUF001
    "Chinese": ("我的订单什么时候到？请帮我查一下物流。", "chars/4 undercounts 4.3x"),  # noqa: RUF001
    "emoji": ("🚚📦🙏🏽👩‍👩‍👧‍👦", "chars/4 undercounts 8.8x"),
    "JSON": (
        '{"order": 10234, "items": [{"sku": "A-1", "qty": 2}], "note": "leave at door"} ',
        "chars/4 undercounts 2.4x",
    ),
    "English": ("Where is my order 10234? It was due on Monday. ", "(control)"),
}


def prompt(text: str, i: int, chars: int = 1200) -> str:
    body = (text * (chars // len(text) + 1))[:chars]
    return f"#{i:04d} {body}"  # every prompt of a language the same length


def scenario_prompts(scratch: Path) -> list[Row]:
    rows = []
    limit = Decimal("0.05")
    for language, (text, before) in PROMPTS.items():
        bedrock = Bedrock()
        stage = Generate(model=bedrock.model(), max_tokens=300)
        ledger = Ledger([Budget(limit)])
        requests = [Request(prompt(text, i), id=f"{language}-{i}") for i in range(60)]
        outcomes = Pipeline([stage]).run_batch(
            requests, ledger, concurrency=8, return_exceptions=True
        )
        refused_ids = [
            r.id for r, o in zip(requests, outcomes, strict=True) if isinstance(o, BudgetExceeded)
        ]
        entries = ledger.entries()
        answered = [e for e in entries if e.outcome == "answered"]
        spent = spent_of(entries)
        rows.append(
            Row(
                f"1 {language} prompts, 1,200 chars, BedrockModel Nova Pro, max_tokens 300, "
                "$0.05 budget, 60 requests x8",
                {
                    "answered": len(answered),
                    "refused": len(refused_ids),
                    "refused that reached Bedrock": len(set(refused_ids) & set(bedrock.seen)),
                    "spend $": spent,
                    "overshoot $": over(spent, limit),
                },
                before,
                "-, -, 0, <= 0.05, 0",
            )
        )
    return rows


def scenario_over_max_tokens(scratch: Path) -> list[Row]:
    rows = []
    limit = Decimal("1.00")
    for threads in (1, 8):
        bedrock = Bedrock(output_factor=Decimal("1.5"))
        stage = Generate(model=bedrock.model(), max_tokens=1000)
        ledger = Ledger([Budget(limit)])
        requests = [Request(prompt(PROMPTS["English"][0], i), id=f"o{i}") for i in range(400)]
        Pipeline([stage]).run_batch(requests, ledger, concurrency=threads, return_exceptions=True)
        entries = ledger.entries()
        answered = [e for e in entries if e.outcome == "answered"]
        flagged = [e for e in answered if "over_estimate" in e.flags]
        excess = sum(
            (max(Decimal(0), (e.cost or Decimal(0)) - (e.bound or Decimal(0))) for e in answered),
            Decimal(0),
        )
        spent = spent_of(entries)
        rows.append(
            Row(
                "2 replies reporting 1.5x max_tokens output, Nova Pro, max_tokens 1,000, $1.00 "
                f"budget, 400 requests {'one at a time' if threads == 1 else 'x8 (varies)'}",
                {
                    "answered": len(answered),
                    "flagged over_estimate": len(flagged),
                    "spend $": spent,
                    "overshoot $": over(spent, limit),
                    "excess over bounds $": excess,
                },
                "overshoot $0.1185 on $1.00, not flagged",
                "-, all, -, <= excess of calls in flight, -",
            )
        )
    return rows


# -- 3. several processes, one store, one budget ---------------------------------------------------


def _spend(kind: str, where: str, schema: str, n: int, start: Any, out: Any) -> None:
    """One process: 4 threads sending 25 requests each, through one shared store and budget."""
    budget = Budget("0.20", name="shared")
    ledger: Any = (
        SQLiteLedger(where, budgets=[budget])
        if kind == "sqlite"
        else PostgresLedger(where, schema=schema, budgets=[budget])
    )
    bedrock = Bedrock()
    stage = Generate(model=bedrock.model(), max_tokens=200)
    refused = 0
    lock = threading.Lock()

    def work(t: int) -> None:
        nonlocal refused
        for i in range(25):
            text = prompt(PROMPTS["Japanese"][0], i, chars=300)
            try:
                stage.run(Request(text, id=f"p{n}-t{t}-{i:02d}"), ledger)
            except BudgetExceeded:
                with lock:
                    refused += 1

    start.wait()
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    out.put((len(bedrock.seen), refused))


def shared(kind: str, where: str, schema: str = "") -> tuple[int, int, list[Entry], Decimal]:
    """Run 4 spenders (this process and 3 spawned ones) at once; return what the store holds."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    children = [
        ctx.Process(target=_spend, args=(kind, where, schema, n, start, out)) for n in (1, 2, 3)
    ]
    for child in children:
        child.start()
    _spend(kind, where, schema, 0, start, out)
    results = [out.get(timeout=300) for _ in range(4)]
    for child in children:
        child.join(60)
    ledger: Any = SQLiteLedger(where) if kind == "sqlite" else PostgresLedger(where, schema=schema)
    with ledger:
        entries = ledger.entries()
        budget_spent = ledger.spent("shared")
    return sum(r[0] for r in results), sum(r[1] for r in results), entries, budget_spent


def scenario_processes(scratch: Path) -> list[Row]:
    rows = []
    limit = Decimal("0.20")
    stores = [("SQLite file", "sqlite", str(scratch / "shared.db"), "")]
    dsn = os.environ.get("CHAINKIT_PG_DSN")
    if dsn:
        stores.append(("PostgreSQL", "postgres", dsn, f"probe_{uuid.uuid4().hex[:12]}"))
    for label, kind, where, schema in stores:
        try:
            calls, refused, entries, budget_spent = shared(kind, where, schema)
        finally:
            if schema:
                import psycopg

                with psycopg.connect(where, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        answered = [e for e in entries if e.outcome == "answered"]
        spent = spent_of(entries)
        rows.append(
            Row(
                f"3 4 processes x 4 threads on one {label}, each opening it with Budget('0.20'); "
                "400 Japanese requests, BedrockModel Nova Pro",
                {
                    "spend $": spent,
                    "overshoot $": over(spent, limit),
                    "budget's spent $": budget_spent,
                    "calls": calls,
                    "answered": len(answered),
                    "refused": refused,
                },
                "spend $0.749 (3.75x)" if kind == "sqlite" else "not measured (no PostgreSQL)",
                "<= 0.20, 0, = spend, = answered, -, -",
            )
        )
    return rows


class Clock:
    """A clock moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        """Now."""
        return self.now


def scenario_stored_periods(scratch: Path) -> list[Row]:
    path = scratch / "month.db"
    clock = Clock(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))
    with SQLiteLedger(path, budgets=[Budget("1.00", period="month")], clock=clock) as first:
        hold = first.reserve(Decimal("1.00"), {}, stage="generate")
        assert hold is not None
        first.record(
            Entry("r1", "generate", "answered", cost=Decimal("1.00"), id=hold.id, time=clock.now),
            hold=hold,
        )
    outcomes = []
    with SQLiteLedger(path, clock=clock) as second:  # a new "process" that names no budget
        names = [b.name for b in second.budgets]
        for now in (datetime(2026, 11, 30, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)):
            clock.now = now
            try:
                second.reserve(Decimal("0.01"), {}, stage="generate")
                outcomes.append("allowed")
            except BudgetExceeded:
                outcomes.append("refused")
    return [
        Row(
            "3b a monthly $1.00 budget spent in November; reopened by a process naming no budget",
            {"budgets it sees": names, "$0.01 on Nov 30 / Dec 1": " then ".join(outcomes)},
            "limits not stored; no periods (monthly = lifetime)",
            "['ledger/month'], refused then allowed",
        )
    ]


# -- 4. one call of unknown cost -------------------------------------------------------------------


def scenario_unknown_cost(scratch: Path) -> list[Row]:
    path = scratch / "unknown.db"
    bedrock = Bedrock(fail_ids=frozenset({"boom"}))
    stage = Generate(model=bedrock.model(NOVA_MICRO, max_attempts=1), max_tokens=100)
    bot = Pipeline([stage])
    limit = Decimal("0.05")
    ledger = SQLiteLedger(path, budgets=[Budget(limit)])
    try:
        bot.run(Request("Where is my order 0000?", id="boom"), ledger)
        first = "answered"
    except Exception as exc:
        first = type(exc).__name__
    [failed] = [e for e in ledger.entries() if e.request_id == "boom"]

    def batch(tag: str, led: Any) -> int:
        requests = [Request(f"Where is my order {i:04d}?", id=f"{tag}{i:04d}") for i in range(1000)]
        outcomes = bot.run_batch(requests, led, concurrency=8, return_exceptions=True)
        return sum(1 for o in outcomes if isinstance(o, BudgetExceeded))

    refused_now = batch("a", ledger)
    ledger.close()
    with SQLiteLedger(path) as reopened:  # a restart: the budget comes from the file
        refused_after = batch("b", reopened)
        spent = reopened.spent("ledger")
        entries = reopened.entries()
    return [
        Row(
            "4 one Nova Micro call answered HTTP 500 (cost unknown), then 1,000 calls x8 on "
            "SQLite, $0.05 budget; reopened, 1,000 more",
            {
                "5xx call": f"{first}, {failed.outcome}, cost {failed.cost}, bound ${failed.bound}",
                "refused of 1,000": refused_now,
                "refused after reopening": refused_after,
                "budget spent $": spent,
                "recorded (unknown at bound) $": spent_of(entries),
            },
            "991 of 1,000 refused ('cannot be checked'); still after restart",
            "-, 0, 0, = recorded, -",
        )
    ]


# -- 5. batch jobs and the LangChain callback handler ----------------------------------------------


def scenario_batch(scratch: Path) -> list[Row]:
    from chainkit.providers.bedrock_batch import BedrockBatch, OfflineBatch

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the recipes live beside the package
    from recipes.long_docs import SMALL, STRONG, make_setup, run_batch_variant

    documents = [
        "\n\n".join(f"Meeting {d}, item {i}: the team agreed to ship on Friday." for i in range(40))
        for d in range(5)
    ]

    def requests(tag: str) -> list[Request]:
        return [
            Request("Write a report.", id=f"{tag}:doc{d}", document=text, tags={"variant": tag})
            for d, text in enumerate(documents)
        ]

    class Watched(OfflineBatch):
        """The recipe's offline batch job, noting when it runs and what was held then."""

        runs: list[Decimal]
        ledger: Ledger

        def run(self, records: Any, *, job_name: str) -> Any:
            """Note what the ledger holds as the job starts, then run it."""
            self.runs.append(sum((s.held for s in self.ledger.status()), Decimal(0)))
            return super().run(records, job_name=job_name)

    rows = []
    setup = make_setup("offline", "us-east-1", summariser=SMALL, generator=STRONG, compress_to=0.33)
    for label, limit in (("tight $0.0001", Decimal("0.0001")), ("roomy $10", Decimal(10))):
        ledger = Ledger([Budget(limit)])
        jobs = []
        for model in (setup.summariser, setup.generator):
            job = Watched(model)
            job.runs, job.ledger = [], ledger
            jobs.append(job)
        try:
            run_batch_variant(
                dataclasses.replace(setup, batch=(jobs[0], jobs[1])),
                requests(f"b{len(rows)}"),
                ledger,
                resume=False,
                name="chained-batch",
            )
            outcome = "ran"
        except BudgetExceeded:
            outcome = "BudgetExceeded"
        runs = [h for job in jobs for h in job.runs]
        spent = spent_of(ledger.entries())
        rows.append(
            Row(
                f"5a recipes/long_docs.py chained-batch, offline batch jobs, 5 documents, budget "
                f"{label}",
                {
                    "outcome": outcome,
                    "jobs run": len(runs),
                    "held as each job started $": ", ".join(str(h) for h in runs) or "-",
                    "spent $": spent,
                    "held after $": sum((s.held for s in ledger.status()), Decimal(0)),
                    "refused entries": sum(1 for e in ledger.entries() if e.outcome == "refused"),
                },
                "batch jobs never reserved",
                "BudgetExceeded, 0 jobs" if limit < 1 else "ran, 2, > 0 each, <= limit, 0",
            )
        )

    class Control:
        """A Bedrock control-plane stand-in that counts what it is asked."""

        meta = type("Meta", (), {"region_name": "us-east-1"})()

        def __init__(self) -> None:
            self.asked: list[str] = []

        def __getattr__(self, name: str) -> Any:
            def call(**kwargs: Any) -> Any:
                self.asked.append(name)
                return {"jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/x"}

            return call

    bedrock, s3 = Control(), Control()
    job = BedrockBatch(
        HAIKU,
        bedrock=bedrock,
        s3=s3,
        bucket="probe-bucket",
        prefix="jobs",
        role_arn="arn:aws:iam::123456789012:role/BedrockBatch",
    )
    haiku_setup = make_setup(
        "offline", "us-east-1", summariser=HAIKU, generator=HAIKU, compress_to=0.33
    )
    with SQLiteLedger(scratch / "batch.db", budgets=[Budget("0.0001")]) as ledger:
        try:
            run_batch_variant(
                dataclasses.replace(haiku_setup, batch=(job, job)),
                requests("bedrock"),
                ledger,
                resume=False,
                name="chained-batch",
            )
            outcome = "submitted"
        except BudgetExceeded:
            outcome = "BudgetExceeded"
        refused = sum(1 for e in ledger.entries() if e.outcome == "refused")
    rows.append(
        Row(
            "5b BedrockBatch (real class, stand-in S3/Bedrock clients) via the recipe, SQLite, "
            "budget $0.0001",
            {
                "outcome": outcome,
                "S3/Bedrock calls": len(s3.asked) + len(bedrock.asked),
                "refused entries": refused,
            },
            "batch jobs never reserved",
            "BudgetExceeded, 0, -",
        )
    )
    return rows


def scenario_callback(scratch: Path) -> list[Row]:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from chainkit.interop import LedgerCallbackHandler

    # LangChain logs every callback error (here: the refusal) before raising it.
    logging.getLogger("langchain_core.callbacks.manager").setLevel(logging.CRITICAL)

    class Counting(GenericFakeChatModel):
        """A fake chat model that counts the calls that reached it."""

        calls: int = 0

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return super()._generate(*args, **kwargs)

    def reply() -> AIMessage:
        return AIMessage(
            content="ok",
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            response_metadata={"model_name": HAIKU},
        )

    catalogue = Catalogue.load()
    figures: dict[str, Any] = {}
    for label, limit, kwargs in (
        ("$0.0001", Decimal("0.0001"), {"max_tokens": 100}),
        ("$0.01", Decimal("0.01"), {"max_tokens": 100}),
        ("$0.01 no max_tokens", Decimal("0.01"), {}),
    ):
        ledger = Ledger([Budget(limit)])
        model = Counting(messages=iter([reply()]))
        handler = LedgerCallbackHandler(ledger, catalogue=catalogue, model_ids={"x": HAIKU})
        config: Any = {"callbacks": [handler], "metadata": {"ls_model_name": "x"}}
        try:
            model.invoke("Where is my order? " * 20, config=config, **kwargs)
            outcome = "called"
        except BudgetExceeded:
            outcome = "BudgetExceeded"
        entries = ledger.entries()
        recorded = ", ".join(
            e.outcome + ("" if e.bound is None else f" bound ${e.bound}") for e in entries
        )
        figures[label] = f"{outcome}, {model.calls} call(s), {recorded}"
    return [
        Row(
            "5c LedgerCallbackHandler, langchain-core fake chat model priced as Haiku, "
            "max_tokens 100, budgets",
            figures,
            "the handler never reserved",
            "BudgetExceeded, 0 call(s), refused / called, 1 call(s), answered bound / "
            "BudgetExceeded, 0 call(s), refused",
        )
    ]


# -- 6. the refusal message ------------------------------------------------------------------------


def scenario_message(scratch: Path) -> list[Row]:
    model = ScriptedModel(model_id=NOVA_MICRO, region="us-east-1", reply="ok", usage=Usage(60, 20))
    stage = Generate(model=model, max_tokens=50)
    ledger = Ledger([Budget("0.00001", name="tiny")])
    message = "no refusal"
    for i in range(20):
        try:
            stage.run(Request("hi", id=f"m{i}"), ledger)
        except BudgetExceeded as exc:
            message = str(exc)
            break
    return [
        Row(
            "6 refusal message for tiny amounts (Nova Micro, $0.00001 budget)",
            {"message": message},
            '"spent $0.0000 of $0.0000, this call needs up to $0.0000"',
            "digits that mean something",
        )
    ]


SCENARIOS: list[tuple[str, Callable[[Path], list[Row]]]] = [
    ("processes", scenario_processes),  # spawns: first, before threads linger
    ("prompts", scenario_prompts),
    ("overmax", scenario_over_max_tokens),
    ("periods", scenario_stored_periods),
    ("unknown", scenario_unknown_cost),
    ("batch", scenario_batch),
    ("callback", scenario_callback),
    ("message", scenario_message),
]


def order(row: Row) -> tuple[int, str]:
    """Rows in the issue's order: by the scenario's number, then its letter."""
    number = re.match(r"(\d+)(\w*)", row.scenario)
    return (int(number.group(1)), number.group(2)) if number else (999, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=["table", "markdown", "json", "csv"], default="table")
    parser.add_argument(
        "--only", nargs="*", choices=[n for n, _ in SCENARIOS], help="run only these scenarios"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="probe-budgets-", dir="/tmp"))
    rows: list[Row] = []
    started = time.perf_counter()
    chosen = [s for s in SCENARIOS if not args.only or s[0] in args.only]
    try:
        for name, run in chosen:
            t0 = time.perf_counter()
            rows += run(scratch)
            print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows.sort(key=order)
    print(render(rows, args.format))
    print(f"[total {time.perf_counter() - started:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
