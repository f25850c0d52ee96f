"""Text embeddings for the semantic cache: a free local embedder, and Amazon Titan on Bedrock.

Two kinds, told apart by what they have:

- a *local* embedder has ``embed(text)`` and costs nothing: :class:`HashedEmbedder` (hashed
  word and character n-grams, deterministic in every process and on every machine, no
  training, no download);
- a *paid* embedder is a :class:`~chainkit.providers.model.Model`, so that its calls go through
  :class:`~chainkit.stages.calling.ModelCall` like any model call (estimated, reserved against
  budgets, priced from the catalogue, recorded exactly once whatever fails). Its completion's
  text is the vector, packed by :func:`encode_vector`; its usage is the input tokens the
  provider reported (embeddings have no output tokens). :class:`BedrockEmbedder` calls Titan
  Text Embeddings v2 through ``InvokeModel``.

Embeddings of customers' messages are customer data: see ``SemanticCache`` for where they are
kept and for how long.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from chainkit.errors import BadResponse, ConfigError, ProviderError, Throttled, Timeout
from chainkit.pricing import Tier
from chainkit.providers.bedrock import (
    RetryPolicy,
    _default_client,
    _no_botocore_retries,
    call_aws,
    error_code,
    error_detail,
)
from chainkit.providers.model import Completion, Prompt
from chainkit.records import Usage
from chainkit.tokens import count_tokens

__all__ = [
    "TITAN_EMBED_V2",
    "BedrockEmbedder",
    "Embedder",
    "HashedEmbedder",
    "Vector",
    "decode_vector",
    "encode_vector",
]

Vector = NDArray[np.float32]
"""One embedding: a float32 vector of unit length."""

TITAN_EMBED_V2: Final = "amazon.titan-embed-text-v2:0"
_TITAN_DIMENSIONS: Final = (256, 512, 1024)
# Titan v2 takes at most 50,000 characters per call (and 8,192 tokens, the card's window).
_TITAN_MAX_CHARS: Final = 50_000
_WORD: Final = re.compile(r"\w+")


@runtime_checkable
class Embedder(Protocol):
    """A local embedder: turns a text into a unit vector of ``dimension`` floats, for free."""

    model_id: str
    dimension: int

    def embed(self, text: str) -> Vector:
        """The embedding of ``text``."""
        ...


def _unit(vector: NDArray[np.floating[Any]]) -> Vector:
    """``vector`` as float32 of length 1 (a zero vector stays zero: it matches nothing)."""
    out = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(out))
    return out / norm if norm > 0 else out


def encode_vector(vector: NDArray[np.floating[Any]]) -> str:
    """A vector as text (base64 of little-endian float32), the form a paid embedder returns it in.

    >>> decode_vector(encode_vector(np.array([0.6, 0.8])), 2).tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    data = np.asarray(vector, dtype="<f4").tobytes()
    return base64.b64encode(data).decode("ascii")


def decode_vector(text: str, dimension: int) -> Vector:
    """The unit vector :func:`encode_vector` packed; ``ValueError`` unless ``dimension`` floats."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not a packed vector ({exc})") from exc
    if len(data) != 4 * dimension:
        raise ValueError(f"{len(data)} bytes, not the {4 * dimension} of {dimension} floats")
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError("the vector holds NaN or infinity")
    return _unit(vector)


@dataclass(frozen=True, slots=True)
class HashedEmbedder:
    r"""Hashed word 1-2-grams and character 3-5-grams: a real, deterministic, free embedding.

    Each text is lower-cased and split into words (``\w+``, so Japanese runs and emoji-free
    words of any script count); its features are the words, the pairs of adjacent words, and
    the character 3- to 5-grams of each word padded with spaces (scikit-learn's ``char_wb``).
    Each feature is hashed with CRC-32 (the same in every process, unlike Python's ``hash``) to
    one of ``dimension`` columns and a sign, weighted ``1 + log(count)``; the word block and the
    character block are each scaled to unit length, weighted by ``word_weight`` and
    ``1 - word_weight``, and the sum scaled to unit length. Cosine similarity of two such
    vectors is then a TF similarity over both kinds of n-grams; :meth:`fit` adds IDF weights
    learnt from a corpus (the questions already answered), so that words every question shares
    ("my", "order") count for less.

    >>> e = HashedEmbedder()
    >>> a, b, c = e.embed("Where is my parcel?"), e.embed("where's my parcel"), e.embed("refund")
    >>> bool(a @ b > 0.6 > a @ c)
    True
    """

    dimension: int = 512
    word_weight: float = 0.5
    model_id: str = "local.hashed-ngrams"
    idf: tuple[NDArray[np.float64], NDArray[np.float64]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if type(self.dimension) is not int or not 16 <= self.dimension <= 65_536:
            raise ConfigError(
                f"HashedEmbedder dimension must be an int in [16, 65536], got {self.dimension!r}; "
                "512 keeps hash collisions rare for short messages."
            )
        if not 0.0 <= self.word_weight <= 1.0:
            raise ConfigError(
                f"HashedEmbedder word_weight must be in [0, 1], got {self.word_weight!r}."
            )

    def _features(self, text: str) -> tuple[Counter[str], Counter[str]]:
        words = _WORD.findall(text.lower())
        grams: Counter[str] = Counter(words)
        grams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
        chars: Counter[str] = Counter()
        for word in words:
            padded = f" {word} "
            for n in (3, 4, 5):
                chars.update(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
        return grams, chars

    def _column(self, feature: str) -> tuple[int, float]:
        # surrogatepass: any str hashes, a lone surrogate included.
        h = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
        return h % self.dimension, 1.0 if h & 0x80000000 else -1.0

    def _block(self, features: Counter[str], idf: NDArray[np.float64] | None) -> Vector:
        block = np.zeros(self.dimension, dtype=np.float64)
        for feature, count in features.items():
            column, sign = self._column(feature)
            block[column] += sign * (1.0 + math.log(count))
        if idf is not None:
            block *= idf
        norm = float(np.linalg.norm(block))
        return block / norm if norm > 0 else block  # type: ignore[return-value]

    @property
    def space(self) -> str:
        """Every setting that shapes the vectors: equal only for embedders of the same space.

        A store partitions its vectors by it, so changing the dimension, the word weight or the
        IDF weights starts a new partition instead of comparing vectors of different spaces.
        """
        digest = "none"
        if self.idf is not None:
            weights = np.concatenate([np.asarray(w, dtype="<f8") for w in self.idf])
            digest = hashlib.sha256(weights.tobytes()).hexdigest()[:12]
        return (
            f"{self.model_id}|dim={self.dimension}|word_weight={float(self.word_weight)!r}"
            f"|idf={digest}"
        )

    def embed(self, text: str) -> Vector:
        """The embedding of ``text`` (a zero vector when it has no word at all)."""
        grams, chars = self._features(text)
        word_idf, char_idf = (None, None) if self.idf is None else self.idf
        vector = self.word_weight * self._block(grams, word_idf) + (
            1 - self.word_weight
        ) * self._block(chars, char_idf)
        return _unit(vector)

    def fit(self, texts: Iterable[str]) -> HashedEmbedder:
        """A copy that weighs each hashed column by its inverse document frequency in ``texts``.

        Smoothed as scikit-learn's TF-IDF is (``log((1 + n) / (1 + df)) + 1``). The copy's
        ``model_id`` names a digest of the weights: vectors of different fits never share a
        partition of an :class:`~chainkit.AnswerStore`.
        """
        counts = np.zeros((2, self.dimension), dtype=np.float64)
        n = 0
        for text in texts:
            n += 1
            for block, features in enumerate(self._features(text)):
                columns = {self._column(f)[0] for f in features}
                counts[block, list(columns)] += 1
        if n == 0:
            raise ConfigError("HashedEmbedder.fit needs at least one text.")
        idf = np.log((1.0 + n) / (1.0 + counts)) + 1.0
        digest = hashlib.sha256(idf.tobytes()).hexdigest()[:12]
        base = self.model_id.split("+idf-", 1)[0]
        return dataclasses.replace(self, idf=(idf[0], idf[1]), model_id=f"{base}+idf-{digest}")


def _map_error(exc: Exception, attempts: int, model_id: str) -> ProviderError:
    if type(exc).__name__ in ("ReadTimeoutError", "ReadTimeout"):
        return Timeout(
            f"Bedrock did not answer for embedding model {model_id!r} within the read timeout "
            f"(attempt {attempts}): {exc}. It may have billed the call: the entry records its "
            "cost as unknown.",
            code="ReadTimeout",
            model_id=model_id,
            attempts=attempts,
        )
    code = error_code(exc)[0] or type(exc).__name__
    cls = Throttled if code in ("ThrottlingException", "ServiceUnavailableException") else None
    message = (
        f"Bedrock {code} for embedding model {model_id!r} after {attempts} attempt(s): "
        f"{error_detail(exc)}."
    )
    if code == "AccessDeniedException":
        message += " Enable access to the model in the Bedrock console for this region."
    return (cls or ProviderError)(message, code=code, model_id=model_id, attempts=attempts)


class BedrockEmbedder:
    """Titan Text Embeddings v2 on Bedrock (``InvokeModel``), priced per input token.

    The request body is ``{"inputText", "dimensions", "normalize": true}``; the reply's
    ``embedding`` is the vector and ``inputTextTokenCount`` the tokens billed, which the ledger
    prices at the catalogue's rate (``amazon.titan-embed-text-v2:0``: $0.02 per million tokens in
    ``bedrock-2026-11-29``). Throttling, connection failures and 5xx are retried, as for
    :class:`~chainkit.providers.bedrock.BedrockModel`; nothing else is.

    Args:
        model_id: the Titan v2 id (or a cross-region profile of it).
        client: a ``bedrock-runtime`` client (botocore's own retries are switched off on it).
        region: the AWS region, for the default client and for prices.
        dimension: 256, 512 or 1024 floats per vector.
    """

    tier: Tier = "on_demand"
    keeps_deadline = False

    def __init__(
        self,
        model_id: str = TITAN_EMBED_V2,
        *,
        client: Any | None = None,
        region: str | None = None,
        dimension: int = 512,
        max_attempts: int = 5,
        timeout_s: float = 30.0,
    ) -> None:
        if dimension not in _TITAN_DIMENSIONS:
            raise ConfigError(
                f"Titan Text Embeddings v2 returns 256, 512 or 1024 dimensions; got "
                f"dimension={dimension!r}."
            )
        if client is None:
            client = _default_client(region, timeout_s)
        else:
            _no_botocore_retries(client)
        self.client = client
        self.model_id = model_id
        self.dimension = dimension
        self.region = region or getattr(getattr(client, "meta", None), "region_name", None)
        self._retry = RetryPolicy(max_attempts)

    def __repr__(self) -> str:
        return f"BedrockEmbedder({self.model_id!r}, dimension={self.dimension})"

    @property
    def space(self) -> str:
        """The settings that shape the vectors (model, dimensions, normalised), for partitions."""
        return f"{self.model_id}|dim={self.dimension}|normalize=true"

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """The input tokens the text will be billed as, estimated; no output tokens."""
        return Usage(count_tokens(prompt.user, self.model_id), 0)

    def complete(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """Embed ``prompt.user``; the completion's text is the packed vector.

        ``metadata`` is not sent: ``InvokeModel`` has no request metadata.
        """
        text = prompt.user
        if len(text) > _TITAN_MAX_CHARS:
            raise ConfigError(
                f"Titan embeddings take at most {_TITAN_MAX_CHARS:,} characters; this text has "
                f"{len(text):,}. Embed a shorter text (the question, not a document)."
            )
        body = json.dumps(
            {"inputText": text, "dimensions": self.dimension, "normalize": True},
            ensure_ascii=True,  # a lone surrogate is sent escaped, never as invalid UTF-8
        )
        started = time.perf_counter()
        reply, attempts = call_aws(
            self.client.invoke_model,
            {
                "modelId": self.model_id,
                "body": body,
                "contentType": "application/json",
                "accept": "application/json",
            },
            retry=self._retry,
            fail=lambda exc, n: _map_error(exc, n, self.model_id),
            timeout_s=timeout_s,
        )
        try:
            data = json.loads(reply["body"].read())
            raw = data["embedding"]
            tokens = data["inputTextTokenCount"]
            if type(tokens) is not int or tokens < 0:
                raise ValueError(f"inputTextTokenCount {tokens!r:.40} is not a token count")
            if not isinstance(raw, list) or len(raw) != self.dimension:
                raise ValueError(f"embedding is not a list of {self.dimension} numbers")
            vector = np.asarray(raw, dtype=np.float32)
            if not np.isfinite(vector).all():
                raise ValueError("embedding holds NaN or infinity")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponse(
                f"Bedrock reply for embedding model {self.model_id!r} is malformed: {exc}. "
                "chainkit cannot use or price it; the call is recorded with its cost unknown.",
                code="MalformedReply",
                model_id=self.model_id,
                attempts=attempts,
            ) from exc
        return Completion(
            text=encode_vector(_unit(vector)),
            usage=Usage(tokens, 0),
            model_id=self.model_id,
            latency_s=time.perf_counter() - started,
            attempts=attempts,
        )
