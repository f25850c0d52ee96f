"""The chatbot recipe on real-data machinery, with a small fixture the test writes itself."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import pytest

from recipes import chatbot, support_bot

PHRASES = {
    "delivery_options": [
        "what delivery options do you have",
        "which shipping methods can I pick",
        "do you offer express shipping",
        "what ways of delivery are there",
    ],
    "check_refund_policy": [
        "what is your refund policy",
        "how does the returns policy work",
        "can I get my money back under your policy",
        "explain the refund rules",
    ],
    "track_order": [
        "where is my order {n}",
        "track order {n} please",
        "status of purchase {n}",
        "has order {n} shipped yet",
    ],
    "cancel_order": [
        "cancel order {n}",
        "I want to cancel purchase {n}",
        "please cancel my order {n} now",
        "how do I cancel order {n}",
    ],
}
SMALL_TALK = {
    "greeting": ["hello there", "hi", "good morning", "hey, hello"],
    "goodbye": ["bye", "goodbye for now", "see you later, bye", "bye bye"],
    "thank_you": ["thanks a lot", "thank you", "many thanks", "thanks so much"],
}
OOS = [
    "what is the capital of peru",
    "play some jazz music",
    "how tall is mount everest",
    "set an alarm for six",
    "translate cat into french",
    "who won the chess match",
    "what is the weather in oslo",
    "tell me a fun fact about owls",
]


def _rows(rng: random.Random, phrases: list[str], n: int) -> list[str]:
    out = []
    for i in range(n):
        text = rng.choice(phrases).format(n=10_000 + rng.randrange(90_000))
        out.append(text if i % 3 else text.capitalize() + "?")
    return out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rng = random.Random(3)
    bitext = tmp_path / "bitext_customer_support"
    clinc = tmp_path / "clinc150"
    bitext.mkdir()
    clinc.mkdir()
    with (bitext / "bitext_customer_support.jsonl").open("w") as f:
        i = 0
        for intent, phrases in PHRASES.items():
            for split, n in (("train", 30), ("dev", 10), ("test", 10)):
                for text in _rows(rng, phrases, n):
                    row = {
                        "id": f"bitext-{i:05d}",
                        "split": split,
                        "text": text,
                        "intent": intent,
                        "category": "X",
                        "tags": "B",
                        "entity": None,
                        "response": f"Reference reply about {intent.replace('_', ' ')}.",
                    }
                    f.write(json.dumps(row) + "\n")
                    i += 1
    with (clinc / "clinc150_full.jsonl").open("w") as f:
        i = 0
        pools = {**SMALL_TALK, "oos": OOS}
        for intent, phrases in pools.items():
            sizes = (("train", 20), ("dev", 10), ("test", 20))
            for split, n in sizes:
                for text in _rows(rng, phrases, n):
                    row = {
                        "id": f"clinc-{i:05d}",
                        "split": split,
                        "text": text,
                        "intent": intent,
                        "domain": "small_talk" if intent != "oos" else "oos",
                        "in_scope": intent != "oos",
                        "orig_split": split,
                    }
                    f.write(json.dumps(row) + "\n")
                    i += 1
    return tmp_path


def test_the_four_variants_run_and_the_cheap_path_is_right(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        chatbot.main(["--data-dir", str(data_dir), "--traffic", "10000", "--format", "json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == list(support_bot.VARIANTS)
    single, local = variants["single-llm"], variants["prescan-local"]
    assert single["requests"] == local["requests"] == report["assumptions"]["traffic"]["requests"]
    assert Decimal(local["monthly_cost_usd"]) < Decimal(single["monthly_cost_usd"])
    stages = {s["stage"]: s for s in local["by_stage"]}
    assert stages["canned"]["answered"] > 0 and stages["precomputed"]["answered"] > 0
    assert stages["intent_scan"]["cost_usd"] == "0.00"  # the local classifier is free
    quality = local["quality"]
    assert quality["measured_by"].startswith("real")
    assert quality["wrong_canned_rate"] <= 0.01
    assert quality["oos_recall"] >= 0.75
    assert variants["prescan-llm"]["quality"]["measured_by"].startswith("offline stand-in")
    routing = report["assumptions"]["classifier"]
    assert routing["dev"]["wrong_canned_rate"] <= support_bot.MAX_WRONG_CANNED


def test_order_questions_reach_the_responder_with_facts_from_the_shop(data_dir: Path) -> None:
    from chainkit import Ledger

    ledger = Ledger()
    support_bot.run(data_dir, ledger, 10_000)
    generates = [
        e
        for e in ledger.entries()
        if e.tags.get("variant") == "prescan-local" and e.stage == "generate"
    ]
    assert generates, "order-specific traffic must reach the responder"
    # The responder read the shop's facts: its prompts are longer than the bare messages.
    assert all(e.usage is not None and e.usage.input_tokens > 30 for e in generates)
