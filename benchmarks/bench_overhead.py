"""Benchmarks 1 and 2: chainkit's per-request overhead against LangChain LCEL, and short-circuits.

Committed results (``benchmarks/results/overhead.md``) come from ``run_all.py``::

    .venv/bin/python benchmarks/run_all.py

This script alone::

    .venv/bin/python benchmarks/bench_overhead.py             # figures
    .venv/bin/python benchmarks/bench_overhead.py --profile   # cProfile of chainkit's side

1. The same five-step flow (keyword intent scan, canned, precomputed miss, summarise, generate)
   with zero-latency offline models, run three ways in one process, interleaved in rounds:
   a chainkit ``Pipeline`` with an in-memory ledger (fresh each round), a LangChain LCEL
   ``RunnableSequence`` of ``RunnableLambda`` s doing the same work on the very same classifier,
   reply dict, diskcache store and model objects (no ledger), and the same work as plain Python
   function calls (no framework). The plain figure is the work both frameworks must do; what
   each takes above it is its own overhead.
2. Short-circuit answers through the same pipeline: a canned reply and a precomputed (diskcache)
   hit, including their ledger writes (and the avoided-cost estimate each early answer records),
   in memory and in SQLite.

Both models are ``OfflineModel("amazon.nova-micro-v1:0")`` by default: token counts come from
chainkit's 4-characters-per-token estimator, the cheap path. ``--model`` picks another catalogue
id (a Mistral id exercises the real SentencePiece tokenizer, far slower).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chainkit import (
    Canned,
    Catalogue,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    OfflineModel,
    Pipeline,
    Precomputed,
    ReplyStore,
    Request,
    SQLiteLedger,
    Summarise,
)
from chainkit.providers.model import Prompt

SCRATCH = Path("/tmp/bench")
DEFAULT_MODEL = "amazon.nova-micro-v1:0"

# A short chatbot message whose intent has neither a canned nor a precomputed reply.
MISS_TEXT = "Where is my order 10234? It was due on Monday."
CANNED_TEXT = "Hello there, good morning!"
PRECOMPUTED_TEXT = "What are your delivery options to France?"
DOCUMENT = (
    "Order 10234 was placed on 3 March for two blue mugs. It shipped from the Lyon warehouse on "
    "5 March. The courier scanned it at the Paris depot on 6 March. Delivery was promised for "
    "Monday 9 March, but no scan has appeared since."
)
RULES = {
    "greeting": ["hello", "hi", "good morning"],
    "thanks": ["thank you", "thanks"],
    "delivery_options": ["delivery options", "shipping options"],
    "returns_policy": ["return policy", "returns"],
    "track_order": ["where is", "tracking", "parcel"],
    "refund": ["refund", "money back"],
}
CANNED_REPLIES = {
    "greeting": "Hello! How can I help you today?",
    "thanks": "You're welcome! Anything else?",
}
PRECOMPUTED_REPLIES = {
    "delivery_options": "We deliver by courier in 2-3 working days, or next day for EUR 9.",
    "returns_policy": "You can return any item within 30 days for a full refund.",
}


# -- shared helpers (bench_ledger and bench_batch import these) --------------------------------


@dataclass
class Row:
    """One reported figure: what, how much, the target and whether it was met."""

    benchmark: str
    figure: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""

    def shown(self) -> str:
        """The value with its unit, for tables."""
        if self.unit in ("/s", "req/s"):
            return f"{self.value:,.0f} {self.unit}"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        return (
            f"{self.value:,.1f} {self.unit}"
            if self.value < 1000
            else f"{self.value:,.0f} {self.unit}"
        )

    def verdict(self) -> str:
        """``met``, ``MISSED`` or empty when the figure has no target."""
        return "" if self.met is None else ("met" if self.met else "MISSED")


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an already sorted list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


def us(ns: float) -> float:
    """Nanoseconds to microseconds."""
    return ns / 1000


def print_rows(title: str, rows: Iterable[Row]) -> None:
    """Print rows as an aligned table under ``title``."""
    if title:
        print(f"\n== {title}")
    for r in rows:
        target = f"target {r.target}" if r.target else ""
        note = f"  ({r.note})" if r.note else ""
        print(f"  {r.figure:<58} {r.shown():>16}  {target:<22} {r.verdict()}{note}")
    sys.stdout.flush()


def write_json(path: str | None, rows: list[Row], extra: dict[str, Any] | None = None) -> None:
    """Write rows (and any extra details) as JSON for ``run_all.py``."""
    if path:
        data = {"rows": [r.__dict__ for r in rows], **(extra or {})}
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def profile(fn: Callable[[], object], label: str, limit: int = 22, per: int = 1) -> None:
    """Run ``fn`` under cProfile; print the top functions by own time and chainkit's cumulative.

    ``per`` is how many requests (or entries) ``fn`` handles: call counts are shown per one.
    Dataclass-generated ``__init__`` methods (chainkit's records) show as ``<string>``.
    """
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\n== profile: {label} (total {total:.3f} s under cProfile)")
    print("-- by own time (tottime), share of the profiled total; calls per request:")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    for (file, line, func), (_cc, nc, tt, ct, _callers) in rows[:limit]:
        where = f"{_short(file)}:{line} {func}"
        print(f"  {100 * tt / total:5.1f}%  {tt:7.3f}s  cum {ct:7.3f}s  {nc / per:>9.2f}  {where}")
    mine = sorted(
        (kv for kv in rows if "/chainkit/" in kv[0][0] or kv[0][0] == "<string>"),
        key=lambda kv: -kv[1][3],
    )
    if not mine:
        return
    root = mine[0][1][3]
    print("-- chainkit functions by cumulative time, share of the outermost one:")
    for (file, line, func), (_cc, nc, tt, ct, _callers) in mine[:limit]:
        where = f"{_short(file)}:{line} {func}"
        shares = f"{100 * ct / root:5.1f}%  cum {ct:7.3f}s  own {tt:7.3f}s"
        print(f"  {shares}  {nc / per:>9.2f}  {where}")
    sys.stdout.flush()


def _short(file: str) -> str:
    for marker in ("/chainkit/", "/site-packages/", "/lib/python3"):
        if marker in file:
            return marker.strip("/") + "/" + file.split(marker, 1)[1]
    return file


# -- the flow ------------------------------------------------------------------------------------


@dataclass
class Flow:
    """The five-step flow as a chainkit pipeline, an LCEL chain and plain calls, sharing parts."""

    pipeline: Pipeline
    chain: Any
    plain: Callable[[dict[str, Any]], str]
    store: ReplyStore
    classifier: KeywordClassifier
    summariser: OfflineModel
    generator: OfflineModel
    directory: Path

    def close(self) -> None:
        """Close the reply store and delete its directory."""
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def build_flow(model_id: str = DEFAULT_MODEL, *, latency_s: float = 0.0) -> Flow:
    """Build the shared parts once, then the pipeline, the LCEL chain and the plain calls on them.

    ``latency_s`` is the generator's simulated latency (the summariser has none).
    """
    SCRATCH.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="replies-", dir=SCRATCH))
    store = ReplyStore(directory)
    for intent, reply in PRECOMPUTED_REPLIES.items():
        store.put(intent, reply)
    catalogue = Catalogue.load()
    classifier = KeywordClassifier(RULES)
    summariser = OfflineModel(model_id=model_id)
    generator = OfflineModel(model_id=model_id, latency_s=latency_s)
    summarise = Summarise(model=summariser, max_tokens=200, catalogue=catalogue)
    generate = Generate(model=generator, max_tokens=300, catalogue=catalogue)
    pipeline = Pipeline(
        [
            IntentScan(classifier=classifier, catalogue=catalogue),
            Canned(replies=CANNED_REPLIES),
            Precomputed(store=store, keys=dict.fromkeys(PRECOMPUTED_REPLIES, ())),
            summarise,
            generate,
        ],
        name="support",
    )

    # The LCEL side does the same work on the same objects, with the same prompts; no ledger.
    summary_system = summarise.instruction.format(max_tokens=summarise.max_tokens)
    generate_system = generate.system
    replies = CANNED_REPLIES

    def scan(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "intent": classifier.predict(state["text"]).label}

    def canned(state: dict[str, Any]) -> dict[str, Any]:
        reply = replies.get(state["intent"])
        return state if reply is None else {**state, "answer": reply}

    def precomputed(state: dict[str, Any]) -> dict[str, Any]:
        if "answer" in state:
            return state
        reply = store.get(state["intent"])
        return state if reply is None else {**state, "answer": reply}

    def summarise_step(state: dict[str, Any]) -> dict[str, Any]:
        if "answer" in state or state.get("document") is None:
            return state
        prompt = Prompt(summary_system, state["document"])
        return {**state, "summary": summariser.complete(prompt, max_tokens=200).text}

    def generate_step(state: dict[str, Any]) -> str:
        if "answer" in state:
            return str(state["answer"])
        parts = [state["text"]]
        if "summary" in state:
            parts.insert(0, "Summary:\n" + state["summary"])
        prompt = Prompt(generate_system, "\n\n".join(parts))
        return generator.complete(prompt, max_tokens=300).text

    from langchain_core.runnables import RunnableLambda, RunnableSequence

    chain = RunnableSequence(
        RunnableLambda(scan),
        RunnableLambda(canned),
        RunnableLambda(precomputed),
        RunnableLambda(summarise_step),
        RunnableLambda(generate_step),
    )

    def plain(state: dict[str, Any]) -> str:
        return generate_step(summarise_step(precomputed(canned(scan(state)))))

    return Flow(pipeline, chain, plain, store, classifier, summariser, generator, directory)


# -- benchmark 1 ---------------------------------------------------------------------------------


def bench_pipeline_vs_lcel(
    flow: Flow, *, rounds: int, block: int
) -> tuple[list[Row], dict[str, Any]]:
    """Median per-request time of chainkit, LCEL and plain calls, interleaved in rounds."""
    pipeline, chain, plain = flow.pipeline, flow.chain, flow.plain
    text, document = MISS_TEXT, DOCUMENT
    perf = time.perf_counter_ns

    def run_chainkit(n: int, out: list[int]) -> None:
        ledger = Ledger()
        for _ in range(n):
            t0 = perf()
            pipeline.run(Request(text, document=document), ledger)
            out.append(perf() - t0)

    def run_lcel(n: int, out: list[int]) -> None:
        for _ in range(n):
            t0 = perf()
            chain.invoke({"text": text, "document": document})
            out.append(perf() - t0)

    def run_plain(n: int, out: list[int]) -> None:
        for _ in range(n):
            t0 = perf()
            plain({"text": text, "document": document})
            out.append(perf() - t0)

    # Same answers, or the comparison means nothing.
    ledger = Ledger()
    answer = pipeline.run(Request(text, document=document), ledger)
    same = (
        answer.text
        == chain.invoke({"text": text, "document": document})
        == plain({"text": text, "document": document})
    )
    stages = [e.stage for e in ledger]

    variants = {"chainkit": run_chainkit, "lcel": run_lcel, "plain": run_plain}
    times: dict[str, list[int]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn(max(200, block), [])
    for r in range(rounds):
        order = list(variants)
        order = order[r % 3 :] + order[: r % 3]
        for name in order:
            variants[name](block, times[name])
    for t in times.values():
        t.sort()
    med = {name: percentile(t, 50) for name, t in times.items()}
    p99 = {name: percentile(t, 99) for name, t in times.items()}
    ratio = med["lcel"] / med["chainkit"]
    own_chainkit = med["chainkit"] - med["plain"]
    own_lcel = med["lcel"] - med["plain"]
    b = "1. pipeline vs LCEL"
    rows = [
        Row(
            b,
            "chainkit Pipeline, median per request",
            us(med["chainkit"]),
            "µs",
            "< 50 µs",
            us(med["chainkit"]) < 50,
        ),
        Row(b, "LangChain LCEL RunnableSequence, median", us(med["lcel"]), "µs"),
        Row(b, "LCEL median / chainkit median", ratio, "x", ">= 20x", ratio >= 20),
        Row(b, "same work as plain calls (no framework), median", us(med["plain"]), "µs"),
        Row(b, "chainkit own overhead (median - plain)", us(own_chainkit), "µs"),
        Row(b, "LCEL own overhead (median - plain)", us(own_lcel), "µs"),
        Row(b, "LCEL overhead / chainkit overhead", own_lcel / own_chainkit, "x"),
        Row(b, "chainkit p99", us(p99["chainkit"]), "µs"),
        Row(b, "LCEL p99", us(p99["lcel"]), "µs"),
        Row(b, "best possible ratio (LCEL / plain)", med["lcel"] / med["plain"], "x"),
    ]
    details = {
        "samples_per_variant": rounds * block,
        "rounds": rounds,
        "block": block,
        "same_answers": same,
        "chainkit_entries_per_request": stages,
    }
    return rows, details


# -- benchmark 2 ---------------------------------------------------------------------------------


def bench_short_circuit(flow: Flow, *, rounds: int, block: int, sqlite_block: int) -> list[Row]:
    """p50 and p99 of a canned reply and a precomputed hit, ledger write included."""
    pipeline = flow.pipeline
    perf = time.perf_counter_ns
    cases = {"canned": CANNED_TEXT, "precomputed": PRECOMPUTED_TEXT}
    check = Ledger()
    for stage, text in cases.items():
        got = pipeline.run(Request(text), check).stage
        if got != stage:
            raise SystemExit(f"short-circuit case {stage!r} was answered by {got!r}")

    def make_memory() -> Ledger:
        return Ledger()

    db_dir = Path(tempfile.mkdtemp(prefix="ledger-", dir=SCRATCH))
    counter = iter(range(10**9))

    def make_sqlite() -> Ledger:
        return SQLiteLedger(db_dir / f"l{next(counter)}.db")

    ledgers: dict[str, tuple[Callable[[], Ledger], int]] = {
        "in-memory ledger": (make_memory, block),
        "SQLite ledger (committed before the answer returns)": (make_sqlite, sqlite_block),
    }
    times: dict[tuple[str, str], list[int]] = {(s, k): [] for s in cases for k in ledgers}

    def run(stage: str, kind: str, n: int, out: list[int]) -> None:
        make, _ = ledgers[kind]
        ledger = make()
        text = cases[stage]
        for _ in range(n):
            t0 = perf()
            pipeline.run(Request(text), ledger)
            out.append(perf() - t0)
        if isinstance(ledger, SQLiteLedger):
            ledger.close()

    for key in times:
        run(*key, 200, [])  # warm-up
    keys = list(times)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            run(*key, ledgers[key[1]][1], times[key])
    shutil.rmtree(db_dir, ignore_errors=True)
    rows = []
    for (stage, kind), t in times.items():
        t.sort()
        p50, p99 = us(percentile(t, 50)), us(percentile(t, 99))
        b = "2. short-circuit"
        rows.append(Row(b, f"{stage} hit, {kind}: p50", p50, "µs"))
        rows.append(Row(b, f"{stage} hit, {kind}: p99", p99, "µs", "< 1 ms", p99 < 1000))
    return rows


# -- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[Row]:
    """Run benchmarks 1 and 2 (or profile chainkit's side of them) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="catalogue id of both models")
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="cProfile chainkit's side")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    flow = build_flow(args.model)
    try:
        if args.profile:
            run_profiles(flow)
            return []
        rounds, block = (6, 100) if args.quick else (30, 200)
        print(f"models: OfflineModel({args.model!r}) for summarise and generate, zero latency")
        rows1, details = bench_pipeline_vs_lcel(flow, rounds=rounds, block=block)
        print_rows(
            f"1. pipeline vs LCEL ({details['samples_per_variant']} requests each, interleaved; "
            f"same answers: {details['same_answers']})",
            rows1,
        )
        rows2 = bench_short_circuit(
            flow, rounds=rounds // 2 or 1, block=2 * block, sqlite_block=block
        )
        print_rows("2. short-circuit answers", rows2)
        write_json(args.json, rows1 + rows2, {"details": {**details, "model": args.model}})
        return rows1 + rows2
    finally:
        flow.close()


def run_profiles(flow: Flow) -> None:
    """Profile the chainkit side of benchmarks 1 and 2: per stage, per operation, cProfile."""
    pipeline = flow.pipeline
    n = 20_000

    def full() -> None:
        ledger = Ledger()
        for _ in range(n):
            pipeline.run(Request(MISS_TEXT, document=DOCUMENT), ledger)

    def short() -> None:
        ledger = Ledger()
        for _ in range(n // 2):
            pipeline.run(Request(CANNED_TEXT), ledger)
            pipeline.run(Request(PRECOMPUTED_TEXT), ledger)

    full()
    stage_breakdown(flow)
    operation_costs(flow)
    gc.collect()
    profile(full, f"benchmark 1, chainkit pipeline, {n} full-flow requests", per=n)
    profile(short, f"benchmark 2, {n // 2} canned + {n // 2} precomputed answers", per=n)


class _Timed:
    """A stage wrapper that keeps the wall time of every call (profiling only)."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self.name = stage.name
        self.times: list[int] = []

    def run(self, request: Request, ledger: Ledger) -> Any:
        """Run the wrapped stage, timing it."""
        t0 = time.perf_counter_ns()
        out = self.stage.run(request, ledger)
        self.times.append(time.perf_counter_ns() - t0)
        return out


def _median_ns(fn: Callable[[], object], n: int = 20_000) -> float:
    """Median wall time of one call of ``fn``, measured in batches of 100 calls."""
    batches = []
    perf = time.perf_counter_ns
    for _ in range(n // 100):
        t0 = perf()
        for _ in range(100):
            fn()
        batches.append((perf() - t0) / 100)
    batches.sort()
    return batches[len(batches) // 2]


def stage_breakdown(flow: Flow) -> None:
    """Median time per chainkit stage against the same step done as a plain call."""
    import copy

    timed = copy.copy(flow.pipeline)
    wrappers = [_Timed(s) for s in flow.pipeline.stages]
    timed.stages = tuple(wrappers)  # type: ignore[assignment]
    ledger = Ledger()
    for _ in range(20_000):
        timed.run(Request(MISS_TEXT, document=DOCUMENT), ledger)
    for w in wrappers:
        w.times.clear()
    for _ in range(20_000):
        timed.run(Request(MISS_TEXT, document=DOCUMENT), ledger)
    s = flow.pipeline.stages
    summary_system = s[3].instruction.format(max_tokens=s[3].max_tokens)  # type: ignore[attr-defined]
    summary = flow.summariser.complete(Prompt(summary_system, DOCUMENT), max_tokens=200).text
    generate_prompt = Prompt(s[4].system, "Summary:\n" + summary + "\n\n" + MISS_TEXT)  # type: ignore[attr-defined]
    plain = {
        "intent_scan": lambda: flow.classifier.predict(MISS_TEXT),
        "canned": lambda: CANNED_REPLIES.get("track_order"),
        "precomputed": lambda: flow.store.get("track_order"),
        "summarise": lambda: flow.summariser.complete(
            Prompt(summary_system, DOCUMENT), max_tokens=200
        ),
        "generate": lambda: flow.generator.complete(generate_prompt, max_tokens=300),
    }
    request = _median_ns(lambda: Request(MISS_TEXT, document=DOCUMENT))
    for text in (CANNED_TEXT, PRECOMPUTED_TEXT):
        short = copy.copy(flow.pipeline)
        parts = [_Timed(st) for st in flow.pipeline.stages]
        short.stages = tuple(parts)  # type: ignore[assignment]
        for i in range(40_000):
            if i == 20_000:
                for w in parts:
                    w.times.clear()
            short.run(Request(text), ledger if i % 1000 else Ledger())
        ran = [w for w in parts if w.times]
        shares = ", ".join(f"{w.name} {percentile(sorted(w.times), 50) / 1000:.1f}" for w in ran)
        print(f"\n== per stage, {text!r} (answered by {ran[-1].name}), median µs: {shares}")
    print(
        "\n== per stage, full flow: median wall time in chainkit vs the same step as a plain call"
    )
    print(f"  {'stage':<14}{'chainkit µs':>12}{'plain µs':>10}{'overhead µs':>13}")
    total = over = 0.0
    for w in wrappers:
        w.times.sort()
        mine = percentile(w.times, 50) / 1000
        base = _median_ns(plain[w.name]) / 1000
        total += mine
        over += mine - base
        print(f"  {w.name:<14}{mine:>12.1f}{base:>10.1f}{mine - base:>13.1f}")
    print(f"  {'Request()':<14}{request / 1000:>12.1f}{'':>10}{request / 1000:>13.1f}")
    print(f"  {'sum':<14}{total + request / 1000:>12.1f}{'':>10}{over + request / 1000:>13.1f}")


def operation_costs(flow: Flow) -> None:
    """What single chainkit operations on the hot path cost, each alone in a tight loop."""
    import dataclasses
    from decimal import Decimal

    from chainkit import Catalogue, Entry, PromptClassifier, Usage

    catalogue = Catalogue.load()
    model_id = flow.generator.model_id
    card = catalogue.card(model_id)
    price = card.price()
    usage = Usage(120, 300)
    request = Request(MISS_TEXT, document=DOCUMENT, intent="track_order", confidence=1.0)
    stages = flow.pipeline.stages
    summarise, generate = stages[3], stages[4]
    ledger = Ledger()
    prompt = generate.prompt(request)  # type: ignore[attr-defined]
    tags = {"tenant": "t01"}

    @dataclasses.dataclass(slots=True)
    class MutableEntry:  # Entry's fields, not frozen: what freezing costs per construction
        request_id: str
        stage: str
        outcome: str
        cost: Decimal | None
        model: str | None = None
        usage: Usage | None = None
        avoided_cost: Decimal | None = Decimal(0)
        estimated: bool = False
        latency_s: float = 0.0
        attempts: int = 0
        intent: str | None = None
        tags: Any = dataclasses.field(default_factory=dict)
        phase: str = "serve"
        time: Any = None

    @dataclasses.dataclass(frozen=True, slots=True)
    class PlainUsage:  # Usage without __post_init__ validation
        input_tokens: int = 0
        output_tokens: int = 0
        cache_read_tokens: int = 0
        cache_write_tokens: int = 0

    zero = Decimal(0)
    # How often a request pays each: see the calls-per-request column of the profiles below.
    ops: dict[str, Callable[[], object]] = {
        "isinstance(KeywordClassifier(), PromptClassifier) (Protocol)": lambda: isinstance(
            flow.classifier, PromptClassifier
        ),
        "  vs a plain class check": lambda: type(flow.classifier) is KeywordClassifier,
        "Entry(...) (frozen, slots)": lambda: Entry(
            request_id=request.id, stage="canned", outcome="passed", cost=zero, tags=tags
        ),
        "  vs the same fields, not frozen": lambda: MutableEntry(
            request_id=request.id, stage="canned", outcome="passed", cost=zero, tags=tags
        ),
        "dataclasses.replace(request, intent=, confidence=)": lambda: dataclasses.replace(
            request, intent="track_order", confidence=1.0
        ),
        "  vs Request(...) with every field": lambda: Request(
            request.text,
            request.id,
            request.tags,
            request.document,
            "track_order",
            1.0,
            request.slots,
            request.facts,
            request.summary,
        ),
        "Summarise.room (2 formats, 2 token counts)": lambda: summarise.room,  # type: ignore[attr-defined]
        "Catalogue.card(id)": lambda: catalogue.card(model_id),
        "ModelCard.price()": card.price,
        "Price.cost(usage)": lambda: price.cost(usage, model_id=model_id),
        "Catalogue.cost(id, usage)": lambda: catalogue.cost(model_id, usage),
        "Usage(120, 300) with validation": lambda: Usage(120, 300),
        "  vs without __post_init__": lambda: PlainUsage(120, 300),
        "Ledger.reserve(cost, tags) with no budgets": lambda: ledger.reserve(
            zero, tags, stage="generate"
        ),
        "Generate.prompt(request)": lambda: generate.prompt(request),  # type: ignore[attr-defined]
        "OfflineModel.estimate(prompt)": lambda: flow.generator.estimate(prompt, max_tokens=300),
        "Generate.estimate_cost(request)": lambda: generate.estimate_cost(request),  # type: ignore[attr-defined]
        "Ledger.record(Entry(...)) (no budgets)": lambda: ledger.record(
            Entry(request_id="r", stage="s", outcome="passed", cost=zero)
        ),
        "count_tokens(short sentence, model id) (offline model)": lambda: _count(
            MISS_TEXT, model_id
        ),
    }
    print("\n== single operations on the hot path (median of batches of 100 calls)")
    for label, fn in ops.items():
        print(f"  {label:<62}{_median_ns(fn) / 1000:>8.2f} µs")
    sys.stdout.flush()


def _count(text: str, model_id: str) -> int:
    from chainkit.tokens import count_tokens

    return count_tokens(text, model_id)


if __name__ == "__main__":
    main()
