"""The pipeline: stages run in order until one answers; a batch runner over many requests."""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import json
import os
import sys
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, overload, runtime_checkable

from tqdm import tqdm

from chainkit.errors import AlreadyAnswered, ConfigError, InProgress, NoAnswer
from chainkit.ledger import Ledger
from chainkit.ledger.sql import _HOST, Progress, SQLLedger
from chainkit.records import (
    Request,
    Result,
    check_text,
    fingerprint,
    is_generated_id,
    new_entry_id,
    state_from_json,
)
from chainkit.stages.answering import CostEstimator, EarlyAnswer
from chainkit.stages.calling import run_to_end

__all__ = [
    "PROGRESS_EVERY_S",
    "Answered",
    "Pipeline",
    "Resume",
    "ResumePoint",
    "Stage",
    "TextDelta",
    "resume_point",
    "with_progress",
]

T = TypeVar("T")

PROGRESS_EVERY_S = 10.0
"""Off a terminal, :meth:`Pipeline.stream` writes a progress line this often by default (s)."""


@dataclass(frozen=True, slots=True)
class Resume:
    """How a resumed run treats what earlier runs saved (``resume=True`` is ``Resume()``).

    ``keep_text``: save each stage's output with its texts (request, looked-up facts, summary,
    reply), so that a rerun goes on from the next stage and gets answered requests' replies
    back. Off by default: then only stage numbers and a digest of each request are saved, the
    replies of paid calls are kept only until the request is answered, and a rerun replays
    those calls rather than paying again; an answered request raises ``AlreadyAnswered``.
    Once an earlier run saved a request's texts, later runs go on saving that request's stage
    outputs (so that they can go on from them), keeping its final answer only if asked.

    ``changed``: what to do when a saved id comes with different content: ``"error"`` (a
    ``ConfigError``) or ``"restart"`` (drop what was saved and answer it as new).

    ``stale_after_s``: a run claims each request it resumes, so that two runs (threads,
    processes, hosts) never answer the same one at once (the second gets ``InProgress``); a
    claim not renewed for this long, or held by a process of this host that has died, is taken
    over.
    """

    keep_text: bool = False
    changed: Literal["error", "restart"] = "error"
    stale_after_s: float = 900.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep_text, bool):
            raise ConfigError(f"Resume(keep_text=...) takes a bool, got {self.keep_text!r}.")
        if self.changed not in ("error", "restart"):
            raise ConfigError(
                f"Resume(changed=...) takes 'error' or 'restart', got {self.changed!r}."
            )
        s = self.stale_after_s
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 < s < float("inf"):
            raise ConfigError(
                f"Resume(stale_after_s=...) takes a positive number of seconds, got {s!r}."
            )


class _Bar(Protocol):
    """What ``stream`` needs of a progress display (a tqdm bar or :class:`_Lines`)."""

    def update(self) -> object: ...

    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class _Lines:
    """Progress for a log: a line on stderr every ``every_s`` seconds, and one at the end."""

    def __init__(self, name: str, total: int | None, every_s: float, unit: str) -> None:
        self.name, self.total, self.every_s, self.unit = name, total, every_s, unit
        self.done = self.written = 0
        self.start = self.last = time.monotonic()

    def update(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._write(now)

    def close(self) -> None:
        if self.written:  # a run too short for a line ends as silently as it ran
            self._write(time.monotonic(), end=True)

    def _write(self, now: float, *, end: bool = False) -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = f"{self.name}: {self.done:,}"
        if self.total:
            line += f" of {self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            line += f" {self.unit}"
        line += f"{' done' if end else ''} in {_duration(elapsed)}, {_rate(rate)}/s"
        if not end and self.total and rate > 0:
            line += f", about {_duration((self.total - self.done) / rate)} left"
        print(line, file=sys.stderr, flush=True)
        self.written += 1


def _display(progress: bool | float | None, name: str, total: int | None, unit: str) -> _Bar:
    if progress is None:
        progress = True if sys.stderr.isatty() else PROGRESS_EVERY_S
    if isinstance(progress, bool):
        return tqdm(total=total, disable=not progress, unit=unit[:3], desc=name, leave=False)
    if not isinstance(progress, int | float) or not progress > 0:
        raise ConfigError(
            f"progress takes None, True, False or a number of seconds above 0, got {progress!r}."
        )
    return _Lines(name, total, float(progress), unit)


def with_progress(
    items: Iterable[T],
    name: str,
    *,
    unit: str = "items",
    progress: bool | float | None = None,
) -> Iterator[T]:
    """Yield ``items``, showing progress as :meth:`Pipeline.stream` does (a bar, or lines).

    For long work around a pipeline (scoring its results, say), so that a log hears of it too.
    """
    bar = _display(progress, name, len(items) if isinstance(items, Sized) else None, unit)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.1f}" if per_s >= 1 else f"{per_s:.2f}"


@runtime_checkable
class Stage(Protocol):
    """One step of a pipeline: answer the request, or pass it on enriched. Records either way."""

    @property
    def name(self) -> str:
        """The stage's name in the ledger (read-only is enough: frozen stages qualify)."""
        ...

    def run(self, request: Request, ledger: Ledger) -> Request | Result:
        """Answer with a ``Result`` or return the (possibly enriched) request."""
        ...


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, as :meth:`Pipeline.astream` yields it.

    A stage that answers early yields its whole reply as one delta; the final model stage
    yields the text as the provider sends it.
    """

    stage: str
    text: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The last event of :meth:`Pipeline.astream`: the whole answer, as ``run`` returns it."""

    result: Result


async def _arun_stage(stage: Stage, request: Request, ledger: Ledger) -> Request | Result:
    """A stage on the event loop: its ``arun`` if it has one, else ``run`` in a worker thread.

    A stage's ``run`` in a thread is run to its end even if the caller is cancelled (its
    entries then land before the cancellation goes on; see ``run_to_end``).
    """
    arun = getattr(stage, "arun", None)
    if arun is not None:
        out: Awaitable[Request | Result] = arun(request, ledger)
        return await out
    return await run_to_end(stage.run, request, ledger)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a resumed request goes on, and the claim this run holds on it (see ``resume_point``).

    ``state`` is a ``Result`` if the request was answered (and its reply kept); else the request
    to give stage ``start``. ``owner`` names this run's claim ("" if it holds none), and
    ``keep_text`` is whether the stages' outputs must be saved with their texts (as asked, or
    because an earlier run saved them so: a rerun goes on from them).
    """

    start: int
    state: Request | Result
    owner: str
    fingerprint: str
    keep_text: bool


def resume_point(
    request: Request, ledger: Ledger, how: Resume | None = None, *context: str
) -> ResumePoint:
    """Claim a resumed request for this run and say where it goes on.

    Checks what resuming must: a durable ledger, an id that is the same in every run, the same
    content as was saved under that id (``context``: anything else the answer depends on, such
    as a system prompt), no entries written by a run that saved nothing, and no other live run
    answering it (:class:`~chainkit.errors.InProgress`).
    """
    how = how or Resume()
    if not ledger.durable:
        raise ConfigError(
            "resume needs a durable ledger (SQLiteLedger, PostgresLedger): the saved progress "
            "must outlive the process."
        )
    assert isinstance(ledger, SQLLedger)
    if is_generated_id(request.id):
        raise ConfigError(
            f"Request {request.id!r} has an id made up for this run, so no rerun can find "
            "what it saves: resuming needs ids that are the same in every run. Pass one "
            "from your data, e.g. Request(text, id=row_key)."
        )
    asked = fingerprint(request, *context)
    owner = f"{_HOST} pid {os.getpid()} {new_entry_id()}"
    claim = ledger.claim(request.id, asked, owner, stale_after_s=how.stale_after_s)
    if claim.entries:
        raise ConfigError(
            f"Ledger {ledger.where} holds {claim.entries} "
            f"{'entry' if claim.entries == 1 else 'entries'} of request {request.id!r} but no "
            "saved progress for it: it was run without resume (or its progress was purged), "
            "and resuming would pay for it again. Report on that ledger as it is, or run into "
            "a new ledger."
        )
    if claim.busy is not None:
        raise InProgress(
            f"Request {request.id!r} is being answered by another run ({claim.busy.owner}, "
            f"last active {claim.busy.updated}): answering it here too would pay twice. Wait "
            f"for that run, or resume after it ends (a claim not renewed for "
            f"{how.stale_after_s:g} s is taken over)."
        )
    saved = claim.row
    if saved is not None and not _same_request(saved, request, asked):
        if claim.claimed:
            ledger.unclaim(request.id, owner)
        if how.changed == "error":
            raise ConfigError(
                f"Request id {request.id!r} was saved in ledger {ledger.where} for a request "
                "that asked something else (its text, document, tags or other fields differ): "
                "resuming would hand this request another's saved progress. Give each request "
                "its own id, or pass resume=Resume(changed='restart') to answer it afresh."
            )
        # A new request by choice: what was saved goes (the old one's entries stay, paid).
        ledger.claim(request.id, asked, owner, stale_after_s=how.stale_after_s, restart=True)
        return ResumePoint(0, request, owner, asked, how.keep_text)
    if saved is not None and saved.state:
        state = state_from_json(saved.state, given=request.document)
        if isinstance(state, Result):
            return ResumePoint(saved.stage + 1, state, "", asked, True)
        return ResumePoint(saved.stage + 1, state, owner, asked, True)
    if saved is not None and saved.done:
        raise AlreadyAnswered(
            f"Request {request.id!r} was answered by an earlier run into ledger "
            f"{ledger.where}, which did not keep the reply: answering again would pay twice. "
            "Keep replies with resume=Resume(keep_text=True), or give it a new id to answer "
            "it again (a batch goes on past it with return_exceptions=True)."
        )
    # Without saved texts a request starts from the first stage again; every model call it
    # paid for is replayed from the ledger, not made again.
    return ResumePoint(0, request, owner, asked, how.keep_text)


def _same_request(saved: Progress, request: Request, asked: str) -> bool:
    """Whether saved progress belongs to this request (what it asks, not only its id)."""
    if saved.fingerprint:
        return saved.fingerprint == asked
    if not saved.state:
        return True  # answered without keeping anything to compare: AlreadyAnswered follows
    # Saved by a chainkit before fingerprints: compare what its saved request asked. A document
    # it did not store (the caller passed it again) cannot be compared: then it is not the same.
    data = json.loads(saved.state)["request"]
    if data.get("document_given"):
        return False
    return (data["text"], data["document"], data["tags"]) == (
        request.text,
        request.document,
        dict(request.tags),
    )


def _reply_keys(stage: Stage) -> Sequence[str]:
    """The intents an early-answer stage replies to (Canned's replies, Precomputed's keys)."""
    for attr in ("replies", "keys"):
        keys = getattr(stage, attr, None)
        if isinstance(keys, Mapping):
            return [k for k in keys if isinstance(k, str)]
    return []


def _check_intents(stages: Sequence[Stage]) -> None:
    """Refuse a reply keyed by an intent no earlier scan can set: it would never be used.

    Only checked where every scan before the stage says which labels it can set (a keyword,
    prompt or fitted local classifier); a stage whose labels are unknown turns the check off.
    """
    known: set[str] | None = None
    for stage in stages:
        if hasattr(stage, "classifier") and hasattr(type(stage), "labels"):
            labels = getattr(stage, "labels", None)
            if labels is None:
                return
            known = (known or set()) | set(labels)
            continue
        if known is None:
            continue
        for key in _reply_keys(stage):
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"Stage {stage.name!r} replies to intent {key!r}, which no intent scan "
                    f"before it can set, so that reply would never be used; {hint}"
                    f"the scan's labels are {sorted(known)!r:.300}."
                )


def _check_resume(resume: object) -> None:
    if resume is not False and resume is not True and not isinstance(resume, Resume):
        raise ConfigError(f"resume takes True, False or a Resume(...), got {resume!r}.")


def _check_request(request: object, method: str) -> None:
    if type(request) is not Request:
        raise ConfigError(
            f"Pipeline.{method} takes a Request, got {type(request).__name__} {request!r:.60}; "
            "wrap text as Request(text)."
        )


class Pipeline:
    """Stages in order; the first to return a ``Result`` answers.

    Stages that can answer early are bound to the last stage, if it can estimate its cost, so
    that every early answer records the cost it avoided.

    >>> from chainkit import Canned, IntentScan, KeywordClassifier, Ledger, Request
    >>> bot = Pipeline([
    ...     IntentScan(classifier=KeywordClassifier({"greeting": ["hello"]})),
    ...     Canned(replies={"greeting": "Hi!"}),
    ... ])
    >>> bot.run(Request("hello"), Ledger()).text
    'Hi!'
    """

    def __init__(self, stages: Sequence[Stage], *, name: str = "pipeline") -> None:
        if not stages:
            raise ConfigError("A Pipeline needs at least one stage.")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise ConfigError(
                    f"{stage!r} is not a stage: a stage has a `name` and a "
                    "`run(request, ledger)` method."
                )
        for stage in stages:
            check_text(getattr(stage, "name", None), f"Stage name of {stage!r:.60}")
        check_text(name, "Pipeline name")
        names = [s.name for s in stages]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(
                f"Stage names must be unique within a pipeline; repeated: {duplicated}. "
                "Pass `name=` to tell them apart in the ledger."
            )
        _check_intents(stages)
        final = stages[-1]
        bound: list[Stage] = list(stages)
        if isinstance(final, CostEstimator):
            for i, stage in enumerate(bound[:-1]):
                if isinstance(stage, EarlyAnswer):
                    bound[i] = stage.with_fallback(final)
        self.stages: tuple[Stage, ...] = tuple(bound)
        self.name = name

    def __repr__(self) -> str:
        return f"Pipeline({[s.name for s in self.stages]!r}, name={self.name!r})"

    def run(self, request: Request, ledger: Ledger, *, resume: bool | Resume = False) -> Result:
        """Run ``request`` through the stages; raise ``NoAnswer`` if none answers.

        With ``resume`` (a durable ledger: SQLite or PostgreSQL), each stage's progress is saved
        with its entries in one transaction, and a request seen before goes on where it stopped:
        a run killed and started again pays for nothing twice. Requests need ids that are the
        same in every run (from your data); a saved request is recognised by its id *and* what
        it asks (text, document, tags). ``True`` keeps no text; :class:`Resume` says more.
        """
        _check_resume(resume)
        _check_request(request, "run")
        # A request's free entries are committed with its next paid one, or when it ends.
        with ledger.deferring():
            if resume:
                return self._resume(request, ledger, Resume() if resume is True else resume)
            current = request
            for stage in self.stages:
                out = stage.run(current, ledger)
                if isinstance(out, Result):
                    return out
                current = out
            raise self._no_answer(request)

    def _resume(self, request: Request, ledger: Ledger, how: Resume) -> Result:
        point = resume_point(request, ledger, how)
        if isinstance(point.state, Result):
            return point.state
        assert isinstance(ledger, SQLLedger)
        current = point.state
        for index in range(point.start, len(self.stages)):
            with ledger.step(
                request.id,
                index,
                given=request.document,
                fingerprint=point.fingerprint,
                keep_text=point.keep_text,
                keep_answer=how.keep_text,
                claimed=True,
            ) as save:
                out = self.stages[index].run(current, ledger)
                save(out)
            if isinstance(out, Result):
                return out
            current = out
        ledger.unclaim(request.id, point.owner)  # unanswered: the next run may try again
        raise self._no_answer(request)

    async def arun(
        self, request: Request, ledger: Ledger, *, resume: bool | Resume = False
    ) -> Result:
        """:meth:`run` as a coroutine: the same stages, entries, costs and budgets.

        Model stages await their provider (its ``acomplete``, or ``complete`` in a worker
        thread); a stage without ``arun`` runs in a worker thread. Commits to a durable ledger
        are made in worker threads, so the loop serves other requests meanwhile; the entry of
        a call that fails or is cancelled is written on the loop's thread, where nothing can
        interrupt it. A cancelled request records every call it sent (flagged ``cancelled``,
        cost unknown) and gives back the budget it held for calls it never sent.
        """
        _check_resume(resume)
        _check_request(request, "arun")
        async with ledger.adeferring():
            if resume:
                return await self._aresume(request, ledger, Resume() if resume is True else resume)
            current = request
            for stage in self.stages:
                out = await _arun_stage(stage, current, ledger)
                if isinstance(out, Result):
                    return out
                current = out
            raise self._no_answer(request)

    async def _aresume(self, request: Request, ledger: Ledger, how: Resume) -> Result:
        point = await run_to_end(resume_point, request, ledger, how)
        if isinstance(point.state, Result):
            return point.state
        assert isinstance(ledger, SQLLedger)
        current = point.state
        for index in range(point.start, len(self.stages)):
            # The step is this task's (a context variable), so concurrent requests on one loop
            # never share one; its checkpoint is written on the loop's thread when it ends.
            with ledger.step(
                request.id,
                index,
                given=request.document,
                fingerprint=point.fingerprint,
                keep_text=point.keep_text,
                keep_answer=how.keep_text,
                claimed=True,
            ) as save:
                out = await _arun_stage(self.stages[index], current, ledger)
                save(out)
            if isinstance(out, Result):
                return out
            current = out
        ledger.unclaim(request.id, point.owner)
        raise self._no_answer(request)

    async def astream(
        self, request: Request, ledger: Ledger
    ) -> AsyncGenerator[TextDelta | Answered, None]:
        """Answer ``request`` as a stream of :class:`TextDelta` events, then :class:`Answered`.

        The stages run as in :meth:`arun`; a stage that answers early yields its whole reply
        as one delta, and the final model stage (one with ``astream``, such as ``Generate``)
        yields the text as its provider sends it. Its entry is recorded when the stream ends,
        with the usage the provider reported. A reader that stops early (``break`` inside
        ``async with contextlib.aclosing(...)``, a cancelled task, a client gone) closes the
        provider's stream, and the entry records what was generated: the usage if the provider
        had reported it, else the call's upper bound marked estimated, flagged ``cancelled``.

        >>> import asyncio
        >>> from chainkit import Generate, Ledger, OfflineModel, Request
        >>> bot = Pipeline([Generate(model=OfflineModel(model_id="amazon.nova-micro-v1:0"))])
        >>> async def main() -> str:
        ...     return "".join([e.text async for e in bot.astream(Request("Hi?"), Ledger())
        ...                     if isinstance(e, TextDelta)])
        >>> asyncio.run(main())[:33]
        'This is an offline stand-in reply'
        """
        _check_request(request, "astream")
        current = request
        answered: Result | None = None
        streaming: Any = None
        async with ledger.adeferring():
            for stage in self.stages:
                if getattr(stage, "astream", None) is not None:
                    streaming = stage
                    break
                out = await _arun_stage(stage, current, ledger)
                if isinstance(out, Result):
                    answered = out
                    break
                current = out
        # The free entries are committed before the stream starts: nothing of this request
        # stays open in the reader's context while it reads.
        if answered is None and streaming is not None:
            async with aclosing(streaming.astream(current, ledger)) as events:
                async for item in events:
                    if isinstance(item, Result):
                        answered = item
                    elif item:
                        yield TextDelta(streaming.name, item)
            if answered is None:
                raise self._no_answer(request)
            yield Answered(answered)
            return
        if answered is None:
            raise self._no_answer(request)
        yield TextDelta(answered.stage, answered.text)
        yield Answered(answered)

    def stream_answer(self, request: Request, ledger: Ledger) -> Iterator[TextDelta | Answered]:
        """:meth:`astream` for code without an event loop: a generator of the same events.

        It runs its own event loop, one step per event; closing it early (``break``) closes
        the stream and records the call as :meth:`astream` does. From async code, use
        :meth:`astream`.
        """
        _check_request(request, "stream_answer")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigError(
                "Pipeline.stream_answer runs its own event loop, and this thread is running "
                "one already; use `async for event in pipeline.astream(request, ledger)`."
            )
        return self._stream_answer(request, ledger)

    def _stream_answer(self, request: Request, ledger: Ledger) -> Iterator[TextDelta | Answered]:
        loop = asyncio.new_event_loop()
        # One context for every step, as one task would have: what a step sets, the next sees.
        context = contextvars.copy_context()
        events = self.astream(request, ledger)

        async def step() -> TextDelta | Answered:
            return await anext(events)

        async def close() -> None:
            await events.aclose()

        try:
            while True:
                try:
                    event = loop.run_until_complete(loop.create_task(step(), context=context))
                except StopAsyncIteration:
                    return
                yield event
        finally:
            try:
                loop.run_until_complete(loop.create_task(close(), context=context))
                loop.run_until_complete(loop.shutdown_asyncgens())
                if sys.is_finalizing():
                    # Collected as the interpreter ends (a generator left open to the end): no
                    # thread can start now, and joining the executor would start one and hang.
                    # The call it had sent was recorded by the exit hook (ModelCall).
                    executor = getattr(loop, "_default_executor", None)
                    if executor is not None:
                        executor.shutdown(wait=False)
                else:
                    loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    @overload
    async def arun_many(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Result]: ...

    @overload
    async def arun_many(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[True],
    ) -> list[Result | Exception]: ...

    async def arun_many(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = 8,
        progress: bool | float | None = None,
        resume: bool | Resume = False,
        return_exceptions: bool = False,
    ) -> list[Result] | list[Result | Exception]:
        """:meth:`run_batch` on the event loop: at most ``concurrency`` requests at once.

        Results come in input order. With ``return_exceptions`` a failed request gives its
        exception in its place; otherwise the first failure stops new work and is raised once
        the requests already running have finished (their entries are in the ledger either
        way). Requests are read lazily; if reading them raises, no new work starts, the
        requests running finish, and that exception is raised as it is. Cancelling it cancels
        the requests under way, each of which records what it sent. ``progress`` is as for
        :meth:`stream`.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive int, got {concurrency!r}.")
        _check_resume(resume)
        total = len(requests) if isinstance(requests, Sequence) else None
        bar = _display(progress, self.name, total, "requests")
        numbered = enumerate(requests)
        outcomes: dict[int, Result | Exception] = {}
        failed: list[int] = []
        errors: dict[int, Exception] = {}
        unreadable: list[Exception] = []

        async def worker() -> None:
            while not failed and not unreadable:
                try:
                    index, request = next(numbered)
                except StopIteration:
                    return
                except Exception as exc:
                    # The requests themselves failed (a generator that raises): no new work,
                    # those running finish and record their entries, then this is raised as
                    # it is, as run_batch does, never wrapped by the task group.
                    unreadable.append(exc)
                    return
                try:
                    outcomes[index] = await self.arun(request, ledger, resume=resume)
                except Exception as exc:
                    outcomes[index] = exc
                    if not return_exceptions:
                        failed.append(index)
                        errors[index] = exc
                bar.update()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
        finally:
            bar.close()
        if unreadable:
            raise unreadable[0]
        if failed:
            raise errors[min(errors)]
        return [outcomes[i] for i in range(len(outcomes))]

    def _no_answer(self, request: Request) -> NoAnswer:
        return NoAnswer(
            f"No stage answered request {request.id!r} ({request.text[:60]!r}): "
            f"{[s.name for s in self.stages]} all passed it on. End the pipeline with a stage "
            "that always answers, such as Generate."
        )

    def as_runnable(self, ledger: Ledger) -> Any:
        """This pipeline as a LangChain ``Runnable`` (str in, answer text out) filling ``ledger``.

        Needs ``langchain-core`` (``pip install 'chainkit[langchain]'``).
        """
        from chainkit.interop import as_runnable

        return as_runnable(self, ledger)

    @overload
    def stream(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[False] = ...,
        ordered: bool = ...,
    ) -> Iterator[Result]: ...

    @overload
    def stream(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[True],
        ordered: bool = ...,
    ) -> Iterator[Result | Exception]: ...

    def stream(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = 8,
        progress: bool | float | None = None,
        resume: bool | Resume = False,
        return_exceptions: bool = False,
        ordered: bool = True,
    ) -> Iterator[Result | Exception]:
        """Yield a result per request, running up to ``concurrency`` at once.

        Every slot stays busy: a slow request holds back only its own place in the output, never
        the work of the other slots. With ``ordered`` (the default) results come in input order,
        those finished after a slow one waiting for it; with ``ordered=False`` each comes as it
        finishes. Requests are read lazily.

        With ``return_exceptions`` a failed request yields its exception in its place; otherwise
        the first failure stops new work and is raised once the requests already running have
        finished (their entries are in the ledger either way).

        ``progress`` is written to stderr. By default (``None``) it is a bar when stderr is a
        terminal, and otherwise (a log file, a pipe, a notebook) one line every
        :data:`PROGRESS_EVERY_S` seconds: requests done of the total, rate, elapsed time and
        estimated time left, then a last line when the run ends; a run shorter than that prints
        nothing. Lines are written as results come in. A number of seconds asks for lines at that
        interval wherever stderr goes, ``True`` for a bar wherever it goes, ``False`` for
        nothing. ``resume`` is as for :meth:`run`.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive int, got {concurrency!r}.")
        total = len(requests) if isinstance(requests, Sequence) else None
        bar = _display(progress, self.name, total, "requests")
        try:
            if concurrency == 1:
                for request in requests:
                    yield self._one(request, ledger, resume, return_exceptions)
                    bar.update()
                return
            with ThreadPoolExecutor(concurrency, thread_name_prefix="chainkit") as pool:
                flow = self._flow(
                    pool, requests, ledger, concurrency, resume, ordered, not return_exceptions
                )
                for outcome in flow:
                    bar.update()
                    if isinstance(outcome, BaseException):
                        if return_exceptions and isinstance(outcome, Exception):
                            yield outcome
                            continue
                        raise outcome
                    yield outcome
        finally:
            bar.close()

    def _one(
        self, request: Request, ledger: Ledger, resume: bool | Resume, return_exceptions: bool
    ) -> Result | Exception:
        try:
            return self.run(request, ledger, resume=resume)
        except Exception as exc:
            if return_exceptions:
                return exc
            raise

    def _flow(
        self,
        pool: ThreadPoolExecutor,
        requests: Iterable[Request],
        ledger: Ledger,
        concurrency: int,
        resume: bool | Resume,
        ordered: bool,
        stop_on_error: bool,
    ) -> Iterator[Result | BaseException]:
        """Outcomes of ``requests`` run on ``pool`` (after a failure, no new work if asked)."""
        source = iter(requests)
        running: dict[Future[Result], int] = {}
        finished: dict[int, Result | BaseException] = {}
        submitted = emitted = 0
        stopping = False
        while True:
            while not stopping and len(running) < concurrency:
                try:
                    request = next(source)
                except StopIteration:
                    stopping = True
                    break
                running[pool.submit(self.run, request, ledger, resume=resume)] = submitted
                submitted += 1
            if not running and not finished:
                return
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    exc = future.exception()
                    outcome: Result | BaseException = future.result() if exc is None else exc
                    if exc is not None and stop_on_error:
                        stopping = True  # run what is in flight to the end, start nothing new
                    if ordered:
                        finished[index] = outcome
                    else:
                        yield outcome
            while emitted in finished:
                yield finished.pop(emitted)
                emitted += 1
            if not running and finished:
                # Only outcomes after a gap remain (a failure stopped new work): emit in order.
                for index in sorted(finished):
                    yield finished.pop(index)
                return

    @overload
    def run_batch(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Result]: ...

    @overload
    def run_batch(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = ...,
        progress: bool | float | None = ...,
        resume: bool | Resume = ...,
        return_exceptions: Literal[True],
    ) -> list[Result | Exception]: ...

    def run_batch(
        self,
        requests: Iterable[Request],
        ledger: Ledger,
        *,
        concurrency: int = 8,
        progress: bool | float | None = None,
        resume: bool | Resume = False,
        return_exceptions: bool = False,
    ) -> list[Result] | list[Result | Exception]:
        """Run every request (see :meth:`stream`) and return the results in input order."""
        if return_exceptions:
            return list(
                self.stream(
                    requests,
                    ledger,
                    concurrency=concurrency,
                    progress=progress,
                    resume=resume,
                    return_exceptions=True,
                )
            )
        return list(
            self.stream(requests, ledger, concurrency=concurrency, progress=progress, resume=resume)
        )
