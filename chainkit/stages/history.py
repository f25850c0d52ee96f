"""History: keep what a conversation sends the models bounded, and record each turn.

Without a policy every turn resends every earlier turn, so turn *n* reads about *n* turns and a
conversation of *n* turns reads about *n²/2*: chat cost grows quadratically. ``History`` decides
which earlier turns the models are sent (``Conversation.start``):

- ``last_turns=N``: the last *N* user turns with their answers;
- ``max_tokens=T``: as many recent turns as fit in *T* tokens (a summary counts against *T*);
- ``summarise_with=model``: turns that fall out are folded by a cheap model into a running
  summary (one call per turn that falls out, reading the previous summary and those turns),
  sent in the system prompt in their place.

The stage writes one free entry whose ``avoided_cost`` is what the trimmed tokens would have
cost as input to ``priced_as`` (the model that reads the history, usually ``Generate``'s): the
ledger's avoided cost is what a stage saved the final model, and these tokens are exactly that
(as with ``Compress``). Summariser calls are paid entries of this stage. The turn itself (its
request id, position, token counts and a digest of its text; the text only if the conversation
keeps it) is kept in the ledger's conversations (:mod:`chainkit.ledger.conversations`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from chainkit.errors import ChainkitError, ConfigError
from chainkit.ledger import Ledger
from chainkit.ledger.conversations import conversations, turn_records
from chainkit.pricing import Catalogue, catalogue_for
from chainkit.providers.model import Model, Prompt
from chainkit.records import Conversation, Entry, Request, Turn, Usage, check_text
from chainkit.stages.calling import (
    DEFAULT_TIMEOUT_S,
    ModelCall,
    check_model,
    check_timeout,
    run_to_end,
)
from chainkit.tokens import count_tokens, is_exact

__all__ = ["History", "render_turns", "sendable", "summary_system"]

SUMMARY_HEADER = "Summary of the earlier conversation:\n"

_log = logging.getLogger(__name__)


def summary_system(system: str, conversation: Conversation | None) -> str:
    """``system`` with the conversation's running summary appended, if it has one."""
    if conversation is None or conversation.summary is None:
        return system
    block = SUMMARY_HEADER + conversation.summary
    return f"{system}\n\n{block}" if system else block


def sendable(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    """``turns`` as chat APIs take them: starting with a user turn, roles alternating.

    Leading answers are dropped (Bedrock Converse refuses a conversation that opens with one)
    and consecutive turns of one role are joined, so that nothing said is lost.
    """
    out: list[Turn] = []
    for turn in turns:
        if not out and turn.role != "user":
            continue
        if out and out[-1].role == turn.role:
            last = out[-1]
            out[-1] = dataclasses.replace(last, text=f"{last.text}\n\n{turn.text}")
        else:
            out.append(turn)
    return tuple(out)


def render_turns(turns: Sequence[Turn]) -> str:
    """Turns as plain text for a summariser: ``User: ...`` and ``Assistant: ...`` lines."""
    return "\n".join(f"{'User' if t.role == 'user' else 'Assistant'}: {t.text}" for t in turns)


def _count(turn: Turn, model_id: str) -> int:
    """The tokens of one turn's text, counted once per turn and model (kept on the turn)."""
    n = turn.counts.get(model_id)
    if n is None:
        n = turn.counts[model_id] = count_tokens(turn.text, model_id)
    return n


def _tokens(turns: Sequence[Turn], model_id: str) -> int:
    return sum(_count(t, model_id) for t in turns)


def _full(conversation: Conversation, model_id: str) -> int:
    """The tokens of every turn that would be sent without a policy (from the first question).

    Counted on from the last request's total (carried by ``Conversation.after``), so each
    request counts only its new turns.
    """
    turns = conversation.turns
    done, total = conversation.totals.get(model_id, (0, 0))
    if done > len(turns):
        done, total = 0, 0
    if done == 0:  # leading answers are never sent (see ``sendable``)
        while done < len(turns) and turns[done].role != "user":
            done += 1
    total += _tokens(turns[done:], model_id)
    conversation.totals[model_id] = (len(turns), total)
    return total


@dataclass(frozen=True, kw_only=True)
class History:
    """Bound what earlier turns cost each request of a conversation; record every turn.

    Args:
        priced_as: the catalogue id of the model the history is sent to (``Generate``'s): it
            counts the tokens and prices the trimmed ones as avoided input.
        last_turns: keep the last this many user turns (with their answers) verbatim.
        max_tokens: keep at most this many tokens of earlier turns (and summary).
        summarise_with: a (cheap) model that folds turns falling out into a running summary.
        summary_tokens: the most the summary may be (the summariser's ``max_tokens``).

    With no limit the stage sends every earlier turn (and still records the turn): the
    unbounded baseline. A request without a conversation passes, recorded as free.
    """

    priced_as: str
    last_turns: int | None = None
    max_tokens: int | None = None
    summarise_with: Model | None = None
    summary_tokens: int = 300
    instruction: str = (
        "You keep a running summary of a customer conversation for the assistant that answers "
        "it. Update the summary with the new turns, in at most {max_tokens} tokens. Keep every "
        "order number, name, date, amount, request and promise; drop pleasantries."
    )
    catalogue: Catalogue = field(default_factory=Catalogue.load)
    name: str = "history"
    timeout_s: float | None = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        check_text(self.name, "stage name")
        check_text(self.priced_as, "History priced_as")
        check_timeout(self.timeout_s, self.name)
        for what in ("last_turns", "max_tokens"):
            value = getattr(self, what)
            if value is not None and (type(value) is not int or value < 0):
                raise ConfigError(
                    f"History {what} must be a non-negative int or None, got {value!r}."
                )
        if type(self.summary_tokens) is not int or self.summary_tokens < 1:
            raise ConfigError(
                f"History summary_tokens must be a positive int, got {self.summary_tokens!r}."
            )
        if self.summarise_with is not None:
            if self.last_turns is None and self.max_tokens is None:
                raise ConfigError(
                    "History(summarise_with=...) needs last_turns or max_tokens: they say which "
                    "turns fall out of the window into the summary."
                )
            if self.max_tokens is not None and self.max_tokens < self.summary_tokens:
                raise ConfigError(
                    f"History max_tokens ({self.max_tokens}) must leave room for the summary "
                    f"(summary_tokens={self.summary_tokens}); raise it or shorten the summary."
                )
            object.__setattr__(
                self, "catalogue", catalogue_for(self.summarise_with, self.catalogue)
            )
            check_model(self.summarise_with, self.catalogue, self.name)
        if self.priced_as not in self.catalogue:
            self.catalogue.card(self.priced_as)  # an error naming the closest ids

    def window(self, conversation: Conversation) -> int:
        """The first turn the models are sent verbatim under this policy (a user turn).

        Walks back from the newest turn, so a request costs the turns it keeps, not all of them.
        """
        turns = conversation.turns
        n = len(turns)
        if self.last_turns == 0:
            return n
        budget = self.max_tokens
        if budget is not None:
            if self.summarise_with is not None:
                budget -= self.summary_tokens  # the summary may grow to its limit
            elif conversation.summary is not None:
                budget -= count_tokens(conversation.summary, self.priced_as)
        start, users, tokens = n, 0, 0
        # Only the start of a user turn may open what is sent (answers stay with questions).
        for i in range(n - 1, conversation.summarised - 1, -1):
            if budget is not None:
                tokens += _count(turns[i], self.priced_as)
            if turns[i].role != "user":
                continue
            if budget is not None and tokens > budget:
                break
            start, users = i, users + 1
            if self.last_turns is not None and users >= self.last_turns:
                break
        return start

    def _summary_call(
        self, request: Request, ledger: Ledger, conversation: Conversation, upto: int
    ) -> ModelCall:
        """The cheap call that folds turns ``summarised..upto`` into the running summary."""
        model = self.summarise_with
        assert model is not None
        new = conversation.turns[conversation.summarised : upto]
        parts = []
        if conversation.summary is not None:
            parts.append("Summary so far:\n" + conversation.summary)
        parts.append("New turns:\n" + render_turns(new))
        prompt = Prompt(self.instruction.format(max_tokens=self.summary_tokens), "\n\n".join(parts))
        return ModelCall(
            stage=self.name,
            model=model,
            catalogue=self.catalogue,
            prompt=prompt,
            max_tokens=self.summary_tokens,
            request=request,
            ledger=ledger,
            timeout_s=self.timeout_s,
            note=f"summary of turns {conversation.summarised}-{upto - 1}",
        )

    def _summarise(
        self, request: Request, ledger: Ledger, conversation: Conversation, upto: int
    ) -> tuple[Conversation, str]:
        """Fold turns ``summarised..upto`` into the running summary (one cheap call).

        Returns the conversation and, if the summariser failed, why (see ``_fallback``).
        """
        call = self._summary_call(request, ledger, conversation, upto)
        try:
            with call as completion:
                call.record("passed")
        except ConfigError:
            raise
        except ChainkitError as exc:
            return conversation, self._fallback(conversation, upto, exc)
        return self._folded(conversation, completion.text, upto), ""

    async def _asummarise(
        self, request: Request, ledger: Ledger, conversation: Conversation, upto: int
    ) -> tuple[Conversation, str]:
        """:meth:`_summarise` on the event loop: the summariser's async call is awaited."""
        call = self._summary_call(request, ledger, conversation, upto)
        try:
            async with call as completion:
                await call.arecord("passed")
        except ConfigError:
            raise
        except ChainkitError as exc:
            return conversation, self._fallback(conversation, upto, exc)
        return self._folded(conversation, completion.text, upto), ""

    @staticmethod
    def _folded(conversation: Conversation, summary: str, upto: int) -> Conversation:
        return dataclasses.replace(conversation, summary=summary, summarised=upto, start=upto)

    def _fallback(self, conversation: Conversation, upto: int, exc: ChainkitError) -> str:
        # The failed call is in the ledger (failed, its cost unknown). The conversation goes
        # on with the window alone: the turns that were to be folded are not sent this time,
        # and the next request tries to fold them again (the summary stays as it was).
        why = (
            f"summariser failed ({type(exc).__name__}); turns {conversation.summarised}-"
            f"{upto - 1} neither summarised nor sent"
        )
        _log.warning("History %r, conversation %r: %s: %s", self.name, conversation.id, why, exc)
        return why

    def _prepare(self, request: Request, ledger: Ledger) -> tuple[int, int]:
        """Refuse a reused request id; the tokens of every earlier turn and the window's start."""
        conversation = request.conversation
        assert conversation is not None
        conversations(ledger).check(request)  # a reused request id is refused before spending
        # Without the policy every earlier turn would be sent as it is, summarised ones too.
        return _full(conversation, self.priced_as), self.window(conversation)

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with its conversation's window (and summary) set; record the turn."""
        started = time.perf_counter()
        conversation = request.conversation
        if conversation is None:
            self._record(request, ledger, started, Decimal(0), "")
            return request
        full, start = self._prepare(request, ledger)
        failed = ""
        if self.summarise_with is not None and start > conversation.summarised:
            conversation, failed = self._summarise(request, ledger, conversation, start)
        return self._finish(request, ledger, conversation, started, full, start, failed)

    async def arun(self, request: Request, ledger: Ledger) -> Request:
        """:meth:`run` on the event loop: the summariser's async call is awaited.

        The ledger's writes (and reads, on a durable ledger) run in a worker thread.
        """
        conversation = request.conversation
        if conversation is None or self.summarise_with is None:
            return await run_to_end(self.run, request, ledger)
        started = time.perf_counter()
        full, start = await run_to_end(self._prepare, request, ledger)
        failed = ""
        if start > conversation.summarised:
            conversation, failed = await self._asummarise(request, ledger, conversation, start)
        return await run_to_end(
            self._finish, request, ledger, conversation, started, full, start, failed
        )

    def _finish(
        self,
        request: Request,
        ledger: Ledger,
        conversation: Conversation,
        started: float,
        full: int,
        start: int,
        failed: str,
    ) -> Request:
        """Set the window on the request; record the turn and this stage's entry."""
        model_id = self.priced_as
        conversation = dataclasses.replace(conversation, start=max(start, conversation.summarised))
        request = dataclasses.replace(request, conversation=conversation)
        sent = _tokens(sendable(conversation.sent), model_id)
        if conversation.summary is not None:
            sent += count_tokens(SUMMARY_HEADER + conversation.summary, model_id)
        trimmed = max(0, full - sent)
        try:
            avoided: Decimal | None = self.catalogue.cost(model_id, Usage(trimmed, 0))
        except ChainkitError:
            avoided = None  # unknown, never $0
        n = len(conversation.turns)
        kept = f"turns {conversation.start}-{n - 1} of {n}" if conversation.start < n else "none"
        if conversation.summary is not None:
            kept += f", summary of 0-{conversation.summarised - 1}"
        note = (
            f"turn {conversation.turn_index}: sent {kept} earlier turns; {sent} history tokens "
            f"sent, {trimmed} trimmed"
        )
        if failed:
            note += f"; {failed}"
        conversations(ledger).record(
            conversation,
            turn_records(
                request,
                model_id=model_id,
                history_tokens=sent,
                trimmed_tokens=trimmed,
                now=ledger.clock(),
            ),
        )
        self._record(request, ledger, started, avoided, note)
        return request

    def _record(
        self, request: Request, ledger: Ledger, started: float, avoided: Decimal | None, note: str
    ) -> None:
        ledger.record(
            Entry(
                request_id=request.id,
                stage=self.name,
                outcome="passed",
                cost=Decimal(0),
                avoided_cost=avoided,
                estimated=not is_exact(self.priced_as),
                intent=request.intent,
                latency_s=time.perf_counter() - started,
                tags=request.tags,
                note=note,
            )
        )
