"""Offline models: deterministic stand-ins that need no network, no weights and no credentials.

``OfflineModel`` answers from its prompt, extractively: it keeps the most informative sentences
of the prompt's context (facts, summary, document) up to its output budget, and says it is a
stand-in when there is nothing but a question to answer from. Its token counts come from the
model family's real tokenizer where one ships offline (Mistral) and from the documented
estimator otherwise, so the spend it reports is the spend the same prompt would incur; only the
wording of its answers is a stand-in.

``ScriptedModel`` replies and reports usage exactly as scripted, and remembers every prompt, for
reproducing published figures and for tests.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from chainkit.errors import Timeout
from chainkit.pricing import Tier
from chainkit.providers.model import Chunk, Completion, Prompt
from chainkit.records import Usage
from chainkit.tokens import count_tokens, is_exact

__all__ = ["OfflineModel", "ScriptedModel", "extract", "pieces"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9']+")
# Words too common to say what a sentence is about.
_STOPWORDS = frozenset(
    (
        "a an and are as at be but by for from has have i if in is it its of on or so that the "
        "their them then there these they this to was we were what when which who will with you "
        "your um uh yeah okay ok mm hmm just like"
    ).split()
)


def extract(text: str, budget: int, model_id: str = "") -> str:
    """Return the most informative sentences of ``text`` within ``budget`` tokens, in order.

    Sentences are scored by the mean document frequency of their content words (Luhn's method).

    >>> extract("Cats purr. Dogs bark loudly at cats. Cats sleep.", budget=6)
    'Cats purr. Cats sleep.'
    """
    if budget <= 0:
        return ""
    sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    if not sentences:
        return ""
    words = [[w for w in _WORD.findall(s.lower()) if w not in _STOPWORDS] for s in sentences]
    freq = Counter(w for ws in words for w in ws)
    scores = [sum(freq[w] for w in ws) / (len(ws) + 1) for ws in words]
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    used = 0
    for i in ranked:
        cost = count_tokens(sentences[i] + " ", model_id)
        if used + cost <= budget:
            chosen.append(i)
            used += cost
        if budget - used < 3:
            break
    if not chosen:
        # Even the best sentence is over budget: cut it word by word rather than answer nothing.
        out: list[str] = []
        for word in sentences[ranked[0]].split():
            if count_tokens(" ".join([*out, word]), model_id) > budget:
                break
            out.append(word)
        return " ".join(out)
    return " ".join(sentences[i] for i in sorted(chosen))


_CONTEXT = re.compile(r"^(?:Facts|Summary|Document):\n", re.M)


def _answer_source(user: str) -> str:
    """What an offline answer is drawn from: the prompt's context, never the question alone.

    A prompt of context sections (``Facts:``, ``Summary:``, ``Document:``) and a question last
    is answered from the context; a longer text (a document to summarise: over two sentences or
    forty words) from itself; a bare question gets a stand-in sentence that says so, rather than
    the question echoed back.
    """
    if not user.strip():
        return ""  # nothing asked, nothing answered
    parts = user.split("\n\n")
    if len(parts) > 1 and _CONTEXT.match(parts[0]):
        return _CONTEXT.sub("", "\n\n".join(parts[:-1])).replace("\n- ", "\n")
    if len([s for s in _SENTENCE.split(user) if s.strip()]) > 2 or len(user.split()) > 40:
        return user
    return "This is an offline stand-in reply: no model was called, and the token counts are real."


def _fill(text: str, budget: int, model_id: str) -> str:
    """Repeat ``text`` word by word up to ``budget`` tokens (real replies run to length)."""
    words = text.split()
    out = list(words)
    # Grow by whole repeats while they fit, then word by word; counting is cheap for short text.
    while count_tokens(" ".join(out + words), model_id) <= budget:
        out.extend(words)
    for word in words:
        if count_tokens(" ".join([*out, word]), model_id) > budget:
            break
        out.append(word)
    return " ".join(out)


_PIECE = re.compile(r"\S+\s*|\s+")


def pieces(text: str, size: int = 1) -> Iterator[str]:
    """``text`` in pieces of ``size`` words (their trailing space kept), as a stream sends it.

    >>> list(pieces("one two  three", 2))
    ['one two  ', 'three']
    """
    words = _PIECE.findall(text)
    for at in range(0, len(words), size):
        yield "".join(words[at : at + size])


def _count_prompt(prompt: Prompt, model_id: str) -> int:
    history = sum(count_tokens(t.text, model_id) for t in prompt.history)
    return count_tokens(prompt.system, model_id) + count_tokens(prompt.user, model_id) + history


@dataclass(kw_only=True)
class OfflineModel:
    """An offline stand-in for ``model_id``: extractive answers, real or estimated token counts.

    Args:
        model_id: the catalogue id the calls are priced as.
        output_tokens: how long the stand-in's replies are, as a real model's would be: the
            extract is repeated to reach this length when the prompt is too short to supply it.
            The smaller of this and ``max_tokens`` applies. ``None``: the extract as it comes,
            within ``max_tokens``.
        latency_s: simulated latency per call, slept on the calling thread.
        answer: how to answer ``(prompt, output budget)``; by default :func:`extract` from the
            user turn. The reply is still cut to the output budget and counted for real.
    """

    model_id: str
    output_tokens: int | None = None
    latency_s: float = 0.0
    answer: Callable[[Prompt, int], str] | None = None
    region: str | None = None
    tier: Tier = "on_demand"
    keeps_deadline = True  # it answers or raises Timeout within timeout_s (see complete)
    estimates_locally = True  # estimate() counts offline: the async path need not leave the loop

    def _budget(self, max_tokens: int) -> int:
        return max_tokens if self.output_tokens is None else min(max_tokens, self.output_tokens)

    def complete(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """Answer with the prompt's most informative sentences, within the output budget.

        A simulated latency beyond ``timeout_s`` ends in :class:`~chainkit.Timeout` at the
        deadline, as a real provider's would.
        """
        started = time.perf_counter()
        if timeout_s is not None and self.latency_s > timeout_s:
            time.sleep(timeout_s)
            raise self._too_slow(timeout_s)
        text, usage = self._reply(prompt, max_tokens)
        if self.latency_s:
            time.sleep(self.latency_s)
        return self._completion(text, usage, started)

    async def acomplete(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """:meth:`complete` for the event loop: the latency is awaited, not slept."""
        started = time.perf_counter()
        if timeout_s is not None and self.latency_s > timeout_s:
            await asyncio.sleep(timeout_s)
            raise self._too_slow(timeout_s)
        text, usage = self._reply(prompt, max_tokens)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._completion(text, usage, started)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream the reply a word at a time, the latency spread over the words; usage last."""
        text, usage = self._reply(prompt, max_tokens)
        words = list(pieces(text)) or [""]
        for word in words:
            if self.latency_s:
                await asyncio.sleep(self.latency_s / len(words))
            if word:
                yield Chunk(word)
        yield Chunk(usage=usage, model_id=self.model_id, estimated=not is_exact(self.model_id))

    def _too_slow(self, timeout_s: float) -> Timeout:
        return Timeout(
            f"Offline model {self.model_id!r} (latency {self.latency_s} s) did not answer "
            f"within {timeout_s} s.",
            code="Timeout",
            model_id=self.model_id,
        )

    def _reply(self, prompt: Prompt, max_tokens: int) -> tuple[str, Usage]:
        budget = self._budget(max_tokens)
        source = _answer_source(prompt.user) if self.answer is None else self.answer(prompt, budget)
        text = extract(source, budget, self.model_id)
        if self.output_tokens is not None and text:
            text = _fill(text, budget, self.model_id)
        return text, Usage(_count_prompt(prompt, self.model_id), count_tokens(text, self.model_id))

    def _completion(self, text: str, usage: Usage, started: float) -> Completion:
        return Completion(
            text=text,
            usage=usage,
            model_id=self.model_id,
            estimated=not is_exact(self.model_id),
            latency_s=time.perf_counter() - started,
        )

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Count the prompt and assume the full output budget is used."""
        return Usage(_count_prompt(prompt, self.model_id), self._budget(max_tokens))

    def count_input(self, prompt: Prompt) -> int | None:
        """The input tokens it will report, exactly, where its tokenizer is the real one."""
        return _count_prompt(prompt, self.model_id) if is_exact(self.model_id) else None


@dataclass(kw_only=True)
class ScriptedModel:
    """A model whose replies and usage are scripted; it remembers every prompt it was sent.

    ``reply`` is a fixed string or a function of the prompt. ``usage`` fixes the reported usage
    of every call; without it, usage is counted as :class:`OfflineModel` counts it.

    >>> model = ScriptedModel(model_id="generic.intent", reply="track_order", usage=Usage(15, 5))
    >>> model.complete(Prompt("Label it.", "where is my parcel"), max_tokens=8).usage.output_tokens
    5
    >>> model.prompts[0].user
    'where is my parcel'
    """

    model_id: str
    reply: str | Callable[[Prompt], str] = ""
    usage: Usage | None = None
    latency_s: float = 0.0
    region: str | None = None
    tier: Tier = "on_demand"
    prompts: list[Prompt] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    estimates_locally = True  # estimate() counts offline: the async path need not leave the loop

    def complete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """Return the scripted reply and usage, and remember the prompt and metadata."""
        text = self._asked(prompt, metadata)
        if self.latency_s:
            time.sleep(self.latency_s)
        return self._completion(prompt, text)

    async def acomplete(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> Completion:
        """:meth:`complete` for the event loop (the latency awaited)."""
        text = self._asked(prompt, metadata)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._completion(prompt, text)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Mapping[str, str] | None = None
    ) -> AsyncIterator[Chunk]:
        """The scripted reply a word at a time (the latency spread over them), then its usage."""
        text = self._asked(prompt, metadata)
        words = list(pieces(text)) or [""]
        for word in words:
            if self.latency_s:
                await asyncio.sleep(self.latency_s / len(words))
            if word:
                yield Chunk(word)
        done = self._completion(prompt, text)
        yield Chunk(usage=done.usage, model_id=self.model_id, estimated=done.estimated)

    def _asked(self, prompt: Prompt, metadata: Mapping[str, str] | None) -> str:
        with self._lock:
            self.prompts.append(prompt)
            self.metadata.append(dict(metadata or {}))
        return self.reply(prompt) if callable(self.reply) else self.reply

    def _completion(self, prompt: Prompt, text: str) -> Completion:
        usage = self.usage or Usage(
            _count_prompt(prompt, self.model_id), count_tokens(text, self.model_id)
        )
        return Completion(
            text=text,
            usage=usage,
            model_id=self.model_id,
            estimated=self.usage is None and not is_exact(self.model_id),
            latency_s=self.latency_s,
        )

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        """Return the scripted usage, or the counted prompt plus the full output budget."""
        return self.usage or Usage(_count_prompt(prompt, self.model_id), max_tokens)

    def count_input(self, prompt: Prompt) -> int | None:
        """The scripted input tokens (cached ones included), exactly; else its own count."""
        if self.usage is not None:
            u = self.usage
            return u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
        return _count_prompt(prompt, self.model_id) if is_exact(self.model_id) else None
