r"""Long documents: loading any JSONL of ``{id, document, summary?}`` and splitting to a budget.

>>> chunks = split_document("A: one.\nB: two.\nC: three.", budget=5)
>>> chunks
['A: one.\nB: two.', 'C: three.']
>>> "\n".join(chunks) == "A: one.\nB: two.\nC: three."
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chainkit.errors import ConfigError
from chainkit.tokens import count_tokens, is_exact

__all__ = ["Document", "TokenCount", "count_document", "load_documents", "split_document"]


@dataclass(frozen=True, slots=True)
class Document:
    """A document to summarise, with its human reference summary when there is one."""

    id: str
    text: str
    summary: str | None = None
    split: str | None = None


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A document's size for one model: exact from its tokenizer, or ``estimated``."""

    model_id: str
    tokens: int
    estimated: bool


def count_document(document: Document, model_id: str) -> TokenCount:
    """Count ``document`` for ``model_id`` (Mistral's tokenizer for Mistral, else the estimator)."""
    return TokenCount(model_id, count_tokens(document.text, model_id), not is_exact(model_id))


def load_documents(
    path: str | Path, *, split: str | None = None, limit: int | None = None
) -> list[Document]:
    """Read documents from a JSONL file of objects with ``id``, ``document`` and ``summary``.

    ``split`` keeps only rows whose ``split`` field equals it. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No document file at {path}.")
    out: list[Document] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not JSON ({exc}).") from exc
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object, got {row!r:.60}.")
            for key in ("id", "document"):
                if not isinstance(row.get(key), str) or not row[key]:
                    raise ConfigError(
                        f"{path}:{number}: field {key!r} must be a non-empty string, got "
                        f"{row.get(key)!r:.60}; each line needs id, document, optionally summary."
                    )
            if split is not None and row.get("split") != split:
                continue
            summary = row.get("summary")
            out.append(
                Document(
                    id=row["id"],
                    text=row["document"],
                    summary=summary if isinstance(summary, str) and summary else None,
                    split=row.get("split") if isinstance(row.get("split"), str) else None,
                )
            )
            if limit is not None and len(out) >= limit:
                break
    return out


_BLANK = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _units(text: str) -> tuple[list[str], str]:
    """Split into paragraphs (blank lines) if there are several, else lines (turns)."""
    paragraphs = _BLANK.split(text)
    if len(paragraphs) > 1:
        return paragraphs, "\n\n"
    return text.split("\n"), "\n"


def _pieces(unit: str, budget: int, model_id: str) -> Iterator[str]:
    """Cut one over-long unit at sentences, then at words, into pieces within ``budget``."""
    current: list[str] = []
    for sentence in _SENTENCE.split(unit):
        words = [sentence] if count_tokens(sentence, model_id) <= budget else sentence.split(" ")
        for piece in words:
            candidate = " ".join([*current, piece])
            if current and count_tokens(candidate, model_id) > budget:
                yield " ".join(current)
                current = [piece]
            else:
                current.append(piece)
    if current:
        yield " ".join(current)


def _pack(units: list[str], separator: str, budget: int, model_id: str) -> list[str]:
    # Units are counted once and summed (plus a token per separator) rather than recounting the
    # growing chunk, which would be quadratic on a 30K-token transcript.
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for unit in units:
        size = count_tokens(unit, model_id)
        if size > budget:
            if current:
                chunks.append(separator.join(current))
                current, used = [], 0
            chunks.extend(_pieces(unit, budget, model_id))
            continue
        if current and used + 1 + size > budget:
            chunks.append(separator.join(current))
            current, used = [], 0
        used += size + (1 if current else 0)
        current.append(unit)
    if current:
        chunks.append(separator.join(current))
    return chunks


def _fit(units: list[str], separator: str, budget: int, target: int, model_id: str) -> list[str]:
    chunks: list[str] = []
    for chunk in _pack(units, separator, target, model_id):
        size = count_tokens(chunk, model_id)
        if size <= budget:
            chunks.append(chunk)
            continue
        # Summed counts missed how the joined text tokenises (a few tokens per seam): pack this
        # chunk's units again with the overshoot taken off; the target shrinks, so this ends.
        inner = chunk.split(separator)
        if len(inner) == 1:
            inner, separator_in = chunk.split(" "), " "
        else:
            separator_in = separator
        chunks.extend(_fit(inner, separator_in, budget, target - (size - budget) - 1, model_id))
    return chunks


def split_document(text: str, budget: int, model_id: str = "") -> list[str]:
    """Split ``text`` into chunks of at most ``budget`` tokens on paragraph or turn boundaries.

    Joining the chunks with the separator they were split on gives back the text (units longer
    than the budget are cut at sentence, then word, boundaries and lose only the space there).
    """
    if budget < 1:
        raise ConfigError(f"split budget must be at least 1 token, got {budget}.")
    units, separator = _units(text)
    return _fit(units, separator, budget, budget, model_id)
