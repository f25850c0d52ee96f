"""SemanticCache: answer a question like one answered before, within one tenant and one intent.

The stage wraps the stage that answers (usually :class:`~chainkit.Generate`). For a request of
a declared, customer-independent intent it embeds the text (free with a local embedder; a paid
embedder's call is its own ledger entry, stage ``<name>.embed``, priced per token and held
against budgets like any model call), and looks for the most similar stored question of the
same scope (tenant) and intent. At cosine similarity ``threshold`` or above it answers with the
stored answer, and its entry records what the wrapped stage would have cost (the avoided cost);
below, it passes the request to the wrapped stage and stores that answer for next time.

Where the vectors and answers are kept (:class:`AnswerStore`):

- an SQLite file (or memory), one row per stored answer: the question's embedding, the answer
  text, its intent, its scope (``{"tenant": ...}`` or none), the embedder's id and the time;
  never the question's text. Processes that open the same file share it.
- A lookup only ever reads the rows of the request's own scope, intent and embedding space
  (one partition, keyed by a SHA-256 of the three): no tenant's answer can reach another
  tenant, nor an untagged request, nor a tenant's request an untagged one's.
- Rows are deleted by :meth:`AnswerStore.purge` (older than a date, or one tenant's) and, with
  ``retention=``, on opening and hourly; SQLite overwrites deleted rows (``secure_delete``) and
  the purge empties the -wal file (unless a reader holds it: then a warning is logged).

The search is exact brute force over the partition (one matrix-vector product): scoped by
tenant and intent, partitions hold hundreds to thousands of vectors, where
``benchmarks/bench_semcache_index.py`` measured brute force at 0.4 ms for 10,000 vectors and an
approximate index buys nothing but lost recall.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from chainkit.errors import ConfigError, ProviderError
from chainkit.ledger import Ledger
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.embeddings import Embedder, Vector, decode_vector
from chainkit.providers.model import Model, Prompt
from chainkit.records import MAX_TAG_KEY, Request, Result, check_text
from chainkit.stages.answering import CostEstimator, record_early
from chainkit.stages.calling import (
    DEFAULT_TIMEOUT_S,
    ModelCall,
    check_model,
    check_timeout,
    run_to_end,
)
from chainkit.stages.lookup import Lookup

if TYPE_CHECKING:
    from chainkit.pipeline import Stage  # the pipeline imports the stages

__all__ = ["AnswerStore", "Match", "SemanticCache"]

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        partition TEXT NOT NULL,
        scope TEXT NOT NULL,
        intent TEXT NOT NULL,
        embedder TEXT NOT NULL,
        vector BLOB NOT NULL,
        answer TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS answers_partition ON answers (partition, id)",
    "CREATE INDEX IF NOT EXISTS answers_created ON answers (created)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES ('generation', 0)",
)
_log = logging.getLogger("chainkit")
_PURGE_EVERY_S: Final = 3600.0
# Titan v2's limit; longer texts are not cached (a question is far shorter).
_MAX_CHARS: Final = 50_000


def _scope_json(scope: dict[str, str] | None) -> str:
    return json.dumps(scope, sort_keys=True, ensure_ascii=True)


def _partition(scope: dict[str, str] | None, intent: str, embedder: str) -> str:
    # ASCII JSON: distinct strings stay distinct (lone surrogates too), order does not matter.
    body = json.dumps([_scope_json(scope), intent, embedder], ensure_ascii=True)
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def _check_scope(scope: object) -> dict[str, str] | None:
    if scope is None:
        return None
    if not isinstance(scope, dict) or not scope:
        raise ConfigError(
            f"An answer's scope must be a non-empty dict of tag key to value such as "
            f"{{'tenant': 'acme'}}, or None for requests without the scope tag; got "
            f"{scope!r:.80}."
        )
    for key, value in scope.items():
        check_text(key, "Answer scope key", max_len=MAX_TAG_KEY)
        check_text(value, f"Answer scope {key!r} value", empty=True)
    return dict(scope)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: SQLite could not store it as text
        return False
    return True


@dataclass(frozen=True, slots=True)
class Match:
    """The nearest stored answer in a partition, and its cosine similarity to the question."""

    answer: str
    similarity: float


@dataclass
class _Partition:
    ids: list[int] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    matrix: NDArray[np.float32] | None = None
    last_id: int = 0


class AnswerStore:
    """Embeddings of answered questions and their answers, by scope, intent and embedder (SQLite).

    ``path=None`` keeps them in memory, for one process; a file is shared by every process that
    opens it (WAL), each keeping the partitions it has searched in memory and reading only the
    rows added since. ``retention`` deletes rows older than it on opening and hourly after.
    ``timeout_s`` is how long to wait for another connection's lock before an operation fails.

    >>> import numpy as np
    >>> store = AnswerStore()
    >>> v = np.array([1.0, 0.0], dtype=np.float32)
    >>> store.add(v, "We ship in 2 days.", intent="delivery_period", scope={"tenant": "acme"},
    ...           embedder="e")
    >>> store.nearest(v, intent="delivery_period", scope={"tenant": "acme"}, embedder="e")
    Match(answer='We ship in 2 days.', similarity=1.0)
    >>> store.nearest(v, intent="delivery_period", scope={"tenant": "globex"}, embedder="e") is None
    True
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        retention: timedelta | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not 0 <= timeout_s <= 3600
        ):
            raise ConfigError(
                f"AnswerStore timeout_s is how long to wait for another connection's lock, in "
                f"seconds within [0, 3600]; got {timeout_s!r}."
            )
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise ConfigError(
                f"AnswerStore retention must be a positive timedelta such as "
                f"timedelta(days=30), or None to keep answers until purged; got {retention!r}."
            )
        self.path = None if path is None else Path(path)
        self.retention = retention
        target = ":memory:" if path is None else str(path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._db.execute("PRAGMA secure_delete = ON")
            if path is not None:
                self._db.execute("PRAGMA journal_mode = WAL")
                # The -wal file is cut back to nothing when SQLite restarts it after a
                # checkpoint, so copies of deleted answers do not linger in its tail.
                self._db.execute("PRAGMA journal_size_limit = 0")
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{target!r} cannot be opened as an answer store ({exc}); pass the path of a "
                "store made by AnswerStore, or a new file."
            ) from exc
        if not {"partition", "vector", "answer", "created"} <= columns:
            raise ConfigError(
                f"{target!r} has an `answers` table that is not an AnswerStore's (columns "
                f"{sorted(columns)}); use another file."
            )
        self._lock = threading.RLock()
        # By partition and vector size: a stored vector of another size is never compared.
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._generation = self._read_generation()
        self._purged_at = 0.0
        self._expire()

    def _read_generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def _expire(self) -> None:
        if self.retention is None or time.monotonic() - self._purged_at < _PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        self.purge(before=datetime.now(UTC) - self.retention)

    def add(
        self,
        vector: NDArray[np.floating[Any]],
        answer: str,
        *,
        intent: str,
        scope: dict[str, str] | None,
        embedder: str,
    ) -> None:
        """Store ``answer`` for a question embedded as ``vector``, in one scope and intent."""
        check_text(intent, "Answer intent")
        check_text(embedder, "Embedder id")
        scope = _check_scope(scope)
        if type(answer) is not str:
            raise ConfigError(f"An answer must be a str, got {type(answer).__name__}.")
        data = np.asarray(vector, dtype="<f4")
        if data.ndim != 1 or not data.size or not np.isfinite(data).all():
            raise ConfigError(
                f"An answer's vector must be one finite, non-empty row of floats; got shape "
                f"{data.shape}."
            )
        with self._lock:
            self._expire()
            with self._db:
                self._db.execute(
                    "INSERT INTO answers (partition, scope, intent, embedder, vector, answer, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        _partition(scope, intent, embedder),
                        _scope_json(scope),
                        intent,
                        embedder,
                        data.tobytes(),
                        answer,
                        time.time(),
                    ),
                )

    def _load(self, key: str, dimension: int) -> _Partition:
        """The partition with every row added since it was last read (by any process)."""
        generation = self._read_generation()
        if generation != self._generation:  # a purge somewhere: read everything again
            self._partitions.clear()
            self._generation = generation
        part = self._partitions.setdefault((key, dimension), _Partition())
        rows = self._db.execute(
            "SELECT id, vector, answer FROM answers WHERE partition = ? AND id > ? ORDER BY id",
            (key, part.last_id),
        ).fetchall()
        if rows:
            fresh = [np.frombuffer(blob, dtype="<f4") for _, blob, _ in rows]
            kept = [(r, v) for r, v in zip(rows, fresh, strict=True) if v.size == dimension]
            if kept:
                block = np.stack([v for _, v in kept]).astype(np.float32)
                norms = np.linalg.norm(block, axis=1, keepdims=True)
                block /= np.where(norms > 0, norms, 1.0)
                part.matrix = block if part.matrix is None else np.vstack([part.matrix, block])
                part.ids += [r[0] for r, _ in kept]
                part.answers += [r[2] for r, _ in kept]
            part.last_id = rows[-1][0]
        return part

    def nearest(
        self,
        vector: NDArray[np.floating[Any]],
        *,
        intent: str,
        scope: dict[str, str] | None,
        embedder: str,
    ) -> Match | None:
        """The stored answer nearest to ``vector`` in exactly this scope, intent and embedder.

        ``None`` when that partition is empty.
        """
        scope = _check_scope(scope)
        query = np.asarray(vector, dtype=np.float32)
        with self._lock:
            self._expire()
            if query.ndim != 1 or not query.size:
                return None
            part = self._load(_partition(scope, intent, embedder), query.size)
            if part.matrix is None or not part.ids or part.matrix.shape[1] != query.size:
                return None
            scores = part.matrix @ query
            best = int(scores.argmax())
            return Match(part.answers[best], float(scores[best]))

    def purge(self, *, before: datetime | None = None, scope: dict[str, str] | None = None) -> int:
        """Delete answers stored before ``before``, or one ``scope``'s, or both; return how many.

        ``purge(scope={"tenant": "acme"})`` forgets a tenant; at least one argument is needed.
        The -wal file of a store on disk is then checkpointed and emptied, so that the deleted
        answers leave it too; if another connection is reading at that moment (for longer than
        the store's ``timeout_s``) the copies stay in the -wal file until the next checkpoint,
        and a warning is logged (logger ``chainkit``).
        """
        if before is None and scope is None:
            raise ConfigError(
                "purge needs before= (a datetime) or scope= (such as {'tenant': 'acme'}); to "
                "delete everything, delete the store's file."
            )
        clauses: list[str] = []
        args: list[float | str] = []
        if before is not None:
            if not isinstance(before, datetime) or before.utcoffset() is None:
                raise ConfigError(
                    f"purge before= must be a timezone-aware datetime, got {before!r}."
                )
            clauses.append("created < ?")
            args.append(before.timestamp())
        if scope is not None:
            clauses.append("scope = ?")
            args.append(_scope_json(_check_scope(scope)))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute(
                f"DELETE FROM answers WHERE {' AND '.join(clauses)}", args
            ).rowcount
            if deleted:
                self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        if deleted:
            self._truncate_wal()
        return int(deleted)

    def _truncate_wal(self) -> None:
        """Copy the -wal file into the database (zeroed where deleted) and empty it."""
        if self.path is None:
            return
        with self._lock:
            # TRUNCATE waits (busy_timeout) for readers of older snapshots; it says busy if
            # one still holds the -wal file after that.
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            _log.warning(
                "AnswerStore %s: purged answers may remain in %s-wal until the next "
                "checkpoint: another connection was reading it. Purge again once it is idle.",
                self.path,
                self.path.name,
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@dataclass(frozen=True, kw_only=True)
class SemanticCache:
    """Answer a declared intent with the stored answer to a similar question; else ask ``then``.

    ``intents`` declares the intents whose answers hold for every customer of a tenant (the
    rule of :class:`~chainkit.Precomputed`): only those are looked up and stored. A request
    with another intent, no intent, looked-up facts, slots or a document, or that carries a
    conversation with earlier turns (a follow-up: its meaning and its answer depend on what that
    customer said before), passes straight to ``then`` with nothing embedded, and its answer is
    never stored: it may hold one customer's data. The same holds for what ``then`` learns on
    the way: an answer whose request gained facts, slots, a document, a summary or a history
    inside ``then`` is not stored, and a ``then`` holding a :class:`~chainkit.Lookup` is
    refused. Empty or blank answers are never stored.

    The store is an optimisation: if it cannot be read (a miss) or written (not stored), the
    request is still answered and the failure is logged (logger ``chainkit``). Vectors are
    partitioned by the embedder's whole space (``embedder.space`` where it has one: model,
    dimension, weights), so changing a setting starts afresh rather than mixing spaces.

    ``arun`` and ``astream`` use ``then``'s own: a miss streams ``then``'s reply as it comes
    and stores it once complete; a hit yields the stored answer at once.

    A request tagged ``scope_tag`` (``tenant``) is matched only against answers stored for that
    tenant; one without the tag only against answers stored for requests without it.

    Args:
        store: where embeddings and answers are kept.
        embedder: a local :class:`~chainkit.providers.embeddings.Embedder` (free), or a paid
            one that is a :class:`~chainkit.Model` (``BedrockEmbedder``), priced from
            ``catalogue``.
        then: the stage that answers on a miss (``Generate``); its estimate prices the avoided
            cost of a hit.
        intents: the customer-independent intents to cache.
        threshold: the cosine similarity at or above which a stored answer is used (0.8 by
            default; tune it on your own labelled questions with ``benchmarks/eval_semcache.py``).
    """

    store: AnswerStore
    embedder: Embedder | Model
    then: Stage
    intents: Collection[str]
    # benchmarks/eval_semcache.py, HashedEmbedder at 0.8: about 1% of hits false on CLINC150 and
    # none on Bitext, no out-of-scope question answered; 1-3% even without the intent scope.
    threshold: float = 0.8
    scope_tag: str = "tenant"
    catalogue: Catalogue | None = None
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    name: str = "semantic_cache"
    _paid: bool = field(default=False, init=False, repr=False)
    _dimension: int = field(default=0, init=False, repr=False)
    _window: int = field(default=0, init=False, repr=False)
    _space: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        check_text(self.name, "stage name")
        check_text(self.scope_tag, "SemanticCache scope_tag", max_len=MAX_TAG_KEY)
        if isinstance(self.intents, str) or not isinstance(self.intents, Collection):
            raise ConfigError(
                f"SemanticCache intents must be a collection of intent names such as "
                f"{{'delivery_options', 'check_refund_policy'}}, got {self.intents!r:.80}."
            )
        if not self.intents:
            raise ConfigError(
                "SemanticCache(intents=...) declares no intents, so it would cache nothing. "
                "Declare the intents whose answers are the same for every customer of a tenant; "
                "never one whose answer is built from a customer's facts (order, name, address)."
            )
        for intent in self.intents:
            check_text(intent, "SemanticCache intent")
        object.__setattr__(self, "intents", frozenset(self.intents))
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not -1.0 <= self.threshold <= 1.0
        ):
            raise ConfigError(
                f"SemanticCache threshold is a cosine similarity in [-1, 1], got "
                f"{self.threshold!r}; benchmarks/eval_semcache.py tunes one on dev data."
            )
        check_timeout(self.timeout_s, self.name)
        if not callable(getattr(self.then, "run", None)):
            raise ConfigError(
                f"SemanticCache then= must be a stage (with run(request, ledger)), got "
                f"{type(self.then).__name__}."
            )
        looks_up = _lookup_in(self.then)
        if looks_up is not None:
            raise ConfigError(
                f"SemanticCache then= holds a Lookup stage ({looks_up!r}): its facts are one "
                "customer's, and an answer built from them must never be served to another. "
                "Put the Lookup before the SemanticCache: a request with facts is then never "
                "cached."
            )
        paid = isinstance(self.embedder, Model)
        if paid:
            catalogue = catalogue_for(self.embedder, self.catalogue)
            object.__setattr__(self, "catalogue", catalogue)
            check_model(self.embedder, catalogue, self.name)  # type: ignore[arg-type]
            window = catalogue.card(self.embedder.model_id).context_window
            object.__setattr__(self, "_window", window)
        elif not isinstance(self.embedder, Embedder):
            raise ConfigError(
                f"SemanticCache embedder must have embed(text) (a local embedder such as "
                f"HashedEmbedder) or be a Model (BedrockEmbedder); got "
                f"{type(self.embedder).__name__}."
            )
        dimension = getattr(self.embedder, "dimension", None)
        if type(dimension) is not int or dimension < 1:
            raise ConfigError(
                f"SemanticCache embedder {self.embedder!r:.60} has no dimension (an int)."
            )
        object.__setattr__(self, "_paid", paid)
        object.__setattr__(self, "_dimension", dimension)
        space = getattr(self.embedder, "space", None)
        if not isinstance(space, str) or not space:
            space = f"{self.embedder.model_id}|dim={dimension}"
        check_text(space, "Embedder space")
        object.__setattr__(self, "_space", space)

    def estimate_cost(self, request: Request) -> Decimal | None:
        """What ``then`` would cost for ``request`` (so an earlier stage's answer avoids it)."""
        if isinstance(self.then, CostEstimator):
            return self.then.estimate_cost(request)
        return None

    def _scope(self, request: Request) -> dict[str, str] | None:
        tenant = request.tags.get(self.scope_tag)
        return None if tenant is None else {self.scope_tag: tenant}

    def _eligible(self, request: Request) -> bool:
        return (
            request.intent is not None
            and request.intent in self.intents
            and _independent(request)
            and len(request.text) <= _MAX_CHARS
        )

    def _embed_call(self, request: Request, ledger: Ledger) -> ModelCall | None:
        """The paid embedder's call for ``request``; ``None`` if the text is too long for it."""
        embedder = self.embedder
        assert self.catalogue is not None
        prompt = Prompt("", request.text)
        if embedder.estimate(prompt, max_tokens=1).input_tokens >= self._window:  # type: ignore[union-attr]
            return None  # longer than the embedder takes: not cached, and nothing refused
        return ModelCall(
            stage=f"{self.name}.embed",
            model=embedder,  # type: ignore[arg-type]
            catalogue=self.catalogue,
            prompt=prompt,
            max_tokens=1,  # embeddings have no output; 1 keeps the context check meaningful
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
        )

    def _decode(self, text: str) -> Vector | None:
        try:
            return decode_vector(text, self._dimension)
        except ValueError:
            return None  # paid for, unusable: recorded, and the request goes on

    def _embed(self, request: Request, ledger: Ledger) -> Vector | None:
        """The request's embedding; a paid embedder's call is recorded as its own entry."""
        if not self._paid:
            return self.embedder.embed(request.text)  # type: ignore[union-attr]
        call = self._embed_call(request, ledger)
        if call is None:
            return None
        try:
            with call as completion:
                vector = self._decode(completion.text)
                call.record("passed")
        except ProviderError:
            # Recorded by the call (failed, cost unknown or $0 if throttled). A cache that cannot
            # embed is a cache miss, not an outage: the wrapped stage still answers.
            return None
        return vector

    async def _aembed(self, request: Request, ledger: Ledger) -> Vector | None:
        """:meth:`_embed` on the event loop."""
        if not self._paid:
            return await run_to_end(self.embedder.embed, request.text)  # type: ignore[union-attr]
        call = await run_to_end(self._embed_call, request, ledger)
        if call is None:
            return None
        try:
            async with call as completion:
                vector = self._decode(completion.text)
                await call.arecord("passed")
        except ProviderError:
            return None  # recorded by the call; a miss, as in _embed
        return vector

    def _lookup(
        self, request: Request, ledger: Ledger, vector: Vector | None, started: float
    ) -> Result | None:
        """The stored answer (recorded as answered), or ``None`` (recorded as passed)."""
        match = None
        if request.intent is not None and vector is not None and _usable(vector):
            try:
                match = self.store.nearest(
                    vector, intent=request.intent, scope=self._scope(request), embedder=self._space
                )
            except Exception:
                # A store that cannot be read is a miss: the request is still answered.
                _log.warning(
                    "SemanticCache %r: reading the answer store failed", self.name, exc_info=True
                )
        if match is not None and match.similarity >= self.threshold and match.answer.strip():
            out = record_early(self.name, self, request, ledger, match.answer, started)
            assert isinstance(out, Result)
            return out
        record_early(self.name, None, request, ledger, None, started)
        return None

    def _keep(self, request: Request, vector: Vector | None, out: Request | Result) -> None:
        """Store ``then``'s answer if it holds for every customer of the tenant."""
        if (
            not isinstance(out, Result)
            or request.intent is None
            or vector is None
            or not _usable(vector)
            or not out.text.strip()  # an empty reply is a failure, not an answer to serve
            or not _encodes(out.text)
            or not _independent(out.request)  # then looked up facts, or saw a history
        ):
            return
        try:
            self.store.add(
                vector,
                out.text,
                intent=request.intent,
                scope=self._scope(request),
                embedder=self._space,
            )
        except Exception:
            # The answer was paid for and recorded: losing it to a locked store would be worse
            # than not caching it.
            _log.warning("SemanticCache %r: storing an answer failed", self.name, exc_info=True)

    def run(self, request: Request, ledger: Ledger) -> Request | Result:
        """Answer from the store, or pass to ``then`` and store its answer.

        A stored answer is used when its question, of the same tenant and intent, is at least
        ``threshold`` similar.
        """
        started = time.perf_counter()
        if not self._eligible(request):
            record_early(self.name, None, request, ledger, None, started)
            return self.then.run(request, ledger)
        vector = self._embed(request, ledger)
        hit = self._lookup(request, ledger, vector, started)
        if hit is not None:
            return hit
        out = self.then.run(request, ledger)
        self._keep(request, vector, out)
        return out

    async def _athen(self, request: Request, ledger: Ledger) -> Request | Result:
        arun = getattr(self.then, "arun", None)
        if arun is not None:
            out: Request | Result = await arun(request, ledger)
            return out
        return await run_to_end(self.then.run, request, ledger)

    async def _abefore(self, request: Request, ledger: Ledger) -> tuple[bool, Any]:
        """(eligible, the hit or the vector) for the async paths."""
        started = time.perf_counter()
        if not self._eligible(request):
            await run_to_end(record_early, self.name, None, request, ledger, None, started)
            return False, None
        vector = await self._aembed(request, ledger)
        hit = await run_to_end(self._lookup, request, ledger, vector, started)
        return True, (vector if hit is None else hit)

    async def arun(self, request: Request, ledger: Ledger) -> Request | Result:
        """:meth:`run` on the event loop: ``then``'s ``arun`` (else its ``run`` in a thread)."""
        eligible, found = await self._abefore(request, ledger)
        if isinstance(found, Result):
            return found
        out = await self._athen(request, ledger)
        if eligible:
            await run_to_end(self._keep, request, found, out)
        return out

    async def astream(self, request: Request, ledger: Ledger) -> AsyncGenerator[str | Result, None]:
        """Answer as a stream: a hit's whole answer at once, else ``then``'s text as it comes.

        Then the ``Result``. ``then``'s answer is stored only once its stream has ended; a
        reader that stops early leaves nothing stored.
        """
        eligible, found = await self._abefore(request, ledger)
        if isinstance(found, Result):
            yield found.text
            yield found
            return
        answered: Request | Result | None = None
        stream = getattr(self.then, "astream", None)
        if stream is None:
            answered = await self._athen(request, ledger)
            if isinstance(answered, Result):
                yield answered.text
        else:
            async with aclosing(stream(request, ledger)) as events:
                async for item in events:
                    if isinstance(item, Result):
                        answered = item
                    elif isinstance(item, str):
                        if item:
                            yield item
                    elif isinstance(getattr(item, "result", None), Result):
                        answered = item.result  # a Pipeline's Answered
                    elif isinstance(getattr(item, "text", None), str) and item.text:
                        yield item.text  # a Pipeline's TextDelta
        if eligible and answered is not None:
            await run_to_end(self._keep, request, found, answered)
        if isinstance(answered, Result):
            yield answered


def _usable(vector: Vector) -> bool:
    return float(np.linalg.norm(vector)) > 0


def _independent(request: Request) -> bool:
    """Whether nothing of one customer's shapes the answer (the rule of ``Precomputed``)."""
    conversation = request.conversation
    return (
        not request.facts
        and not request.slots
        and request.document is None
        and request.summary is None
        and (conversation is None or (not conversation.turns and conversation.summary is None))
    )


def _lookup_in(stage: object) -> Lookup | None:
    """A Lookup inside ``stage`` (itself, or any stage of a pipeline within it), if any."""
    if isinstance(stage, Lookup):
        return stage
    for inner in getattr(stage, "stages", ()) or ():
        found = _lookup_in(inner)
        if found is not None:
            return found
    then = getattr(stage, "then", None)
    return None if then is None or then is stage else _lookup_in(then)
