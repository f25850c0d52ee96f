"""One budget, many spenders: threads, processes and a store every one of them shares.

Whatever the prompts (Japanese, Chinese, emoji, JSON) and however many spend at once, recorded
spend never exceeds a budget, and every refusal comes before the provider is called.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import (
    Budget,
    BudgetExceeded,
    Catalogue,
    Completion,
    Generate,
    Ledger,
    PostgresLedger,
    Prompt,
    Request,
    SQLiteLedger,
    Usage,
)
from chainkit.stages.calling import input_bound

SEED = Catalogue.load("seed-2024")
MODEL = "generic.intent"  # $3 per 1M tokens in and out


@dataclass
class Honest:
    """A model whose reported usage is physically possible, at random: input at most the byte
    bound, output at most ``max_tokens``. It remembers which requests reached it."""

    seed: int = 0
    model_id: str = MODEL
    region: str | None = None
    tier: str = "on_demand"
    seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        request_id = (metadata or {})["request_id"]
        rng = random.Random(f"{self.seed}:{request_id}")
        most, _ = input_bound(self, prompt)
        with self.lock:
            self.seen.append(request_id)
        usage = Usage(rng.randint(1, most), rng.randint(0, max_tokens))
        return Completion(text="ok", usage=usage, model_id=self.model_id)

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(len(prompt.user) // 4, max_tokens)


TEXTS = st.one_of(
    st.text(min_size=1, max_size=200),
    st.sampled_from(
        [
            "注文10234はどこですか？配送状況を教えてください。",  # noqa: RUF001
            "我的订单什么时候到？请帮我查一下物流。",  # noqa: RUF001
            "🚚📦🙏🏽👩‍👩‍👧‍👦" * 5,
            '{"order": 10234, "items": [{"sku": "A-1", "qty": 2}], "note": "leave at door"}',
            "Where is my order 10234? It was due on Monday.",
        ]
    ),
).filter(lambda t: t.strip() and not any("\ud800" <= c <= "\udfff" for c in t))


def run_threads(stage: Generate, ledger: Any, texts: list[str], threads: int) -> list[str]:
    """Send every text through ``stage`` from ``threads`` threads; return refused request ids."""
    refused: list[str] = []
    lock = threading.Lock()

    def work(part: list[tuple[int, str]]) -> None:
        for i, text in part:
            try:
                stage.run(Request(text, id=f"q{i}"), ledger)
            except BudgetExceeded:
                with lock:
                    refused.append(f"q{i}")

    items = list(enumerate(texts))
    workers = [threading.Thread(target=work, args=(items[n::threads],)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return refused


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(TEXTS, min_size=1, max_size=40),
    limit=st.decimals(min_value="0.000001", max_value="0.02", places=6),
    threads=st.integers(1, 8),
    max_tokens=st.integers(1, 400),
    seed=st.integers(0, 1000),
    durable=st.booleans(),
)
def test_spend_never_exceeds_a_budget_and_refusals_come_before_the_call(
    texts: list[str], limit: Decimal, threads: int, max_tokens: int, seed: int, durable: bool
) -> None:
    import tempfile

    model = Honest(seed)
    stage = Generate(model=model, catalogue=SEED, max_tokens=max_tokens, timeout_s=None)
    with tempfile.TemporaryDirectory() as directory:
        ledger: Any = (
            SQLiteLedger(Path(directory) / "b.db", budgets=[Budget(limit)])
            if durable
            else Ledger([Budget(limit)])
        )
        refused = run_threads(stage, ledger, texts, threads)
        entries = ledger.entries()
        ledger.close()
    spent = sum((e.cost or Decimal(0) for e in entries), Decimal(0))
    assert spent <= limit
    assert not set(refused) & set(model.seen)  # a refused call never reached the model
    answered = [e for e in entries if e.outcome == "answered"]
    assert sorted(e.request_id for e in answered) == sorted(model.seen)
    assert all(e.cost is not None and e.bound is not None and e.cost <= e.bound for e in answered)


# -- several processes, one store ----------------------------------------------------------------


def _spender(kind: str, where: str, schema: str, n: int, calls: Any, refusals: Any) -> None:
    ledger: Any = SQLiteLedger(where) if kind == "sqlite" else PostgresLedger(where, schema=schema)
    model = Honest(seed=n)
    stage = Generate(model=model, catalogue=SEED, max_tokens=200, timeout_s=None)
    texts = [f"process {n} question {i}: where is my parcel? 配送 🚚" for i in range(40)]

    def work(t: int) -> None:
        for i, text in enumerate(texts[t::8]):
            try:
                stage.run(Request(text, id=f"p{n}-t{t}-{i}"), ledger)
            except BudgetExceeded:
                with refusals.get_lock():
                    refusals.value += 1

    workers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with calls.get_lock():
        calls.value += len(model.seen)
    ledger.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_four_processes_of_eight_threads_share_one_budget(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        where, schema = str(tmp_path / "shared.db"), ""
        first: Any = SQLiteLedger(where, budgets=[Budget("0.05", name="shared")])
    else:
        where, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        first = PostgresLedger(where, schema=schema, budgets=[Budget("0.05", name="shared")])
    first.close()
    ctx = multiprocessing.get_context("spawn")
    calls, refusals = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_spender, args=(kind, where, schema, n, calls, refusals))
        for n in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * 4
    ledger: Any = SQLiteLedger(where) if kind == "sqlite" else PostgresLedger(where, schema=schema)
    entries = ledger.entries()
    spent = sum((e.cost or Decimal(0) for e in entries), Decimal(0))
    answered = [e for e in entries if e.outcome == "answered"]
    assert spent <= Decimal("0.05")
    assert spent == ledger.spent("shared")
    assert len(answered) == calls.value  # every call made is one entry, in every process
    assert sum(1 for e in entries if e.outcome == "refused") == refusals.value > 0
    ledger.close()


def _holder(kind: str, where: str, schema: str) -> None:
    ledger: Any = SQLiteLedger(where) if kind == "sqlite" else PostgresLedger(where, schema=schema)
    ledger.reserve(Decimal("0.03"), {}, stage="generate", model=MODEL, request_id="doomed",
                   lease_s=2)  # fmt: skip
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_process_killed_while_holding_leaves_a_hold_that_expires_at_its_bound(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import time

    if kind == "sqlite":
        where, schema = str(tmp_path / "held.db"), ""
        ledger: Any = SQLiteLedger(where, budgets=[Budget("0.05")])
    else:
        where, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        ledger = PostgresLedger(where, schema=schema, budgets=[Budget("0.05")])
    child = multiprocessing.get_context("spawn").Process(target=_holder, args=(kind, where, schema))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(BudgetExceeded):  # its hold counts while its lease lasts
        ledger.reserve(Decimal("0.03"), {}, stage="generate")
    time.sleep(2.1)
    # The lease is over: the hold becomes an entry of unknown cost at $0.03, and others go on.
    ledger.reserve(Decimal("0.02"), {}, stage="generate")
    stand_in = next(e for e in ledger.entries() if e.request_id == "doomed")
    assert (stand_in.cost, stand_in.bound, stand_in.flags) == (
        None, Decimal("0.03"), ("lease_expired",),
    )  # fmt: skip
    assert ledger.spent("ledger") == Decimal("0.03")
    ledger.close()
