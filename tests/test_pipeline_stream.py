"""Streaming through the pipeline: deltas as the provider sends them, one entry however it ends."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import chainkit
from chainkit import (
    Budget,
    Canned,
    Catalogue,
    ConfigError,
    Entry,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Pipeline,
    PostgresLedger,
    ProviderError,
    Request,
    SQLiteLedger,
    Usage,
)
from chainkit.errors import Timeout
from chainkit.pipeline import Answered, TextDelta
from chainkit.providers.model import Chunk, Completion, Prompt
from chainkit.providers.offline import pieces
from chainkit.stages.calling import input_bound

SEED = Catalogue.load("seed-2024")
USAGE = Usage(40, 20)
MODEL = "generic.powerful"  # seed prices: $60 per million tokens, in or out
REPLY = "Your order 10234 ships today from Lyon. Tracking follows by email. 東京 🚚"


class StreamingModel:
    """A provider that streams a scripted reply, reports usage where told, and notes closing."""

    model_id = MODEL
    region = None
    tier = "on_demand"
    estimates_locally = True

    def __init__(
        self,
        reply: str = REPLY,
        usage: Usage | None = USAGE,
        *,
        usage_after: int | None = None,
        fail_after: int | None = None,
    ) -> None:
        self.reply, self.usage = reply, usage
        self.usage_after = usage_after  # report usage after this many pieces (default: last)
        self.fail_after = fail_after  # raise a provider error after this many pieces
        self.sent: list[str] = []
        self.closed = 0
        self.asked: list[Prompt] = []

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        self.asked.append(prompt)
        return Completion(self.reply, self.usage or Usage(1, 1), self.model_id)

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(40, max_tokens)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        self.asked.append(prompt)
        words = list(pieces(self.reply))
        try:
            for i, word in enumerate(words):
                if self.usage is not None and self.usage_after == i:
                    yield Chunk(usage=self.usage, model_id=self.model_id)
                if self.fail_after == i:
                    raise ProviderError("modelStreamErrorException: the model stopped", code="x")
                await asyncio.sleep(0)
                self.sent.append(word)
                yield Chunk(word)
            if self.usage is not None and self.usage_after is None:
                yield Chunk(usage=self.usage, model_id=self.model_id)
        finally:
            self.closed += 1


def bot(model: Any, **generate: Any) -> Pipeline:
    return Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"greeting": ["hi", "hello"]})),
            Canned(replies={"greeting": "Hello! How can I help?"}),
            Generate(model=model, max_tokens=100, catalogue=SEED, **generate),
        ]
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """Ledgers of every kind, closed after the test."""
    made: list[Ledger] = []

    def make(**kwargs: Any) -> Ledger:
        if request.param == "memory":
            ledger = Ledger(**kwargs)
        elif request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / f"l{len(made)}.db", **kwargs)
        else:
            dsn = request.getfixturevalue("pg_dsn")
            schema = request.getfixturevalue("pg_schema")
            ledger = PostgresLedger(dsn, schema=f"{schema}_{len(made)}", **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def key(e: Entry) -> tuple[Any, ...]:
    """What an entry says, without what differs between runs (id, time, latency)."""
    return (
        e.request_id,
        e.stage,
        e.outcome,
        e.model,
        e.usage,
        e.cost,
        e.avoided_cost,
        e.estimated,
        e.intent,
        e.flags,
        e.bound,
    )


async def collect(pipeline: Pipeline, request: Request, ledger: Ledger) -> list[Any]:
    return [event async for event in pipeline.astream(request, ledger)]


def bound_of(model: Any, text: str = "Where?", max_tokens: int = 100) -> tuple[Usage, Decimal]:
    """The upper bound a call about ``text`` holds: input bound and max_tokens output, priced."""
    tokens, _ = input_bound(model, Generate(model=model, catalogue=SEED).prompt(Request(text)))
    usage = Usage(tokens, max_tokens)
    return usage, SEED.cost(MODEL, usage)


def test_deltas_come_as_the_provider_sends_them_and_the_entry_is_the_same_as_arun(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel()
    streamed, ran = make_ledger(), make_ledger()
    events = asyncio.run(collect(bot(model), Request("Where is my order?", id="q"), streamed))
    asyncio.run(bot(StreamingModel()).arun(Request("Where is my order?", id="q"), ran))

    *deltas, last = events
    assert [d.text for d in deltas] == list(pieces(REPLY))
    assert {d.stage for d in deltas} == {"generate"}
    assert isinstance(last, Answered)
    assert last.result.text == REPLY == "".join(d.text for d in deltas)
    assert [key(e) for e in streamed.entries()] == [key(e) for e in ran.entries()]
    generate = streamed.entries()[-1]
    assert (generate.outcome, generate.usage, generate.estimated) == (
        "answered",
        Usage(40, 20),
        False,
    )
    assert generate.cost == Decimal("0.0036")  # 60 tokens at $60 per million
    assert model.closed == 1


def test_an_early_answer_is_one_delta_with_the_whole_reply(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel()
    ledger, ran = make_ledger(), make_ledger()
    events = asyncio.run(collect(bot(model), Request("hello there", id="g"), ledger))
    bot(StreamingModel()).run(Request("hello there", id="g"), ran)

    assert events == [
        TextDelta("canned", "Hello! How can I help?"),
        Answered(events[-1].result),
    ]
    assert events[-1].result.stage == "canned"
    assert model.asked == []
    assert [key(e) for e in ledger.entries()] == [key(e) for e in ran.entries()]


def test_a_reader_that_stops_early_closes_the_stream_and_records_the_upper_bound(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel()
    ledger = make_ledger(budgets=[Budget(Decimal("1.00"), name="all")])

    async def read_two() -> list[str]:
        got: list[str] = []
        async with aclosing(bot(model).astream(Request("Where?", id="d"), ledger)) as events:
            async for event in events:
                got.append(event.text)
                if len(got) == 2:
                    break  # the client went away
        return got

    got = asyncio.run(read_two())

    assert got == list(pieces(REPLY))[:2]
    assert model.closed == 1
    assert len(model.sent) < len(list(pieces(REPLY)))
    entry = ledger.entries()[-1]
    usage, cost = bound_of(model)
    assert (entry.stage, entry.outcome, entry.flags) == ("generate", "failed", ("cancelled",))
    assert (entry.usage, entry.cost, entry.estimated) == (usage, cost, True)
    assert "stopped by its reader after 2 pieces" in entry.note
    [state] = ledger.status()
    assert (state.spent, state.held) == (cost, Decimal(0))


def test_a_reader_that_stops_after_the_usage_came_records_the_usage(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel(usage=Usage(40, 7), usage_after=3)
    ledger = make_ledger()

    async def read_four() -> None:
        async with aclosing(bot(model).astream(Request("Where?", id="u"), ledger)) as events:
            n = 0
            async for _ in events:
                n += 1
                if n == 4:
                    break

    asyncio.run(read_four())

    entry = ledger.entries()[-1]
    assert (entry.outcome, entry.flags, entry.estimated) == ("failed", ("cancelled",), False)
    assert (entry.usage, entry.cost) == (Usage(40, 7), Decimal("0.00282"))


def test_a_stream_dropped_without_aclose_is_recorded_when_collected(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel()
    ledger = make_ledger()

    async def drop() -> None:
        events = bot(model).astream(Request("Where?", id="gc"), ledger)
        await anext(events)
        del events
        gc.collect()
        for _ in range(20):  # the loop's finaliser closes it in a task of its own
            await asyncio.sleep(0.01)
            if len(ledger.entries()) == 3:
                break

    asyncio.run(drop())

    entry = ledger.entries()[-1]
    assert (entry.stage, entry.outcome, entry.flags) == ("generate", "failed", ("cancelled",))
    assert model.closed == 1


def test_a_cancelled_reader_task_records_the_call_once(make_ledger: Callable[..., Ledger]) -> None:
    model = StreamingModel()
    ledger = make_ledger(budgets=[Budget(Decimal("1.00"), name="all")])

    async def reader(seen: asyncio.Event) -> None:
        async for _ in bot(model).astream(Request("Where?", id="c"), ledger):
            seen.set()
            await asyncio.sleep(10)  # a slow client

    async def main() -> None:
        seen = asyncio.Event()
        task = asyncio.create_task(reader(seen))
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    paid = [e for e in ledger.entries() if e.model]
    assert len(paid) == 1
    assert paid[0].flags == ("cancelled",)
    assert ledger.status()[0].held == Decimal(0)
    assert model.closed == 1


def test_a_stream_cut_before_its_usage_answers_at_the_upper_bound_marked_estimated(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel(usage=None)
    ledger = make_ledger()
    events = asyncio.run(collect(bot(model), Request("Where?", id="cut"), ledger))

    assert events[-1].result.text == REPLY
    entry = ledger.entries()[-1]
    usage, cost = bound_of(model)
    assert (entry.outcome, entry.usage, entry.cost, entry.estimated) == (
        "answered",
        usage,
        cost,
        True,
    )


def test_a_provider_error_mid_stream_is_a_failed_call_of_unknown_cost(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel(fail_after=3)
    ledger = make_ledger(budgets=[Budget(Decimal("1.00"), name="all")])
    got: list[Any] = []

    async def read() -> None:
        async for event in bot(model).astream(Request("Where?", id="e"), ledger):
            got.append(event)

    with pytest.raises(ProviderError, match="modelStreamErrorException"):
        asyncio.run(read())

    assert len(got) == 3
    entry = ledger.entries()[-1]
    _, cost = bound_of(model)
    assert (entry.outcome, entry.cost, entry.bound) == ("failed", None, cost)
    [state] = ledger.status()
    assert (state.spent, state.held) == (cost, Decimal(0))  # unknown counts at its bound


def test_a_model_that_cannot_stream_yields_its_whole_reply_once(
    make_ledger: Callable[..., Ledger],
) -> None:
    from chainkit import ScriptedModel

    model = ScriptedModel(model_id=MODEL, reply="Thirty days.", usage=Usage(30, 3))
    del_stream = type("NoStream", (), {})  # a plain object with only complete() and estimate()
    plain = del_stream()
    plain.model_id, plain.region, plain.tier = MODEL, None, "on_demand"  # type: ignore[attr-defined]
    plain.complete = model.complete  # type: ignore[attr-defined]
    plain.estimate = model.estimate  # type: ignore[attr-defined]
    ledger = make_ledger()
    events = asyncio.run(collect(bot(plain), Request("Returns?", id="w"), ledger))

    assert events[0] == TextDelta("generate", "Thirty days.")
    assert ledger.entries()[-1].cost == Decimal("0.00198")


def test_stream_answer_yields_the_same_events_without_an_event_loop(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    events = list(bot(StreamingModel()).stream_answer(Request("Where?", id="s"), ledger))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == REPLY
    assert ledger.entries()[-1].outcome == "answered"

    model = StreamingModel()
    for _event in bot(model).stream_answer(Request("Where?", id="s2"), ledger):
        break
    assert model.closed == 1
    entry = ledger.entries()[-1]
    assert (entry.request_id, entry.flags, entry.estimated) == ("s2", ("cancelled",), True)


def test_stream_answer_inside_an_event_loop_is_refused() -> None:
    async def main() -> None:
        bot(StreamingModel()).stream_answer(Request("q"), Ledger())

    with pytest.raises(ConfigError, match="astream"):
        asyncio.run(main())


def test_astream_takes_only_a_request() -> None:
    with pytest.raises(ConfigError, match="takes a Request"):
        asyncio.run(collect(bot(StreamingModel()), "hi", Ledger()))  # type: ignore[arg-type]


def test_the_readme_async_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Async and streaming", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    ledger = namespace["ledger"]
    assert capsys.readouterr().out.startswith("This is an offline stand-in reply")
    assert len(ledger.entries()) == 2 + 200 * 3 + 3
    assert [e.stage for e in ledger.entries()[:2]] == ["intent_scan", "canned"]


class ReportsAnotherModel(StreamingModel):
    """A provider whose reply names a model other than the one configured."""

    def __init__(self, reported: str) -> None:
        super().__init__()
        self.reported = reported

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        return Completion(self.reply, USAGE, self.reported)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        for word in pieces(self.reply):
            yield Chunk(word)
        yield Chunk(usage=USAGE, model_id=self.reported)


@pytest.mark.parametrize(
    ("reported", "recorded", "cost"),
    [
        # Known to the catalogue: priced at its rate ($15 in, $75 out per million) and named.
        (
            "anthropic.claude-3-opus-20240229-v1:0",
            "anthropic.claude-3-opus-20240229-v1:0",
            Decimal("0.0021"),
        ),
        # A version the catalogue lacks: priced, and named, as the configured model ($60).
        ("generic.powerful-v9", MODEL, Decimal("0.0036")),
    ],
)
def test_an_entry_names_the_model_its_price_was_computed_for_on_every_path(
    make_ledger: Callable[..., Ledger], reported: str, recorded: str, cost: Decimal
) -> None:
    streamed, ran, awaited = make_ledger(), make_ledger(), make_ledger()
    request = Request("Where is my order?", id="q")
    asyncio.run(collect(bot(ReportsAnotherModel(reported)), request, streamed))
    bot(ReportsAnotherModel(reported)).run(request, ran)
    asyncio.run(bot(ReportsAnotherModel(reported)).arun(request, awaited))
    for ledger in (streamed, ran, awaited):
        (entry,) = [e for e in ledger.entries() if e.stage == "generate"]
        assert (entry.model, entry.cost, entry.usage) == (recorded, cost, USAGE)
        assert entry.cost == SEED.cost(entry.model, USAGE)
    assert key(streamed.entries()[-1]) == key(ran.entries()[-1]) == key(awaited.entries()[-1])


class Trickling(StreamingModel):
    """A provider that sends a piece every ``every_s`` seconds, each well within any idle limit."""

    def __init__(self, every_s: float, usage_after: int | None = None) -> None:
        super().__init__(usage_after=usage_after)
        self.every_s = every_s

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        self.asked.append(prompt)
        try:
            for i, word in enumerate(pieces(self.reply)):
                if self.usage_after == i:
                    yield Chunk(usage=USAGE, model_id=self.model_id)
                await asyncio.sleep(self.every_s)
                self.sent.append(word)
                yield Chunk(word)
            yield Chunk(usage=USAGE, model_id=self.model_id)
        finally:
            self.closed += 1


@pytest.mark.parametrize("usage_after", [None, 0])
def test_timeout_s_is_the_deadline_of_the_whole_stream_and_the_cut_is_recorded_as_generated(
    make_ledger: Callable[..., Ledger], usage_after: int | None
) -> None:
    # 13 pieces 0.08 s apart: never idle for 0.3 s, but a second in all.
    model = Trickling(0.08, usage_after=usage_after)
    assert len(list(pieces(REPLY))) == 13
    ledger = make_ledger(budgets=[Budget(Decimal("1.00"), name="all")])
    got: list[Any] = []

    async def read() -> None:
        async for event in bot(model, timeout_s=0.3).astream(Request("Where?", id="t"), ledger):
            got.append(event)

    started = asyncio.run(asyncio.wait_for(_timed(read), 10))
    assert started < 0.9  # cut at the deadline, not after the whole stream
    assert 0 < len(got) == len(model.sent) < len(list(pieces(REPLY)))
    assert model.closed == 1  # the provider's stream is closed at the deadline
    (entry,) = [e for e in ledger.entries() if e.stage == "generate"]
    usage, bound = bound_of(model)
    if usage_after is None:  # no usage came: the upper bound, marked estimated
        expected = ("failed", usage, bound, True, ("timeout",))
    else:  # the usage came first: what it says, exactly
        expected = ("failed", USAGE, SEED.cost(MODEL, USAGE), False, ("timeout",))
    assert (entry.outcome, entry.usage, entry.cost, entry.estimated, entry.flags) == expected
    assert "deadline of 0.3 s" in entry.note
    [state] = ledger.status()
    assert (state.spent, state.held) == (entry.cost, Decimal(0))


async def _timed(read: Callable[[], Any]) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Timeout, match=r"still streaming request 't' .* deadline of 0\.3 s"):
        await read()
    return loop.time() - start


def test_a_slow_reader_counts_against_the_stream_deadline_in_stream_answer(
    make_ledger: Callable[..., Ledger],
) -> None:
    model = StreamingModel()  # answers at once; the reader is what takes the time
    ledger = make_ledger()
    read = 0
    with pytest.raises(Timeout):
        for _ in bot(model, timeout_s=0.2).stream_answer(Request("Where?", id="s"), ledger):
            read += 1
            time.sleep(0.05)
    assert 2 <= read < len(list(pieces(REPLY)))
    (entry,) = [e for e in ledger.entries() if e.stage == "generate"]
    usage, bound = bound_of(model)
    assert (entry.outcome, entry.usage, entry.cost, entry.flags) == (
        "failed",
        usage,
        bound,
        ("timeout",),
    )
    assert model.closed == 1


_LEFT_OPEN = """
import asyncio, sys
from decimal import Decimal
import chainkit as ck
from chainkit.providers.model import Chunk

class Model:
    model_id, region, tier, estimates_locally = "generic.powerful", None, "on_demand", True
    def estimate(self, prompt, *, max_tokens):
        return ck.Usage(40, max_tokens)
    def complete(self, prompt, *, max_tokens, metadata=None):
        raise AssertionError("streamed, never completed")
    async def astream(self, prompt, *, max_tokens, metadata=None):
        print("sent", flush=True)
        for word in ["Your ", "order ", "東京 🚚"]:
            yield Chunk(word)
        yield Chunk(usage=ck.Usage(40, 20), model_id=self.model_id)

how, where, budget = sys.argv[1], sys.argv[2], sys.argv[3] == "budget"
budgets = [ck.Budget(Decimal("1.00"), name="all")] if budget else []
if where.startswith("postgresql"):
    ledger = ck.PostgresLedger(where, schema=sys.argv[4], budgets=budgets)
else:
    ledger = ck.SQLiteLedger(where, budgets=budgets)
seed = ck.Catalogue.load("seed-2024")
bot = ck.Pipeline([ck.Generate(model=Model(), max_tokens=100, catalogue=seed)])
KEEP = []
if how == "sync":
    events = bot.stream_answer(ck.Request("Where?", id="left"), ledger)
    KEEP.append((events, next(events)))
else:  # an event loop never run again nor closed
    loop = asyncio.new_event_loop()
    events = bot.astream(ck.Request("Where?", id="left"), ledger)
    KEEP.append((events, loop.run_until_complete(events.__anext__()), loop))
# The process ends here, the stream open: no close, no aclose, no loop shutdown.
"""


@pytest.mark.parametrize("how", ["sync", "async_loop_left_open"])
@pytest.mark.parametrize("budgeted", [False, True])
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_stream_left_open_at_exit_is_recorded_once_at_its_bound(
    request: pytest.FixtureRequest, tmp_path: Path, how: str, budgeted: bool, store: str
) -> None:
    script = tmp_path / "left_open.py"
    script.write_text(_LEFT_OPEN, encoding="utf-8")
    if store == "sqlite":
        where, extra = str(tmp_path / "l.db"), []
    else:
        where, extra = request.getfixturevalue("pg_dsn"), [request.getfixturevalue("pg_schema")]
    root = str(Path(chainkit.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, str(script), how, where, "budget" if budgeted else "none", *extra],
        capture_output=True,
        text=True,
        timeout=120,  # it used to hang at exit (a thread started as the interpreter ended)
        env={**os.environ, "PYTHONPATH": root},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("sent") == 1  # the model was called once
    budgets = [Budget(Decimal("1.00"), name="all")] if budgeted else []
    if store == "sqlite":
        ledger: Ledger = SQLiteLedger(where, budgets=budgets)
    else:
        ledger = PostgresLedger(where, schema=extra[0], budgets=budgets)
    try:
        (entry,) = ledger.entries()
        _, bound = bound_of(StreamingModel())
        assert (entry.request_id, entry.outcome, entry.cost, entry.bound, entry.flags) == (
            "left",
            "failed",
            None,  # its cost is unknown, counted at its bound
            bound,
            ("cancelled",),
        )
        assert "exited with the call open" in entry.note
        if budgeted:
            [state] = ledger.status()
            assert (state.spent, state.held) == (bound, Decimal(0))
    finally:
        ledger.close()


@pytest.mark.parametrize("how", ["sync", "async_loop_left_open"])
def test_a_stream_open_when_its_process_is_killed_expires_into_its_entry_with_a_budget(
    tmp_path: Path, how: str
) -> None:
    # SIGKILL runs no exit hook: the budget's hold, written when the call was sent, is what
    # outlives the process; its lease (timeout_s + 60 s) ends and it becomes the call's entry.
    script = tmp_path / "killed.py"
    script.write_text(
        _LEFT_OPEN.replace(
            "# The process ends here",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n# The process ends here",
        ),
        encoding="utf-8",
    )
    where = str(tmp_path / "l.db")
    root = str(Path(chainkit.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, str(script), how, where, "budget"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": root},
        check=False,
    )
    assert done.returncode == -9, done.stderr
    assert done.stdout.count("sent") == 1
    later = datetime.now(UTC) + timedelta(seconds=120 + 61)  # past the default lease
    ledger = SQLiteLedger(where, budgets=[Budget(Decimal("1.00"), name="all")], clock=lambda: later)
    try:
        assert ledger.entries() == []  # nothing recorded before the lease ends
        [state] = ledger.status()  # reading the budget turns the expired hold into its entry
        (entry,) = ledger.entries()
        _, bound = bound_of(StreamingModel())
        assert (entry.request_id, entry.outcome, entry.cost, entry.bound) == (
            "left",
            "failed",
            None,
            bound,
        )
        assert "lease_expired" in entry.flags
        assert (state.spent, state.held) == (bound, Decimal(0))
    finally:
        ledger.close()


def test_closing_a_ledger_under_an_open_stream_says_so_and_loses_nothing(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "l.db")
    ledger.close_patience_s = 1.5  # the default outlasts any call's deadline
    stream = bot(StreamingModel()).stream_answer(Request("Where?", id="open"), ledger)
    next(stream)  # the call is sent and its reader holds it open, on this very thread
    with pytest.raises(chainkit.errors.LedgerError, match="still under way"):
        ledger.close()  # was: waited forever
    stream.close()  # the reader lets go: the call is recorded, once
    ledger.close()
    with SQLiteLedger(tmp_path / "l.db", read_only=True) as again:
        entries = [e for e in again.iter_entries() if e.stage == "generate"]
    assert [(e.request_id, e.flags) for e in entries] == [("open", ("cancelled",))]
