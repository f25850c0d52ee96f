"""Probe for issue #9 (ledger integrity under faults): each measured defect, re-run on this code.

One scenario per bullet of the issue's "Measured" list, set up as the issue describes where that
can be done offline; every figure is measured when the script runs, never written in. Each row
gives the scenario, the figure, the value now, what the issue measured before and the target::

    .venv/bin/python benchmarks/probe_integrity.py [--format table|markdown|json|csv]

Scaled where the original would take minutes: the hang scenario uses 3 s hangs and a 1 s stage
deadline (the issue: 15 s hangs, no deadline). ``Report.build`` on a 1M-entry ledger is not
re-measured here: see ``benchmarks/bench_ledger.py``. Scratch files go to ``/tmp``. Figures marked
"timing" vary from run to run; every other figure is deterministic (seeded).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import decimal
import hashlib
import http.server
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from chainkit import (
    Budget,
    Catalogue,
    ChainkitError,
    Completion,
    ConfigError,
    Entry,
    Generate,
    Ledger,
    Pipeline,
    Prompt,
    Request,
    ScriptedModel,
    SQLiteLedger,
    Usage,
)
from chainkit.errors import LedgerError, Timeout

ROOT = Path(__file__).resolve().parents[1]
SEED = Catalogue.load("seed-2024")
POWERFUL = "generic.powerful"  # seed-2024: $30 in / $60 out per 1M tokens
SMALL = "generic.intent"


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


# -- helpers ---------------------------------------------------------------------------------------


def exception_names(errors: list[BaseException]) -> str:
    counts = Counter(type(e).__name__ for e in errors)
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"


def held(ledger: Ledger) -> Decimal:
    return sum((s.held for s in ledger.status()), Decimal(0))


def ok_reply(model_id: str = POWERFUL) -> Completion:
    return Completion(text="ok", usage=Usage(40, 5), model_id=model_id)


@dataclass
class Counted:
    """A model whose replies ``make(request_id)`` builds (or raises); it counts what it is sent."""

    make: Callable[[str], Any]
    model_id: str = POWERFUL
    region: str | None = None
    tier: str = "on_demand"
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """Note the call, then reply or raise as ``make`` says."""
        request_id = (metadata or {}).get("request_id", "?")
        with self.lock:
            self.calls.append(request_id)
        reply = self.make(request_id)
        if isinstance(reply, BaseException):
            raise reply
        return reply  # type: ignore[no-any-return]

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Sixty input tokens and the whole output budget."""
        return Usage(60, max_tokens)


def one_per_call(ledger: Ledger, model: Counted) -> tuple[int, int, int, int]:
    """(calls, entries of the model's calls, calls without an entry, entries without a call)."""
    made = Counter(model.calls)
    recorded = Counter(
        e.request_id
        for e in ledger.entries()
        if e.model == model.model_id and e.outcome != "refused"
    )
    return (
        sum(made.values()),
        sum(recorded.values()),
        sum((made - recorded).values()),
        sum((recorded - made).values()),
    )


# -- 1. malformed replies and raising models -------------------------------------------------------

FAULTS = (
    "type_error",
    "value_error",
    "attribute_error",
    "returns_none",
    "text_none",
    "usage_none",
    "usage_dict",
    "usage_negative",
    "model_id_empty",
)


def faulty(seed: int, share: float) -> Callable[[str], Any]:
    def make(request_id: str) -> Any:
        rng = random.Random(f"{seed}:{request_id}")
        fault = rng.choice(FAULTS) if rng.random() < share else "ok"
        if fault == "ok":
            return ok_reply()
        if fault == "type_error":
            return TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
        if fault == "value_error":
            return ValueError("invalid literal for int() with base 10: 'n/a'")
        if fault == "attribute_error":
            return AttributeError("'NoneType' object has no attribute 'get'")
        if fault == "returns_none":
            return None
        if fault == "text_none":
            return Completion(text=None, usage=Usage(1, 1), model_id=POWERFUL)  # type: ignore[arg-type]
        if fault == "usage_none":
            return Completion(text="x", usage=None, model_id=POWERFUL)  # type: ignore[arg-type]
        if fault == "usage_dict":
            return Completion(text="x", usage={"inputTokens": 3}, model_id=POWERFUL)  # type: ignore[arg-type]
        if fault == "usage_negative":
            return Completion(text="x", usage=Usage(-1, 5), model_id=POWERFUL)  # raises here
        return Completion(text="x", usage=Usage(1, 1), model_id="")

    return make


def scenario_faults(scratch: Path) -> list[Row]:
    rows = []
    for how in ("Pipeline.run, Ledger", "run_batch x8, SQLiteLedger"):
        model = Counted(make=faulty(9, 0.3))
        bot = Pipeline([Generate(model=model, catalogue=SEED, max_tokens=20)])
        requests = [Request(f"where is order {i}? 注文 🚚", id=f"f{i}") for i in range(1000)]
        errors: list[BaseException] = []
        if how.startswith("Pipeline.run"):
            ledger: Ledger = Ledger([Budget(1000)])
            for request in requests:
                try:
                    bot.run(request, ledger)
                except Exception as exc:
                    errors.append(exc)
            left = held(ledger)
            counted = one_per_call(ledger, model)
        else:
            path = scratch / "faults.db"
            ledger = SQLiteLedger(path, budgets=[Budget(1000)])
            outcomes = bot.run_batch(requests, ledger, concurrency=8, return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            ledger.close()
            with SQLiteLedger(path) as reopened:  # what the file holds
                left = held(reopened)
                counted = one_per_call(reopened, model)
        calls, entries, missing, extra = counted
        raw = [e for e in errors if not isinstance(e, ChainkitError)]
        rows.append(
            Row(
                f"1 malformed/raising model, 1,000 calls, 30% faulty; {how}",
                {
                    "calls": calls,
                    "entries": entries,
                    "calls w/o entry": missing,
                    "doubles": extra,
                    "held after $": left,
                    "non-chainkit exc": len(raw),
                    "raised": exception_names(errors),
                },
                "7-9% of faulty calls w/o entry, holds kept; raw TypeError/ValueError/"
                "AttributeError escaped",
                "= calls, 0, 0, $0, 0",
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


class LaxUsage(Usage):
    """A ``Usage`` subclass that skips validation (a provider SDK's own type, say)."""

    def __post_init__(self) -> None:
        """Accept anything."""


def forged(kind: str) -> Any:
    if kind == "Usage subclass, input -1":
        return Completion(text="x", usage=LaxUsage(-1, 5), model_id=POWERFUL)
    usage = Usage(1, 1)
    value = -1 if kind == "frozen Usage set to input -1" else 1.5
    object.__setattr__(usage, "input_tokens", value)  # past the validating constructor
    return Completion(text="x", usage=usage, model_id=POWERFUL)


def scenario_forged_usage(scratch: Path) -> list[Row]:
    """Usage objects that got past ``Usage``'s checks: the same promise, one call each."""
    rows = []
    kinds = (
        "frozen Usage set to input -1",
        "frozen Usage set to input 1.5",
        "Usage subclass, input -1",
    )
    for kind in kinds:
        figures: dict[str, Any] = {}
        for store in ("Ledger", "SQLite"):
            model = Counted(make=lambda rid, kind=kind: forged(kind))
            path = scratch / f"forged-{len(rows)}.db"
            clock = Clock(datetime.now(UTC))
            ledger: Ledger = (
                Ledger([Budget(100)], clock=clock)
                if store == "Ledger"
                else SQLiteLedger(path, budgets=[Budget(100)], clock=clock)
            )
            errors: list[BaseException] = []
            try:
                Generate(model=model, catalogue=SEED, max_tokens=20).run(
                    Request("hi", id="r1"), ledger
                )
            except Exception as exc:
                errors.append(exc)
            calls, left = len(model.calls), held(ledger)
            try:
                _, entries, _, _ = one_per_call(ledger, model)
                counts = f"{entries}/{calls} entries"
                if left:  # the hold's lease (deadline + 60 s) ends: it becomes an entry
                    clock.now += timedelta(minutes=10)
                    ledger.status()
                    _, entries, _, _ = one_per_call(ledger, model)
                    counts += f" ({entries}/{calls} after the hold's lease)"
            except Exception as exc:
                counts = f"entries() raises {type(exc).__name__}"
            with contextlib.suppress(Exception):
                ledger.close()
            raised = exception_names(errors)
            figures[store] = f"{counts}, held ${left}, raised {raised}"
        rows.append(
            Row(
                f"1b malformed usage past Usage's checks: {kind}",
                figures,
                "not measured",
                "1/1 entries, held $0, a ChainkitError",
            )
        )
    return rows


# -- 2. a lone surrogate ---------------------------------------------------------------------------


def scenario_surrogate(scratch: Path) -> list[Row]:
    bad = "a\ud800"
    model = Counted(make=lambda rid: ok_reply())
    path = scratch / "surrogate.db"
    ledger = SQLiteLedger(path)
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("request id", lambda: Request("hi", id=bad)),
        ("stage name", lambda: Generate(model=model, catalogue=SEED, name=bad)),
        ("pipeline name", lambda: Pipeline([Generate(model=model, catalogue=SEED)], name=bad)),
        ("tag key", lambda: Request("hi", tags={bad: "v"})),
        ("tag value", lambda: Request("hi", tags={"k": bad})),
        ("request intent", lambda: Request("hi", intent=bad)),
    ]
    refused = []
    for what, make in attempts:
        try:
            made = make()
        except ConfigError:
            refused.append(what)
            continue
        with contextlib.suppress(Exception):  # not refused: try to spend with it
            if isinstance(made, Request):
                Generate(model=model, catalogue=SEED).run(made, ledger)
            elif isinstance(made, Pipeline):
                made.run(Request("hi"), ledger)
            else:
                made.run(Request("hi"), ledger)
    calls_before = len(model.calls)

    def later(rid: str) -> Any:
        n = int(rid.rsplit("-", 1)[1])
        return ValueError("reply had a bad byte \udc80") if n % 10 == 0 else ok_reply()

    model.make = later
    bot = Pipeline([Generate(model=model, catalogue=SEED, max_tokens=20)])
    bot.run_batch(
        [Request("where is my order?", id=f"later-{i}") for i in range(100)],
        ledger,
        concurrency=4,
        return_exceptions=True,
    )
    errors = []
    try:
        ledger.totals()
        ledger.close()
    except Exception as exc:
        errors.append(exc)
    with SQLiteLedger(path) as reopened:
        written = sum(1 for e in reopened.entries() if e.request_id.startswith("later-"))
    return [
        Row(
            "2 lone surrogate 'a\\ud800' as request id, stage, pipeline, tag key/value, intent; "
            "then 100 paid calls",
            {
                "refused (ConfigError)": f"{len(refused)} of {len(attempts)}",
                "model calls with it": calls_before,
                "later calls written": f"{written} of 100",
                "totals()/close() errors": exception_names(errors),
            },
            "accepted; later 0 of 100 written; totals()/close() raised",
            "6 of 6, 0, 100 of 100, none",
        )
    ]


# -- 3. a full disk --------------------------------------------------------------------------------


def _max_pages(ledger: SQLiteLedger, pages: int | None) -> None:
    db = ledger._db  # the writer's connection: SQLite's own SQLITE_FULL, as on a full disk
    assert db is not None
    if pages is None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def scenario_disk_full(scratch: Path) -> list[Row]:
    model = ScriptedModel(model_id=POWERFUL, reply="ok", usage=Usage(50, 50))  # $0.006 a call
    stage = Generate(model=model, catalogue=SEED, max_tokens=50)
    ledger = SQLiteLedger(scratch / "full.db")
    _max_pages(ledger, None)  # fill the file to its limit first
    with contextlib.suppress(LedgerError):
        for i in range(200):
            ledger.record(Entry(f"pad{i}", "pad", "passed", cost=Decimal(0), note="y" * 900))
    _max_pages(ledger, 1073741823)
    ledger.flush()
    _max_pages(ledger, None)
    failures = 0
    calls_at_first_failure = None
    for i in range(100):
        try:
            stage.run(Request("where is my order?", id=f"q{i}"), ledger)
        except LedgerError:
            failures += 1
            if calls_at_first_failure is None:
                calls_at_first_failure = len(model.prompts)
    paid = len(model.prompts)
    pending = ledger.pending
    _max_pages(ledger, 1073741823)  # space comes back
    ledger.flush()
    ledger.close()
    with SQLiteLedger(scratch / "full.db") as reopened:
        generated = [e for e in reopened.entries() if e.stage == "generate"]
    ids = Counter(e.id for e in generated)
    per_request = Counter(e.request_id for e in generated)
    cost = sum((e.cost or Decimal(0) for e in generated), Decimal(0))
    expected = Decimal("0.006") * paid
    return [
        Row(
            "3 disk full (SQLITE_FULL) during writes, then space back and flush",
            {
                "paid calls": paid,
                "calls after 1st LedgerError": paid - (calls_at_first_failure or paid),
                "pending while full": pending,
                "entries": len(generated),
                "calls with >1 entry": sum(1 for n in per_request.values() if n > 1)
                + sum(n - 1 for n in ids.values()),
                "cost $": cost,
            },
            "each call written twice (answered + failed): cost doubled",
            f"-, 0, -, = calls, 0, calls x $0.006 = {expected}",
        )
    ]


# -- 4. by_tag with non-ASCII keys -----------------------------------------------------------------


def scenario_by_tag(scratch: Path) -> list[Row]:
    keys = ["région", "日本", "🚚", "tab\there", "back\\slash", "plain"]
    entries = [
        Entry(
            f"r{i}",
            "generate",
            "answered",
            cost=Decimal(i) / 1000,
            model=POWERFUL,
            tags={k: f"v{(i + j) % 3}" for j, k in enumerate(keys)},
        )
        for i in range(30)
    ]
    memory = Ledger()
    memory.record_many(entries)
    wrong, under_none = [], 0
    with SQLiteLedger(scratch / "tags.db") as sql:
        sql.record_many(entries)
        for key in keys:
            got, want = sql.by_tag(key), memory.by_tag(key)
            under_none += got[None].calls if None in got else 0
            if got != want:
                wrong.append(key)
    return [
        Row(
            "4 SQLite by_tag(key), keys région, 日本, 🚚, tab, backslash, plain; vs in-memory",
            {"keys that differ": f"{len(wrong)} of 6", "entries under None": under_none},
            "every non-ASCII/tab/backslash key: all entries under None",
            "0 of 6, 0",
        )
    ]


# -- 5. SIGKILL while recording --------------------------------------------------------------------

KILL_CHILD = r"""
import sys, threading
from chainkit import (Canned, Catalogue, Generate, IntentScan, KeywordClassifier, Pipeline,
                      Request, ScriptedModel, SQLiteLedger, Summarise, Usage)

class Spy(SQLiteLedger):
    # Notes the id of every entry recorded, so that each returned result's entries can be named.
    def __init__(self, *args, **kwargs):
        self.ids, self.ids_lock = {}, threading.Lock()
        super().__init__(*args, **kwargs)
    def _note(self, entries):
        with self.ids_lock:
            for e in entries:
                self.ids.setdefault(e.request_id, {})[e.id] = None
    def record(self, entry, **kwargs):
        super().record(entry, **kwargs)
        self._note([entry])
    def record_many(self, entries):
        entries = list(entries)
        super().record_many(entries)
        self._note(entries)

path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
prices = Catalogue.load("seed-2024")
small = ScriptedModel(model_id="generic.intent", reply="short summary", usage=Usage(30, 5),
                      latency_s=0.003)
big = ScriptedModel(model_id="generic.powerful", reply="ok", usage=Usage(50, 50), latency_s=0.004)
bot = Pipeline([
    IntentScan(classifier=KeywordClassifier({"greeting": ["hi"]})),
    Canned(replies={"greeting": "Hello"}),
    Summarise(model=small, catalogue=prices, max_tokens=20),
    Generate(model=big, catalogue=prices, max_tokens=50),
])
requests = [
    Request("hi" if i % 3 == 0 else f"where is order {i}?", id=f"k{seed}-{i}",
            document=None if i % 2 else f"Order {i} left the warehouse. It is late.")
    for i in range(400)
]
ledger = Spy(path)
for result in bot.stream(requests, ledger, concurrency=4, resume=mode == "resume"):
    rid = result.request.id
    with ledger.ids_lock:
        ids = list(ledger.ids.get(rid, {}))
    print(rid, *ids, flush=True)
ledger.close()
print("done", flush=True)
"""


def run_and_kill(path: Path, mode: str, seed: int, kill_after: int) -> list[list[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(path), mode, str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    while len(lines) < kill_after:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line)
    time.sleep(random.Random(f"{mode}:{seed}").uniform(0, 0.01))  # land anywhere in a write
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    lines += out.splitlines(keepends=True)
    # A line cut short by the kill names no result that was fully reported.
    return [line.split() for line in lines if line.endswith("\n") and line.strip() != "done"]


def scenario_sigkill(scratch: Path) -> list[Row]:
    rows = []
    for mode in ("plain", "resume"):
        rng = random.Random(f"kill:{mode}")
        returned = lost = doubled = bad_files = 0
        ids_returned = 0
        kills = 3
        for attempt in range(kills):
            path = scratch / f"kill-{mode}-{attempt}.db"
            results = run_and_kill(path, mode, attempt, rng.randrange(20, 300))
            returned += len(results)
            db = sqlite3.connect(path)
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                bad_files += 1
            db.close()
            with SQLiteLedger(path) as ledger:
                stored = Counter(e.id for e in ledger.entries())
            doubled += sum(n - 1 for n in stored.values())
            for _rid, *ids in results:
                ids_returned += len(ids)
                lost += sum(1 for i in ids if i not in stored)
        rows.append(
            Row(
                f"5 SIGKILL while recording, {kills} kills at seeded points, {mode}",
                {
                    "results returned (varies)": returned,
                    "their entry ids": ids_returned,
                    "missing": lost,
                    "stored twice": doubled,
                    "integrity_check fails": bad_files,
                },
                "up to 499 paid entries lost (batch_size=500)" if mode == "plain" else "-",
                "-, -, 0, 0, 0",
            )
        )
    return rows


# -- 6. a crash inside a map-reduce Summarise ------------------------------------------------------

CRASH_CHILD = r"""
import os, signal, sys
from chainkit import Budget, Catalogue, Completion, Request, SQLiteLedger, Summarise, Usage
path, kill_at = sys.argv[1], int(sys.argv[2])

class Billing:
    # Bills each call when it answers; the process is killed as call `kill_at` is sent.
    model_id, region, tier = "amazon.titan-text-express-v1", None, "on_demand"  # an 8K window
    keeps_deadline, n = True, 0
    def complete(self, prompt, *, max_tokens, metadata=None, timeout_s=None):
        self.n += 1
        if self.n == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        print("billed", self.n, flush=True)
        return Completion("short summary", Usage(1000, 20), self.model_id)
    def estimate(self, prompt, *, max_tokens):
        return Usage(1000, max_tokens)

ledger = SQLiteLedger(path, budgets=[Budget(100)])
document = "\n\n".join(f"Part {i}. " + "word " * 2000 for i in range(24))  # ~9 chunks of 8K
stage = Summarise(model=Billing(), catalogue=Catalogue.load("seed-2024"), max_tokens=50,
                  timeout_s=1.0)
stage.run(Request("sum up", id="doc1", document=document), ledger)
print("done", flush=True)
"""


def scenario_summarise_crash(scratch: Path) -> list[Row]:
    path = scratch / "crash.db"
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(path), "7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    billed = sum(1 for line in child.stdout.splitlines() if line.startswith("billed"))
    with SQLiteLedger(path) as ledger:
        entries = [e for e in ledger.entries() if e.stage == "summarise"]
        answered = sum(1 for e in entries if e.outcome == "passed")
    # The call in flight held its bound in the file: once its lease (deadline + 60 s) is over,
    # the next look turns the hold into an entry of unknown cost.
    later = datetime.now(UTC) + timedelta(minutes=10)
    with SQLiteLedger(path, clock=lambda: later) as ledger:
        ledger.status()
        expired = [e for e in ledger.entries() if "lease_expired" in e.flags]
    return [
        Row(
            "6 process SIGKILLed inside a map-reduce Summarise, as call 7 is sent",
            {
                "killed": child.returncode == -signal.SIGKILL,
                "billed calls": billed,
                "their entries": answered,
                "call in flight: unknown-cost entries after its lease": len(expired),
                "at bound $": expired[0].bound if expired else "-",
            },
            "6 billed calls, 0 entries",
            "yes, 6, 6, 1, -",
        )
    ]


# -- 7. hangs --------------------------------------------------------------------------------------


def scenario_hangs(scratch: Path) -> list[Row]:
    hang_s, timeout_s, n = 3.0, 1.0, 1000
    hangs = set(random.Random(7).sample(range(n), 10))
    release = threading.Event()

    def make(rid: str) -> Any:
        i = int(rid.rsplit("-", 1)[1])
        if i in hangs:
            release.wait(hang_s)
        return ok_reply()

    rows = []
    for ordered in (False, True):
        model = Counted(make=make)
        bot = Pipeline([Generate(model=model, catalogue=SEED, max_tokens=20, timeout_s=timeout_s)])
        ledger = Ledger()
        requests = [Request(f"q {i}", id=f"h{int(ordered)}-{i}") for i in range(n)]
        t0 = time.perf_counter()
        outcomes = list(
            bot.stream(requests, ledger, concurrency=8, ordered=ordered, return_exceptions=True)
        )
        wall = time.perf_counter() - t0
        timeouts = sum(1 for o in outcomes if isinstance(o, Timeout))
        _, _, missing, _ = one_per_call(ledger, model)
        rows.append(
            Row(
                f"7 10 hangs of {hang_s:.0f} s in {n} requests, timeout_s={timeout_s:.0f}, "
                f"8 slots, stream(ordered={ordered})",
                {"wall s (timing)": wall, "Timeouts": timeouts, "calls w/o entry": missing},
                "150 s (10 hangs of 15 s, no deadline)",
                f"well under {10 * hang_s:.0f} s, 10, 0",
            )
        )
    # An endless hang: the model never answers.
    forever = threading.Event()
    model = Counted(make=lambda rid: (forever.wait(), ok_reply())[1])
    stage = Generate(model=model, catalogue=SEED, max_tokens=20, timeout_s=timeout_s)
    ledger = Ledger()
    t0 = time.perf_counter()
    try:
        stage.run(Request("q", id="endless"), ledger)
        outcome = "answered"
    except Exception as exc:
        outcome = type(exc).__name__
    wall = time.perf_counter() - t0
    forever.set()
    release.set()
    [entry] = ledger.entries()
    rows.append(
        Row(
            f"7b an endless hang, timeout_s={timeout_s:.0f}",
            {
                "returns after s (timing)": wall,
                "raises": outcome,
                "entry": f"{entry.outcome}, cost {entry.cost}",
            },
            "never returns",
            "~1, Timeout, failed, cost None",
        )
    )
    return rows


# -- 8. a Bedrock read timeout retried by botocore -------------------------------------------------


def scenario_read_timeout(scratch: Path) -> list[Row]:
    import boto3
    from botocore.config import Config

    from chainkit.providers.bedrock import BedrockModel

    hits: list[str] = []
    stop = threading.Event()

    class Late(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            """Answer, too late for the client's read timeout."""
            hits.append(self.path)
            stop.wait(1.0)
            with contextlib.suppress(OSError):  # the client gave up: that is the point
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Late)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    figures: dict[str, Any] = {}
    try:
        configs = {
            "default": {},
            "standard x5": {"retries": {"mode": "standard", "max_attempts": 5}},
            "adaptive x5": {"retries": {"mode": "adaptive", "max_attempts": 5}},
        }
        for label, extra in configs.items():
            client = boto3.client(
                "bedrock-runtime",
                region_name="us-east-1",
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                aws_access_key_id="probe",
                aws_secret_access_key="probe",
                config=Config(read_timeout=0.3, connect_timeout=0.3, **extra),
            )
            model = BedrockModel(
                "anthropic.claude-3-haiku-20240307-v1:0",
                client=client,
                count_tokens=False,
                wait_initial=0,
                wait_max=0,
            )
            stage = Generate(model=model, max_tokens=200, timeout_s=5)
            ledger = Ledger()
            before = len(hits)
            try:
                stage.run(Request("hello", id="r1"), ledger)
                outcome = "answered"
            except Exception as exc:
                outcome = type(exc).__name__
            entries = ledger.entries()
            recorded = ", ".join(f"{e.outcome} cost {e.cost}" for e in entries)
            figures[f"{label}: hits"] = len(hits) - before
            figures[f"{label}: result"] = f"{outcome}, {len(entries)} entry ({recorded})"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
    rows = [
        Row(
            "8 Bedrock read timeout (local server answers after 1 s, read_timeout 0.3 s), botocore "
            "retry modes",
            figures,
            "retried by botocore: may be billed twice, recorded once",
            "1 hit, Timeout, 1 entry failed cost None (each mode)",
        )
    ]
    return rows


# -- 9. two processes opening a new ledger at once -------------------------------------------------


def _open_and_record(path: str, barrier: Any, n: int) -> None:
    barrier.wait()
    try:
        with SQLiteLedger(path) as ledger:
            ledger.record(Entry(f"p{n}", "canned", "answered", cost=Decimal("0.001")))
    except BaseException as exc:
        print(f"open failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        os._exit(1)
    os._exit(0)


def scenario_concurrent_opens(scratch: Path) -> list[Row]:
    ctx = multiprocessing.get_context("fork")
    failures = opens = short_files = 0
    for round_ in range(30):
        path = scratch / f"new-{round_}.db"
        barrier = ctx.Barrier(2)
        workers = [
            ctx.Process(target=_open_and_record, args=(str(path), barrier, n)) for n in range(2)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        opens += 2
        failures += sum(1 for w in workers if w.exitcode != 0)
        with SQLiteLedger(path) as ledger:
            short_files += len(ledger) != 2
    return [
        Row(
            "9 two processes opening a new ledger file at once, 30 rounds",
            {"failed opens": f"{failures} of {opens}", "files missing an entry": short_files},
            "4 of 60 failed (table entries already exists)",
            "0 of 60, 0",
        )
    ]


# -- 10. chainkit report on a foreign file and on a read-only ledger -------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _report(path: Path) -> tuple[int, str]:
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "chainkit"), "report", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return done.returncode, (done.stderr.strip() or done.stdout.strip())


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[bool]:
    """Make files (and folders) unchangeable even by root (chattr +i); undo on the way out."""
    made: list[Path] = []
    try:
        for p in paths:
            done = subprocess.run(["chattr", "+i", str(p)], capture_output=True)
            if done.returncode == 0:
                made.append(p)
        yield len(made) == len(paths)
    finally:
        for p in reversed(made):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def scenario_report(scratch: Path) -> list[Row]:
    def foreign(path: Path, sql: list[str]) -> None:
        db = sqlite3.connect(path)
        for statement in sql:
            db.execute(statement)
        db.commit()
        db.close()

    cases = {
        "orders table": [
            "CREATE TABLE orders (id INTEGER, total REAL)",
            "INSERT INTO orders VALUES (1, 9.5)",
        ],
        "own `entries` table": [
            "CREATE TABLE entries (who TEXT, amount REAL)",
            "INSERT INTO entries VALUES ('alice', 3.5)",
        ],
        "no tables": ["PRAGMA user_version = 0"],
    }
    foreign_figures: dict[str, Any] = {}
    for n, (label, sql) in enumerate(cases.items()):
        folder = scratch / f"report-{n}"
        folder.mkdir()
        path = folder / "shop.db"
        foreign(path, sql)
        before = _digest(folder)
        code, message = _report(path)
        after = _digest(folder)
        clear = message.startswith("chainkit: ") and "Traceback" not in message
        foreign_figures[label] = (
            f"exit {code}, {'unchanged' if before == after else 'CHANGED'}, "
            f"{'clear message' if clear else 'unclear: ' + message[-80:]}"
        )
    # A ledger: writable, then a read-only file, then a read-only file in a read-only folder.
    ledger_figures: dict[str, Any] = {}
    for n, (label, lock) in enumerate(
        (("writable", ""), ("read-only file", "file"), ("+ read-only folder", "folder"))
    ):
        folder = scratch / f"report-ledger-{n}"
        folder.mkdir()
        path = folder / "run.db"
        with SQLiteLedger(path) as writer:
            writer.record(Entry("r1", "generate", "answered", cost=Decimal("0.5"), model=POWERFUL))
        if lock:
            os.chmod(path, 0o444)
        before = _digest(folder)
        with immutable(*{"": [], "file": [path], "folder": [path, folder]}[lock]) as locked:
            code, message = _report(path)
        after = _digest(folder)
        left = sorted(set(after) - set(before))
        ledger_figures[label] = (
            f"exit {code}, {'reported' if message.startswith('variant') else message[:60]}, "
            f"db {'unchanged' if before['run.db'] == after['run.db'] else 'CHANGED'}, "
            f"new files: {'+'.join(left) or 'none'}"
            + ("" if locked else " (chattr failed: chmod 444 only, which root ignores)")
        )
    return [
        Row(
            "10 `chainkit report` on a foreign SQLite file",
            foreign_figures,
            "3 chainkit tables added, switched to WAL; raw traceback for a foreign `entries`",
            "exit 2, unchanged, clear message (each)",
        ),
        Row(
            "10b `chainkit report` on a ledger (read-only: chattr +i)",
            ledger_figures,
            "read-only file: 'not a chainkit ledger database'",
            "exit 0, reported, db unchanged, new files: none (each)",
        ),
    ]


# -- 12. smaller -----------------------------------------------------------------------------------


def _raises(make: Callable[[], Any]) -> str:
    try:
        made = make()
    except Exception as exc:
        return type(exc).__name__ + ("" if isinstance(exc, ChainkitError) else " (not chainkit)")
    return f"accepted: {made!r:.60}"


def scenario_smaller(scratch: Path) -> list[Row]:
    rows = [
        Row(
            "12 smaller: bad entries and usage",
            {
                "Entry cost Infinity": _raises(
                    lambda: Entry("r", "s", "answered", cost=Decimal("Infinity"))
                ),
                "cost -1": _raises(lambda: Entry("r", "s", "answered", cost=Decimal(-1))),
                "outcome 'bogus'": _raises(
                    lambda: Entry("r", "s", "bogus", cost=Decimal(0))  # type: ignore[arg-type]
                ),
                "float cost 0.1": _raises(
                    lambda: Entry("r", "s", "answered", cost=0.1)  # type: ignore[arg-type]
                ),
                "Usage(-1, 5)": _raises(lambda: Usage(-1, 5)),
            },
            "OverflowError / accepted / accepted / accepted (totals silently None) / ValueError",
            "a ChainkitError (ConfigError) each",
        )
    ]
    # An application sets prec=5 in its main thread and as the default for new threads.
    catalogue = Catalogue.load()
    nova = "amazon.nova-pro-v1:0"
    usage = Usage(123_457, 4_321)
    with decimal.localcontext(decimal.Context(prec=60)):
        exact = (
            Decimal(usage.input_tokens) * catalogue.price(nova, "us-east-1").input
            + Decimal(usage.output_tokens) * catalogue.price(nova, "us-east-1").output
        ) / 1_000_000
    model = ScriptedModel(model_id=nova, region="us-east-1", reply="ok", usage=usage)
    bot = Pipeline([Generate(model=model, catalogue=catalogue, max_tokens=5000)])
    saved_default = decimal.DefaultContext.prec
    ledger = Ledger()
    try:
        decimal.DefaultContext.prec = 5
        with decimal.localcontext() as ctx:
            ctx.prec = 5
            bot.run(Request("q", id="main"), ledger)
            bot.run_batch([Request("q", id=f"t{i}") for i in range(16)], ledger, concurrency=4)
    finally:
        decimal.DefaultContext.prec = saved_default
    costs = sorted({e.cost for e in ledger.entries()}, key=str)
    rows.append(
        Row(
            "12b caller's decimal prec=5 (main thread + new threads); Nova Pro 123,457 in, "
            "4,321 out; 1 call on the main thread, 16 on 4 threads",
            {
                "distinct costs": len(costs),
                "cost $": costs[0] if len(costs) == 1 else [str(c) for c in costs],
                "= exact": costs == [exact],
            },
            "threads priced differently from the main thread",
            f"1, {exact}, yes",
        )
    )
    return rows


def scenario_report_build(scratch: Path) -> list[Row]:
    return [
        Row(
            "11 Report.build on a 1,000,000-entry SQLite ledger",
            {"time, memory": "not re-measured here: see benchmarks/bench_ledger.py"},
            "23 s, 1.5 GB",
            "< 2 s, < 100 MB",
        )
    ]


SCENARIOS: list[tuple[str, Callable[[Path], list[Row]]]] = [
    ("faults", scenario_faults),
    ("forged", scenario_forged_usage),
    ("surrogate", scenario_surrogate),
    ("diskfull", scenario_disk_full),
    ("bytag", scenario_by_tag),
    ("opens", scenario_concurrent_opens),  # forks: before any scenario leaves threads behind
    ("sigkill", scenario_sigkill),
    ("summarise", scenario_summarise_crash),
    ("hangs", scenario_hangs),
    ("readtimeout", scenario_read_timeout),
    ("report", scenario_report),
    ("reportbuild", scenario_report_build),
    ("smaller", scenario_smaller),
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
    scratch = Path(tempfile.mkdtemp(prefix="probe-integrity-", dir="/tmp"))
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for name, run in SCENARIOS:
            if args.only and name not in args.only:
                continue
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
