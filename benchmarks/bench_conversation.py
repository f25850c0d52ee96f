"""Benchmark: what a conversation costs as it grows, with and without a History policy.

Committed results (``benchmarks/results/conversation.md`` and ``.json``) come from::

    .venv/bin/python benchmarks/bench_conversation.py
        --json benchmarks/results/conversation.json --markdown benchmarks/results/conversation.md

Conversations are built from the real Bitext customer-support data (``../shared/data``): user
turns are Bitext test messages, in order, and each answer is the Bitext reference reply to that
message (so answers have the real lengths of support replies, 50-400 tokens). Claude Sonnet 4 on
Bedrock answers (``Generate``, priced from the bundled Bedrock catalogue; token counts of the
real prompts, history included, by chainkit's estimator: offline, no model is called). For each
length N in 1, 5, 10, 20, 40 turns, 10 conversations per length, every policy:

- ``none``: ``History(priced_as=...)``, every earlier turn resent (the quadratic baseline);
- ``last_turns=4``;
- ``max_tokens=1000``;
- ``summarise``: ``last_turns=4`` with Nova Micro folding older turns into a running summary of at
  most 200 tokens (the offline stand-in writes an extractive summary of real length; its calls
  are paid entries of the history stage).

Figures are mean cost per conversation, the growth from 20 to 40 turns (x4 is quadratic, x2
linear), and the cost of each turn index at N=40 (``chainkit.finops.conversations``).
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_header import header

from chainkit import (
    Conversation,
    Generate,
    History,
    Ledger,
    OfflineModel,
    Pipeline,
    ScriptedModel,
)
from chainkit.finops.conversations import conversation_report
from chainkit.money import usd
from chainkit.providers.model import Prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BITEXT = DATA / "bitext_customer_support" / "bitext_customer_support.jsonl"
GENERATOR = "anthropic.claude-sonnet-4-20250514-v1:0"
SUMMARISER = "amazon.nova-micro-v1:0"
LENGTHS = (1, 5, 10, 20, 40)
PER_LENGTH = 10


def read_pairs() -> list[tuple[str, str]]:
    if not BITEXT.exists():
        raise SystemExit(f"Bitext data not found at {BITEXT}: see ../shared/data/README.")
    pairs = []
    with BITEXT.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "test":
                pairs.append((row["text"], row["response"]))
    return pairs


def policies() -> dict[str, History]:
    summariser = OfflineModel(model_id=SUMMARISER)
    return {
        "none": History(priced_as=GENERATOR),
        "last_turns=4": History(priced_as=GENERATOR, last_turns=4),
        "max_tokens=1000": History(priced_as=GENERATOR, max_tokens=1000),
        "summarise": History(
            priced_as=GENERATOR, last_turns=4, summarise_with=summariser, summary_tokens=200
        ),
    }


def run(pairs: list[tuple[str, str]]) -> dict[str, object]:
    replies = dict(pairs)

    def answer(prompt: Prompt) -> str:
        return replies[prompt.user]

    out: dict[str, object] = {}
    cursor = 0
    plan = []
    for n in LENGTHS:
        for k in range(PER_LENGTH):
            chosen = [pairs[(cursor + i) % len(pairs)] for i in range(n)]
            cursor += n
            plan.append((n, k, chosen))
    for name, history in policies().items():
        model = ScriptedModel(model_id=GENERATOR, reply=answer)
        bot = Pipeline([history, Generate(model=model, max_tokens=600)])
        ledger = Ledger()
        for n, k, chosen in plan:
            conversation = Conversation(f"n{n:02d}-{k}")
            for i, (text, _) in enumerate(chosen):
                result = bot.run(conversation.request(text, id=f"{name}/n{n}-{k}/{i}"), ledger)
                conversation = conversation.after(result)
        report = conversation_report(ledger)
        means: dict[int, Decimal] = {}
        for n in LENGTHS:
            lines = [c for c in report.conversations if c.conversation_id.startswith(f"n{n:02d}-")]
            total = sum((c.cost or Decimal(0) for c in lines), Decimal(0))
            means[n] = total / len(lines)
        long = [c for c in report.conversations if c.conversation_id.startswith("n40-")]
        per_turn: dict[int, list[Decimal]] = {}
        for turn_cost in _turn_costs(ledger, "n40-"):
            per_turn.setdefault(turn_cost[0], []).append(turn_cost[1])
        summariser = sum(
            (e.cost or Decimal(0) for e in ledger if e.stage == "history" and e.model),
            Decimal(0),
        )
        out[name] = {
            "mean_cost_by_turns": {str(n): str(v) for n, v in means.items()},
            "growth_20_to_40": str((means[40] / means[20]).quantize(Decimal("0.01"))),
            "turn_cost_at_40": {
                str(t): str(sum(v, Decimal(0)) / len(v)) for t, v in sorted(per_turn.items())
            },
            "history_tokens_40": sum(c.history_tokens for c in long) // len(long),
            "trimmed_tokens_40": sum(c.trimmed_tokens for c in long) // len(long),
            "summariser_cost_total": str(summariser),
            "total_cost": str(ledger.cost),
            "avoided_cost_total": str(ledger.totals().avoided_cost),
        }
    return out


def _turn_costs(ledger: Ledger, prefix: str) -> list[tuple[int, Decimal]]:
    from chainkit.ledger.conversations import conversations

    return [
        (c.turn, c.cost or Decimal(0))
        for c in conversations(ledger).costs()
        if c.conversation_id.startswith(prefix)
    ]


def markdown(results: dict[str, object]) -> list[str]:
    names = list(results)
    lines = header(
        "Conversation cost vs length, with and without a History policy", "bench_conversation.py"
    )
    lines += [
        f"Generator {GENERATOR} (Bedrock catalogue), summariser {SUMMARISER}; "
        f"{PER_LENGTH} conversations per length from Bitext test messages and reference replies.",
        "",
        "Mean cost per conversation:",
        "",
        "| turns | " + " | ".join(names) + " |",
        "| ---: |" + " ---: |" * len(names),
    ]
    for n in LENGTHS:
        row = [usd(Decimal(results[p]["mean_cost_by_turns"][str(n)])) for p in names]  # type: ignore[index]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines.append(
        "| growth 20 -> 40 turns | "
        + " | ".join(f"x{results[p]['growth_20_to_40']}" for p in names)  # type: ignore[index]
        + " |"
    )
    lines += ["", "Mean cost of each turn index in the 40-turn conversations:", ""]
    lines += ["| turn | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    for t in (0, 1, 4, 9, 19, 29, 39):
        row = [usd(Decimal(results[p]["turn_cost_at_40"][str(t)])) for p in names]  # type: ignore[index]
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    lines += ["", "At 40 turns, per conversation (means):", ""]
    lines += ["| policy | history tokens sent | trimmed | summariser spend (all) | avoided (all) |"]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    for p in names:
        r = results[p]
        lines.append(
            f"| {p} | {r['history_tokens_40']:,} | {r['trimmed_tokens_40']:,} | "  # type: ignore[index]
            f"{usd(Decimal(r['summariser_cost_total']))} | "  # type: ignore[index]
            f"{usd(Decimal(r['avoided_cost_total']))} |"  # type: ignore[index]
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    results = run(read_pairs())
    text = "\n".join(markdown(results)) + "\n"
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
