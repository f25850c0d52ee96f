"""One priced, budgeted model call on behalf of a stage, recorded as exactly one entry.

Whatever the model does (answers, raises any exception, hangs past its deadline, replies with
something malformed), the call ends in exactly one entry: ``answered``/``passed`` with its cost,
``failed`` with cost unknown (``None``, bounded by what was reserved) when the provider may have
billed it, ``failed`` at $0 when it certainly did not (throttled), or ``refused`` at $0 when it
was never sent (metadata the provider cannot take, budget, context window). Only chainkit
errors leave a call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar

from chainkit.errors import (
    BadResponse,
    BudgetExceeded,
    ChainkitError,
    ConfigError,
    ProviderError,
    Throttled,
    Timeout,
)
from chainkit.ledger import Hold, Ledger
from chainkit.pricing import Catalogue
from chainkit.providers.model import METADATA_KEYS, Chunk, Completion, Model, Prompt
from chainkit.records import _USAGE_FIELDS, Entry, Outcome, Phase, Request, Usage, new_entry_id

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ModelCall",
    "check_model",
    "check_timeout",
    "cost_bound",
    "input_bound",
    "run_to_end",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 120.0
"""A model stage's deadline unless told otherwise: long enough for a long answer, not forever."""

# Calls sent on the event loop and not yet recorded: a stream its reader left open, a call on a
# loop that was never run again. At the process's exit nothing will ever end them, so the exit
# hook records each (failed, cost unknown, counted at its bound) while its ledger is still open.
# Weak: a call whose stream is collected records itself, as it always has.
_SENT: weakref.WeakSet[ModelCall] = weakref.WeakSet()
_HOOKED: list[bool] = []


def _sent(call: ModelCall) -> None:
    """Note a call sent on the event loop (its entry is to be recorded at exit if still open)."""
    if not _HOOKED:
        # Registered at the first call, after the ledger's own modules (a server's connection
        # pool) are imported: exit hooks run last-registered first, so this runs before theirs.
        _HOOKED.append(True)
        atexit.register(_record_open_calls)
    _SENT.add(call)


def _record_open_calls() -> None:
    """At exit: record every call sent and never ended (see :data:`_SENT`)."""
    for call in list(_SENT):
        _SENT.discard(call)
        try:
            call._record_at_exit()
        except Exception as exc:  # a closed ledger, a full disk: say so, never hide it
            print(
                f"chainkit: the call of request {call.request.id!r} (stage {call.stage!r}) was "
                f"open at exit and could not be recorded: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )


def _forget_sent_calls() -> None:
    _SENT.clear()  # a forked child's copies are its parent's calls, recorded by the parent


os.register_at_fork(after_in_child=_forget_sent_calls)


def check_model(model: Model, catalogue: Catalogue, stage: str) -> None:
    """Fail at construction, not on the first request, if ``catalogue`` cannot price ``model``."""
    try:
        # The catalogue resolves a cross-region profile (eu., global.) to the price it bills.
        catalogue.price(model.model_id, model.region, model.tier)
    except ConfigError as exc:
        raise ConfigError(
            f"Stage {stage!r} cannot price its model: {exc} Pass `catalogue=` with a catalogue "
            "that prices it."
        ) from exc


def check_timeout(timeout_s: float | None, stage: str) -> None:
    """A deadline is a positive, finite number of seconds, or ``None`` for none."""
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s < float("inf")
    ):
        raise ConfigError(
            f"Stage {stage!r}: timeout_s must be a positive number of seconds or None, got "
            f"{timeout_s!r}."
        )


_TAKES_TIMEOUT: dict[tuple[type, str], bool] = {}


async def run_to_end(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, in this task's context, awaited to its end.

    For the sync work of the async path that may block (a ledger commit, a reservation, a
    CountTokens request). A cancellation does not abandon it: the work goes on in its thread
    (a thread cannot be stopped), so this waits for it to finish, and only then lets the
    cancellation through. A write that was started has landed before the caller learns that it
    was cancelled.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(None, functools.partial(context.run, fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue  # cancelled again: still wait, the work cannot be stopped
            except BaseException:
                break  # it failed: the cancellation goes through all the same
        raise


def _lease(timeout_s: float | None) -> float:
    """How long a call's hold lasts: its deadline and a minute to record it (an hour if none)."""
    return 3600.0 if timeout_s is None else timeout_s + 60.0


_OWN_ASYNC: dict[tuple[type, str], bool] = {}


def _async_method(model: Model, name: str) -> Any:
    """``model.<name>`` (``acomplete``, ``astream``) if it speaks for the model, else ``None``.

    A subclass that overrides ``complete`` but inherits ``acomplete`` (a test's model that
    fails on purpose, say) would be bypassed by the inherited async method: then the async
    path calls ``complete`` in a thread instead, so that both paths make the same call.
    """
    method = getattr(model, name, None)
    own_attrs = getattr(model, "__dict__", {})
    if method is None or name in own_attrs:
        return method
    if "complete" in own_attrs:
        return None  # complete() replaced on this very object: call that one
    kind = type(model)
    own = _OWN_ASYNC.get((kind, name))
    if own is None:
        mro = kind.__mro__
        sync = next((i for i, c in enumerate(mro) if "complete" in c.__dict__), len(mro))
        found = next((i for i, c in enumerate(mro) if name in c.__dict__), len(mro))
        own = _OWN_ASYNC[kind, name] = found <= sync
    return method if own else None


def _takes_timeout(model: Model, method: str = "complete") -> bool:
    """Whether ``model.complete`` (or ``method``) takes ``timeout_s`` (to bound its retries)."""
    key = (type(model), method)
    takes = _TAKES_TIMEOUT.get(key)
    if takes is None:
        try:
            params = inspect.signature(getattr(model, method)).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        takes = _TAKES_TIMEOUT[key] = "timeout_s" in params
    return takes


def _safe_text(value: object, limit: int = 900) -> str:
    """``str(value)`` fit for an entry's note: never raises, no NUL, no lone surrogate."""
    try:
        text = str(value)
    except Exception:  # an exception whose __str__ raises still gets recorded
        text = f"<{type(value).__name__} that cannot be shown>"
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:limit]


# Tokens a provider's chat template may add around each message (role markers, separators), at
# most. Measured templates add 3-8 (Anthropic and Llama on Bedrock, Mistral); the allowance is
# generous because a budget's bound must never be below the bill.
TEMPLATE_TOKENS_PER_MESSAGE = 32
TEMPLATE_TOKENS_PER_CALL = 32


def input_bound(model: Model, prompt: Prompt) -> tuple[int, bool]:
    """The most input tokens ``prompt`` can be billed as, and whether that count is exact.

    Exact where the model can count (``count_input``: Bedrock's CountTokens, a tokenizer chainkit
    ships); otherwise UTF-8 bytes plus the template allowance: a byte-level tokenizer never
    makes more tokens than bytes, so no tokenizer's count can exceed it.
    """
    count = getattr(model, "count_input", None)
    if count is not None:
        exact = count(prompt)
        if isinstance(exact, int) and not isinstance(exact, bool) and exact >= 0:
            return exact, True
    messages = (2 if prompt.system else 1) + len(prompt.history)
    size = len(prompt.system.encode("utf-8", "surrogatepass")) + len(
        prompt.user.encode("utf-8", "surrogatepass")
    )
    size += sum(len(t.text.encode("utf-8", "surrogatepass")) for t in prompt.history)
    return size + messages * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_CALL, False


def cost_bound(
    catalogue: Catalogue, model: Model, prompt: Prompt, max_tokens: int
) -> Decimal | None:
    """The most a call can cost: its input bound and ``max_tokens`` of output, priced.

    ``None`` when the model is not priced (then no budget can be kept on it).
    """
    tokens, _ = input_bound(model, prompt)
    try:
        return catalogue.cost(
            model.model_id, Usage(tokens, max_tokens), region=model.region, tier=model.tier
        )
    except ConfigError:
        return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _digest(model_id: str, prompt: Prompt, max_tokens: int) -> str:
    # ASCII escapes: any string digests, lone surrogates included, and distinct ones differ.
    body = json.dumps([model_id, prompt.system, prompt.user, max_tokens], ensure_ascii=True)
    if prompt.history:  # a conversation's turns are part of what was asked
        body += json.dumps([[t.role, t.text] for t in prompt.history], ensure_ascii=True)
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def _check_completion(reply: object, model: Model, attempts: int) -> Completion:
    """The reply if it is a usable ``Completion``; a ``BadResponse`` naming what is wrong."""
    problem = None
    if not isinstance(reply, Completion):
        problem = f"returned {type(reply).__name__}, not a Completion"
    elif not isinstance(reply.text, str):
        problem = f"returned text {reply.text!r:.60} that is not a str"
    elif not isinstance(reply.usage, Usage):
        problem = f"returned usage {reply.usage!r:.80} that is not a Usage"
    elif not isinstance(reply.model_id, str) or not reply.model_id:
        problem = f"returned model id {reply.model_id!r:.60}"
    elif (
        not isinstance(reply.latency_s, int | float)
        or isinstance(reply.latency_s, bool)
        or not 0 <= reply.latency_s < float("inf")
    ):
        problem = f"returned latency_s {reply.latency_s!r:.40}"
    elif type(reply.attempts) is not int or reply.attempts < 0:
        problem = f"returned attempts {reply.attempts!r:.40}"
    elif type(reply.estimated) is not bool:
        problem = f"returned estimated {reply.estimated!r:.40}"
    elif not isinstance(reply.unpriced, str):
        problem = f"returned unpriced {reply.unpriced!r:.40} that is not a str"
    if problem is None and isinstance(reply, Completion) and not _encodes(reply.text):
        # Lone surrogates cannot be stored, sent on or shown: U+FFFD in their place, as a
        # decoder would have put there (the call was paid; its reply is kept, repaired).
        repaired = _SURROGATE.sub("\ufffd", reply.text)
        reply = dataclasses.replace(reply, text=repaired)
    if problem is None:
        # Checked again, whatever the object is (a subclass, or one changed since it was made):
        # the ledger only ever holds counts that Usage accepts, in a plain Usage.
        assert isinstance(reply, Completion)
        try:
            u = reply.usage
            if type(u) is Usage:
                Usage.__post_init__(u)
            else:
                counts = [getattr(u, name) for name in _USAGE_FIELDS]
                reply = dataclasses.replace(reply, usage=Usage(*counts))
        except Exception as exc:
            problem = f"returned usage that is not valid ({_safe_text(exc, 200)})"
    if problem is not None:
        raise BadResponse(
            f"Model {model.model_id!r} {problem}; chainkit cannot use or price that reply. The "
            "call is recorded with its cost unknown.",
            code="MalformedReply",
            model_id=model.model_id,
            attempts=attempts,
        )
    assert isinstance(reply, Completion)
    return reply


class ModelCall:
    """A context manager around one model call: estimate, reserve, call, price, record.

    Entering checks the context window and the budgets from the estimate (recording a ``refused``
    entry if either says no), then calls the model within ``timeout_s`` (recording a ``failed``
    entry if it fails). The stage then calls :meth:`record` with its outcome; if the block raises
    before that, the call is recorded as ``failed`` with what it cost, so no spend goes
    unrecorded. Inside a resumable step, a call made before (same prompt) is replayed from the
    ledger instead of being paid again.
    """

    def __init__(
        self,
        *,
        stage: str,
        model: Model,
        catalogue: Catalogue,
        prompt: Prompt,
        max_tokens: int,
        request: Request,
        ledger: Ledger,
        phase: Phase = "serve",
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        note: str = "",
    ) -> None:
        self.stage = stage
        self.model = model
        self.catalogue = catalogue
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.request = request
        self.ledger = ledger
        self.phase = phase
        self.timeout_s = timeout_s
        self.note = note
        self.completion: Completion | None = None
        self.cost: Decimal | None = None
        self.bound: Decimal | None = None
        self._hold: Hold | None = None
        self._recorded = False
        self._flags: tuple[str, ...] = ()
        self._digest: str | None = None
        self._replayed = False
        self._started = False
        self._entry_id = new_entry_id()  # the hold, and the call's one entry, carry it
        self._when: datetime | None = None
        self._metadata: dict[str, str] = {}
        # The model the call was priced as (the reply's, when the catalogue knows it): the
        # entry names it, so that an entry's model and its price always agree.
        self._priced_model: str | None = None
        self._cut = False  # a stream cut at its deadline

    def _entry(
        self,
        outcome: Outcome,
        cost: Decimal | None,
        usage: Usage | None,
        *,
        intent: str | None,
        latency_s: float = 0.0,
        attempts: int = 0,
        estimated: bool = False,
        flags: tuple[str, ...] = (),
        note: str = "",
        call: bool = True,
    ) -> Entry:
        extra: dict[str, Any] = {}
        if call:  # the call's own entry (a refusal is not the call's: it gets its own id)
            extra["id"] = self._entry_id
        if self._when is not None:
            extra["time"] = self._when
        return Entry(
            request_id=self.request.id,
            stage=self.stage,
            outcome=outcome,
            model=self._priced_model or self.model.model_id,
            usage=usage,
            cost=cost,
            estimated=estimated,
            latency_s=latency_s,
            attempts=attempts,
            intent=intent,
            tags=self.request.tags,
            phase=self.phase,
            bound=self.bound,
            flags=flags,
            note=note[:1000],
            **extra,
        )

    def _refuse(self, note: str) -> None:
        self.ledger.record(
            self._entry(
                "refused",
                Decimal(0),
                None,
                intent=self.request.intent,
                estimated=True,
                note=note,
                call=False,
            )
        )

    def __enter__(self) -> Completion:
        # Spend nothing unless the entry can be kept: a closed or read-only ledger refuses now,
        # and after a failed write nothing more is spent until the ledger can record again.
        self.ledger.start_call()
        self._started = True
        try:
            prepared = self._prepare()
            if isinstance(prepared, Completion):
                return prepared
            return self._call(prepared)
        except BaseException:
            self._release_unused()
            self._end()
            raise

    def _release_unused(self) -> None:
        """Give back a hold whose call was never sent (interrupted while it was prepared)."""
        if self._hold is not None and not self._recorded and self.completion is None:
            self.ledger.release(self._hold)

    def _end(self) -> None:
        if self._started:
            self._started = False
            self.ledger.end_call()

    def _prepare(self) -> Completion | Usage:
        """Everything before sending: checks, estimate, reservation; a replayed reply if any.

        Returns the replayed completion, or the estimate of the call to make.
        """
        if self.ledger.pending:
            self.ledger.flush()
        model, request, prompt = self.model, self.request, self.prompt
        card = self.catalogue.card(model.model_id)
        self._metadata = self._check_metadata()
        try:
            estimate = model.estimate(prompt, max_tokens=self.max_tokens)
            if type(estimate) is not Usage:
                raise TypeError(f"estimate() returned {estimate!r:.80}, not a Usage")
        except Exception as exc:
            self._refuse(f"estimate failed: {type(exc).__name__}: {exc}")
            if isinstance(exc, ChainkitError):
                raise
            raise ProviderError(
                f"Model {model.model_id!r} could not estimate the prompt ({type(exc).__name__}: "
                f"{exc}); nothing was sent (request {request.id!r}, stage {self.stage!r}).",
                code=type(exc).__name__,
                model_id=model.model_id,
                attempts=0,
            ) from exc
        needed = estimate.input_tokens + estimate.cache_read_tokens + estimate.cache_write_tokens
        if needed + self.max_tokens > card.context_window:
            self._refuse("the prompt does not fit the model's context window")
            raise ConfigError(
                f"Stage {self.stage!r}: a prompt of ~{needed} tokens plus {self.max_tokens} "
                f"output tokens does not fit {card.id!r}'s context window of "
                f"{card.context_window} tokens (request {request.id!r}). Shorten the input "
                "(Summarise or Compress first) or choose a model with a longer context."
            )
        self._when = self.ledger.clock()
        self.bound = cost_bound(self.catalogue, model, prompt, self.max_tokens)
        if self.ledger.budgets:
            try:
                self._hold = self.ledger.reserve(
                    self.bound,
                    request.tags,
                    stage=self.stage,
                    model=model.model_id,
                    request_id=request.id,
                    entry_id=self._entry_id,
                    lease_s=_lease(self.timeout_s),
                    phase=self.phase,
                    intent=request.intent,
                )
            except BudgetExceeded as exc:
                self._refuse(str(exc))
                raise
        replayed = self._replay()
        if replayed is not None:
            if self._hold is not None:
                self.ledger.release(self._hold)
            return replayed
        return estimate

    def _check_metadata(self) -> dict[str, str]:
        """The metadata the model is sent; refused at $0 now if it cannot be sent as it is."""
        model, request = self.model, self.request
        metadata = {**request.tags, "stage": self.stage, "request_id": request.id}
        try:
            # A tag named like one of chainkit's keys is refused rather than overwritten or
            # renamed: a provider log joined to the ledger on `stage` or `request_id` must carry
            # chainkit's values, and a renamed tag would no longer match the ledger's. A private
            # tag is never sent, so it cannot clash.
            private = getattr(model, "private_tags", None) or ()
            for key in METADATA_KEYS:
                if key in request.tags and key not in private:
                    fix = (
                        f", or mark it private on the model (private_tags=({key!r},)) to keep it "
                        "in the ledger without sending it"
                        if hasattr(model, "private_tags")
                        else ""
                    )
                    raise ConfigError(
                        f"Request {request.id!r} has a tag named {key!r}, a key chainkit sends "
                        f"with every call to model {model.model_id!r} (stage {self.stage!r}); a "
                        f"tag cannot replace it. Rename the tag{fix}."
                    )
            check = getattr(model, "check_metadata", None)
            if check is not None:
                check(metadata)
        except Exception as exc:
            self._refuse(f"metadata refused: {type(exc).__name__}: {_safe_text(exc)}")
            if isinstance(exc, ChainkitError):
                raise
            raise ProviderError(
                f"Model {model.model_id!r} could not check the call's metadata "
                f"({type(exc).__name__}: {_safe_text(exc, 300)}); nothing was sent (request "
                f"{request.id!r}, stage {self.stage!r}).",
                code=type(exc).__name__,
                model_id=model.model_id,
                attempts=0,
            ) from exc
        return metadata

    def _replay(self) -> Completion | None:
        if not self.ledger.in_step():
            return None
        self._digest = _digest(self.model.model_id, self.prompt, self.max_tokens)
        saved = self.ledger.replay(self._digest)
        if saved is None:
            return None
        data = json.loads(saved)
        self.completion = Completion(
            text=data["text"],
            usage=Usage(*data["usage"]),
            model_id=data["model_id"],
            estimated=data["estimated"],
            latency_s=data["latency_s"],
            attempts=data["attempts"],
        )
        self.cost = None if data["cost"] is None else Decimal(data["cost"])
        self._replayed = True  # its entry was committed by the run that paid for it
        return self.completion

    def _call(self, estimate: Usage) -> Completion:
        model = self.model
        started = time.perf_counter()
        try:
            reply = self._complete(self._metadata)
            completion = _check_completion(reply, model, getattr(reply, "attempts", 1))
        except BaseException as exc:
            self._record_failure(exc, time.perf_counter() - started)
            if isinstance(exc, ProviderError) or not isinstance(exc, Exception):
                raise
            raise self._malformed(exc) from exc
        return self._priced(completion)

    def _malformed(self, exc: BaseException) -> BadResponse:
        """What a model that raised something other than a chainkit error is reported as."""
        return BadResponse(
            f"Model {self.model.model_id!r} raised {type(exc).__name__} while answering request "
            f"{self.request.id!r}: {_safe_text(exc, 300)}. Treated as a malformed reply; the call "
            "is recorded with its cost unknown.",
            code=type(exc).__name__,
            model_id=self.model.model_id,
        )

    def _priced(self, completion: Completion) -> Completion:
        self.completion = completion
        try:
            self._price(completion)
        except BaseException:
            # Interrupted while pricing (Ctrl-C): the call was made, so it is recorded first.
            self.cost = None
            self.record("failed")
            raise
        return completion

    def _price(self, completion: Completion) -> None:
        model = self.model
        # The reply names the model that served it, priced (and recorded) as that model when
        # the catalogue knows it; a version the catalogue lacks is priced as the configured id.
        # Both paths, whole replies and streams, come here, so they record the same.
        priced = completion.model_id if completion.model_id in self.catalogue else model.model_id
        self._priced_model = priced
        if completion.unpriced:
            # The model says part of the call cannot be priced exactly: unknown, never a guess.
            self.cost = None
            self.note = f"{self.note}; {completion.unpriced}" if self.note else completion.unpriced
        else:
            try:
                self.cost = self.catalogue.cost(
                    priced, completion.usage, region=model.region, tier=model.tier, at=self._when
                )
            except ChainkitError:
                # Already paid for: record it as unknown (None), never as $0, and carry on.
                self.cost = None
        if (
            self.cost is not None and self.bound is not None and self.cost > self.bound
        ) or completion.usage.output_tokens > self.max_tokens:
            self._flags = ("over_estimate",)

    def _complete(self, metadata: Mapping[str, str]) -> Completion:
        model, timeout_s = self.model, self.timeout_s
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, "metadata": metadata}
        if timeout_s is None:
            return model.complete(self.prompt, **kwargs)
        if _takes_timeout(model):
            kwargs["timeout_s"] = timeout_s  # it may use it (Bedrock caps its retries by it)
            if getattr(model, "keeps_deadline", False):
                complete: Any = model.complete  # it returns or raises Timeout within timeout_s
                return complete(self.prompt, **kwargs)  # type: ignore[no-any-return]
        # The model cannot promise to keep the deadline: a daemon thread makes the call, so that
        # a hung call costs one idle thread, never the caller's wait.
        box: list[Any] = []
        done = threading.Event()

        complete_: Any = model.complete

        def run() -> None:
            try:
                box.append(complete_(self.prompt, **kwargs))
            except BaseException as exc:
                box.append(exc)
            done.set()

        threading.Thread(target=run, name="chainkit-call", daemon=True).start()
        if not done.wait(timeout_s):
            raise Timeout(
                f"Model {model.model_id!r} did not answer request {self.request.id!r} within "
                f"{timeout_s} s (stage {self.stage!r}). It may still have been billed: the entry "
                "records its cost as unknown, at most the amount reserved for it. Raise timeout_s "
                "or check the provider.",
                code="Timeout",
                model_id=model.model_id,
            )
        outcome = box[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _record_failure(self, exc: BaseException, latency_s: float) -> None:
        # A throttled call was refused before it ran: not billed. Anything else may have been.
        throttled = isinstance(exc, Throttled)
        timed_out = isinstance(exc, Timeout)
        cancelled = isinstance(exc, asyncio.CancelledError | GeneratorExit)
        attempts = getattr(exc, "attempts", 1)
        if type(attempts) is not int or attempts < 1:
            attempts = 1
        entry = self._entry(
            "failed",
            Decimal(0) if throttled else None,
            None,
            intent=self.request.intent,
            latency_s=latency_s,
            attempts=attempts,
            flags=("timeout",) if timed_out else ("cancelled",) if cancelled else (),
            note=f"{self.note + '; ' if self.note else ''}{type(exc).__name__}: {_safe_text(exc)}",
        )
        self._recorded = True
        self.ledger.record(entry, hold=self._hold)

    def _record_at_exit(self) -> None:
        """Record a call sent and still open as the process exits: failed, cost unknown."""
        if self._recorded or self._replayed:
            return
        self._recorded = True
        how = "the process exited with the call open (sent, never ended)"
        entry = self._entry(
            "failed",
            None,  # unknown, counted at its bound
            None,
            intent=self.request.intent,
            attempts=1,
            flags=("cancelled",),
            note=f"{self.note + '; ' if self.note else ''}{how}",
        )
        self.ledger.record(entry, hold=self._hold)

    def record(self, outcome: Outcome, *, intent: str | None = None) -> None:
        """Record the call's entry with the stage's ``outcome``; settle its budget hold."""
        final = self._final(outcome, intent)
        if final is not None:
            entry, reply = final
            self.ledger.record(entry, hold=self._hold, reply=reply)

    async def arecord(self, outcome: Outcome, *, intent: str | None = None) -> None:
        """:meth:`record` from a coroutine: a durable ledger commits in a worker thread."""
        final = self._final(outcome, intent)
        if final is not None:
            entry, reply = final
            if self.ledger.durable:
                await run_to_end(self.ledger.record, entry, hold=self._hold, reply=reply)
            else:
                self.ledger.record(entry, hold=self._hold, reply=reply)

    def _final(
        self, outcome: Outcome, intent: str | None
    ) -> tuple[Entry, tuple[str, str] | None] | None:
        """The call's entry and saved reply, marked recorded (None if replayed: nothing to do)."""
        completion = self.completion
        if self._replayed:  # recorded by the run that paid for it
            return None
        if completion is None or self._recorded:
            raise RuntimeError("ModelCall.record() belongs inside the `with` block, once.")
        entry = self._entry(
            outcome,
            self.cost,
            completion.usage,
            intent=self.request.intent if intent is None else intent,
            latency_s=completion.latency_s,
            attempts=completion.attempts,
            estimated=completion.estimated,
            flags=self._flags,
            note=self.note,
        )
        reply = None
        if self._digest is not None:
            reply = (
                self._digest,
                json.dumps(
                    {
                        "text": completion.text,
                        "usage": [
                            completion.usage.input_tokens,
                            completion.usage.output_tokens,
                            completion.usage.cache_read_tokens,
                            completion.usage.cache_write_tokens,
                        ],
                        "model_id": completion.model_id,
                        "estimated": completion.estimated,
                        "latency_s": completion.latency_s,
                        "attempts": completion.attempts,
                        "cost": None if self.cost is None else str(self.cost),
                    },
                    # ASCII escapes: a reply may hold a lone surrogate, which UTF-8 cannot.
                    ensure_ascii=True,
                ),
            )
        # Marked first: if the write fails the entry stays pending in the ledger, and __exit__
        # must not record the same call again as failed.
        self._recorded = True
        return entry, reply

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        try:
            if self.completion is not None and not self._recorded and not self._replayed:
                self.record("failed")
        finally:
            self._end()
        return False

    # -- the async path ------------------------------------------------------------------------
    #
    # The same steps as the sync path, in the same order, so that a call records the same entry
    # and holds the same budget whichever path made it. What may block goes to a worker thread
    # (run_to_end: a commit to a durable ledger, a reservation, CountTokens); what must happen
    # whatever comes (the entry of a failed or cancelled call) runs on the loop's own thread,
    # where no further cancellation can interrupt it: one commit, on a path that is rare.

    def _blocking(self) -> bool:
        """Whether preparing may block the loop (a file or server ledger, a remote count)."""
        return self.ledger.durable or not getattr(self.model, "estimates_locally", False)

    async def _aprepare(self) -> Completion | Usage:
        if self._blocking():
            return await run_to_end(self._prepare)
        return self._prepare()

    async def __aenter__(self) -> Completion:
        self.ledger.start_call()
        self._started = True
        try:
            prepared = await self._aprepare()
            if isinstance(prepared, Completion):
                return prepared
            return await self._acall()
        except BaseException:
            self._release_unused()
            self._end()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)

    async def _acall(self) -> Completion:
        started = time.perf_counter()
        _sent(self)
        try:
            reply = await self._acomplete()
            completion = _check_completion(reply, self.model, getattr(reply, "attempts", 1))
        except BaseException as exc:
            _SENT.discard(self)
            if not self._recorded:  # (the exit hook may have recorded it)
                self._record_failure(exc, time.perf_counter() - started)
            if isinstance(exc, ProviderError) or not isinstance(exc, Exception):
                raise
            raise self._malformed(exc) from exc
        # The stage records it next, in __aexit__ at the latest.
        _SENT.discard(self)
        if self._recorded:
            return completion
        return self._priced(completion)

    def _timeout(self, pieces: int | None = None) -> Timeout:
        request = repr(self.request.id)
        if pieces is None:
            what = f"did not answer request {request} within {self.timeout_s} s"
            how = "records its cost as unknown, at most the amount reserved for it"
        else:
            what = (
                f"was still streaming request {request} (after {pieces} pieces) at the "
                f"stream's deadline of {self.timeout_s} s"
            )
            how = "records what it generated: the usage reported, else its upper bound, estimated"
        return Timeout(
            f"Model {self.model.model_id!r} {what} (stage {self.stage!r}). It may still have "
            f"been billed: the entry {how}. Raise timeout_s or check the provider.",
            code="Timeout",
            model_id=self.model.model_id,
        )

    async def _acomplete(self) -> Completion:
        model, timeout_s = self.model, self.timeout_s
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, "metadata": self._metadata}
        acomplete: Any = _async_method(model, "acomplete")
        if acomplete is not None:
            if timeout_s is not None and _takes_timeout(model, "acomplete"):
                kwargs["timeout_s"] = timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    return await acomplete(self.prompt, **kwargs)  # type: ignore[no-any-return]
            except TimeoutError as exc:
                raise self._timeout() from exc
        if timeout_s is not None and _takes_timeout(model):
            kwargs["timeout_s"] = timeout_s
        # A sync model runs in a daemon thread, as on the sync path without a kept deadline: a
        # hung call costs one idle thread, never the caller's wait nor the interpreter's exit.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        complete: Any = model.complete
        prompt = self.prompt

        def settle(value: Any, failed: bool) -> None:
            if not future.done():
                if failed:
                    future.set_exception(value)
                else:
                    future.set_result(value)

        def run() -> None:
            try:
                value, failed = complete(prompt, **kwargs), False
            except BaseException as exc:
                value, failed = exc, True
            # A closed loop: whoever waited has recorded the call already.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, failed)

        threading.Thread(target=run, name="chainkit-call", daemon=True).start()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            if future.done() and not future.cancelled() and future.exception() is exc:
                raise  # the model itself raised TimeoutError: a malformed reply
            raise self._timeout() from exc

    def _bound_usage(self) -> Usage:
        """The most the call can have used: its input bound and ``max_tokens`` of output."""
        tokens, _ = input_bound(self.model, self.prompt)
        return Usage(tokens, self.max_tokens)

    async def astream(
        self, outcome: Outcome = "answered", *, intent: str | None = None
    ) -> AsyncGenerator[str, None]:
        """Send the call as a stream and yield its text as it comes; record it however it ends.

        Ended by the provider: recorded with ``outcome`` and the usage it reported (its upper
        bound, marked estimated, if the stream stopped before saying). Stopped by the reader
        (``aclose``, a cancellation, a generator dropped): ``failed`` and flagged ``cancelled``,
        with the usage reported if it came, else the upper bound marked estimated. A provider
        error: ``failed`` as on the non-streaming path. The provider's stream is closed either
        way. ``timeout_s`` is the deadline of the whole stream, from the call being sent to its
        last piece (time the reader takes between pieces counts too: the provider keeps
        generating, and the budget hold's lease is set from it); a stream still going at the
        deadline is closed and raises :class:`~chainkit.errors.Timeout`, recorded ``failed``
        and flagged ``timeout`` with what was generated, as a reader that stops early is: the
        usage if the provider had reported it, else the upper bound marked estimated. Close
        this generator (``contextlib.aclosing``) rather than leave it to the garbage collector:
        the entry is recorded when it is closed.
        """
        self.ledger.start_call()
        self._started = True
        parts: list[str] = []
        last: Chunk | None = None
        source: Any = None
        sent = False
        started = time.perf_counter()
        try:
            prepared = await self._aprepare()
            if isinstance(prepared, Completion):  # replayed in a resumed step: paid before
                yield prepared.text
                return
            sent = True
            _sent(self)
            # One deadline for the whole stream, never per piece: a provider that trickles a
            # piece every few seconds cannot keep a call (and its hold) open without end.
            deadline = (
                None
                if self.timeout_s is None
                else asyncio.get_running_loop().time() + self.timeout_s
            )
            source = self._open_stream()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(source)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    self._cut = True
                    raise self._timeout(len(parts)) from exc
                if not isinstance(chunk, Chunk) or not isinstance(chunk.text, str):
                    raise BadResponse(
                        f"Model {self.model.model_id!r} streamed {chunk!r:.80}, not a Chunk.",
                        code="MalformedChunk",
                        model_id=self.model.model_id,
                    )
                if chunk.usage is not None:
                    last = chunk
                if chunk.text:
                    parts.append(chunk.text)
                    yield chunk.text
            completion = self._streamed(parts, last, started)
            self._priced(completion)
            await self.arecord(outcome, intent=intent)
        except BaseException as exc:
            if sent and not self._recorded and not self._replayed:
                self._record_stopped(exc, parts, last, started)
            # A provider's own exception is a malformed reply; chainkit's errors (a ledger that
            # could not write, say) and cancellations go out as they are.
            if sent and isinstance(exc, Exception) and not isinstance(exc, ChainkitError):
                raise self._malformed(exc) from exc
            raise
        finally:
            _SENT.discard(self)
            try:
                if source is not None:
                    await _close(source)
            finally:
                self._release_unused()
                self._end()

    def _open_stream(self) -> AsyncIterator[Chunk]:
        astream: Any = _async_method(self.model, "astream")
        if astream is not None:
            return astream(  # type: ignore[no-any-return]
                self.prompt, max_tokens=self.max_tokens, metadata=self._metadata
            )
        return self._whole()

    async def _whole(self) -> AsyncIterator[Chunk]:
        """A model that cannot stream: its whole reply as one piece."""
        reply = await self._acomplete()
        checked = _check_completion(reply, self.model, getattr(reply, "attempts", 1))
        yield Chunk(
            checked.text,
            checked.usage,
            checked.model_id,
            checked.estimated,
            checked.attempts,
            checked.unpriced,
        )

    def _streamed(self, parts: list[str], last: Chunk | None, started: float) -> Completion:
        """The completion of a stream read to its end (or as far as it went)."""
        text = "".join(parts)
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)
        if last is None or last.usage is None:
            # Cut before the provider said what it billed: its upper bound, marked estimated.
            return Completion(
                text,
                self._bound_usage(),
                self.model.model_id,
                estimated=True,
                latency_s=time.perf_counter() - started,
            )
        reply = Completion(
            text,
            last.usage,
            last.model_id or self.model.model_id,
            estimated=last.estimated,
            latency_s=time.perf_counter() - started,
            attempts=last.attempts,
            unpriced=last.unpriced,
        )
        return _check_completion(reply, self.model, last.attempts)

    def _record_stopped(
        self, exc: BaseException, parts: list[str], last: Chunk | None, started: float
    ) -> None:
        """Record a stream that did not reach its end: what it generated and was billed."""
        if sys.is_finalizing():
            return  # collected as the interpreter ends: the exit hook recorded it (or said why)
        stopped = isinstance(exc, GeneratorExit | asyncio.CancelledError)
        # Cut at the stream's deadline (not a whole reply that timed out, recorded as arun does).
        timed_out = self._cut
        if not stopped and not timed_out and last is None:
            self._record_failure(exc, time.perf_counter() - started)  # as a call that failed
            return
        try:
            completion = self._streamed(parts, last, started)
            self._price(completion)
        except BaseException:
            self._record_failure(exc, time.perf_counter() - started)
            return
        self.completion = completion
        how = "stopped by its reader" if stopped else f"{type(exc).__name__}: {_safe_text(exc)}"
        self.note = f"{self.note + '; ' if self.note else ''}{how} after {len(parts)} pieces"
        if stopped or timed_out:
            # Cut before its end (by the reader or the deadline): what it generated, flagged.
            flag = "cancelled" if stopped else "timeout"
            self._flags = tuple(sorted({*self._flags, flag}))
        self.record("failed")


async def _close(source: Any) -> None:
    """Close a provider's stream (so that it stops generating); a failure to close is moot."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    # The call is recorded; a stream that fails to close changes nothing.
    with contextlib.suppress(Exception):
        await aclose()
