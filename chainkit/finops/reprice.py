"""What-if repricing: the usage a ledger recorded, priced again under other prices.

No model is called. Every entry with token usage is priced again, one entry at a time (long
context tiers and per-call fees depend on the call), at a catalogue, region and service tier of
the caller's choosing (by default each entry's recorded tier: its ``tier`` tag, else
on-demand); entries are then summed. Repricing a run at the prices it was recorded
at gives back its recorded cost exactly (a property the tests state with hypothesis).

A model swap (``OLD=NEW``) prices ``OLD``'s calls as ``NEW``'s. The ledger keeps token counts,
not texts, so ``NEW``'s counts are re-estimated: each token class is scaled by the ratio of
``NEW``'s count to ``OLD``'s count on a reference corpus, as chainkit counts them
(:func:`chainkit.tokens.count_tokens`: Mistral's real tokenizer for Mistral models, one token per
four characters for every other family). Between two families chainkit has no tokenizer for, the
ratio is 1: the counts are kept, not measured. Swapped figures are marked estimated. The output
length assumes ``NEW`` writes the same text ``OLD`` did.

Unknown costs: an entry whose new price cannot be found (no such model, no price in that tier
or region, cache tokens without a cache price) is unknown (``None``), never $0; the total is then
unknown too, and ``priced_cost`` sums the entries that could be priced. An entry without token
usage or without a model (a canned reply, a refused call) keeps its recorded cost: there is
nothing to reprice. Avoided costs are not repriced.

>>> from chainkit import Catalogue, Entry, Ledger, Usage
>>> ledger = Ledger()
>>> usage = Usage(1_000, 200)
>>> ledger.record(Entry("r1", "generate", "answered", Decimal("0.0004"),
...                     model="amazon.nova-micro-v1:0", usage=usage))
>>> what_if = reprice(ledger, tier="batch")
>>> what_if.recorded_cost, what_if.cost
(Decimal('0.0004'), Decimal('0.0000315'))
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, Inexact, localcontext
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from chainkit.errors import ChainkitError, ConfigError
from chainkit.ledger.core import Ledger
from chainkit.money import CONTEXT, exact_sum, usd
from chainkit.outfiles import csv_safe
from chainkit.pricing import DEFAULT_CATALOGUE, Catalogue, Tier
from chainkit.records import Entry, Usage
from chainkit.report import money
from chainkit.tokens import count_tokens, is_exact

__all__ = [
    "Repriced",
    "Repricing",
    "Swap",
    "csv_safe",
    "measure_swap",
    "parse_swap",
    "recorded_tier",
    "reference_corpus",
    "reprice",
]

TIERS: dict[str, Tier] = {
    "on-demand": "on_demand",
    "on_demand": "on_demand",
    "batch": "batch",
    "flex": "flex",
    "priority": "priority",
}
"""Tier names as the command line spells them (``on-demand``) and as the catalogue does."""

FORMATS = ("table", "markdown", "json", "csv")
MIN_CORPUS_CHARS = 1_000
"""Below this many characters a measured token-count ratio rests on too little text: a warning."""
_RATIO_DIGITS = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Swap:
    """One model priced as another, with the token-count ratio measured between them.

    ``ratio`` scales every token class of ``old``'s calls; ``method`` says how it was found.
    """

    old: str
    new: str
    ratio: Decimal = Decimal(1)
    method: str = "not measured"
    corpus: str = ""
    corpus_chars: int = 0

    def scale(self, usage: Usage) -> Usage:
        """``usage`` re-estimated for ``new``: each class times ``ratio``, rounded half-even."""
        if self.ratio == 1:
            return usage

        def times(tokens: int) -> int:
            with localcontext(CONTEXT) as ctx:
                ctx.traps[Inexact] = False
                return int((tokens * self.ratio).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

        write = times(usage.cache_write_tokens)
        return Usage(
            input_tokens=times(usage.input_tokens),
            output_tokens=times(usage.output_tokens),
            cache_read_tokens=times(usage.cache_read_tokens),
            cache_write_tokens=write,
            # Rounded on its own it could pass the total it is part of.
            cache_write_1h_tokens=min(write, times(usage.cache_write_1h_tokens)),
            queries=usage.queries,  # queries are counted, not tokenized
        )


def parse_swap(text: str) -> tuple[str, str]:
    """``OLD=NEW`` as ``(OLD, NEW)``; a one-line error for anything else."""
    old, sep, new = text.partition("=")
    old, new = old.strip(), new.strip()
    if not sep or not old or not new or "=" in new:
        raise ConfigError(
            f"--swap {text!r} is not OLD=NEW: give the recorded model id, '=', and the model to "
            "price its calls as (e.g. --swap anthropic.claude-sonnet-4-20250514-v1:0="
            "amazon.nova-pro-v1:0)."
        )
    return old, new


def reference_corpus(path: str | Path | None = None) -> tuple[str, list[str]]:
    """The texts token-count ratios are measured on, and a name for them.

    ``path``: a text file (one text per line) or JSON Lines with a ``text`` field per line. With
    no path, the recipes' shipped demo traffic (customer messages) is used.
    """
    if path is None:
        try:
            resource = resources.files("recipes").joinpath("data", "demo_traffic.jsonl")
            raw = resource.read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise ConfigError(
                "No reference corpus to measure token-count ratios on: the recipes package (its "
                "demo traffic) is not installed. Pass --corpus FILE (text, one per line, or JSON "
                "Lines with a 'text' field)."
            ) from exc
        name = "recipes/data/demo_traffic.jsonl"
    else:
        where = Path(path)
        try:
            raw = where.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError as exc:
            raise ConfigError(
                f"Corpus file {where} does not exist; give a text or JSON Lines file."
            ) from exc
        name = str(where)
    texts: list[str] = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                text = None
            if not isinstance(text, str):
                raise ConfigError(
                    f"Corpus {name} line {number} is JSON without a string 'text' field "
                    f"({line[:60]!r}); give one text per line or JSON Lines with 'text'."
                )
            line = text
        # Lone surrogates cannot reach a tokenizer: replaced as a provider would refuse them.
        texts.append(line.encode("utf-8", errors="replace").decode("utf-8"))
    if not sum(map(len, texts)):
        raise ConfigError(f"Corpus {name} has no text to measure token counts on.")
    return name, texts


def measure_swap(old: str, new: str, corpus: tuple[str, Sequence[str]] | None = None) -> Swap:
    """The ratio of ``new``'s token count to ``old``'s on ``corpus``, as chainkit counts them."""
    if not is_exact(old) and not is_exact(new):
        # Both families are counted by the same rule of thumb: a ratio would be 1 by
        # construction and would pretend to a measurement.
        return Swap(old, new, Decimal(1), "no tokenizer for either family: counts kept")
    name, texts = corpus if corpus is not None else reference_corpus()
    old_tokens = sum(count_tokens(t, old) for t in texts)
    new_tokens = sum(count_tokens(t, new) for t in texts)
    chars = sum(map(len, texts))
    if old_tokens == 0:
        raise ConfigError(f"Corpus {name} counts to 0 tokens for {old!r}; give a longer corpus.")
    with localcontext(CONTEXT) as ctx:
        ctx.traps[Inexact] = False
        ratio = (Decimal(new_tokens) / Decimal(old_tokens)).quantize(_RATIO_DIGITS)
    how = {
        (True, True): "both counted with Mistral's tokenizer",
        (True, False): f"{new} estimated at 4 chars/token, {old} counted with Mistral's tokenizer",
        (False, True): f"{new} counted with Mistral's tokenizer, {old} estimated at 4 chars/token",
    }[(is_exact(old), is_exact(new))]
    return Swap(old, new, ratio, f"measured: {how}", name, chars)


@dataclass(frozen=True, slots=True)
class Repriced:
    """The entries of one recorded model (and what it is priced as), recorded and repriced."""

    model: str | None
    priced_as: str | None
    entries: int
    recorded_usage: Usage
    usage: Usage
    recorded_cost: Decimal | None
    cost: Decimal | None
    priced_cost: Decimal
    unknown: int
    kept: int
    estimated: bool
    reasons: tuple[str, ...] = ()

    @property
    def delta(self) -> Decimal | None:
        """Repriced minus recorded cost; ``None`` if either is unknown."""
        if self.cost is None or self.recorded_cost is None:
            return None
        with localcontext(CONTEXT):
            return self.cost - self.recorded_cost


@dataclass(frozen=True, slots=True)
class Repricing:
    """A ledger's recorded run beside the same usage at other prices."""

    catalogue: str
    region: str | None
    tier: Tier | Literal["recorded"]
    rows: tuple[Repriced, ...]
    swaps: tuple[Swap, ...] = ()
    tiers: Mapping[str, int] = field(default_factory=dict)
    """With ``tier="recorded"``: how many entries were priced at each tier."""

    @property
    def entries(self) -> int:
        """Entries read from the ledger."""
        return sum(r.entries for r in self.rows)

    @property
    def recorded_cost(self) -> Decimal | None:
        """What the run cost as recorded; ``None`` if some entry's cost was unknown."""
        return exact_sum(r.recorded_cost for r in self.rows)

    @property
    def cost(self) -> Decimal | None:
        """What the run costs at the new prices; ``None`` if some entry could not be priced."""
        return exact_sum(r.cost for r in self.rows)

    @property
    def priced_cost(self) -> Decimal:
        """The sum of the entries that could be priced (a lower bound when some could not)."""
        total = exact_sum(r.priced_cost for r in self.rows)
        assert total is not None  # priced costs are never unknown
        return total

    @property
    def unknown(self) -> int:
        """Entries whose repriced cost is unknown."""
        return sum(r.unknown for r in self.rows)

    @property
    def estimated(self) -> bool:
        """Whether any figure rests on re-estimated token counts (a model swap)."""
        return any(r.estimated for r in self.rows)

    @property
    def delta(self) -> Decimal | None:
        """Repriced minus recorded cost; ``None`` if either is unknown."""
        if self.cost is None or self.recorded_cost is None:
            return None
        with localcontext(CONTEXT):
            return self.cost - self.recorded_cost

    def to_dict(self) -> dict[str, Any]:
        """Every figure, money as exact decimal strings."""
        return {
            "catalogue": self.catalogue,
            "region": self.region,
            "tier": self.tier,
            "tiers": dict(self.tiers),
            "entries": self.entries,
            "recorded_cost": money(self.recorded_cost),
            "cost": money(self.cost),
            "priced_cost": money(self.priced_cost),
            "delta": money(self.delta),
            "unknown_entries": self.unknown,
            "estimated": self.estimated,
            "warnings": self.warnings,
            "swaps": [
                {
                    "old": s.old,
                    "new": s.new,
                    "token_ratio": str(s.ratio),
                    "method": s.method,
                    "corpus": s.corpus,
                    "corpus_chars": s.corpus_chars,
                }
                for s in self.swaps
            ],
            "models": [
                {
                    "model": r.model,
                    "priced_as": r.priced_as,
                    "entries": r.entries,
                    "recorded_input_tokens": r.recorded_usage.input_tokens,
                    "recorded_output_tokens": r.recorded_usage.output_tokens,
                    "input_tokens": r.usage.input_tokens,
                    "output_tokens": r.usage.output_tokens,
                    "cache_read_tokens": r.usage.cache_read_tokens,
                    "cache_write_tokens": r.usage.cache_write_tokens,
                    "recorded_cost": money(r.recorded_cost),
                    "cost": money(r.cost),
                    "priced_cost": money(r.priced_cost),
                    "delta": money(r.delta),
                    "unknown_entries": r.unknown,
                    "kept_entries": r.kept,
                    "estimated": r.estimated,
                    "reasons": list(r.reasons),
                }
                for r in self.rows
            ],
        }

    def to_json(self) -> str:
        """The figures as JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["model", "priced as", "entries", "in tok", "out tok", "recorded", "repriced", "Δ"]
        rows = []
        for r in self.rows:
            priced_as = "-" if r.priced_as is None else r.priced_as
            if r.priced_as == r.model and r.priced_as is not None:
                priced_as = "(same)"
            rows.append(
                [
                    "(no model call)" if r.model is None else r.model,
                    priced_as + (" ~" if r.estimated else ""),
                    f"{r.entries:,}",
                    f"{r.usage.input_tokens:,}",
                    f"{r.usage.output_tokens:,}",
                    usd(r.recorded_cost),
                    usd(r.cost) if r.cost is not None else f"unknown ({r.unknown})",
                    _signed(r.delta),
                ]
            )
        rows.append(
            [
                "total",
                "",
                f"{self.entries:,}",
                "",
                "",
                usd(self.recorded_cost),
                usd(self.cost) if self.cost is not None else f"unknown ({self.unknown})",
                _signed(self.delta),
            ]
        )
        return head, rows

    def _title(self) -> str:
        where = self.region or "us-east-1 (default)"
        if self.tier == "recorded":
            return (
                f"Repriced at {self.catalogue}, {where}, each entry at the tier it recorded "
                "(its tier tag; on-demand without one)"
            )
        return f"Repriced at {self.catalogue}, {where}, tier {self.tier.replace('_', '-')}"

    @property
    def warnings(self) -> list[str]:
        """What makes the figures rough: a swap ratio measured on a tiny corpus."""
        return [
            f"WARNING: swap {s.old} -> {s.new}: the ratio was measured on {s.corpus_chars:,} "
            f"characters of {s.corpus}; give a corpus of {MIN_CORPUS_CHARS:,} or more "
            "(--corpus) for a ratio worth the name."
            for s in self.swaps
            if s.corpus and s.corpus_chars < MIN_CORPUS_CHARS
        ]

    def _notes(self) -> list[str]:
        notes = list(self.warnings)
        if self.tiers:
            counts = ", ".join(
                f"{n:,} {t.replace('_', '-')}" for t, n in sorted(self.tiers.items())
            )
            notes.append(f"entries by tier: {counts}")
        for s in self.swaps:
            line = f"swap {s.old} -> {s.new}: token counts x{s.ratio} ({s.method}"
            line += f"; corpus {s.corpus}, {s.corpus_chars:,} chars)" if s.corpus else ")"
            notes.append(line)
        if self.estimated:
            notes.append("~ estimated: a swapped model's token counts are estimates")
        if self.cost is None:
            notes.append(
                f"{self.unknown} entries could not be priced (total unknown); the priced part "
                f"comes to {usd(self.priced_cost)}."
            )
        for r in self.rows:
            notes += [f"{r.model}: {reason}" for reason in r.reasons]
        return notes

    def to_table(self) -> str:
        """A terminal table with the recorded run beside the repriced one."""
        head, rows = self._cells()
        return "\n".join([self._title(), _grid(head, rows), *self._notes()])

    def to_markdown(self) -> str:
        """The same table in Markdown."""
        head, rows = self._cells()
        notes = [f"- {n}" for n in self._notes()]
        return "\n".join([f"**{self._title()}**", "", _markdown(head, rows), "", *notes]).rstrip()

    def to_csv(self) -> str:
        """A row per recorded model, then a total row; money as exact decimal strings."""
        out = io.StringIO()
        writer = _SafeWriter(out)
        writer.writerow(
            [
                "model",
                "priced_as",
                "entries",
                "input_tokens",
                "output_tokens",
                "recorded_cost",
                "cost",
                "priced_cost",
                "unknown_entries",
                "estimated",
            ]
        )
        for r in self.rows:
            writer.writerow(
                [
                    r.model or "",
                    r.priced_as or "",
                    r.entries,
                    r.usage.input_tokens,
                    r.usage.output_tokens,
                    money(r.recorded_cost) or "",
                    money(r.cost) or "",
                    money(r.priced_cost),
                    r.unknown,
                    r.estimated,
                ]
            )
        writer.writerow(
            [
                "total",
                "",
                self.entries,
                "",
                "",
                money(self.recorded_cost) or "",
                money(self.cost) or "",
                money(self.priced_cost),
                self.unknown,
                self.estimated,
            ]
        )
        return out.getvalue().rstrip("\n")

    def render(self, fmt: str) -> str:
        """The report as ``table``, ``markdown``, ``json`` or ``csv``."""
        return {
            "table": self.to_table,
            "markdown": self.to_markdown,
            "json": self.to_json,
            "csv": self.to_csv,
        }[check_format(fmt)]()


class _SafeWriter:
    """``csv.writer`` whose cells pass through :func:`csv_safe`."""

    def __init__(self, out: io.StringIO) -> None:
        self._writer = csv.writer(out, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([csv_safe(c) for c in row])


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`; else a one-line error."""
    if fmt not in FORMATS:
        raise ConfigError(f"Format {fmt!r} is not one of {', '.join(FORMATS)}.")
    return fmt


def check_tier(tier: str) -> Tier:
    """A tier as the catalogue names it, from either spelling (``on-demand`` or ``on_demand``)."""
    found = TIERS.get(tier)
    if found is None:
        raise ConfigError(
            f"Tier {tier!r} is not one of batch, flex, priority, on-demand; choose one of those."
        )
    return found


class _Group:
    __slots__ = (
        "costs",
        "entries",
        "estimated",
        "kept",
        "priced",
        "reasons",
        "recorded",
        "recorded_costs",
        "unknown",
        "usage",
    )

    def __init__(self, estimated: bool) -> None:
        self.entries = 0
        self.kept = 0
        self.unknown = 0
        self.estimated = estimated
        self.usage = Usage()
        self.recorded = Usage()
        self.recorded_costs: list[Decimal | None] = []
        self.costs: list[Decimal | None] = []
        self.priced: list[Decimal] = []
        self.reasons: dict[str, None] = {}

    def add(self, entry: Entry, usage: Usage | None, cost: Decimal | None) -> None:
        self.entries += 1
        self.recorded_costs.append(entry.cost)
        self.costs.append(cost)
        if cost is None:
            self.unknown += 1
        else:
            self.priced.append(cost)
        if entry.usage is not None and usage is not None:
            self.recorded += entry.usage
            self.usage += usage


def reprice(
    ledger: Ledger | Iterable[Entry],
    *,
    catalogue: Catalogue | str = DEFAULT_CATALOGUE,
    region: str | None = None,
    tier: Tier | str | None = None,
    swaps: Mapping[str, str] | Sequence[Swap] = (),
    corpus: tuple[str, Sequence[str]] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Repricing:
    """Price every entry of ``ledger`` again at ``catalogue``/``region``/``tier``, with swaps.

    Args:
        ledger: any ledger (in memory, SQLite, PostgreSQL) or entries.
        catalogue: a :class:`Catalogue` or a name :meth:`Catalogue.load` takes.
        region: the AWS region to price in (``None``: each card's default, us-east-1 first).
        tier: ``on_demand`` (or ``on-demand``), ``batch``, ``flex`` or ``priority`` for every
            entry; ``None`` (the default): each entry at the tier it was recorded at, its
            ``tier`` tag (chainkit tags batch jobs' entries ``tier=batch``), on-demand without
            one, so that repricing at the recorded prices gives back the recorded cost.
        swaps: ``{old: new}`` model ids (or :class:`Swap` records already measured).
        corpus: ``(name, texts)`` the token-count ratios of swaps are measured on
            (:func:`reference_corpus` by default).
        tags: only the entries carrying all these tags (e.g. ``{"variant": "single-llm"}``).
    """
    cat = catalogue if isinstance(catalogue, Catalogue) else Catalogue.load(catalogue)
    chosen = None if tier is None else check_tier(tier)
    tiers: dict[str, int] = {}
    measured = _swaps(cat, swaps, corpus)
    groups: dict[tuple[str | None, str | None], _Group] = {}
    resolved: dict[str | None, Swap | None] = {}
    for entry in tagged(ledger, tags):
        if entry.model not in resolved:
            resolved[entry.model] = _swap_for(entry.model, measured, cat)
        swap = resolved[entry.model]
        priced_as = swap.new if swap is not None else entry.model
        group = groups.get((entry.model, priced_as))
        if group is None:
            group = groups[(entry.model, priced_as)] = _Group(swap is not None)
        if entry.usage is None or priced_as is None:
            # Nothing to reprice: no model call was made, or its usage never arrived.
            group.kept += 1
            if entry.cost is None:
                group.reasons["cost unknown when recorded, and no usage to reprice"] = None
            group.add(entry, None, entry.cost)
            continue
        usage = entry.usage if swap is None else swap.scale(entry.usage)
        cost: Decimal | None = None
        used = chosen if chosen is not None else recorded_tier(entry)
        if chosen is None:
            tiers[used] = tiers.get(used, 0) + 1
        try:
            cost = cat.cost(priced_as, usage, region=region, tier=used, at=entry.time)
        except ChainkitError as exc:
            group.reasons[" ".join(str(exc).split())] = None
        group.add(entry, usage, cost)
    rows = tuple(
        Repriced(
            model=model,
            priced_as=priced_as,
            entries=g.entries,
            recorded_usage=g.recorded,
            usage=g.usage,
            recorded_cost=exact_sum(g.recorded_costs),
            cost=exact_sum(g.costs),
            priced_cost=exact_sum(g.priced) or Decimal(0),
            unknown=g.unknown,
            kept=g.kept,
            estimated=g.estimated,
            reasons=tuple(g.reasons),
        )
        for (model, priced_as), g in sorted(
            groups.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or "", kv[0][1] or "")
        )
    )
    return Repricing(cat.name, region, chosen or "recorded", rows, measured, tiers)


def recorded_tier(entry: Entry) -> Tier:
    """The service tier ``entry`` was priced at: its ``tier`` tag if that names one, else on-demand.

    A ``tier`` tag that names no service tier (an application's own "tier=gold") is not one.
    """
    return TIERS.get(entry.tags.get("tier", ""), "on_demand")


def tagged(ledger: Ledger | Iterable[Entry], tags: Mapping[str, str] | None) -> Iterator[Entry]:
    """The entries of ``ledger`` that carry every one of ``tags`` (all of them if none)."""
    entries = ledger.iter_entries() if isinstance(ledger, Ledger) else ledger
    wanted = list((tags or {}).items())
    for entry in entries:
        if all(entry.tags.get(k) == v for k, v in wanted):
            yield entry


def _swaps(
    cat: Catalogue,
    swaps: Mapping[str, str] | Sequence[Swap],
    corpus: tuple[str, Sequence[str]] | None,
) -> tuple[Swap, ...]:
    pairs = list(swaps.items()) if isinstance(swaps, Mapping) else None
    if pairs is None:
        measured = [s for s in swaps if isinstance(s, Swap)]
        if len(measured) != len(swaps):
            raise ConfigError("swaps must be a mapping {old: new} or a sequence of Swap records.")
    else:
        measured = []
        for old, new in pairs:
            # The new model must be priced somewhere in the catalogue; a typo fails here, once.
            cat.card(new)
            measured.append(measure_swap(old, new, corpus))
    olds = [cat.card(s.old).id if s.old in cat else s.old for s in measured]
    if len(set(olds)) != len(olds):
        raise ConfigError(f"A model is swapped twice ({olds}); give one --swap per model.")
    return tuple(measured)


def _swap_for(model: str | None, swaps: Sequence[Swap], cat: Catalogue) -> Swap | None:
    """The swap that applies to ``model``: by its id, or by the catalogue card both name."""
    if model is None:
        return None
    for s in swaps:
        if s.old == model:
            return s
    if model in cat:
        card = cat.card(model).id
        for s in swaps:
            if s.old in cat and cat.card(s.old).id == card:
                return s
    return None


def _signed(amount: Decimal | None) -> str:
    if amount is None:
        return "-"
    return ("+" if amount > 0 else "-" if amount < 0 else "") + usd(abs(amount))


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _grid(head: list[str], rows: list[list[str]]) -> str:
    # Model ids come from the ledger: a newline in one would forge a row of the table.
    rows = [[c.translate(_CONTROL) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    lines += [
        "| " + " | ".join(c.translate(_CONTROL).replace("|", "\\|") for c in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------


def add_ledger_arguments(parser: Any) -> None:
    """The arguments ``reprice`` and ``commitments`` share: ledger, catalogue, region, swaps."""
    parser.add_argument("ledger", help="ledger file (SQLiteLedger) or postgresql:// DSN")
    parser.add_argument(
        "--schema", default="chainkit", help="PostgreSQL: the ledger's schema (default chainkit)"
    )
    parser.add_argument(
        "--catalogue",
        default=DEFAULT_CATALOGUE,
        help=f"price catalogue: a bundled name or a JSON file (default {DEFAULT_CATALOGUE})",
    )
    parser.add_argument("--region", default=None, help="AWS region to price in (default us-east-1)")
    parser.add_argument(
        "--swap",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="price OLD's calls as NEW's, token counts re-estimated (repeatable)",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="text or JSON Lines file to measure swap token ratios on (default: the recipes' "
        "demo traffic)",
    )
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only entries with this tag, e.g. --tag variant=single-llm (repeatable)",
    )
    parser.add_argument("--format", choices=list(FORMATS), default="table")


def tags_of(args: Any) -> dict[str, str]:
    """``--tag KEY=VALUE`` arguments as a mapping."""
    found: dict[str, str] = {}
    for text in args.tag:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"--tag {text!r} is not KEY=VALUE (e.g. --tag variant=single-llm).")
        found[key] = value
    return found


def swaps_of(args: Any) -> dict[str, str]:
    """``--swap OLD=NEW`` arguments as a mapping; a model swapped twice is an error."""
    found: dict[str, str] = {}
    for text in args.swap:
        old, new = parse_swap(text)
        if old in found:
            raise ConfigError(f"--swap names {old!r} twice; give one --swap per model.")
        found[old] = new
    return found


def corpus_of(args: Any, swaps: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """The corpus named by ``--corpus``, read only when a swap needs a measured ratio."""
    if args.corpus is None or not swaps:
        return None
    return reference_corpus(args.corpus)


def _run(args: Any) -> str:
    swaps = swaps_of(args)
    corpus = corpus_of(args, swaps)
    from chainkit.finops.commands import open_ledger

    with open_ledger(args.ledger, args.schema) as ledger:
        result = reprice(
            ledger,
            catalogue=args.catalogue,
            region=args.region,
            tier=args.tier,
            swaps=swaps,
            corpus=corpus,
            tags=tags_of(args),
        )
    return result.render(args.format)


def add_command(sub: Any) -> None:
    """Register ``chainkit reprice`` on the ``chainkit`` command's subparsers."""
    parser = sub.add_parser(
        "reprice",
        help="the recorded usage under other prices, tiers or models (no model is called)",
        description="Price a ledger's recorded usage again at another catalogue, region, tier "
        "or model, entry by entry, beside the recorded cost. Repricing at the recorded prices "
        "gives the recorded cost exactly. A swapped model's token counts are re-estimated "
        "(marked ~). The ledger is only read.",
    )
    add_ledger_arguments(parser)
    parser.add_argument(
        "--tier",
        choices=["on-demand", "batch", "flex", "priority"],
        default=None,
        help="service tier to price every entry at (default: each entry at the tier it "
        "recorded: its tier tag, else on-demand)",
    )
    parser.set_defaults(run=_run)
