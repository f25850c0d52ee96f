import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chainkit import ConfigError
from recipes.support_data import (
    SMALL_TALK,
    Utterance,
    bitext,
    bitext_replies,
    clinc,
    labelled,
    traffic,
)


def order_entity(value: str, span: str, start: int) -> dict[str, Any]:
    return {
        "type": "order_id",
        "value": value,
        "start": start,
        "end": start + len(span),
        "span": span,
    }


def bitext_row(
    n: int, split: str, text: str, intent: str, response: str, entity: Any = None
) -> dict[str, Any]:
    return {
        "id": f"bitext-{n:05d}",
        "split": split,
        "text": text,
        "intent": intent,
        "category": "ORDER",
        "tags": "BIL",
        "entity": entity,
        "response": response,
    }


def clinc_row(n: int, split: str, text: str, intent: str, domain: str) -> dict[str, Any]:
    orig = {"dev": "val"}.get(split, split)
    return {
        "id": f"clinc-{n:05d}",
        "split": split,
        "orig_split": f"oos_{orig}" if intent == "oos" else orig,
        "text": text,
        "intent": intent,
        "domain": domain,
        "in_scope": intent != "oos",
    }


BITEXT_ROWS = [
    bitext_row(
        0,
        "test",
        "can you help me canceling purchase 00004587345?",
        "cancel_order",
        "Cancel it under {{Order Number}}.",
        order_entity("4587345", "00004587345", 35),
    ),
    bitext_row(1, "test", "i want my money back", "get_refund", "Refunds take 5 days."),
    bitext_row(
        2,
        "test",
        "switch to the premium account",
        "switch_account",
        "Go to {{Account Settings}}.",
        {"type": "account_type", "value": "premium", "start": 14, "end": 21, "span": "premium"},
    ),
    bitext_row(3, "test", "where is my parcel", "track_order", "Track it on {{Website Name}}."),
    bitext_row(4, "train", "track order 12345", "track_order", "Train reply A."),
    bitext_row(5, "train", "where is my package", "track_order", "Train reply B."),
    bitext_row(6, "train", "refund please", "get_refund", "Train reply C."),
    bitext_row(7, "dev", "cancel my order", "cancel_order", "Dev reply."),
]
CLINC_ROWS = [
    clinc_row(0, "train", "hello there", "greeting", "small_talk"),
    clinc_row(1, "train", "how do you say hi in french", "oos", "oos"),
    clinc_row(2, "test", "hi", "greeting", "small_talk"),
    clinc_row(3, "test", "good morning", "greeting", "small_talk"),
    clinc_row(4, "test", "bye for now", "goodbye", "small_talk"),
    clinc_row(5, "test", "thanks a lot", "thank_you", "small_talk"),
    clinc_row(6, "test", "are you a robot", "are_you_a_bot", "small_talk"),
    clinc_row(7, "test", "translate cat to spanish", "translate", "travel"),
    clinc_row(8, "test", "what is the tallest mountain", "oos", "oos"),
    clinc_row(9, "test", "how many moons has jupiter", "oos", "oos"),
    clinc_row(10, "test", "who won the cup in 1966", "oos", "oos"),
    clinc_row(11, "dev", "see you later", "goodbye", "small_talk"),
    clinc_row(12, "dev", "what is a quark", "oos", "oos"),
]
TEST_SMALL_TALK = {"clinc-00002", "clinc-00003", "clinc-00004", "clinc-00005"}
TEST_OOS = {"clinc-00008", "clinc-00009", "clinc-00010"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    # A blank line, as a hand-edited file might have, is skipped.
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "bitext_customer_support" / "bitext_customer_support.jsonl", BITEXT_ROWS)
    write_jsonl(tmp_path / "clinc150" / "clinc150_full.jsonl", CLINC_ROWS)
    return tmp_path


def test_bitext_reads_one_split_with_order_numbers(data: Path) -> None:
    rows = bitext(data, "test")

    assert rows == [
        Utterance(
            "bitext-00000",
            "can you help me canceling purchase 00004587345?",
            "cancel_order",
            "bitext",
            4587345,
        ),
        Utterance("bitext-00001", "i want my money back", "get_refund", "bitext", None),
        Utterance("bitext-00002", "switch to the premium account", "switch_account", "bitext"),
        Utterance("bitext-00003", "where is my parcel", "track_order", "bitext"),
    ]
    assert [u.id for u in bitext(data, "dev")] == ["bitext-00007"]


def test_bitext_replies_groups_the_reference_replies_by_intent(data: Path) -> None:
    assert bitext_replies(data) == {
        "track_order": ["Train reply A.", "Train reply B."],
        "get_refund": ["Train reply C."],
    }
    assert bitext_replies(data, "dev") == {"cancel_order": ["Dev reply."]}


def test_clinc_reads_one_split_and_the_given_intents(data: Path) -> None:
    rows = clinc(data, "test", ("greeting", "oos"))

    assert rows == [
        Utterance("clinc-00002", "hi", "greeting", "clinc150"),
        Utterance("clinc-00003", "good morning", "greeting", "clinc150"),
        Utterance("clinc-00008", "what is the tallest mountain", "oos", "clinc150"),
        Utterance("clinc-00009", "how many moons has jupiter", "oos", "clinc150"),
        Utterance("clinc-00010", "who won the cup in 1966", "oos", "clinc150"),
    ]
    assert all(u.order_id is None for u in rows)


def test_labelled_is_bitext_then_small_talk_and_out_of_scope(data: Path) -> None:
    rows = labelled(data, "test")

    assert [u.id for u in rows] == [
        "bitext-00000",
        "bitext-00001",
        "bitext-00002",
        "bitext-00003",
        "clinc-00002",
        "clinc-00003",
        "clinc-00004",
        "clinc-00005",
        "clinc-00008",
        "clinc-00009",
        "clinc-00010",
    ]
    assert set(SMALL_TALK) == {"greeting", "goodbye", "thank_you"}
    assert [u.id for u in labelled(data, "dev")] == ["bitext-00007", "clinc-00011", "clinc-00012"]


def test_traffic_mixes_every_bitext_row_with_sampled_shares_of_clinc(data: Path) -> None:
    mix = traffic(data, small_talk=0.2, out_of_scope=0.3)

    # 4 in-scope rows are half of 8: 0.2 x 8 = 1.6 -> 2 small talk, 0.3 x 8 = 2.4 -> 2 oos.
    assert len(mix) == 8
    ids = [u.id for u in mix]
    assert len(set(ids)) == 8
    assert {u.id for u in mix if u.source == "bitext"} == {f"bitext-0000{i}" for i in range(4)}
    small_talk = {u.id for u in mix if u.intent in SMALL_TALK}
    oos = {u.id for u in mix if u.intent == "oos"}
    assert len(small_talk) == 2 and small_talk <= TEST_SMALL_TALK
    assert len(oos) == 2 and oos <= TEST_OOS
    assert traffic(data, small_talk=0.2, out_of_scope=0.3) == mix


def test_traffic_with_no_shares_is_the_bitext_split(data: Path) -> None:
    mix = traffic(data, small_talk=0.0, out_of_scope=0.0)

    assert sorted(u.id for u in mix) == [f"bitext-0000{i}" for i in range(4)]


@pytest.mark.parametrize(
    ("small_talk", "out_of_scope"), [(-0.1, 0.2), (0.2, -0.1), (0.5, 0.5), (0.7, 0.4)]
)
def test_traffic_rejects_shares_that_leave_no_room_for_in_scope(
    data: Path, small_talk: float, out_of_scope: float
) -> None:
    with pytest.raises(ConfigError, match="shares must be"):
        traffic(data, small_talk=small_talk, out_of_scope=out_of_scope)


def test_traffic_asking_for_more_than_the_split_has_is_a_config_error(data: Path) -> None:
    # 4 / (1 - 0.1 - 0.5) = 10 requests: 5 out of scope wanted, 3 in the test split.
    with pytest.raises(ConfigError, match="test has only 3 oos messages, 5 wanted"):
        traffic(data, small_talk=0.1, out_of_scope=0.5)


def test_a_missing_data_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-dir") as caught:
        bitext(tmp_path, "test")

    assert str(tmp_path / "bitext_customer_support" / "bitext_customer_support.jsonl") in str(
        caught.value
    )


def test_real_traffic_is_the_bitext_test_split_and_clinc_test_shares(shared_data: Path) -> None:
    def read(path: Path) -> list[dict[str, Any]]:
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    bitext_rows = read(shared_data / "bitext_customer_support" / "bitext_customer_support.jsonl")
    clinc_rows = read(shared_data / "clinc150" / "clinc150_full.jsonl")
    test_ids = {r["id"] for r in bitext_rows + clinc_rows if r["split"] == "test"}
    seen_texts = {r["text"].lower() for r in bitext_rows + clinc_rows if r["split"] != "test"}

    mix = traffic(shared_data)

    sources = Counter(u.source for u in mix)
    intents = Counter(
        "small_talk" if u.intent in SMALL_TALK else u.intent for u in mix if u.source == "clinc150"
    )
    # 423 in-scope rows are 73%: round(423 / 0.73) = 579, of which 12% = 69 and 15% = 87.
    assert sources == {"bitext": 423, "clinc150": 69 + 87}
    assert intents == {"small_talk": 69, "oos": 87}
    assert len(mix) == 579
    assert {u.id for u in mix if u.source == "bitext"} == {
        r["id"] for r in bitext_rows if r["split"] == "test"
    }
    assert len({u.id for u in mix}) == 579
    assert {u.id for u in mix} <= test_ids
    assert not [u.text for u in mix if u.text.lower() in seen_texts]
    assert sum(u.order_id is not None for u in mix) == sum(
        1
        for r in bitext_rows
        if r["split"] == "test" and r["entity"] and r["entity"]["type"] == "order_id"
    )
