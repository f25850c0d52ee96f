"""Token counting: Mistral's real tokenizer for Mistral models, ceil(len/4) for the rest."""

from __future__ import annotations

import math

import pytest

from chainkit.tokens import count_tokens, estimate_tokens, is_exact

FRENCH = "Bonjour, je voudrais suivre ma commande numéro 10234 s'il vous plaît."
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"


@pytest.mark.parametrize(
    "model_id",
    [MIXTRAL, "mistral.mistral-7b-instruct-v0:2", "mixtral-8x7b", "Mistral.Mistral-Large"],
)
def test_mistral_family_uses_real_tokenizer(model_id: str) -> None:
    assert is_exact(model_id)
    assert count_tokens(FRENCH, model_id) == 28


def test_mistral_count_differs_from_the_estimate() -> None:
    assert estimate_tokens(FRENCH) == math.ceil(len(FRENCH) / 4) == 18
    assert count_tokens(FRENCH, MIXTRAL) != estimate_tokens(FRENCH)


def test_mistral_count_is_stable_across_calls() -> None:
    counts = {count_tokens(FRENCH, MIXTRAL) for _ in range(5)}
    assert counts == {28}


@pytest.mark.parametrize(
    "model_id", ["anthropic.claude-v2", "amazon.nova-micro-v1:0", "generic.powerful", ""]
)
def test_other_models_use_ceil_len_over_four(model_id: str) -> None:
    assert not is_exact(model_id)
    assert count_tokens(FRENCH, model_id) == 18
    assert count_tokens("abcd", model_id) == 1
    assert count_tokens("abcde", model_id) == 2


@pytest.mark.parametrize("model_id", [MIXTRAL, "anthropic.claude-v2", ""])
def test_empty_string_is_zero_tokens(model_id: str) -> None:
    assert count_tokens("", model_id) == 0


def test_estimate_rounds_up() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
