"""Compress: shrink the request's document to a token budget for free, before any model reads it.

Three steps, cheapest first: strip transcript noise (annotation markers, fillers, stutters), drop
repeated and contentless sentences, then, only if the text is still over budget, keep the
sentences that cover most of the document's vocabulary until the budget is spent. What survives
stays in its original order, under its speaker label.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from chainkit.errors import ConfigError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue
from chainkit.records import Request, Usage
from chainkit.stages.answering import record_free
from chainkit.tokens import CHARS_PER_TOKEN, count_tokens, is_exact

__all__ = ["Compress", "compress"]

# -- cleaning -------------------------------------------------------------------------------------

# Curly-brace annotations ({disfmarker}, {vocalsound}, ...) never occur in prose as bare words;
# square brackets do ("[VBZ]" in a linguistics paper), so only known non-speech events go.
_MARKER = re.compile(
    r"[ \t]*(?:\{[A-Za-z_]+\}|\[(?:laugh(?:ter|s|ing)?|inaudible|unintelligible|indiscernible|"
    r"crosstalk|cross[ -]talk|applause|noise|background noise|silence|pause|gap|interruption|"
    r"objection|music|coughs?|coughing|sighs?|overlapping|overtalk|static|beep|vocalsound)\.?\])",
    re.IGNORECASE,
)
# Backchannels and fillers as whole words; "mm - hmm" is how QMSum's tokeniser spells "mm-hmm".
_FILLER = re.compile(
    r"(?<![\w'-])(?:(?:mm+|uh)[ \t]*-[ \t]*(?:hmm+|huh)|u+m+|u+h+|e+r+m*|h+m+|m+h?m+)(?![\w'-])",
    re.IGNORECASE,
)
# "I I I think", "so , so it", "we can we can": a stutter of one to three words.
_REPEAT = re.compile(r"\b(\w+(?:'\w+)?(?:[ \t]+\w+(?:'\w+)?){0,2})(?:[ \t]*,?[ \t]+\1\b)+", re.I)
# Transcripts tokenised as "it 's" and "yes , and" cost extra characters for nothing.
_SPACE_BEFORE = re.compile(
    r"[ \t]+(?=[,?!;:%)]|\.(?!\d)|n't\b|'(?:s|re|ve|ll|d|m)\b)", re.IGNORECASE
)
_SPACE_AFTER = re.compile(r"(?<=[(])[ \t]+")
_PUNCT_RUN = re.compile(r"[,;](?:[ \t]*[,;])+")
_COMMA_BEFORE_STOP = re.compile(r"[,;][ \t]*(?=[.?!])")
_LEADING_PUNCT = re.compile(r"^[\s,;.?!:-]+(?=\w|$)")
_EMPTY_STOP = re.compile(r"(?<=[.?!])[ \t]*[.?!]+|[.?!]+[ \t]*(?=[.?!])")
_SPACES = re.compile(r"[ \t]{2,}")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[^a-z])")
# A full stop after these ends an abbreviation, not a sentence: "et al. (2005)", "Fig. 2", "Hon. X".
_ABBREVIATION = re.compile(
    r"(?:\b(?:al|fig|figs|eq|eqs|equ|sec|tab|e\.g|i\.e|cf|vs|etc|approx|no|nos|vol|pp|ch|dr|mr|"
    r"mrs|ms|prof|hon|st|jr|sr|inc|ltd|co|corp|dept|univ)|\b[A-Z])\.$",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^([^:\n]{1,80}?):(?:[ \t]+|$)(.*)$")
_BLOCKS = re.compile(r"\n[ \t]*\n\s*")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Sentences made only of these words say nothing a summary could use ("Yeah. Okay, right.").
_BACKCHANNEL = frozenset(
    """yeah yes yep yup ya yea no nope nah ok okay 'kay kay alright right so oh ah aha well sure
    cool great good fine wow huh hm hmm mm mmm mhm um uh er erm and but or i see thanks thank you
    true exactly indeed hi hello bye really anyway whatever sorry pardon what""".split()
)
_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing don't down during each few for from
    further get got had has have having he her here hers herself him himself his how i i'm if in
    into is it it's its itself just let's me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own same she should so some such than that that's the
    their theirs them themselves then there there's these they they're this those through to too
    under until up very was we we're were what when where which while who whom why will with would
    you you're your yours yourself yourselves yeah okay ok um uh mm hmm right gonna wanna kinda
    sorta like think know mean well oh really actually just thing things lot bit sort kind yes
    'kay i've we've you've i'll we'll i'd we'd can't won't isn't doesn't didn't wasn't""".split()
)


# Negations carry meaning: "we should not ship" is no repeat of "we should ship".
_FUNCTION_WORDS = _STOPWORDS - frozenset(
    "no not nor don't can't won't isn't doesn't didn't wasn't".split()
)


def _clean(content: str, spoken: bool) -> str:
    """Strip markers (and, in speech, fillers and stutters) from one line, and tidy the gaps."""
    text, removed = _MARKER.subn("", content)
    if spoken:
        # In prose "er" may be a word ("ER"), "had had" is grammar and " ?" may stand for a
        # symbol the PDF extraction lost, so fillers, stutters and spacing wait for speech.
        text, fillers = _FILLER.subn("", text)
        removed += fillers
        text = _SPACE_BEFORE.sub("", text)
        text = _SPACE_AFTER.sub("", text)
    if removed:
        # Only around a removal: prose has its own ";," runs ("&quot;,") and "[...]" to keep.
        text = _PUNCT_RUN.sub(",", text)
        text = _COMMA_BEFORE_STOP.sub("", text)
        text = _EMPTY_STOP.sub("", text)
    if spoken:
        # A stutter is usually split by a marker ("did {disfmarker} did it"): collapse it last.
        text = _SPACES.sub(" ", text)
        text = _REPEAT.sub(r"\1", text)
    text = _SPACES.sub(" ", text)
    return (_LEADING_PUNCT.sub("", text) if removed or spoken else text).strip()


def _sentences(text: str) -> list[str]:
    """Split at sentence ends, rejoining pieces that were cut after an abbreviation."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _words(sentence: str) -> list[str]:
    return _WORD.findall(sentence.lower())


def _stem(word: str) -> str:
    # A crude suffix strip: enough to merge "remote"/"remotes"/"remoted" without a stemmer library.
    for suffix in ("ing", "ies", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


# -- the document model ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    """One turn (transcript) or line (prose): its label, if any, and its kept sentences."""

    block: int
    label: str | None
    sentences: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Parsed:
    lines: list[_Line]
    sentences: list[str]
    owner: list[int]  # line index of each sentence


def _parse(text: str) -> _Parsed:
    """Split ``text`` into blocks, lines and cleaned sentences, dropping repeats and chatter."""
    blocks = [b.split("\n") for b in _BLOCKS.split(text.strip())]
    raw_lines = [line for block in blocks for line in block if line.strip()]
    labelled = sum(1 for line in raw_lines if _LABEL.match(line))
    # Decided for the whole document so that "Note: ..." in prose is not taken for a speaker.
    transcript = bool(raw_lines) and labelled >= 0.6 * len(raw_lines)
    # Unlabelled speech still shows itself by its markers and fillers: at least one per 100 words.
    noise = len(_MARKER.findall(text)) + len(_FILLER.findall(text))
    spoken = transcript or 100 * noise >= len(text.split())
    parsed = _Parsed([], [], [])
    seen: set[tuple[str, ...]] = set()
    for b, block in enumerate(blocks):
        for raw in block:
            if not raw.strip():
                continue
            label, content = None, raw
            match = _LABEL.match(raw) if transcript else None
            if match:
                label, content = match.group(1).strip(), match.group(2)
            line = _Line(b, label)
            for sentence in _sentences(_clean(content, spoken)):
                words = _words(sentence)
                if not words or all(w in _BACKCHANNEL for w in words):
                    continue
                # Near-identical: the same content words in the same order ("moves to the second
                # week of March" / "in March"); one changed content word makes a new sentence.
                # Short fragments ("(2005).", "See Table 2.") recur legitimately, so they stay.
                near = tuple(w for w in words if w not in _FUNCTION_WORDS)
                exact = tuple(words)
                if (len(exact) >= 3 and exact in seen) or (len(near) >= 3 and near in seen):
                    continue
                seen.update((exact, near))
                line.sentences.append(len(parsed.sentences))
                parsed.sentences.append(sentence)
                parsed.owner.append(len(parsed.lines))
            if line.sentences:
                parsed.lines.append(line)
    return parsed


def _render(parsed: _Parsed, keep: set[int] | None = None) -> str:
    """The kept sentences in order: a turn or line per line, blocks apart by blank lines."""
    out: list[str] = []
    block = -1
    for line in parsed.lines:
        kept = [parsed.sentences[i] for i in line.sentences if keep is None or i in keep]
        if not kept:
            continue
        if out and line.block != block:
            out.append("")
        block = line.block
        body = " ".join(kept)
        out.append(body if line.label is None else f"{line.label}: {body}")
    return "\n".join(out)


# -- selection ------------------------------------------------------------------------------------

# Tuned on QMSum train+dev (benchmarks/eval_compress.py). A term (a content word, or a bigram with
# one) weighs sqrt(its count in the document), so a meeting's recurring topics count most; a term
# used once weighs ONCE (often a slip, or a name said in passing). Each further copy of a term in
# the selection is worth DECAY times the one before, so new vocabulary beats repetition. Bigrams
# raised ROUGE-2 kept by ~5 points for under 1 point of ROUGE-1; the position prior (up to 1.5x
# for the opening, where agendas are stated) by ~1 point more.
_WEIGHT_POWER = 0.5
_DECAY = 0.4
_BIGRAM_WEIGHT = 1.0
_POSITION = 0.5
_ONCE = 0.5


def _terms(sentence: str) -> Counter[str]:
    words = [_stem(w) for w in _words(sentence)]
    out = Counter(w for w in words if w not in _STOPWORDS and len(w) > 1)
    if _BIGRAM_WEIGHT:
        out.update(
            a + " " + b
            for a, b in itertools.pairwise(words)
            if a not in _STOPWORDS or b not in _STOPWORDS
        )
    return out


def _select(
    parsed: _Parsed, budget: int, measure: Callable[[str], int], gap: int
) -> tuple[list[int], int]:
    """Greedily pick the sentences with the most new vocabulary per token, best first.

    Returns the picks and the best sentence regardless of budget (what a tiny budget truncates).
    """
    n = len(parsed.sentences)
    terms = [_terms(s) for s in parsed.sentences]
    frequency: Counter[str] = Counter()
    for t in terms:
        frequency.update(t)
    weight = {
        t: (c**_WEIGHT_POWER if c > 1 else _ONCE) * (_BIGRAM_WEIGHT if " " in t else 1)
        for t, c in frequency.items()
    }
    cost = [measure(s) + gap for s in parsed.sentences]
    label_cost = [
        0 if line.label is None else measure(line.label + ":") + 1 for line in parsed.lines
    ]
    covered: Counter[str] = Counter()
    opened = [False] * len(parsed.lines)
    chosen: set[int] = set()
    ranked: list[int] = []
    spent = 0

    def gain(i: int) -> float:
        g = 0.0
        for t, k in terms[i].items():
            g += weight[t] * math.pow(_DECAY, covered[t]) * (1 - math.pow(_DECAY, k))
        return g

    def price(i: int) -> int:
        line = parsed.owner[i]
        return cost[i] + (0 if opened[line] else label_cost[line])

    prior = [1 + _POSITION * (1 - i / n) for i in range(n)]

    def ratio(i: int) -> float:
        return prior[i] * gain(i) / price(i)

    heap = [(-ratio(i), i) for i in range(n)]
    heapq.heapify(heap)
    top = heap[0][1] if heap else 0
    while heap:
        _, i = heapq.heappop(heap)
        if i in chosen or spent + price(i) > budget:
            continue
        current = ratio(i)
        if current <= 0:
            continue
        # Lazy greedy: gains only shrink, so a refreshed score still on top is the true best.
        if heap and current < -heap[0][0]:
            heapq.heappush(heap, (-current, i))
            continue
        chosen.add(i)
        ranked.append(i)
        spent += price(i)
        covered.update(terms[i])
        line = parsed.owner[i]
        if not opened[line]:
            opened[line] = True
            # The label is paid for now, so the turn's other sentences just got cheaper.
            for j in parsed.lines[line].sentences:
                if j not in chosen:
                    heapq.heappush(heap, (-ratio(j), j))
    return ranked, top


def _fit(parsed: _Parsed, budget: int, model_id: str) -> str:
    """Select sentences for ``budget`` and trim until the rendered text really fits."""
    if is_exact(model_id):

        def measure(s: str) -> int:
            return count_tokens(s, model_id)

        # SentencePiece folds the space before a word into the word's token: joins are free.
        target, gap = budget, 0
    else:

        def measure(s: str) -> int:
            return len(s)

        # The estimator is ceil(chars / 4) of the whole text, so counting characters is exact.
        target, gap = budget * CHARS_PER_TOKEN, 1
    order, top = _select(parsed, target, measure, gap)
    keep = set(order)
    text = _render(parsed, keep)
    # Counted one by one, sentences can miss a few tokens where lines join: drop the
    # lowest-ranked until the real count fits.
    while order and count_tokens(text, model_id) > budget:
        over = count_tokens(text, model_id) - budget
        drop = 0
        while order and drop < over:
            i = order.pop()
            keep.discard(i)
            drop += measure(parsed.sentences[i]) + gap
        text = _render(parsed, keep)
    if text or not parsed.sentences:
        return text
    # Not one whole sentence fits: the start of the best one, under its label if that leaves room
    # for a word of it.
    label = parsed.lines[parsed.owner[top]].label
    cut = _truncate(_render(parsed, {top}), budget, model_id)
    if label is not None and len(cut.split()) <= len(label.split()):
        cut = _truncate(parsed.sentences[top], budget, model_id)
    return cut


def _truncate(line: str, budget: int, model_id: str) -> str:
    """The longest word prefix of ``line`` within ``budget``: for budgets below one sentence."""
    words = line.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid]), model_id) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def compress(text: str, budget_tokens: int, model_id: str = "") -> str:
    r"""Shrink ``text`` to at most ``budget_tokens`` tokens of ``model_id``, keeping what informs.

    >>> doc = "\n".join([
    ...     "Anna: Um, the {disfmarker} the budget for the remote is twelve euros.",
    ...     "Ben: Mm-hmm.",
    ...     "Anna: So the remote needs a cheap chip. The chip costs three euros.",
    ...     "Ben: Yeah.",
    ... ])
    >>> print(compress(doc, 100))
    Anna: the budget for the remote is twelve euros.
    Anna: So the remote needs a cheap chip. The chip costs three euros.
    >>> print(compress(doc, 20))
    Anna: So the remote needs a cheap chip. The chip costs three euros.
    """
    if budget_tokens < 1:
        raise ConfigError(f"compress budget_tokens must be at least 1, got {budget_tokens}.")
    parsed = _parse(text)
    cleaned = _render(parsed)
    if count_tokens(cleaned, model_id) <= budget_tokens:
        return cleaned
    return _fit(parsed, budget_tokens, model_id)


# -- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Compress:
    r"""Shrink ``request.document`` to ``budget`` tokens (or a fraction of it) without a model.

    The entry records the tokens read and written, and, as avoided cost, the input price
    ``priced_as`` no longer pays for the tokens removed.

    >>> from chainkit import Catalogue, Ledger, Request
    >>> stage = Compress(budget=0.5, priced_as="anthropic.claude-3-sonnet-20240229-v1:0",
    ...                  catalogue=Catalogue.load("seed-2024"))
    >>> doc = "Ann: Um, so {disfmarker} so the chip costs three euros.\nBen: Mm-hmm. Fine."
    >>> ledger = Ledger()
    >>> stage.run(Request("Summarise.", document=doc), ledger).document
    'Ann: so the chip costs three euros.'
    >>> entry = ledger.entries()[0]
    >>> entry.usage.input_tokens, entry.usage.output_tokens, entry.avoided_cost
    (19, 9, Decimal('0.00003'))
    """

    budget: int | float
    priced_as: str
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "compress"

    def __post_init__(self) -> None:
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, int | float):
            raise ConfigError(
                f"Compress budget must be a token count (int >= 1) or a fraction of the document "
                f"(0 < float < 1), got {budget!r}."
            )
        if isinstance(budget, int) and budget < 1:
            raise ConfigError(
                f"Compress budget {budget} tokens is below 1; give at least 1 token, or a float "
                "between 0 and 1 for a fraction of the document."
            )
        if isinstance(budget, float) and not 0 < budget < 1:
            raise ConfigError(
                f"Compress budget {budget} is not a fraction between 0 and 1 (exclusive); give "
                "e.g. 0.33 for a third of the document, or an int for a token count."
            )
        if self.priced_as not in self.catalogue:
            # card() raises with the closest known ids and the command that lists them all.
            self.catalogue.card(self.priced_as)

    def budget_for(self, tokens: int) -> int:
        """The token budget for a document of ``tokens`` tokens."""
        if isinstance(self.budget, float):
            return max(1, math.floor(self.budget * tokens))
        return self.budget

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with ``document`` compressed, recording what was saved."""
        started = time.perf_counter()
        if request.document is None:
            record_free(self.name, request, ledger, started=started)
            return request
        tokens_in = count_tokens(request.document, self.priced_as)
        compressed = compress(request.document, self.budget_for(tokens_in), self.priced_as)
        tokens_out = count_tokens(compressed, self.priced_as)
        saved = Usage(input_tokens=max(0, tokens_in - tokens_out))
        record_free(
            self.name,
            request,
            ledger,
            started=started,
            usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out),
            avoided_cost=self.catalogue.cost(self.priced_as, saved),
            estimated=not is_exact(self.priced_as),
        )
        return dataclasses.replace(request, document=compressed)
