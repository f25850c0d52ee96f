"""Real support traffic for the chatbot recipe, read by path from ``--data-dir``.

Bitext supplies the in-scope intents; CLINC150 supplies small talk and out-of-scope queries. The
data is read where it lies and never copied into the repository.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chainkit import ConfigError

OUT_OF_SCOPE = "oos"
SMALL_TALK = ("greeting", "goodbye", "thank_you")
BITEXT = Path("bitext_customer_support") / "bitext_customer_support.jsonl"
CLINC = Path("clinc150") / "clinc150_full.jsonl"


@dataclass(frozen=True, slots=True)
class Utterance:
    """One labelled message: its id, text, true intent (``oos`` if out of scope) and source."""

    id: str
    text: str
    intent: str
    source: str
    order_id: int | None = None


def _rows(path: Path) -> Iterator[dict[str, object]]:
    if not path.is_file():
        raise ConfigError(
            f"{path} not found; --data-dir must be the folder holding bitext_customer_support/ "
            "and clinc150/ (e.g. ../shared/data)."
        )
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def bitext(data_dir: Path, split: str) -> list[Utterance]:
    """Bitext customer-support utterances of one split."""
    out = []
    for row in _rows(data_dir / BITEXT):
        if row["split"] != split:
            continue
        entity = row.get("entity")
        order_id = None
        if isinstance(entity, dict) and entity.get("type") == "order_id":
            order_id = int(str(entity["value"]))
        out.append(
            Utterance(str(row["id"]), str(row["text"]), str(row["intent"]), "bitext", order_id)
        )
    return out


def bitext_replies(data_dir: Path, split: str = "train") -> dict[str, list[str]]:
    """Bitext's reference replies by intent."""
    replies: dict[str, list[str]] = {}
    for row in _rows(data_dir / BITEXT):
        if row["split"] == split:
            replies.setdefault(str(row["intent"]), []).append(str(row["response"]))
    return replies


def clinc(data_dir: Path, split: str, intents: tuple[str, ...]) -> list[Utterance]:
    """CLINC150 utterances of one split whose intent is in ``intents`` (``oos`` included)."""
    return [
        Utterance(str(row["id"]), str(row["text"]), str(row["intent"]), "clinc150")
        for row in _rows(data_dir / CLINC)
        if row["split"] == split and row["intent"] in intents
    ]


def labelled(data_dir: Path, split: str) -> list[Utterance]:
    """Everything the bot should recognise in one split: Bitext, small talk and out of scope."""
    return [*bitext(data_dir, split), *clinc(data_dir, split, (*SMALL_TALK, OUT_OF_SCOPE))]


def traffic(
    data_dir: Path,
    *,
    split: str = "test",
    small_talk: float = 0.12,
    out_of_scope: float = 0.15,
    seed: int = 0,
) -> list[Utterance]:
    """A day's mix: every Bitext message of ``split`` plus sampled CLINC150 messages.

    Small talk and out-of-scope queries are sampled so that they make up the given shares.
    """
    if small_talk < 0 or out_of_scope < 0 or small_talk + out_of_scope >= 1:
        raise ConfigError(
            f"small-talk ({small_talk}) and out-of-scope ({out_of_scope}) shares must be "
            "non-negative and leave room for the in-scope traffic (sum below 1)."
        )
    rng = random.Random(seed)
    in_scope = bitext(data_dir, split)
    total = round(len(in_scope) / (1 - small_talk - out_of_scope))
    mix = list(in_scope)
    for intents, share in ((SMALL_TALK, small_talk), ((OUT_OF_SCOPE,), out_of_scope)):
        pool = clinc(data_dir, split, intents)
        wanted = round(total * share)
        if wanted > len(pool):
            raise ConfigError(
                f"{split} has only {len(pool)} {'/'.join(intents)} messages, {wanted} wanted; "
                "lower the share."
            )
        mix.extend(rng.sample(pool, wanted))
    rng.shuffle(mix)
    return mix
