"""Fault injection: whatever a model does, every call it received is in the ledger exactly once.

A model misbehaves on a seeded random share of calls (exceptions of every kind, malformed replies,
hangs past the deadline, throttling) and remembers each call it was sent. Runs go through
``Pipeline.run``, ``run_batch`` with threads, and an ``SQLiteLedger``; the test then checks that
the calls the model saw and the model entries in the ledger match one for one, and that nothing
but chainkit errors came out.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import (
    BadResponse,
    Catalogue,
    ChainkitError,
    Completion,
    Generate,
    IntentScan,
    Ledger,
    LLMClassifier,
    Pipeline,
    Prompt,
    ProviderError,
    Request,
    SQLiteLedger,
    Throttled,
    Usage,
)
from chainkit.errors import Timeout

SEED = Catalogue.load("seed-2024")

FAULTS = [
    "ok",
    "type_error",
    "value_error",
    "attribute_error",
    "runtime_error",
    "throttled",
    "provider_error",
    "bad_response",
    "returns_none",
    "text_none",
    "usage_none",
    "usage_dict",
    "negative_usage",
    "empty_model_id",
    "hang",
]


@dataclass
class FaultyModel:
    """A model that fails in a seeded random way on a share of calls and remembers every call."""

    model_id: str
    seed: int
    share: float = 0.5
    hang_s: float = 0.3
    region: str | None = None
    tier: str = "on_demand"
    calls: list[tuple[str, str]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, key: tuple[str, str]) -> str:
        rng = random.Random(f"{self.seed}:{key}")
        return rng.choice(FAULTS[1:]) if rng.random() < self.share else "ok"

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        meta = dict(metadata or {})
        key = (meta["request_id"], meta["stage"])
        fault = self._fault(key)
        with self._lock:
            self.calls.append(key)
            self.faults[fault] += 1
        ok = Completion(text="track_order", usage=Usage(40, 5), model_id=self.model_id)
        if fault == "ok":
            return ok
        if fault == "type_error":
            raise TypeError("unsupported operand type(s)")
        if fault == "value_error":
            raise ValueError("invalid literal for int()")
        if fault == "attribute_error":
            raise AttributeError("'NoneType' object has no attribute 'text'")
        if fault == "runtime_error":
            raise RuntimeError("socket closed")
        if fault == "throttled":
            raise Throttled("slow down", code="ThrottlingException", model_id=self.model_id)
        if fault == "provider_error":
            raise ProviderError("server fault", code="InternalServerException")
        if fault == "bad_response":
            raise BadResponse("no usage", code="MissingUsage")
        if fault == "returns_none":
            return None  # type: ignore[return-value]
        if fault == "text_none":
            return Completion(text=None, usage=Usage(1, 1), model_id=self.model_id)  # type: ignore[arg-type]
        if fault == "usage_none":
            return Completion(text="x", usage=None, model_id=self.model_id)  # type: ignore[arg-type]
        if fault == "usage_dict":
            return Completion(text="x", usage={"inputTokens": 3}, model_id=self.model_id)  # type: ignore[arg-type]
        if fault == "negative_usage":
            return Completion(text="x", usage=Usage(-1, 5), model_id=self.model_id)
        if fault == "empty_model_id":
            return Completion(text="x", usage=Usage(1, 1), model_id="")
        assert fault == "hang"
        time.sleep(self.hang_s)
        return ok

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(60, max_tokens)


def pipeline(seed: int) -> tuple[Pipeline, FaultyModel, FaultyModel]:
    small = FaultyModel(model_id="generic.intent", seed=seed)
    big = FaultyModel(model_id="generic.powerful", seed=seed + 1)
    bot = Pipeline(
        [
            IntentScan(
                classifier=LLMClassifier(small, ["track_order"]), catalogue=SEED, timeout_s=0.05
            ),
            Generate(model=big, catalogue=SEED, max_tokens=20, timeout_s=0.05),
        ]
    )
    return bot, small, big


def check_one_entry_per_call(ledger: Ledger, *models: FaultyModel) -> None:
    entries = ledger.entries()
    assert len({e.id for e in entries}) == len(entries), "an entry id was stored twice"
    for model in models:
        made = Counter(model.calls)
        recorded = Counter(
            (e.request_id, e.stage)
            for e in entries
            if e.model == model.model_id and e.outcome != "refused"
        )
        assert recorded == made, f"{model.model_id}: calls and entries differ"
        assert sum(made.values()) == len(model.calls)
    for e in entries:
        if e.outcome == "failed" and e.note.startswith(("Throttled",)):
            assert e.cost == Decimal(0)  # refused for rate before it ran: not billed
        elif e.outcome == "failed":
            assert e.cost is None  # may have been billed: unknown, never $0
            assert e.bound is not None and e.bound > 0
        if "timeout" in e.flags:
            assert e.outcome == "failed" and e.cost is None


def requests(n: int, seed: int) -> list[Request]:
    return [Request(f"where is order {i}? 注文 🚚", id=f"s{seed}-r{i}") for i in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_single_runs_record_every_call_once(seed: int) -> None:
    bot, small, big = pipeline(seed)
    ledger = Ledger()
    errors: list[BaseException] = []
    for request in requests(60, seed):
        try:
            bot.run(request, ledger)
        except Exception as exc:
            errors.append(exc)
    assert all(isinstance(e, ChainkitError) for e in errors), errors
    assert any(isinstance(e, Timeout) for e in errors) or not big.faults["hang"]
    check_one_entry_per_call(ledger, small, big)
    assert sum(small.faults.values()) + sum(big.faults.values()) == len(small.calls) + len(
        big.calls
    )


@pytest.mark.parametrize("seed", range(3))
def test_batches_on_threads_into_sqlite_record_every_call_once(tmp_path: Path, seed: int) -> None:
    bot, small, big = pipeline(100 + seed)
    with SQLiteLedger(tmp_path / "faults.db") as ledger:
        outcomes = bot.run_batch(requests(120, seed), ledger, concurrency=8, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors, "the seeded faults should have failed some requests"
        assert all(isinstance(e, ChainkitError) for e in errors)
        check_one_entry_per_call(ledger, small, big)
    with SQLiteLedger(tmp_path / "faults.db") as reopened:
        check_one_entry_per_call(reopened, small, big)


def test_every_fault_kind_was_exercised() -> None:
    seen: Counter[str] = Counter()
    for seed in range(4):
        bot, small, big = pipeline(seed)
        ledger = Ledger()
        for request in requests(60, seed):
            with contextlib.suppress(ChainkitError):
                bot.run(request, ledger)
        seen += small.faults + big.faults
    assert set(seen) == set(FAULTS)


def test_malformed_replies_are_bad_responses_with_cost_unknown() -> None:
    for fault in ["returns_none", "text_none", "usage_none", "usage_dict", "empty_model_id"]:
        model = FaultyModel(model_id="generic.powerful", seed=0)
        model._fault = lambda key, fault=fault: fault  # type: ignore[method-assign]
        ledger = Ledger()
        stage = Generate(model=model, catalogue=SEED, max_tokens=20)
        with pytest.raises(BadResponse):
            stage.run(Request("hi", id="r1"), ledger)
        [entry] = ledger.entries()
        assert (entry.outcome, entry.cost) == ("failed", None)
        # The bound: "hi" and Generate's system prompt, one token per byte plus 32 per message
        # and 32 per call, and 20 output tokens, at $60 per 1M.
        prompt = stage.prompt(Request("hi"))
        size = len(prompt.system.encode()) + len(prompt.user.encode()) + 2 * 32 + 32
        assert entry.bound == Decimal(size + 20) * 60 / 1_000_000


def test_a_bug_in_the_stages_own_code_still_records_the_paid_call_first() -> None:
    # The user's parse raises its own exception: it escapes, but the paid call is recorded.
    class Exploding(LLMClassifier):
        def parse(self, reply: str):  # type: ignore[no-untyped-def]
            raise KeyError("my bug")

    model = FaultyModel(model_id="generic.intent", seed=0, share=0.0)
    scan = IntentScan(classifier=Exploding(model, ["a"]), catalogue=SEED)
    ledger = Ledger()
    with pytest.raises(KeyError, match="my bug"):
        scan.run(Request("hi", id="r1"), ledger)
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost) == ("failed", Decimal("0.000135"))  # 45 tokens x $3/1M
