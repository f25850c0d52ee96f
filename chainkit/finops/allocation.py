"""Showback: what each tenant, feature, team or environment cost, one-off spend included.

Serving entries are charged to the tags they carry. One-off spend (``phase="setup"`` entries:
precomputing replies, setting up a batch) is amortised by one documented rule:

1. A setup entry serves the serving requests whose tags include every tag of the setup entry
   (all serving requests if it has none), i.e. the traffic it was paid for.
2. If a serving stage is named for the setup stage in ``served_by`` (by default ``precompute``
   is served by ``precomputed``), only the requests that stage answered bear it: a precomputed
   reply costs the requests it answered, not those it never saw. If that stage answered none
   of them, rule 1's requests bear it.
3. Each of those requests bears an equal share; the shares of a group add up exactly (the last
   group takes the rounding remainder), so allocated totals equal the ledger's total.
4. One-off spend with no matching request is reported as ``unallocated``, never dropped.

Unknown costs stay unknown: a group with an entry of unknown cost, or bearing a share of
one-off spend of unknown cost, has ``cost=None`` (and the count in ``unknown``); the amount
that could be, with bounds, is ``cost_bound`` (``None`` when an entry has no bound). One-off
spend of unknown cost that no request matches makes ``unallocated`` (and the total) ``None``,
with its bound in ``unallocated_bound``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.money import CONTEXT
from chainkit.records import Entry
from chainkit.report import QUOTIENT

__all__ = ["SERVED_BY", "Allocation", "AllocationRow", "allocate"]

SERVED_BY: Mapping[str, str] = {"precompute": "precomputed"}
"""Setup stage -> the serving stage whose answers use what it made."""


@dataclass(slots=True)
class _Group:
    requests: set[str] = field(default_factory=set)
    answered_by: dict[str, set[str]] = field(default_factory=dict)  # stage -> request ids
    conversations: set[str] = field(default_factory=set)
    last_outcome: dict[str, str] = field(default_factory=dict)  # request -> its last outcome
    calls: int = 0
    tokens: int = 0
    direct: Decimal = Decimal(0)
    bound: Decimal = Decimal(0)
    unknown: int = 0
    unbounded: int = 0
    setup_unknown: int = 0  # setup entries of unknown cost this group bears a share of
    setup_bound: Decimal = Decimal(0)
    setup_unbounded: int = 0


@dataclass(frozen=True, slots=True)
class AllocationRow:
    """One group's showback: direct and amortised cost, and unit costs.

    ``per_*`` are ``None`` when the cost is unknown or there is nothing to divide by.
    """

    key: tuple[str | None, ...]
    requests: int
    calls: int
    tokens: int
    conversations: int
    resolved: int
    direct: Decimal | None
    amortised: Decimal | None
    cost: Decimal | None
    cost_bound: Decimal | None
    unknown: int
    per_request: Decimal | None
    per_conversation: Decimal | None
    per_resolved: Decimal | None
    per_1k_tokens: Decimal | None

    def to_dict(self, by: tuple[str, ...]) -> dict[str, object]:
        """The row as JSON-ready values: money as exact decimal strings, unknown as null."""

        def s(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            **dict(zip(by, self.key, strict=True)),
            "requests": self.requests,
            "calls": self.calls,
            "tokens": self.tokens,
            "conversations": self.conversations,
            "resolved": self.resolved,
            "direct_usd": s(self.direct),
            "amortised_usd": s(self.amortised),
            "cost_usd": s(self.cost),
            "cost_bound_usd": s(self.cost_bound),
            "unknown": self.unknown,
            "per_request_usd": s(self.per_request),
            "per_conversation_usd": s(self.per_conversation),
            "per_resolved_usd": s(self.per_resolved),
            "per_1k_tokens_usd": s(self.per_1k_tokens),
        }


@dataclass(frozen=True, slots=True)
class Allocation:
    """Showback by the tags in ``by``: one row per combination of their values."""

    by: tuple[str, ...]
    rows: tuple[AllocationRow, ...]
    setup: Decimal | None
    unallocated: Decimal | None
    rule: str = __doc__ or ""
    unallocated_bound: Decimal | None = Decimal(0)

    @property
    def total(self) -> Decimal | None:
        """Everything allocated plus what could not be: the ledger's total spend (None: unknown)."""
        with localcontext(CONTEXT):
            if self.unallocated is None:
                return None
            total = self.unallocated
            for row in self.rows:
                if row.cost is None:
                    return None
                total += row.cost
            return total

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: rows, one-off spend, unallocated spend; money as exact strings."""
        total = self.total
        return {
            "by": list(self.by),
            "rows": [r.to_dict(self.by) for r in self.rows],
            "setup_usd": None if self.setup is None else str(self.setup),
            "unallocated_usd": None if self.unallocated is None else str(self.unallocated),
            "unallocated_bound_usd": (
                None if self.unallocated_bound is None else str(self.unallocated_bound)
            ),
            "total_usd": None if total is None else str(total),
        }


def _quotient(amount: Decimal | None, n: int, scale: int = 1) -> Decimal | None:
    if amount is None or n == 0:
        return None
    with localcontext(QUOTIENT):
        return (amount * scale / n).normalize()


def allocate(
    ledger: Ledger | Iterable[Entry],
    by: str | Iterable[str] = "tenant",
    *,
    served_by: Mapping[str, str] = SERVED_BY,
    conversation_tag: str = "conversation",
) -> Allocation:
    """Cost by the tags in ``by``, one-off spend amortised (see the module's rule), unit costs.

    Args:
        ledger: any ledger, or its entries.
        by: a tag key or several (rows per combination; ``None`` where an entry lacks the tag).
        served_by: setup stage -> the serving stage whose answered requests bear its cost.
        conversation_tag: the tag that groups requests into conversations; a request without
            it is a conversation of its own.

    A request is *resolved* when its last serving entry answered it (not passed, failed or
    refused). Tokens for ``per_1k_tokens`` are input, output and cache tokens together.
    """
    if isinstance(by, str) and "," in by:
        raise ConfigError(
            f"allocate by={by!r}: one tag name has no comma; give several as a list, "
            f"e.g. by={[k.strip() for k in by.split(',') if k.strip()]!r}."
        )
    keys = (by,) if isinstance(by, str) else tuple(by)
    if not keys or any(not isinstance(k, str) or not k for k in keys):
        raise ConfigError(f"allocate by needs one or more tag names, got {by!r}.")
    groups: dict[tuple[str | None, ...], _Group] = {}
    request_group: dict[str, tuple[str | None, ...]] = {}
    request_tags: dict[str, Mapping[str, str]] = {}
    setups: list[Entry] = []
    entries = ledger.iter_entries() if isinstance(ledger, Ledger) else ledger
    with localcontext(CONTEXT):
        for e in entries:
            if e.phase != "serve":
                setups.append(e)
                continue
            key = tuple(e.tags.get(k) for k in keys)
            g = groups.get(key)
            if g is None:
                g = groups[key] = _Group()
            g.requests.add(e.request_id)
            request_group.setdefault(e.request_id, key)
            request_tags.setdefault(e.request_id, e.tags)
            g.calls += 1
            g.conversations.add(e.tags.get(conversation_tag) or "\0" + e.request_id)
            g.last_outcome[e.request_id] = e.outcome
            if e.outcome == "answered":
                g.answered_by.setdefault(e.stage, set()).add(e.request_id)
            if e.usage is not None:
                u = e.usage
                g.tokens += (
                    u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens
                )
            if e.cost is None:
                g.unknown += 1
                if e.bound is None:
                    g.unbounded += 1
                else:
                    g.bound += e.bound
            else:
                g.direct += e.cost
        amortised = {k: Decimal(0) for k in groups}
        unallocated: Decimal | None = Decimal(0)
        unallocated_bound: Decimal | None = Decimal(0)
        setup_total: Decimal | None = Decimal(0)
        for e in setups:
            if e.cost is None:
                setup_total = None
            elif setup_total is not None:
                setup_total += e.cost
            served = [
                r
                for r, tags in request_tags.items()
                if all(tags.get(k) == v for k, v in e.tags.items())
            ]
            stage = served_by.get(e.stage)
            if stage is not None:
                narrowed = [
                    r for r in served if r in groups[request_group[r]].answered_by.get(stage, ())
                ]
                served = narrowed or served
            if not served:
                if e.cost is None:
                    # Unknown one-off spend is not $0: the unallocated amount becomes unknown.
                    unallocated = None
                    if unallocated_bound is not None:
                        unallocated_bound = None if e.bound is None else unallocated_bound + e.bound
                else:
                    if unallocated is not None:
                        unallocated += e.cost
                    if unallocated_bound is not None:
                        unallocated_bound += e.cost
                continue
            counts: dict[tuple[str | None, ...], int] = {}
            for r in served:
                counts[request_group[r]] = counts.get(request_group[r], 0) + 1
            if e.cost is None:
                # Each group that bears it has an unknown cost; its bound is shared like a cost.
                for k, share in _shares(e.bound, counts, len(served)):
                    g = groups[k]
                    g.setup_unknown += 1
                    if share is None:
                        g.setup_unbounded += 1
                    else:
                        g.setup_bound += share
                continue
            for k, share in _shares(e.cost, counts, len(served)):
                assert share is not None
                amortised[k] += share
        rows = []
        for k, g in groups.items():
            direct = None if g.unknown else g.direct
            shared = None if g.setup_unknown else amortised[k]
            cost = None if direct is None or shared is None else direct + shared
            bound = (
                None
                if g.unbounded or g.setup_unbounded
                else g.direct + g.bound + amortised[k] + g.setup_bound
            )
            resolved = sum(1 for o in g.last_outcome.values() if o == "answered")
            rows.append(
                AllocationRow(
                    key=k,
                    requests=len(g.requests),
                    calls=g.calls,
                    tokens=g.tokens,
                    conversations=len(g.conversations),
                    resolved=resolved,
                    direct=direct,
                    amortised=shared,
                    cost=cost,
                    cost_bound=bound,
                    unknown=g.unknown + g.setup_unknown,
                    per_request=_quotient(cost, len(g.requests)),
                    per_conversation=_quotient(cost, len(g.conversations)),
                    per_resolved=_quotient(cost, resolved),
                    per_1k_tokens=_quotient(cost, g.tokens, 1000),
                )
            )
    rows.sort(key=lambda r: (r.cost is None, -(r.cost or 0), [x or "" for x in r.key]))
    return Allocation(keys, tuple(rows), setup_total, unallocated, __doc__ or "", unallocated_bound)


def _shares(
    amount: Decimal | None, counts: dict[tuple[str | None, ...], int], served: int
) -> list[tuple[tuple[str | None, ...], Decimal | None]]:
    """Each group's equal-per-request share of ``amount``; the last takes the remainder."""
    if amount is None:
        return [(k, None) for k in counts]
    out: list[tuple[tuple[str | None, ...], Decimal | None]] = []
    left = amount
    ordered = list(counts.items())
    for i, (k, n) in enumerate(ordered):
        if i == len(ordered) - 1:
            share = left
        else:
            with localcontext(QUOTIENT):  # a third has no exact form: 20 digits
                share = amount * n / served
        out.append((k, share))
        left -= share
    return out
