"""Token counting before a call, and for offline models.

Mistral models are counted with Mistral's own tokenizer, which ``mistral-common`` ships inside the
package (no download). Every other family is estimated at one token per four characters, rounded
up: the rule of thumb Anthropic and OpenAI publish for English text. Counts from the estimator are
marked as estimated on ledger entries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

__all__ = ["count_tokens", "estimate_tokens", "is_exact"]

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Estimate tokens as ``ceil(len(text) / 4)``; documented, cheap and family-independent."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@functools.cache
def _mistral_encoder() -> Callable[[str], int]:
    # Imported lazily: loading the SentencePiece model costs ~15 ms, paid only by Mistral users.
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    raw = MistralTokenizer.v1().instruct_tokenizer.tokenizer

    def count(text: str) -> int:
        return len(raw.encode(text, bos=False, eos=False))

    return count


@functools.lru_cache(maxsize=1024)
def is_exact(model_id: str) -> bool:
    """Whether :func:`count_tokens` uses the model's real tokenizer rather than the estimator."""
    lowered = model_id.lower()
    return "mistral" in lowered or "mixtral" in lowered


def count_tokens(text: str, model_id: str = "") -> int:
    """Count the tokens of ``text`` for ``model_id``: exact for Mistral models, else estimated."""
    if not text:
        return 0
    if is_exact(model_id):
        return _mistral_encoder()(text)
    return estimate_tokens(text)
