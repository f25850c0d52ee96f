"""The support chatbot as an HTTP service (offline models, with a simulated latency).

::

    python -m recipes.serve --ledger serve.db --port 8000        # same as `chainkit serve`
    curl -s localhost:8000/v1/chat -H 'X-Tenant: acme' -d '{"message": "hi"}'

The bot is the well-architected variant of ``recipes.chatbot``: a ``History`` window of four
turns, keyword intents, canned replies for greetings, thanks and goodbyes, policy replies
precomputed once by Nova Micro at start-up, and Nova Micro for the rest. The offline model
stands in for Nova Micro: real token counts of the real prompts, stand-in wording, and
``latency_s`` seconds per call (streamed a word at a time).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from chainkit import (
    Canned,
    Catalogue,
    Generate,
    History,
    IntentScan,
    KeywordClassifier,
    Ledger,
    OfflineModel,
    Pipeline,
    Precomputed,
    ReplyStore,
    precompute,
)
from recipes.chatbot import CANNED, DEMO_RULES, POLICY_QUESTIONS
from recipes.common import REPLY_TOKENS, SMALL

__all__ = ["main", "support_bot"]

LATENCY_S = 0.2
"""The offline model's simulated latency per call: a short reply from a small hosted model."""


@contextmanager
def support_bot(
    ledger: Ledger, *, latency_s: float = LATENCY_S, replies: Path | None = None
) -> Iterator[Pipeline]:
    """The support bot, its policy replies precomputed into ``replies`` (a temp dir if None).

    Precomputing is setup spend, recorded in ``ledger`` (phase ``setup``) once per start; a
    ``replies`` folder that already holds the replies is reused without a call.
    """
    catalogue = Catalogue.load()
    model = OfflineModel(model_id=SMALL, output_tokens=REPLY_TOKENS, latency_s=latency_s)
    with tempfile.TemporaryDirectory(prefix="chainkit-serve-replies-") as tmp:
        store = ReplyStore(replies or tmp)
        try:
            missing = {
                intent: question
                for intent, question in POLICY_QUESTIONS.items()
                if store.get(intent) is None
            }
            if missing:
                precompute(store, missing, model=model, ledger=ledger, catalogue=catalogue)
            yield Pipeline(
                [
                    # Four turns verbatim bound what each turn resends (README "Conversations").
                    History(priced_as=SMALL, last_turns=4, catalogue=catalogue),
                    IntentScan(classifier=KeywordClassifier(DEMO_RULES)),
                    Canned(replies=CANNED),
                    # Policy replies are the same for every customer: safe to share.
                    Precomputed(store=store, keys=dict.fromkeys(POLICY_QUESTIONS, ())),
                    Generate(model=model, max_tokens=300, catalogue=catalogue),
                ],
                name="support-bot",
            )
        finally:
            store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``chainkit serve`` under its recipe's name."""
    from chainkit.serve.command import main as serve_main

    return serve_main(argv, prog="python -m recipes.serve")


if __name__ == "__main__":
    raise SystemExit(main())
