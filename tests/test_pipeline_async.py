"""The async path: parity with the sync one, bounded concurrency, and the ledger's promise under
cancellation at every await point, timeouts and failures."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import (
    AlreadyAnswered,
    BadResponse,
    Budget,
    Canned,
    Catalogue,
    Entry,
    Generate,
    IntentScan,
    Ledger,
    LLMClassifier,
    Pipeline,
    PostgresLedger,
    Request,
    SQLiteLedger,
    Usage,
)
from chainkit.errors import Timeout
from chainkit.ledger.budgets import charge
from chainkit.providers.model import Chunk, Completion, Prompt
from chainkit.providers.offline import pieces

SEED = Catalogue.load("seed-2024")


class AwaitingModel:
    """A model that awaits ``steps`` times before it answers (every await a cancellation point)."""

    region = None
    tier = "on_demand"
    estimates_locally = True

    def __init__(self, model_id: str, reply: str, usage: Usage, steps: int = 3) -> None:
        self.model_id, self.reply, self.usage, self.steps = model_id, reply, usage, steps
        self.started = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        self.started += 1
        return Completion(self.reply, self.usage, self.model_id)

    async def acomplete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        self.started += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(self.steps):
                await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        return Completion(self.reply, self.usage, self.model_id)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncGenerator[Chunk, None]:
        self.started += 1
        for word in pieces(self.reply):
            await asyncio.sleep(0)
            yield Chunk(word)
        yield Chunk(usage=self.usage, model_id=self.model_id)

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(self.usage.input_tokens, max_tokens)


def models() -> tuple[AwaitingModel, AwaitingModel]:
    small = AwaitingModel("generic.intent", "track_order", Usage(20, 2))
    big = AwaitingModel("generic.powerful", "It ships today from Lyon.", Usage(50, 8))
    return small, big


def bot(small: Any, big: Any, **generate: Any) -> Pipeline:
    return Pipeline(
        [
            IntentScan(
                classifier=LLMClassifier(small, ["track_order", "greeting"]), catalogue=SEED
            ),
            Canned(replies={"greeting": "Hello!"}),
            Generate(model=big, max_tokens=50, catalogue=SEED, **generate),
        ]
    )


def key(e: Entry) -> tuple[Any, ...]:
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


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
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


def budget() -> Budget:
    return Budget(Decimal("10.00"), name="all")


def test_arun_many_records_what_run_batch_records(make_ledger: Callable[..., Ledger]) -> None:
    texts = ["where is it?", "hello", "refund please", "where is my parcel?"] * 3
    requests = [Request(t, id=f"r{i}", tags={"tenant": "acme"}) for i, t in enumerate(texts)]
    sync_ledger, async_ledger = make_ledger(budgets=[budget()]), make_ledger(budgets=[budget()])

    expected = bot(*models()).run_batch(requests, sync_ledger, progress=False)
    got = asyncio.run(bot(*models()).arun_many(requests, async_ledger, progress=False))

    assert [r.text for r in got] == [r.text for r in expected]
    assert sorted(map(key, async_ledger.entries())) == sorted(map(key, sync_ledger.entries()))
    # 12 x (22 intent tokens at $3 + 58 generate tokens at $60 per million)
    assert async_ledger.cost == sync_ledger.cost == Decimal("0.042552")
    assert async_ledger.spent("all") == sync_ledger.spent("all") == Decimal("0.042552")


def test_arun_many_keeps_at_most_concurrency_calls_in_flight() -> None:
    small, big = models()
    big.steps = 20
    requests = [Request(f"where is parcel {i}?", id=f"r{i}") for i in range(30)]

    results = asyncio.run(
        bot(small, big).arun_many(requests, Ledger(), concurrency=4, progress=False)
    )

    assert len(results) == 30
    assert big.most_in_flight == 4


def test_async_requests_are_concurrent_on_one_thread() -> None:
    """With awaited latency, 20 requests take about one request's time, not twenty."""
    from chainkit import OfflineModel

    slow = OfflineModel(model_id="amazon.nova-micro-v1:0", latency_s=0.2)
    pipeline = Pipeline([Generate(model=slow, max_tokens=20)])
    requests = [Request(f"question {i}") for i in range(20)]
    threads_before = threading.active_count()
    started = time.perf_counter()
    results = asyncio.run(pipeline.arun_many(requests, Ledger(), concurrency=20, progress=False))
    assert len(results) == 20
    assert time.perf_counter() - started < 2.0  # 20 x 0.2 s one after another would be 4 s
    assert threading.active_count() <= threads_before + 1


@given(
    cancel_after=st.integers(0, 60),
    how=st.sampled_from(["arun", "astream", "arun_many"]),
    durable=st.booleans(),
)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_cancellation_at_any_await_point_keeps_the_ledger_promise(
    cancel_after: int, how: str, durable: bool
) -> None:
    """Cancel after n turns of the loop, wherever that lands: every call sent has one entry,
    no hold is left, and the budget has counted exactly the entries."""
    small, big = models()
    with tempfile.TemporaryDirectory() as folder:
        ledger = (
            SQLiteLedger(Path(folder) / "l.db", budgets=[budget()])
            if durable
            else Ledger(budgets=[budget()])
        )
        pipeline = bot(small, big)
        requests = [Request(f"where is parcel {i}?", id=f"r{i}") for i in range(3)]

        async def work() -> None:
            if how == "arun":
                await pipeline.arun(requests[0], ledger)
            elif how == "arun_many":
                await pipeline.arun_many(requests, ledger, concurrency=2, progress=False)
            else:
                async with aclosing(pipeline.astream(requests[0], ledger)) as events:
                    async for _ in events:
                        pass

        async def main() -> bool:
            task = asyncio.create_task(work())
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return True
            return False

        cancelled = asyncio.run(main())
        try:
            entries = ledger.entries()
            paid = [e for e in entries if e.model is not None and e.outcome != "refused"]
            assert len(paid) == small.started + big.started
            assert len({e.id for e in entries}) == len(entries)
            [state] = ledger.status()
            assert state.held == Decimal(0)
            assert state.spent == sum((charge(e) for e in entries), Decimal(0))
            for e in paid:
                if "cancelled" in e.flags:
                    assert cancelled
                    assert e.cost is None or e.estimated  # unknown, or its bound marked estimated
                else:
                    assert e.cost is not None
            if not cancelled:
                assert not any("cancelled" in e.flags for e in entries)
        finally:
            ledger.close()


def test_a_cancelled_call_in_flight_is_recorded_at_its_bound_and_releases_nothing_twice() -> None:
    small, big = models()
    big.steps = 1000
    ledger = Ledger(budgets=[budget()])

    async def main() -> None:
        task = asyncio.create_task(bot(small, big).arun(Request("where?", id="x"), ledger))
        while big.in_flight == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    intent, _canned, generate = ledger.entries()
    assert (intent.outcome, intent.cost) == ("passed", Decimal("0.000066"))  # 22 at $3/M
    assert (generate.outcome, generate.cost, generate.flags) == ("failed", None, ("cancelled",))
    assert generate.note.startswith("CancelledError")
    [state] = ledger.status()
    assert state.held == Decimal(0)
    assert state.spent == Decimal("0.000066") + generate.bound


def test_a_timeout_on_the_async_path_is_recorded_as_on_the_sync_path() -> None:
    small, big = models()
    big.steps = 10**9  # never answers
    ledger = Ledger(budgets=[budget()])
    slow = bot(small, big, timeout_s=0.05)

    async def main() -> None:
        orig = big.acomplete

        async def hang(*args: Any, **kwargs: Any) -> Completion:
            await asyncio.sleep(60)
            return await orig(*args, **kwargs)

        big.acomplete = hang  # type: ignore[method-assign]
        await slow.arun(Request("where?", id="t"), ledger)

    with pytest.raises(Timeout, match=r"within 0\.05 s"):
        asyncio.run(main())
    entry = ledger.entries()[-1]
    assert (entry.outcome, entry.cost, entry.flags) == ("failed", None, ("timeout",))
    assert ledger.status()[0].held == Decimal(0)


def test_a_hung_sync_model_times_out_without_holding_the_loop() -> None:
    class Hung:
        model_id, region, tier = "generic.powerful", None, "on_demand"
        release = threading.Event()

        def complete(self, prompt: Prompt, *, max_tokens: int, metadata: Any = None) -> Any:
            self.release.wait(30)
            return Completion("late", Usage(1, 1), self.model_id)

        def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
            return Usage(10, max_tokens)

    model = Hung()
    ledger = Ledger()
    pipeline = Pipeline([Generate(model=model, catalogue=SEED, timeout_s=0.1)])
    started = time.perf_counter()
    try:
        with pytest.raises(Timeout):
            asyncio.run(pipeline.arun(Request("q", id="h"), ledger))
        assert time.perf_counter() - started < 5
    finally:
        model.release.set()
    assert [(e.outcome, e.flags) for e in ledger.entries()] == [("failed", ("timeout",))]


def test_a_model_raising_on_the_async_path_is_a_bad_response_recorded_once() -> None:
    small, big = models()

    async def broken(*args: Any, **kwargs: Any) -> Completion:
        await asyncio.sleep(0)
        raise ValueError("socket said \udcff")

    big.acomplete = broken  # type: ignore[method-assign]
    ledger = Ledger(budgets=[budget()])
    with pytest.raises(BadResponse, match="ValueError"):
        asyncio.run(bot(small, big).arun(Request("where?", id="b"), ledger))
    entry = ledger.entries()[-1]
    assert (entry.outcome, entry.cost) == ("failed", None)
    assert "\\udcff" in entry.note
    assert ledger.status()[0].held == Decimal(0)


def test_an_unpriced_stage_left_sync_runs_in_a_thread_and_its_entry_lands() -> None:
    """A user's stage without arun runs in a worker thread, its entry deferred like any other."""

    class Shout:
        name = "shout"

        def run(self, request: Request, ledger: Ledger) -> Request:
            from chainkit.stages.answering import record_free

            record_free(self.name, request, ledger)
            return request

    _, big = models()
    with tempfile.TemporaryDirectory() as folder:
        ledger = SQLiteLedger(Path(folder) / "l.db")
        pipeline = Pipeline([Shout(), Generate(model=big, catalogue=SEED)])
        asyncio.run(pipeline.arun_many([Request(f"q{i}", id=f"q{i}") for i in range(6)], ledger))
        assert sorted((e.request_id, e.stage) for e in ledger.entries()) == sorted(
            (f"q{i}", stage) for i in range(6) for stage in ("shout", "generate")
        )
        ledger.close()


def test_requests_on_one_loop_keep_their_resume_steps_apart(tmp_path: Path) -> None:
    """Two resumed requests interleaved on one event loop never write into each other's step."""
    small, big = models()
    ledger = SQLiteLedger(tmp_path / "l.db")
    requests = [Request(f"where is parcel {i}?", id=f"p{i}") for i in range(6)]
    asyncio.run(bot(small, big).arun_many(requests, ledger, concurrency=6, resume=True))
    by_request: dict[str, list[str]] = {}
    for e in ledger.entries():
        by_request.setdefault(e.request_id, []).append(e.stage)
    assert by_request == {f"p{i}": ["intent_scan", "canned", "generate"] for i in range(6)}
    # A rerun pays nothing: every request's progress was saved under its own id.
    with pytest.raises(AlreadyAnswered):
        asyncio.run(bot(small, big).arun(requests[0], ledger, resume=True))
    assert len(ledger.entries()) == 18
    ledger.close()


def test_a_subclass_overriding_complete_is_called_the_same_way_on_both_paths() -> None:
    from chainkit import ScriptedModel

    class Refusing(ScriptedModel):
        def complete(self, prompt: Prompt, *, max_tokens: int, metadata: Any = None) -> Any:
            raise RuntimeError("this provider is down")

    for run in ("sync", "async", "stream"):
        ledger = Ledger()
        model = Refusing(model_id="generic.powerful", reply="never", usage=Usage(5, 5))
        pipeline = Pipeline([Generate(model=model, catalogue=SEED)])
        request = Request("q", id=run)
        with pytest.raises(BadResponse, match="this provider is down"):
            if run == "sync":
                pipeline.run(request, ledger)
            elif run == "async":
                asyncio.run(pipeline.arun(request, ledger))
            else:
                list(pipeline.stream_answer(request, ledger))
        assert model.prompts == []  # ScriptedModel's own acomplete/astream were not used
        assert [(e.outcome, e.cost) for e in ledger.entries()] == [("failed", None)]


def test_requests_that_raise_while_read_raise_as_they_are_after_the_calls_in_flight_land() -> None:
    def requests() -> Iterator[Request]:
        for i in range(10):
            if i == 6:
                raise ValueError("bad input row")
            yield Request("where is my parcel?", id=f"r{i}")

    outcomes = []
    for run in ("arun_many", "run_batch"):
        small, big = models()
        ledger = Ledger(budgets=[budget()])
        with pytest.raises(ValueError, match="bad input row") as raised:
            if run == "arun_many":
                asyncio.run(bot(small, big).arun_many(requests(), ledger, concurrency=4))
            else:
                bot(small, big).run_batch(requests(), ledger, concurrency=4, progress=False)
        # The original exception, never an ExceptionGroup around it.
        assert type(raised.value) is ValueError
        generated = [e for e in ledger.entries() if e.stage == "generate"]
        # Each of the six requests read was answered and recorded once; nothing is held.
        assert big.started == len(generated) == 6
        assert sorted(e.request_id for e in generated) == [f"r{i}" for i in range(6)]
        assert ledger.status()[0].held == 0
        outcomes.append(sorted(map(key, ledger.entries())))
    assert outcomes[0] == outcomes[1]
