"""Cost per conversation and per turn index: where a chat's history makes its cost grow.

A turn's cost is the sum of every serving entry of its request (pre-scan, history summariser,
generator...), priced entry by entry and summed exactly. A turn with any entry of unknown cost
has an unknown cost (``None``), and so has every total it is part of; the count of such turns
is shown. Means per turn index are quotients with 20 significant digits
(:data:`chainkit.report.QUOTIENT`).

    >>> import chainkit as ck
    >>> conversation_report(ck.Ledger()).to_table()
    'No conversations in this ledger (turns are recorded by the History stage).'
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Literal

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.ledger.conversations import TurnCost, conversations
from chainkit.money import exact_sum, usd
from chainkit.outfiles import csv_safe
from chainkit.report import QUOTIENT, money

__all__ = ["ConversationLine", "ConversationReport", "TurnLine", "conversation_report"]

By = Literal["conversation", "turn"]


def _mean(amount: Decimal | None, n: int) -> Decimal | None:
    if amount is None or n == 0:
        return None
    with localcontext(QUOTIENT):
        return amount / n


def _text(amount: Decimal | None) -> str | None:
    # Plain decimal digits ("0.000000105", never "1.05E-7"): what spreadsheets and JSON readers
    # take as a number.
    return money(amount)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}


def _shown(text: str) -> str:
    """A conversation id or tenant for a table: control characters escaped (one line a row)."""
    return text.translate(_CONTROL)


_IDS = ("tenant", "conversation")  # CSV columns of identifiers: text, never numbers


@dataclass(frozen=True, slots=True)
class ConversationLine:
    """One conversation (of one tenant): its turns, what they cost in all, and its last turn's."""

    conversation_id: str
    turns: int
    cost: Decimal | None
    avoided_cost: Decimal | None
    input_tokens: int
    output_tokens: int
    history_tokens: int
    trimmed_tokens: int
    unknown_turns: int
    last_turn_cost: Decimal | None
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class TurnLine:
    """One turn index (0: the first question) over every conversation that reached it."""

    turn: int
    conversations: int
    cost: Decimal | None
    mean_cost: Decimal | None
    mean_input_tokens: Decimal | None
    mean_history_tokens: Decimal | None
    mean_trimmed_tokens: Decimal | None
    unknown_turns: int


@dataclass(frozen=True, slots=True)
class ConversationReport:
    """Cost per conversation and per turn index, with renderings for people and machines."""

    conversations: tuple[ConversationLine, ...]
    turns: tuple[TurnLine, ...]

    def rows(self, by: By) -> list[dict[str, object]]:
        """One dict per line, money as exact decimal strings (``None``: unknown)."""
        if by == "conversation":
            return [
                {
                    "tenant": c.tenant,
                    "conversation": c.conversation_id,
                    "turns": c.turns,
                    "cost": _text(c.cost),
                    "cost_per_turn": _text(_mean(c.cost, c.turns)),
                    "last_turn_cost": _text(c.last_turn_cost),
                    "avoided_cost": _text(c.avoided_cost),
                    "input_tokens": c.input_tokens,
                    "output_tokens": c.output_tokens,
                    "history_tokens": c.history_tokens,
                    "trimmed_tokens": c.trimmed_tokens,
                    "unknown_turns": c.unknown_turns,
                }
                for c in self.conversations
            ]
        if by == "turn":
            return [
                {
                    "turn": t.turn,
                    "conversations": t.conversations,
                    "cost": _text(t.cost),
                    "mean_cost": _text(t.mean_cost),
                    "mean_input_tokens": _text(t.mean_input_tokens),
                    "mean_history_tokens": _text(t.mean_history_tokens),
                    "mean_trimmed_tokens": _text(t.mean_trimmed_tokens),
                    "unknown_turns": t.unknown_turns,
                }
                for t in self.turns
            ]
        raise ConfigError(f"by must be 'conversation' or 'turn', got {by!r}.")

    def to_json(self, by: By = "conversation") -> str:
        """The lines as a JSON array; every amount an exact decimal string."""
        return json.dumps(self.rows(by), ensure_ascii=False, indent=1)

    def to_csv(self, by: By = "conversation") -> str:
        """The lines as CSV with a header row; amounts exact, unknown ones empty.

        A tenant or conversation id that starts with ``=``, ``+``, ``-`` or ``@`` is written
        with a leading ``'``, so that a spreadsheet shows it rather than runs it.
        """
        rows = [
            {k: csv_safe(v, text=True) if k in _IDS and isinstance(v, str) else v
             for k, v in row.items()}
            for row in self.rows(by)
        ]  # fmt: skip
        out = io.StringIO()
        fields = list(rows[0]) if rows else _HEADERS[by]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")

    def _cells(self, by: By) -> tuple[list[str], list[list[str]]]:
        if by == "conversation":
            head = ["tenant", "conversation", "turns", "cost", "per turn", "last turn", "avoided",
                    "input tok", "history tok", "trimmed tok"]  # fmt: skip
            body = [
                [
                    _shown(c.tenant) or "-",
                    _shown(c.conversation_id),
                    f"{c.turns:,}",
                    usd(c.cost),
                    usd(_mean(c.cost, c.turns)),
                    usd(c.last_turn_cost),
                    usd(c.avoided_cost),
                    f"{c.input_tokens:,}",
                    f"{c.history_tokens:,}",
                    f"{c.trimmed_tokens:,}",
                ]
                for c in self.conversations
            ]
            return head, body
        head = ["turn", "conversations", "cost", "mean cost", "mean input tok",
                "mean history tok", "mean trimmed tok"]  # fmt: skip
        body = [
            [
                str(t.turn),
                f"{t.conversations:,}",
                usd(t.cost),
                usd(t.mean_cost),
                _tokens(t.mean_input_tokens),
                _tokens(t.mean_history_tokens),
                _tokens(t.mean_trimmed_tokens),
            ]
            for t in self.turns
        ]
        return head, body

    def _empty(self) -> str | None:
        if self.conversations:
            return None
        return "No conversations in this ledger (turns are recorded by the History stage)."

    def to_table(self, by: By = "conversation") -> str:
        """An aligned text table (money for people: ``chainkit.money.usd``)."""
        empty = self._empty()
        if empty is not None:
            return empty
        head, body = self._cells(by)
        widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
        texts = 2 if by == "conversation" else 1  # names left, figures right
        lines = [
            "  ".join(
                c.ljust(w) if i < texts else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
            for r in (head, *body)
        ]
        return "\n".join(lines + self._notes())

    def to_markdown(self, by: By = "conversation") -> str:
        """The same table in Markdown."""
        empty = self._empty()
        if empty is not None:
            return empty
        head, body = self._cells(by)
        lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
        return "\n".join(lines + self._notes())

    def _notes(self) -> list[str]:
        unknown = sum(c.unknown_turns for c in self.conversations)
        if not unknown:
            return []
        return [
            f"{unknown} turns include an entry of unknown cost (a failed or unpriced call): "
            "their totals are unknown, never counted as $0."
        ]


_HEADERS: dict[str, list[str]] = {
    "conversation": [
        "tenant",
        "conversation",
        "turns",
        "cost",
        "cost_per_turn",
        "last_turn_cost",
        "avoided_cost",
        "input_tokens",
        "output_tokens",
        "history_tokens",
        "trimmed_tokens",
        "unknown_turns",
    ],
    "turn": [
        "turn",
        "conversations",
        "cost",
        "mean_cost",
        "mean_input_tokens",
        "mean_history_tokens",
        "mean_trimmed_tokens",
        "unknown_turns",
    ],
}


def _tokens(mean: Decimal | None) -> str:
    return "-" if mean is None else f"{mean:,.1f}"


def conversation_report(ledger: Ledger) -> ConversationReport:
    """Cost per conversation (by tenant, then id) and per turn index, from any ledger.

    A conversation is its tenant tag and its id: two tenants' conversations ``"1"`` are two
    lines.
    """
    costs = conversations(ledger).costs()
    by_conversation: dict[tuple[str, str], list[TurnCost]] = {}
    by_turn: dict[int, list[TurnCost]] = {}
    for c in costs:
        by_conversation.setdefault((c.tenant, c.conversation_id), []).append(c)
        by_turn.setdefault(c.turn, []).append(c)
    lines = []
    for (tenant, cid), turns in sorted(by_conversation.items()):
        turns.sort(key=lambda t: t.turn)
        lines.append(
            ConversationLine(
                cid,
                len(turns),
                exact_sum(t.cost for t in turns),
                exact_sum(t.avoided_cost for t in turns),
                sum(t.input_tokens for t in turns),
                sum(t.output_tokens for t in turns),
                sum(t.history_tokens for t in turns),
                sum(t.trimmed_tokens for t in turns),
                sum(1 for t in turns if t.cost is None),
                turns[-1].cost,
                tenant,
            )
        )
    per_turn = []
    for index, turns in sorted(by_turn.items()):
        n = len(turns)
        total = exact_sum(t.cost for t in turns)
        per_turn.append(
            TurnLine(
                index,
                n,
                total,
                _mean(total, n),
                _mean(Decimal(sum(t.input_tokens for t in turns)), n),
                _mean(Decimal(sum(t.history_tokens for t in turns)), n),
                _mean(Decimal(sum(t.trimmed_tokens for t in turns)), n),
                sum(1 for t in turns if t.cost is None),
            )
        )
    return ConversationReport(tuple(lines), tuple(per_turn))
