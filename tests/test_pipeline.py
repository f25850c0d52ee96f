import re
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import (
    BadResponse,
    Budget,
    BudgetExceeded,
    Canned,
    Catalogue,
    Completion,
    ConfigError,
    Entry,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    NoAnswer,
    OfflineModel,
    Pipeline,
    Precomputed,
    Prompt,
    ReplyStore,
    Request,
    Result,
    ScriptedModel,
    Usage,
)
from chainkit.errors import Timeout
from chainkit.pipeline import with_progress

# Every test here runs twice: through Pipeline.run, then through Pipeline.arun (both_ways).
pytestmark = pytest.mark.usefixtures("both_ways")

SEED = Catalogue.load("seed-2024")
RULES = KeywordClassifier(
    {"greeting": ["hi", "hello"], "delivery_options": ["deliver", "shipping"]}
)
CANNED = {"greeting": "Hello! How can I help?"}
TEXTS = [
    "hi there",
    "Do you deliver to Lyon? I need it by Friday.",
    "Where is my order 10234? It was due on Monday. The tracking page is blank.",
    "hello, I was charged twice. Please refund one payment.",
    "My parcel arrived damaged. The box was crushed. I want a replacement.",
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReplyStore]:
    store = ReplyStore(tmp_path / "replies")
    store.put("delivery_options", "We deliver across Europe in 3-5 days.")
    yield store
    store.close()


def powerful(reply: object = "answer") -> ScriptedModel:
    return ScriptedModel(model_id="generic.powerful", reply=reply, usage=Usage(50, 50))  # type: ignore[arg-type]


def support_bot(store: ReplyStore, final: Generate) -> Pipeline:
    return Pipeline(
        [
            IntentScan(classifier=RULES),
            Canned(replies=CANNED),
            Precomputed(store=store, keys={"delivery_options": ()}),
            final,
        ],
        name="support",
    )


def test_the_first_result_wins_and_later_stages_do_not_run() -> None:
    model = powerful()
    bot = Pipeline(
        [
            IntentScan(classifier=RULES),
            Canned(replies=CANNED),
            Generate(model=model, max_tokens=50, catalogue=SEED),
        ]
    )
    ledger = Ledger()

    result = bot.run(Request("hi there", id="r1"), ledger)

    assert (result.text, result.stage) == ("Hello! How can I help?", "canned")
    assert result.request.intent == "greeting"
    assert [e.stage for e in ledger] == ["intent_scan", "canned"]
    assert model.prompts == []


def test_a_passed_request_reaches_the_final_stage_enriched() -> None:
    model = powerful()
    bot = Pipeline(
        [
            IntentScan(classifier=RULES),
            Canned(replies=CANNED),
            Generate(model=model, max_tokens=50, catalogue=SEED),
        ]
    )
    ledger = Ledger()

    result = bot.run(Request("Where is my order?", id="r1"), ledger)

    assert (result.stage, result.model) == ("generate", "generic.powerful")
    assert result.request.intent == "unknown"
    assert [(e.stage, e.outcome) for e in ledger] == [
        ("intent_scan", "passed"),
        ("canned", "passed"),
        ("generate", "answered"),
    ]
    assert [e.intent for e in ledger] == ["unknown", "unknown", "unknown"]
    assert ledger.cost == Decimal("0.006")
    assert len(model.prompts) == 1


def test_every_stage_writes_one_entry_per_request(store: ReplyStore) -> None:
    bot = support_bot(store, Generate(model=powerful(), max_tokens=50, catalogue=SEED))
    ledger = Ledger()

    for i, text in enumerate(TEXTS):
        bot.run(Request(text, id=f"r{i}"), ledger)

    stages = {f"r{i}": [e.stage for e in ledger if e.request_id == f"r{i}"] for i in range(5)}
    assert stages == {
        "r0": ["intent_scan", "canned"],
        "r1": ["intent_scan", "canned", "precomputed"],
        "r2": ["intent_scan", "canned", "precomputed", "generate"],
        "r3": ["intent_scan", "canned"],
        "r4": ["intent_scan", "canned", "precomputed", "generate"],
    }


def test_early_answers_record_what_the_final_model_would_have_cost(store: ReplyStore) -> None:
    model = powerful()
    bot = support_bot(store, Generate(model=model, max_tokens=50, catalogue=SEED))
    ledger = Ledger()

    for i, text in enumerate(TEXTS[:3]):
        bot.run(Request(text, id=f"r{i}"), ledger)

    avoided = {(e.request_id, e.stage): e.avoided_cost for e in ledger}
    # Generate's scripted 100 tokens at $0.06 per 1K.
    assert avoided == {
        ("r0", "intent_scan"): Decimal(0),
        ("r0", "canned"): Decimal("0.006"),
        ("r1", "intent_scan"): Decimal(0),
        ("r1", "canned"): Decimal(0),
        ("r1", "precomputed"): Decimal("0.006"),
        ("r2", "intent_scan"): Decimal(0),
        ("r2", "canned"): Decimal(0),
        ("r2", "precomputed"): Decimal(0),
        ("r2", "generate"): Decimal(0),
    }
    assert ledger.totals().avoided_cost == Decimal("0.012")
    assert ledger.cost == Decimal("0.006")
    assert len(model.prompts) == 1


def test_a_pipeline_not_ending_in_an_estimator_records_no_avoided_cost() -> None:
    bot = Pipeline([IntentScan(classifier=RULES), Canned(replies=CANNED)])
    ledger = Ledger()

    bot.run(Request("hi", id="r1"), ledger)

    assert [e.avoided_cost for e in ledger] == [Decimal(0), Decimal(0)]


def test_no_answer_names_the_stages_and_keeps_their_entries() -> None:
    bot = Pipeline([IntentScan(classifier=RULES), Canned(replies=CANNED)], name="deflect")
    ledger = Ledger()

    with pytest.raises(NoAnswer) as info:
        bot.run(Request("Where is my order?", id="r1"), ledger)

    message = str(info.value)
    assert "intent_scan" in message and "canned" in message
    assert "r1" in message
    assert [(e.stage, e.outcome) for e in ledger] == [
        ("intent_scan", "passed"),
        ("canned", "passed"),
    ]


def test_duplicate_stage_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="'canned'"):
        Pipeline([Canned(replies=CANNED), Canned(replies={"thanks": "You're welcome."})])
    # Naming them apart is the fix the message suggests.
    Pipeline([Canned(replies=CANNED), Canned(replies={"thanks": "Welcome."}, name="thanks")])


def test_an_empty_pipeline_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one stage"):
        Pipeline([])


def test_something_that_is_not_a_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a stage"):
        Pipeline([Canned(replies=CANNED), "generate"])  # type: ignore[list-item]


def test_a_concurrency_below_one_is_refused() -> None:
    bot = Pipeline([Canned(replies=CANNED)])

    with pytest.raises(ConfigError, match="concurrency"):
        bot.run_batch([Request("hi", intent="greeting")], Ledger(), concurrency=0)


def _entry_view(e: Entry) -> tuple[object, ...]:
    # Everything but latency and time, which differ from run to run.
    return (
        e.stage,
        e.outcome,
        e.model,
        e.usage,
        e.cost,
        e.avoided_cost,
        e.estimated,
        e.attempts,
        e.intent,
        tuple(sorted(e.tags.items())),
        e.phase,
    )


def _by_request(ledger: Ledger) -> dict[str, list[tuple[object, ...]]]:
    out: dict[str, list[tuple[object, ...]]] = {}
    for e in ledger:
        out.setdefault(e.request_id, []).append(_entry_view(e))
    return out


def _requests(count: int) -> list[Request]:
    return [
        Request(f"{TEXTS[i % len(TEXTS)]} Ticket {i}.", id=f"q{i:03d}", tags={"shard": str(i % 3)})
        for i in range(count)
    ]


@pytest.mark.parametrize("concurrency", [1, 8])
def test_run_batch_matches_sequential_runs(store: ReplyStore, concurrency: int) -> None:
    final = Generate(
        model=OfflineModel(model_id="generic.responder"), max_tokens=40, catalogue=SEED
    )
    bot = support_bot(store, final)
    requests = _requests(200)
    sequential = Ledger()
    expected = [bot.run(r, sequential) for r in requests]

    batch = Ledger()
    results = bot.run_batch(requests, batch, concurrency=concurrency, progress=False)

    assert [r.request.id for r in results] == [r.id for r in requests]
    assert [(r.text, r.stage, r.model) for r in results] == [
        (r.text, r.stage, r.model) for r in expected
    ]
    assert {r.stage for r in results} == {"canned", "precomputed", "generate"}
    assert batch.cost == sequential.cost
    assert batch.cost is not None and batch.cost > 0
    assert batch.totals().avoided_cost == sequential.totals().avoided_cost
    assert _by_request(batch) == _by_request(sequential)
    assert len(batch) == len(sequential)


def test_stream_reads_requests_lazily() -> None:
    consumed = 0

    def requests() -> Iterator[Request]:
        nonlocal consumed
        for i in range(100):
            consumed += 1
            yield Request("hi", id=f"r{i}", intent="greeting")

    bot = Pipeline([Canned(replies=CANNED)])
    ledger = Ledger()
    source = requests()
    stream = bot.stream(source, ledger, concurrency=2, progress=False)

    first = next(stream)

    assert first.request.id == "r0"
    assert consumed <= 2 * 2
    assert len(ledger) <= 2 * 2
    stream.close()
    read = consumed
    # The source was not exhausted: the rest is still there to read.
    assert next(source).id == f"r{read}"


def test_stream_with_concurrency_one_reads_one_request_per_result() -> None:
    consumed = 0

    def requests() -> Iterator[Request]:
        nonlocal consumed
        for i in range(10):
            consumed += 1
            yield Request("hi", id=f"r{i}", intent="greeting")

    stream = Pipeline([Canned(replies=CANNED)]).stream(
        requests(), Ledger(), concurrency=1, progress=False
    )

    assert next(stream).request.id == "r0"
    assert consumed == 1
    assert next(stream).request.id == "r1"
    assert consumed == 2
    stream.close()


def test_run_batch_accepts_a_generator() -> None:
    requests = (Request("hi", id=f"r{i}", intent="greeting") for i in range(25))

    results = Pipeline([Canned(replies=CANNED)]).run_batch(requests, Ledger(), concurrency=3)

    assert [r.request.id for r in results] == [f"r{i}" for i in range(25)]


def _fails_on_boom(prompt: Prompt) -> str:
    if "boom" in prompt.user:
        raise BadResponse(f"no usage in the reply to {prompt.user!r}")
    return "answer"


FAILING = [0, 3, 7]


def _mixed_requests(count: int = 12) -> list[Request]:
    return [
        Request("boom" if i in FAILING else f"question {i}", id=f"r{i:02d}") for i in range(count)
    ]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_return_exceptions_puts_each_error_in_its_place(concurrency: int) -> None:
    bot = Pipeline([Generate(model=powerful(_fails_on_boom), max_tokens=50, catalogue=SEED)])
    ledger = Ledger()

    out = bot.run_batch(_mixed_requests(), ledger, concurrency=concurrency, return_exceptions=True)

    assert len(out) == 12
    for i, item in enumerate(out):
        if i in FAILING:
            assert isinstance(item, BadResponse)
        else:
            assert isinstance(item, Result) and item.request.id == f"r{i:02d}"
    outcomes = {e.request_id: e.outcome for e in ledger}
    assert outcomes == {f"r{i:02d}": "failed" if i in FAILING else "answered" for i in range(12)}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_without_return_exceptions_the_error_is_raised_after_recording(
    concurrency: int,
) -> None:
    requests = [Request("boom" if i == 5 else f"question {i}", id=f"r{i:02d}") for i in range(40)]
    bot = Pipeline([Generate(model=powerful(_fails_on_boom), max_tokens=50, catalogue=SEED)])
    ledger = Ledger()

    with pytest.raises(BadResponse):
        bot.run_batch(requests, ledger, concurrency=concurrency)

    outcomes = {e.request_id: e.outcome for e in ledger}
    assert outcomes["r05"] == "failed"
    assert all(outcomes[f"r{i:02d}"] == "answered" for i in range(5))
    # Every request that ran has its entry; none ran twice.
    assert len(ledger) == len(outcomes)
    assert set(outcomes) <= {r.id for r in requests}


def test_a_budget_is_never_overspent_under_concurrency() -> None:
    model = ScriptedModel(
        model_id="generic.powerful", reply="answer", usage=Usage(50, 50), latency_s=0.01
    )
    budget = Budget(Decimal("0.06"), name="batch")
    ledger = Ledger(budgets=[budget])
    bot = Pipeline([Generate(model=model, max_tokens=50, catalogue=SEED)])
    requests = [Request(f"question {i}", id=f"r{i:02d}") for i in range(50)]

    out = bot.run_batch(requests, ledger, concurrency=8, return_exceptions=True)

    answered = [r for r in out if isinstance(r, Result)]
    refused = [r for r in out if isinstance(r, BudgetExceeded)]
    assert len(answered) + len(refused) == 50
    assert ledger.cost is not None and ledger.cost <= budget.limit
    # Each call's estimate equals its cost, so exactly ten $0.006 calls fit in $0.06.
    assert len(answered) == 10
    assert ledger.cost == Decimal("0.06")
    assert len(model.prompts) == 10
    assert sum(1 for e in ledger if e.outcome == "refused") == 40
    assert all(e.cost == 0 for e in ledger if e.outcome == "refused")


# -- a batch that flows: a slow request holds back only its own place ----------------------------


class _Gate:
    """A model that blocks the calls of chosen requests until released; counts finished calls."""

    model_id = "generic.powerful"
    region = None
    tier = "on_demand"

    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked
        self.release = threading.Event()
        self.finished = 0
        self.lock = threading.Lock()

    def complete(self, prompt, *, max_tokens, metadata=None):  # type: ignore[no-untyped-def]
        if metadata and metadata["request_id"] in self.blocked:
            self.release.wait(30)
        with self.lock:
            self.finished += 1
        return Completion(text="ok", usage=Usage(10, 10), model_id=self.model_id)

    def estimate(self, prompt, *, max_tokens):  # type: ignore[no-untyped-def]
        return Usage(10, max_tokens)


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the other slots stopped working"
        time.sleep(0.005)


@pytest.mark.parametrize("ordered", [True, False])
def test_a_slow_request_does_not_stall_the_other_slots(ordered: bool) -> None:
    gate = _Gate(blocked={"q0"})
    bot = Pipeline([Generate(model=gate, catalogue=SEED, max_tokens=10, timeout_s=None)])
    requests = [Request("where?", id=f"q{i}") for i in range(60)]
    out: list[Result] = []
    runner = threading.Thread(
        target=lambda: out.extend(bot.stream(requests, Ledger(), concurrency=4, ordered=ordered))
    )
    runner.start()
    # Every other request finishes while q0 is still held.
    _wait_for(lambda: gate.finished == 59)
    if not ordered:
        _wait_for(lambda: len(out) == 59)
        assert "q0" not in {r.request.id for r in out}
    else:
        assert out == []  # in order: nothing passes q0's place
    gate.release.set()
    runner.join(30)
    ids = [r.request.id for r in out]
    assert sorted(ids) == sorted(r.id for r in requests)
    if ordered:
        assert ids == [r.id for r in requests]
    else:
        assert ids[-1] == "q0"


def test_a_hung_call_times_out_and_the_batch_finishes() -> None:
    gate = _Gate(blocked={"q3", "q7"})  # never released: an endless hang
    bot = Pipeline([Generate(model=gate, catalogue=SEED, max_tokens=10, timeout_s=0.05)])
    ledger = Ledger()
    requests = [Request("where?", id=f"q{i}") for i in range(20)]
    results = bot.run_batch(requests, ledger, concurrency=4, return_exceptions=True)
    failed = {r.id for r, o in zip(requests, results, strict=True) if isinstance(o, Timeout)}
    assert failed == {"q3", "q7"}
    entries = {e.request_id: e for e in ledger}
    assert (entries["q3"].outcome, entries["q3"].cost, entries["q3"].flags) == (
        "failed",
        None,
        ("timeout",),
    )
    # What was held: one token per prompt byte, 32 per message and per call, 10 out, at $60/1M.
    prompt = bot.stages[0].prompt(requests[3])  # type: ignore[attr-defined]
    size = len(prompt.system.encode()) + len(prompt.user.encode()) + 2 * 32 + 32
    assert entries["q3"].bound == Decimal(size + 10) * 60 / 1_000_000
    gate.release.set()


# -- progress --------------------------------------------------------------------------------


def _slow_bot() -> Pipeline:
    model = OfflineModel(model_id="generic.responder", latency_s=0.02)
    return Pipeline([Generate(model=model, max_tokens=20, catalogue=SEED)], name="bot")


PROGRESS_LINE = r"bot: \d+ of 12 requests \(\d+\.\d%\) in [\d.]+ s, [\d.,]+/s, about [\d.]+ s left"


def test_progress_off_a_terminal_is_a_line_every_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    requests = [Request(f"question {i}", id=f"r{i}") for i in range(12)]

    _slow_bot().run_batch(requests, Ledger(), concurrency=2, progress=0.05)

    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 12
    assert all(re.fullmatch(PROGRESS_LINE, line) for line in lines[:-1]), lines
    assert re.fullmatch(r"bot: 12 of 12 requests \(100\.0%\) done in [\d.]+ s, [\d.]+/s", lines[-1])


def test_progress_of_an_unsized_stream_has_no_total(capsys: pytest.CaptureFixture[str]) -> None:
    requests = (Request(f"question {i}", id=f"r{i}") for i in range(6))

    list(_slow_bot().stream(requests, Ledger(), concurrency=1, progress=0.01))

    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("bot: 6 requests done in ")
    assert all(" of " not in line and "left" not in line for line in lines)


def test_default_progress_off_a_terminal_follows_the_module_interval(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [Request(f"question {i}", id=f"r{i}") for i in range(4)]
    # pytest captures stderr, which is no terminal: the default is lines, every 10 s, so a
    # short run says nothing at all.
    _slow_bot().run_batch(requests, Ledger(), concurrency=2)
    assert capsys.readouterr().err == ""

    monkeypatch.setattr("chainkit.pipeline.PROGRESS_EVERY_S", 0.001)
    _slow_bot().run_batch(requests, Ledger(), concurrency=2)
    assert "bot: 4 of 4 requests (100.0%) done in" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [0, -1.5, "10", float("nan")])
def test_progress_refuses_what_is_not_a_duration(bad: object) -> None:
    with pytest.raises(ConfigError, match="progress takes None, True, False or a number"):
        _slow_bot().run_batch([Request("hi")], Ledger(), progress=bad)  # type: ignore[arg-type]


def test_with_progress_reports_other_long_work_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def slow(items: list[int]) -> list[int]:
        out = []
        for i in with_progress(items, "scoring", unit="documents", progress=0.001):
            time.sleep(0.002)
            out.append(i)
        return out

    assert slow([1, 2, 3]) == [1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("scoring: 1 of 3 documents (33.3%) in ")
    assert lines[-1].startswith("scoring: 3 of 3 documents (100.0%) done in ")
    assert list(with_progress(iter("ab"), "quiet", progress=False)) == ["a", "b"]
    assert capsys.readouterr().err == ""
