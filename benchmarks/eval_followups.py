"""Accuracy of the intent pre-scan on follow-up turns, with and without conversation context.

Committed result (``benchmarks/results/followups.md``) comes from::

    .venv/bin/python benchmarks/eval_followups.py --markdown benchmarks/results/followups.md

A two-turn set built from the real Bitext data (``../shared/data``): the first turn of each
conversation is a Bitext test message (gold: its intent); the second is either

- a *follow-up* that names no intent of its own, one of the hand-written phrases below, in
  English, French, Japanese and with emoji (gold: the first turn's intent, which it continues), or
- a *switch*: another Bitext test message of a different intent (gold: its own intent), to check
  that context does not drag a new question back to the old intent, or
- *out of scope*: a CLINC150 out-of-scope test query (gold: the classifier's ``oos``), to check
  that context does not make an unanswerable turn look like the previous one.

``LocalClassifier`` (defaults) is fitted on Bitext train. ``IntentScan`` classifies the second
turn with ``follow_up="off"`` (the turn alone), ``"join"`` (joined to the previous user turn when
less confident than ``follow_up_below``) and ``"inherit"`` (join, then the previous turn's intent);
the previous turn's intent is what the pre-scan predicted for it, as in a live conversation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_header import header

from chainkit import Conversation, IntentScan, Ledger, Turn
from chainkit.classify import LocalClassifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BITEXT = DATA / "bitext_customer_support" / "bitext_customer_support.jsonl"
CLINC = DATA / "clinc150" / "clinc150_full.jsonl"
FOLLOW_UPS = (
    "and the second one?",
    "what about the other one?",
    "same for my other order",
    "and for my wife's account?",
    "can you do that again?",
    "ok, and then?",
    "what if it's the second one?",
    "and the one from last week?",
    "also for 20457 please",
    "is it the same for the other one?",
    "et pour l'autre ?",
    "2つ目はどうですか？",  # noqa: RUF001
    "and this one? 🙏",
    "same question 😅",
)


def read() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    if not BITEXT.exists():
        raise SystemExit(f"Bitext data not found at {BITEXT}: see ../shared/data/README.")
    train, test = [], []
    with BITEXT.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            (train if row["split"] == "train" else test if row["split"] == "test" else []).append(
                (row["text"], row["intent"])
            )
    return train, test


def out_of_scope() -> list[str]:
    if not CLINC.exists():
        raise SystemExit(f"CLINC150 data not found at {CLINC}: see ../shared/data/README.")
    with CLINC.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r["text"] for r in rows if r["split"] == "test" and r["intent"] == "oos"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--below", type=float, default=0.5, help="follow_up_below")
    args = parser.parse_args()
    train, test = read()
    clf = LocalClassifier().fit([t for t, _ in train], [i for _, i in train])
    rng = random.Random(7)
    oos = out_of_scope()
    cases = []
    for k, (text, intent) in enumerate(test):
        cases.append(("follow-up", text, FOLLOW_UPS[k % len(FOLLOW_UPS)], intent))
        other = rng.choice([t for t in test if t[1] != intent])
        cases.append(("switch", text, other[0], other[1]))
        cases.append(("out of scope", text, oos[k % len(oos)], clf.out_of_scope))
    scores: dict[str, dict[str, list[int]]] = {}
    ledger = Ledger()
    first = IntentScan(classifier=clf)
    grid = [("off", None), ("join", None), ("inherit", None), ("join", 6), ("inherit", 6)]
    for mode, words in grid:
        stage = IntentScan(
            classifier=clf,
            follow_up=mode,  # type: ignore[arg-type]
            follow_up_below=args.below,
            follow_up_words=words,
        )
        name = mode if words is None else f"{mode}, follow_up_words={words}"
        for n, (kind, text, second, gold) in enumerate(cases):
            c = Conversation(f"{name}-{n}")
            seen = first.run(c.request(text, id=f"{name}-{n}/0"), ledger)
            c = Conversation(c.id, turns=(Turn("user", text, seen.intent), Turn("assistant", "…")))
            out = stage.run(c.request(second, id=f"{name}-{n}/1"), ledger)
            scores.setdefault(name, {}).setdefault(kind, []).append(int(out.intent == gold))
    lines = header("Intent of follow-up turns, with and without context", "eval_followups.py")
    n_follow = len(scores["off"]["follow-up"])
    n_switch = len(scores["off"]["switch"])
    lines += [
        f"`LocalClassifier()` fitted on Bitext train ({len(train)} texts); {n_follow} follow-ups "
        f"({len(FOLLOW_UPS)} phrases after every Bitext test message) and {n_switch} switches "
        f"(a second Bitext test message of another intent) and {n_switch} out-of-scope CLINC150 "
        f"test queries; follow_up_below={args.below}.",
        "",
        "| follow_up | follow-up accuracy | switch accuracy | out-of-scope recall | all |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, by in scores.items():
        f, s, o = by["follow-up"], by["switch"], by["out of scope"]
        every = f + s + o
        lines.append(
            f"| {mode} | {sum(f) / len(f):.3f} | {sum(s) / len(s):.3f} | {sum(o) / len(o):.3f} "
            f"| {sum(every) / len(every):.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
