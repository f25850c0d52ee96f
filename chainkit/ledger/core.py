"""The in-memory ledger, and what every ledger shares: totals, roll-up cells, budgets.

Aggregations fold *cells*: the sums of the entries that share a stage, model, intent, outcome,
phase, UTC day, flags and tag set. The in-memory ledger computes its cells from its entries; a
store with SQL keeps them up to date as it writes, so a report over a million entries reads a few
thousand rows. Both fold them with the same code, so they agree exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from chainkit.errors import ConfigError
from chainkit.ledger.budgets import (
    Budget,
    BudgetEvent,
    BudgetState,
    Hold,
    applying,
    charge,
    check,
    check_reservation,
    settle,
    spent_of,
)
from chainkit.ledger.budgets import hold as hold_states
from chainkit.money import CONTEXT, exact_sum, from_units, to_units
from chainkit.records import Entry, Tags, check_text, new_entry_id

_log = logging.getLogger("chainkit")

__all__ = [
    "Budget",
    "Cell",
    "Hold",
    "Ledger",
    "Totals",
    "VariantSums",
    "latency_quantile",
    "totals",
    "watch",
]

# Entries recorded for watched request ids (`watch`), by request id: a service reads back what
# one request recorded without querying the store (whose entries have no request-id index).
_WATCHED: dict[str, list[Entry]] = {}


@contextmanager
def watch(request_id: str) -> Iterator[list[Entry]]:
    """Collect every entry any ledger in this process records for ``request_id`` while open.

    The list fills as entries are recorded (by any thread or task), including entries a stream
    records when it is closed early; it is yours to read during and after the block.

    >>> with watch("r1") as seen:
    ...     Ledger().record(Entry("r1", stage="canned", outcome="answered", cost=Decimal(0)))
    >>> [e.stage for e in seen]
    ['canned']
    """
    seen: list[Entry] = []
    if _WATCHED.setdefault(request_id, seen) is not seen:
        raise ConfigError(f"Request {request_id!r} is watched already; give each request its id.")
    try:
        yield seen
    finally:
        del _WATCHED[request_id]


def observed(entry: Entry) -> None:
    """Add ``entry`` to its request's watch list, if its request is watched."""
    if _WATCHED:
        seen = _WATCHED.get(entry.request_id)
        if seen is not None:
            seen.append(entry)


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a set of entries. ``cost`` is ``None`` if any entry's cost is unknown.

    ``unknown`` counts the entries of unknown cost; ``cost_bound`` is the most the set can have
    cost (known costs plus the bounds of the unknown ones), ``None`` if some unknown cost has no
    bound.
    """

    calls: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: Decimal | None = Decimal(0)
    avoided_cost: Decimal | None = Decimal(0)
    latency_s: float = 0.0
    unknown: int = 0
    cost_bound: Decimal | None = Decimal(0)
    cache_write_1h_tokens: int = 0
    queries: int = 0


# -- latency histograms: percentiles that a store can keep without keeping every value ---------

_LATENCY_FLOOR = 1e-6  # a microsecond: below it, everything is bucket 0
_LATENCY_RATIO = math.log(1.02)  # buckets 2% wide: a percentile is within 1% of the true value


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency: 0 below a microsecond, then 2%-wide buckets."""
    if seconds <= _LATENCY_FLOOR:
        return 0
    return 1 + int(math.log(seconds / _LATENCY_FLOOR) / _LATENCY_RATIO)


def _bucket_value(bucket: int) -> float:
    if bucket == 0:
        return 0.0
    # The bucket's geometric middle: at most 1% from any value in it.
    return _LATENCY_FLOOR * math.exp((bucket - 0.5) * _LATENCY_RATIO)


def latency_quantile(histogram: Mapping[int, int], q: float) -> float:
    """The ``q`` quantile (nearest rank) of a latency histogram, in seconds; 0 when empty."""
    n = sum(histogram.values())
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return _bucket_value(bucket)
    return _bucket_value(max(histogram))  # pragma: no cover - unreachable


def _ns(seconds: float) -> int:
    # Latencies add as integer nanoseconds: the same total in whatever order (and in whichever
    # store) they are summed, which float addition would not give.
    return round(seconds * 1e9)


# -- cells -------------------------------------------------------------------------------------

CellKey = tuple[str, str, str, str | None, str | None, str, str, str]
"""(tags JSON, phase, stage, model, intent, outcome, UTC day, flags joined by ',')."""


@dataclass(slots=True)
class Cell:
    """The sums of the entries that share one :data:`CellKey`; ``first`` orders cells."""

    key: CellKey
    first: int
    calls: int = 0
    estimated: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: Decimal = Decimal(0)
    cost_unknown: int = 0
    bound_unknown: Decimal = Decimal(0)
    bound_missing: int = 0
    avoided: Decimal = Decimal(0)
    avoided_unknown: int = 0
    latency_ns: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    cache_write_1h_tokens: int = 0
    queries: int = 0

    @property
    def tags(self) -> dict[str, str]:
        """The cell's tags."""
        parsed: dict[str, str] = json.loads(self.key[0])
        return parsed

    def add(self, e: Entry) -> None:
        """Count one entry in this cell (call it inside ``localcontext(money.CONTEXT)``)."""
        self.calls += 1
        self.estimated += e.estimated
        u = e.usage
        if u is not None:
            self.input_tokens += u.input_tokens
            self.output_tokens += u.output_tokens
            self.cache_read_tokens += u.cache_read_tokens
            self.cache_write_tokens += u.cache_write_tokens
            self.cache_write_1h_tokens += u.cache_write_1h_tokens
            self.queries += u.queries
        if e.cost is None:
            self.cost_unknown += 1
            if e.bound is None:
                self.bound_missing += 1
            else:
                self.bound_unknown += e.bound
        else:
            self.cost += e.cost
        if e.avoided_cost is None:
            self.avoided_unknown += 1
        else:
            self.avoided += e.avoided_cost
        self.latency_ns += _ns(e.latency_s)
        bucket = latency_bucket(e.latency_s)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1


def cell_key(e: Entry) -> CellKey:
    """The cell an entry belongs to."""
    when = e.time
    day = (when if when.utcoffset() == _ZERO else when.astimezone(UTC)).date().isoformat()
    return (
        Tags.of(e.tags).json,
        e.phase,
        e.stage,
        e.model,
        e.intent,
        e.outcome,
        day,
        ",".join(e.flags),
    )


_ZERO = timedelta(0)


def cells_of(entries: Iterable[Entry]) -> list[Cell]:
    """The cells of ``entries``, in order of first appearance."""
    cells: dict[CellKey, Cell] = {}
    with localcontext(CONTEXT):
        for i, e in enumerate(entries):
            key = cell_key(e)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = Cell(key, i)
            cell.add(e)
    return list(cells.values())


def fold(cells: Iterable[Cell], requests: int = 0) -> Totals:
    """Totals over ``cells`` (``requests`` is counted apart: it does not add across cells)."""
    calls = inp = out = cread = cwrite = unknown = missing = avoided_unknown = hour = queries = 0
    cost = bound = avoided = Decimal(0)
    latency = 0
    with localcontext(CONTEXT):
        for c in cells:
            calls += c.calls
            inp += c.input_tokens
            out += c.output_tokens
            cread += c.cache_read_tokens
            cwrite += c.cache_write_tokens
            hour += c.cache_write_1h_tokens
            queries += c.queries
            cost += c.cost
            unknown += c.cost_unknown
            bound += c.bound_unknown
            missing += c.bound_missing
            avoided += c.avoided
            avoided_unknown += c.avoided_unknown
            latency += c.latency_ns
    return Totals(
        calls=calls,
        requests=requests,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cread,
        cache_write_tokens=cwrite,
        cost=None if unknown else cost,
        avoided_cost=None if avoided_unknown else avoided,
        latency_s=latency / 1e9,
        unknown=unknown,
        cost_bound=None if missing else exact_sum((cost, bound)),
        cache_write_1h_tokens=hour,
        queries=queries,
    )


@dataclass(slots=True)
class StageSums:
    """One stage of one variant, for a report: its cells and how many requests it answered."""

    cells: list[Cell] = field(default_factory=list)
    answered: int = 0
    served: bool = False
    first: int = 0


@dataclass(slots=True)
class RequestCosts:
    """Each serving request's total cost, compactly (a million requests in tens of MB).

    Known totals are exact integer counts of 1e-24 USD (:func:`~chainkit.money.to_units`);
    a request with any part of unknown cost is only counted.
    """

    known: list[int] = field(default_factory=list)
    unknown: int = 0

    def __len__(self) -> int:
        return len(self.known) + self.unknown

    def add(self, units: int | None) -> None:
        if units is None:
            self.unknown += 1
        else:
            self.known.append(units)

    def percentile(self, pct: int) -> Decimal | None:
        """The nearest-rank percentile; ``None`` if any cost is unknown or there are none."""
        if self.unknown or not self.known:
            return None
        ordered = sorted(self.known)
        rank = max(1, -(-pct * len(ordered) // 100))
        return from_units(ordered[rank - 1])


@dataclass(slots=True)
class VariantSums:
    """What a report needs of one variant: stage sums, serve requests and their costs."""

    stages: dict[str, StageSums] = field(default_factory=dict)
    serve_cells: list[Cell] = field(default_factory=list)
    setup_cells: list[Cell] = field(default_factory=list)
    request_costs: RequestCosts = field(default_factory=RequestCosts)
    first_served: int | None = None


def variant_sums(
    cells: Iterable[Cell],
    request_costs: Mapping[str, RequestCosts],
    tag: str | None,
    default: str = "all",
) -> dict[str, VariantSums]:
    """Group cells by the value of ``tag`` (one variant, ``default``, if ``tag`` is ``None``)."""
    out: dict[str, VariantSums] = {}
    names: dict[str, str] = {}  # tags JSON -> variant name, parsed once per tag set
    for cell in sorted(cells, key=attrgetter("first")):
        tags_json = cell.key[0]
        name = names.get(tags_json)
        if name is None:
            name = default if tag is None else cell.tags.get(tag, default)
            names[tags_json] = name
        v = out.get(name)
        if v is None:
            v = out[name] = VariantSums()
        _, phase, stage, *_rest = cell.key
        outcome = cell.key[5]
        s = v.stages.get(stage)
        if s is None:
            s = v.stages[stage] = StageSums(first=cell.first)
        s.cells.append(cell)
        if phase == "serve":
            v.serve_cells.append(cell)
            s.served = True
            if outcome == "answered":
                s.answered += cell.calls
            if v.first_served is None or cell.first < v.first_served:
                v.first_served = cell.first
        else:
            v.setup_cells.append(cell)
    for name, v in out.items():
        v.request_costs = request_costs.get(name, RequestCosts())
        # Serving stages first (in order of first appearance), then setup-only ones.
        served_first = {
            stage: min((c.first for c in s.cells if c.key[1] == "serve"), default=s.first)
            for stage, s in v.stages.items()
        }
        v.stages = dict(
            sorted(v.stages.items(), key=lambda kv: (not kv[1].served, served_first[kv[0]]))
        )
    return out


def request_costs_of(
    entries: Iterable[Entry], tag: str | None, default: str = "all"
) -> dict[str, RequestCosts]:
    """Per variant, each serving request's total cost (unknown if any part is unknown)."""
    per: dict[str, dict[str, int | None]] = {}
    for e in entries:
        if e.phase != "serve":
            continue
        name = default if tag is None else e.tags.get(tag, default)
        costs = per.setdefault(name, {})
        spent = costs.get(e.request_id, 0)
        costs[e.request_id] = None if spent is None or e.cost is None else spent + to_units(e.cost)
    out: dict[str, RequestCosts] = {}
    for name, costs in per.items():
        out[name] = RequestCosts([c for c in costs.values() if c is not None])
        out[name].unknown = len(costs) - len(out[name].known)
    return out


# -- totals over entries -----------------------------------------------------------------------


def totals(entries: Iterable[Entry]) -> Totals:
    """Fold entries into :class:`Totals`: price each entry first, then sum (never the reverse)."""
    # Whole-column builtins (sum, set, map) rather than one Python loop: 2-3x faster at 1M.
    rows = entries if isinstance(entries, list) else list(entries)
    usages = [u for u in map(_USAGE, rows) if u is not None]
    costs = list(map(_COST, rows))
    avoided = list(map(_AVOIDED, rows))
    with localcontext(CONTEXT):
        if None in costs:
            unknown = [e for e, c in zip(rows, costs, strict=True) if c is None]
            known = sum((c for c in costs if c is not None), Decimal(0))
            bounds = [e.bound for e in unknown]
            bound = None if None in bounds else sum(bounds, known)
        else:
            unknown, known = [], sum(costs, Decimal(0))
            bound = known
        saved = None if None in avoided else sum(avoided, Decimal(0))
    return Totals(
        calls=len(rows),
        requests=len(set(map(_REQUEST_ID, rows))),
        input_tokens=sum(map(_INPUT, usages)),
        output_tokens=sum(map(_OUTPUT, usages)),
        cache_read_tokens=sum(map(_CACHE_READ, usages)),
        cache_write_tokens=sum(map(_CACHE_WRITE, usages)),
        cost=None if unknown else known,
        avoided_cost=saved,
        latency_s=sum(map(_ns, map(_LATENCY, rows))) / 1e9,
        unknown=len(unknown),
        cost_bound=bound,
        cache_write_1h_tokens=sum(u.cache_write_1h_tokens for u in usages),
        queries=sum(u.queries for u in usages),
    )


_USAGE = attrgetter("usage")
_REQUEST_ID = attrgetter("request_id")
_INPUT = attrgetter("input_tokens")
_OUTPUT = attrgetter("output_tokens")
_CACHE_READ = attrgetter("cache_read_tokens")
_CACHE_WRITE = attrgetter("cache_write_tokens")
_COST = attrgetter("cost")
_AVOIDED = attrgetter("avoided_cost")
_LATENCY = attrgetter("latency_s")


_Key = Callable[[Entry], Hashable]


class Ledger:
    """An append-only, thread-safe, in-memory store of entries, with budgets and aggregations.

    An entry is stored once per id: recording the same entry again changes nothing.
    """

    durable = False
    """Whether recorded entries outlive the process (and ``Pipeline.run(resume=True)`` works)."""

    def __init__(
        self,
        budgets: Iterable[Budget] = (),
        *,
        clock: Callable[[], datetime] | None = None,
        on_threshold: Callable[[BudgetEvent], object] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._entries: list[Entry] = []
        self._index: dict[str, int] = {}  # entry id -> position
        self._budgets: dict[str, Budget] = {}
        self._states: dict[tuple[str, str], BudgetState] = {}
        self._holds: dict[str, Hold] = {}
        self._next_expiry: datetime | None = None  # no hold's lease ends before this
        self._events: list[BudgetEvent] = []
        self._notes: dict[str, str] = {}  # record_event: key -> body
        self.clock: Callable[[], datetime] = clock or _utcnow
        """Now, for budget periods and hold leases (inject one to test a month's turn)."""
        self.on_threshold = on_threshold
        """Called with each :class:`BudgetEvent` once, by the process whose call caused it."""
        for budget in budgets:
            self.add_budget(budget)

    # -- writing ---------------------------------------------------------------------------

    def record(
        self,
        entry: Entry,
        *,
        hold: Hold | None = None,
        reply: tuple[str, str] | None = None,
    ) -> None:
        """Store ``entry`` (once per id); if it settles a ``hold``, settle the hold with it.

        A durable ledger has written the entry when this returns. ``reply`` (a digest and the
        call's saved reply) lets a durable ledger replay the call when a resumed run repeats it.
        """
        if type(entry) is not Entry:
            raise ConfigError(f"Ledger.record takes an Entry, got {type(entry).__name__}.")
        with self._lock:
            events = self._keep(entry, hold)
        observed(entry)
        self._notify(events)

    def record_many(self, entries: Iterable[Entry]) -> None:
        """Store many entries at once (one transaction in a durable ledger)."""
        for entry in entries:
            self.record(entry)

    def _keep(self, entry: Entry, hold: Hold | None) -> list[BudgetEvent]:
        """Store ``entry``, settle what it owes the budgets; return new threshold crossings."""
        return self._log(self._keep_unlogged(entry, hold))

    def _log(self, events: list[BudgetEvent]) -> list[BudgetEvent]:
        """Keep the crossings not seen before (one per budget, period and threshold)."""
        seen = {(e.budget, e.period, e.threshold) for e in self._events}
        new = [e for e in events if (e.budget, e.period, e.threshold) not in seen]
        self._events.extend(new)
        return new

    def _keep_unlogged(self, entry: Entry, hold: Hold | None) -> list[BudgetEvent]:
        if not self._budgets and hold is None:
            self._append(entry)  # nothing to count it against: the common, fast case
            return []
        settling = hold is not None and hold.id in self._holds and entry.id not in self._index
        if settling:
            assert hold is not None
            stored = self._holds[hold.id]  # the ledger's own record of it, not the caller's
            # The states involved, as they stand before this entry and this release (a state
            # made now counts the hold and not the entry): the hold is released from the ones
            # it was made against, the spend charged to the ones the entry belongs to (its
            # period and tags may differ from the hold's).
            held_states = self._held_states(stored)
            entry_states = self._existing_states(entry)
        replaced = self._append(entry)
        if replaced is False:
            return []  # the same entry again: already stored and counted
        now = self.clock()
        if settling:
            assert hold is not None
            del self._holds[hold.id]
            hold.open = False
            spend = charge(entry) if entry.cost is not None else (entry.bound or stored.amount)
            return settle(held_states, release=stored.amount, spend=Decimal(0), now=now) + settle(
                entry_states, release=Decimal(0), spend=spend, now=now
            )
        if isinstance(replaced, Entry):
            # The real entry of a call whose hold had expired: it was counted at its bound.
            states = [
                self._state(b, b.period_of(replaced.time))
                for b in applying(self._budgets.values(), replaced.tags)
            ]
            delta = charge(entry) - charge(replaced)
            return settle(states, release=Decimal(0), spend=delta, now=now)
        states = self._existing_states(entry)
        # A state made later counts this entry from the entries themselves.
        return settle(states, release=Decimal(0), spend=charge(entry), now=now) if states else []

    def _existing_states(self, entry: Entry) -> list[BudgetState]:
        """The states ``entry`` counts against that exist already (others count it when made)."""
        return [
            self._states[key]
            for b in applying(self._budgets.values(), entry.tags)
            if (key := (b.name, b.period_of(entry.time))) in self._states
        ]

    def _append(self, entry: Entry) -> bool | Entry:
        """Keep ``entry``: True if new, False if already kept, or the entry it replaces.

        An entry replaces one with its id only if that one stood in for it: a hold that expired
        before its call was recorded.
        """
        at = self._index.get(entry.id)
        if at is None:
            # Kept first, then indexed: an interrupt (Ctrl-C) between the two can at worst let
            # the same entry in twice later, never lose it.
            self._entries.append(entry)
            self._index[entry.id] = len(self._entries) - 1
            return True
        old = self._entries[at]
        if "lease_expired" in old.flags and "lease_expired" not in entry.flags:
            self._entries[at] = dataclasses.replace(
                entry, flags=tuple(sorted({*entry.flags, "reconciled"}))
            )
            return old
        return False

    def _notify(self, events: list[BudgetEvent]) -> None:
        hook = self.on_threshold
        if hook is not None:
            for event in events:
                try:
                    hook(event)
                except Exception:
                    # The crossing is recorded (``events()``) whatever the hook does; a hook
                    # that fails must not fail the call that crossed it, nor leave its hold.
                    _log.exception("on_threshold hook failed on %s", event)

    def check_writable(self) -> None:
        """Raise ``ConfigError`` if this ledger cannot record now (closed, read-only)."""

    # -- events other than budgets' (detected anomalies) ---------------------------------------

    def record_event(self, key: str, body: str) -> None:
        """Keep an event about the entries (a detected anomaly, as JSON) under ``key``.

        Recording the same key again replaces its body: an analysis run twice keeps one event.
        """
        check_text(key, "Event key", max_len=1000)
        check_text(body, "Event body", max_len=1_000_000, empty=True)
        self.check_writable()
        with self._lock:
            self._notes[key] = body

    def recorded_events(self, prefix: str = "") -> dict[str, str]:
        """The events recorded under keys that start with ``prefix``, by key."""
        with self._lock:
            return {k: v for k, v in sorted(self._notes.items()) if k.startswith(prefix)}

    def start_call(self) -> None:
        """A model call is about to spend: refuse if the ledger cannot record its entry."""
        self.check_writable()

    def end_call(self) -> None:
        """The call started by :meth:`start_call` has recorded its entry (or failed to)."""

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Let a durable ledger write a request's free entries together (no-op in memory)."""
        yield

    @asynccontextmanager
    async def adeferring(self) -> AsyncIterator[None]:
        """:meth:`deferring` for a coroutine (no-op in memory)."""
        yield

    def in_step(self) -> bool:
        """Whether this thread is inside a resumable step (never, in memory)."""
        return False

    def replay(self, digest: str) -> str | None:
        """The saved reply of the next model call of this thread's step (none in memory)."""
        return None

    @property
    def pending(self) -> int:
        """Entries recorded but not yet written (an in-memory ledger has none)."""
        return 0

    def flush(self) -> None:
        """Write pending entries (an in-memory ledger has none)."""

    def close(self) -> None:
        """Release the ledger's resources (an in-memory ledger has none)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- budgets -----------------------------------------------------------------------------

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The budgets this ledger enforces."""
        with self._lock:
            return tuple(self._budgets.values())

    def add_budget(self, budget: Budget) -> None:
        """Enforce ``budget`` from now on (a budget of the same name is replaced)."""
        if not isinstance(budget, Budget):
            raise ConfigError(f"add_budget takes a Budget, got {type(budget).__name__}.")
        with self._lock:
            before = self._budgets.get(budget.name)
            if before == budget:
                return
            self._budgets[budget.name] = budget
            if before is not None and before.same_scope(budget):
                # A new limit or thresholds: what was spent and held stands.
                for key, state in self._states.items():
                    if key[0] == budget.name:
                        state.budget = budget
            else:
                # Other entries count now: its states are rebuilt from the entries.
                self._states = {k: v for k, v in self._states.items() if k[0] != budget.name}

    def _state(self, budget: Budget, period: str) -> BudgetState:
        state = self._states.get((budget.name, period))
        if state is None:
            spent = spent_of(self._entries, budget, period)
            # What is held for this budget and period by calls under way.
            with localcontext(CONTEXT):
                held = sum(
                    (h.amount for h in self._holds.values() if (budget.name, period) in h.periods),
                    Decimal(0),
                )
            state = self._states[(budget.name, period)] = BudgetState(budget, period, spent, held)
        return state

    def _held_states(self, hold: Hold) -> list[BudgetState]:
        return [
            self._state(self._budgets[name], period)
            for name, period in hold.periods
            if name in self._budgets
        ]

    def spent(self, budget: Budget | str, when: datetime | None = None) -> Decimal:
        """What counts against ``budget`` in the period of ``when`` (now): unknown at its bound."""
        name = budget.name if isinstance(budget, Budget) else budget
        with self._lock:
            known = self._budgets.get(name)
            if known is None:
                raise ConfigError(f"No budget named {name!r}; budgets: {sorted(self._budgets)}.")
            return self._state(known, known.period_of(when or self.clock())).spent

    def status(self) -> list[BudgetState]:
        """Every budget's state in its current period (spent, held), for reports."""
        with self._lock:
            now = self.clock()
            expired = self._expire(now)
            states = [
                dataclasses.replace(self._state(b, b.period_of(now)))
                for b in self._budgets.values()
            ]
        self._notify(expired)
        return states

    def events(self) -> list[BudgetEvent]:
        """Every threshold crossing recorded, oldest first."""
        with self._lock:
            return list(self._events)

    def reserve(
        self,
        amount: Decimal | None,
        tags: Mapping[str, str],
        *,
        stage: str,
        model: str | None = None,
        request_id: str = "",
        entry_id: str | None = None,
        lease_s: float = 3600.0,
        phase: str = "serve",
        intent: str | None = None,
    ) -> Hold | None:
        """Set ``amount`` aside under every budget that applies, or raise ``BudgetExceeded``.

        ``amount`` is the most the call can cost; ``None`` (unknown) is refused by any budget
        that applies. Returns ``None`` when no budget applies (nothing to hold). The hold lasts
        ``lease_s`` seconds: if its entry is not recorded by then, it becomes an entry of unknown
        cost counted at ``amount`` (id ``entry_id``), which the real entry replaces if it comes.
        """
        check_reservation(amount, lease_s)
        expired: list[BudgetEvent] = []
        try:
            with self._lock:
                if entry_id is not None and entry_id in self._holds:
                    raise ConfigError(
                        f"A hold with id {entry_id!r} is open already: each call's hold needs "
                        "its own id (the id its entry will have)."
                    )
                now = self.clock()
                expired = self._expire(now)
                budgets = applying(self._budgets.values(), tags)
                if not budgets:
                    return None
                states = [self._state(b, b.period_of(now)) for b in budgets]
                check(states, amount, stage=stage, model=model)
                assert amount is not None
                hold_states(states, amount)
                held = Hold(
                    id=entry_id or new_entry_id(),
                    amount=amount,
                    periods=tuple((st.budget.name, st.period) for st in states),
                    expires=now + timedelta(seconds=lease_s),
                    request_id=request_id,
                    stage=stage,
                    model=model,
                    tags=dict(tags),
                    phase=phase,
                    intent=intent,
                    created=now,
                )
                self._holds[held.id] = held
                if self._next_expiry is None or held.expires < self._next_expiry:
                    self._next_expiry = held.expires
                return held
        finally:
            self._notify(expired)  # outside the lock: a hook may use the ledger

    def reserve_many(self, requests: Sequence[Mapping[str, Any]]) -> list[Hold | None]:
        """Reserve several calls at once, all or none (a batch job's records).

        Each item holds :meth:`reserve`'s arguments. If any is refused, none is held and the
        ``BudgetExceeded`` names the one that did not fit.
        """
        ids = [str(item["entry_id"]) for item in requests if item.get("entry_id") is not None]
        if len(set(ids)) < len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"reserve_many got the same entry_id more than once: {twice[:5]}.")
        holds: list[Hold | None] = []
        with self._lock:
            try:
                for item in requests:
                    holds.append(self.reserve(**item))
            except BaseException:
                for made in holds:
                    self.release(made)
                raise
        return holds

    def hold(self, hold_id: str) -> Hold | None:
        """The open hold with this id (a resumed run settles holds an earlier run made)."""
        with self._lock:
            return self._holds.get(hold_id)

    def release(self, hold: Hold | None) -> None:
        """Give back a hold whose call will record nothing (safe to call twice)."""
        if hold is None:
            return
        with self._lock:
            stored = self._holds.pop(hold.id, None)
            if stored is not None:
                settle(self._held_states(stored), release=stored.amount, spend=Decimal(0),
                       now=self.clock())  # fmt: skip
            hold.open = False

    def _expire(self, now: datetime) -> list[BudgetEvent]:
        """Turn holds whose lease has ended into entries of unknown cost, at their bound."""
        events: list[BudgetEvent] = []
        if self._next_expiry is not None and now < self._next_expiry:
            return events  # no lease can have ended yet: skip looking at every hold
        for held in [h for h in self._holds.values() if h.expires <= now]:
            del self._holds[held.id]
            events += self._keep(held.expired_entry(), None)
            settle(self._held_states(held), release=held.amount, spend=Decimal(0), now=now)
        self._next_expiry = min((h.expires for h in self._holds.values()), default=None)
        return events

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """A snapshot of every entry, in the order recorded."""
        with self._lock:
            return list(self._entries)

    def iter_entries(self) -> Iterator[Entry]:
        """Every entry in the order recorded, without holding them all at once where possible."""
        return iter(self.entries())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return self.iter_entries()

    @property
    def cost(self) -> Decimal | None:
        """Total spend; ``None`` if any entry's cost is unknown."""
        return self.totals().cost

    def totals(self, where: Callable[[Entry], bool] | None = None) -> Totals:
        """Totals over all entries, or over those ``where`` accepts."""
        entries = self.entries()
        return totals(entries if where is None else filter(where, entries))

    def group(self, key: _Key) -> dict[Hashable, Totals]:
        """Totals per value of ``key(entry)``, in order of first appearance."""
        groups: dict[Hashable, list[Entry]] = {}
        entries = self.entries()
        for k, e in zip(map(key, entries), entries, strict=True):
            group = groups.get(k)
            if group is None:
                groups[k] = [e]
            else:
                group.append(e)
        return {k: totals(v) for k, v in groups.items()}

    def by_stage(self) -> dict[str, Totals]:
        """Totals per stage name."""
        return {str(k): v for k, v in self.group(lambda e: e.stage).items()}

    def by_model(self) -> dict[str | None, Totals]:
        """Totals per model id (``None`` for stages that called no model)."""
        return {_opt(k): v for k, v in self.group(lambda e: e.model).items()}

    def by_intent(self) -> dict[str | None, Totals]:
        """Totals per intent (``None`` where no intent was known)."""
        return {_opt(k): v for k, v in self.group(lambda e: e.intent).items()}

    def by_tag(self, key: str) -> dict[str | None, Totals]:
        """Totals per value of tag ``key`` (``None`` for entries without it)."""
        return {_opt(k): v for k, v in self.group(lambda e: e.tags.get(key)).items()}

    def by_day(self) -> dict[date, Totals]:
        """Totals per UTC day."""
        grouped = self.group(lambda e: e.time.astimezone(UTC).date())
        return {k: v for k, v in grouped.items() if isinstance(k, date)}

    def variants(self, tag: str | None, default: str = "all") -> dict[str, VariantSums]:
        """What a report needs, per value of ``tag`` (everything as one variant if ``None``)."""
        entries = self.entries()
        return variant_sums(
            cells_of(entries), request_costs_of(entries, tag, default), tag, default
        )

    # -- export ----------------------------------------------------------------------------

    def to_json(self, out: str | Path | TextIO) -> None:
        """Write every entry as a JSON array; money as decimal strings."""
        with _open_out(out) as f:
            f.write("[")
            for i, e in enumerate(self.iter_entries()):
                f.write(",\n " if i else "\n ")
                json.dump(entry_row(e), f, ensure_ascii=False)
            f.write("\n]\n")

    def to_csv(self, out: str | Path | TextIO) -> None:
        """Write every entry as CSV with a header row; tags as a JSON object column."""
        with _open_out(out) as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for e in self.iter_entries():
                row = entry_row(e)
                row["tags"] = Tags.of(e.tags).json
                row["flags"] = ",".join(e.flags)
                writer.writerow(row)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _opt(value: Hashable) -> str | None:
    return None if value is None else str(value)


COLUMNS = [
    "id",
    "request_id",
    "stage",
    "outcome",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "queries",
    "cost",
    "avoided_cost",
    "bound",
    "estimated",
    "latency_s",
    "attempts",
    "intent",
    "tags",
    "phase",
    "time",
    "flags",
    "note",
]


def entry_row(e: Entry) -> dict[str, Any]:
    """An entry as a flat row: money as exact decimal strings, ``None`` for unknown."""
    usage = e.usage
    return {
        "id": e.id,
        "request_id": e.request_id,
        "stage": e.stage,
        "outcome": e.outcome,
        "model": e.model,
        "input_tokens": None if usage is None else usage.input_tokens,
        "output_tokens": None if usage is None else usage.output_tokens,
        "cache_read_tokens": None if usage is None else usage.cache_read_tokens,
        "cache_write_tokens": None if usage is None else usage.cache_write_tokens,
        "cache_write_1h_tokens": None if usage is None else usage.cache_write_1h_tokens,
        "queries": None if usage is None else usage.queries,
        "cost": None if e.cost is None else str(e.cost),
        "avoided_cost": None if e.avoided_cost is None else str(e.avoided_cost),
        "bound": None if e.bound is None else str(e.bound),
        "estimated": e.estimated,
        "latency_s": e.latency_s,
        "attempts": e.attempts,
        "intent": e.intent,
        "tags": dict(e.tags),
        "phase": e.phase,
        "time": e.time.isoformat(),
        "flags": list(e.flags),
        "note": e.note,
    }


@contextmanager
def _open_out(out: str | Path | TextIO) -> Iterator[TextIO]:
    if isinstance(out, str | Path):
        with open(out, "w", encoding="utf-8", newline="") as f:
            yield f
    else:
        yield out


def fold_groups(
    cells: Sequence[Cell], key: Callable[[Cell], Hashable], requests: Mapping[Hashable, int]
) -> dict[Hashable, Totals]:
    """Totals per ``key(cell)``, in order of first appearance, with ``requests`` per group."""
    groups: dict[Hashable, list[Cell]] = {}
    for cell in sorted(cells, key=attrgetter("first")):
        groups.setdefault(key(cell), []).append(cell)
    return {k: fold(v, requests.get(k, 0)) for k, v in groups.items()}
