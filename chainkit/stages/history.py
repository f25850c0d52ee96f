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
from chainkit.stages.calling import DEFAULT_TIMEOUT_S, ModelCall, check_model, check_timeout
from chainkit.tokens import count_tokens, is_exact

__all__ = ["History", "render_turns", "sendable", "summary_system"]

SUMMARY_HEADER = "Summary of the earlier conversation:\n"


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


def _tokens(turns: Sequence[Turn], model_id: str) -> int:
    return sum(count_tokens(t.text, model_id) for t in turns)


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
        """The first turn the models are sent verbatim under this policy (a user turn)."""
        turns = conversation.turns
        n = len(turns)
        # Only the start of a user turn may open what is sent (answers stay with questions).
        starts = [
            i for i, t in enumerate(turns) if t.role == "user" and i >= conversation.summarised
        ]
        start = starts[0] if starts else n
        if self.last_turns == 0:
            start = n
        elif self.last_turns is not None and self.last_turns < len(starts):
            start = max(start, starts[-self.last_turns])
        if self.max_tokens is not None:
            budget = self.max_tokens
            if self.summarise_with is not None:
                budget -= self.summary_tokens  # the summary may grow to its limit
            elif conversation.summary is not None:
                budget -= count_tokens(conversation.summary, self.priced_as)
            later = [i for i in starts if i >= start] + [n]
            for i in later:
                if _tokens(turns[i:], self.priced_as) <= budget:
                    start = i
                    break
        return start

    def _summarise(
        self, request: Request, ledger: Ledger, conversation: Conversation, upto: int
    ) -> Conversation:
        """Fold turns ``summarised..upto`` into the running summary (one cheap call)."""
        model = self.summarise_with
        assert model is not None
        new = conversation.turns[conversation.summarised : upto]
        parts = []
        if conversation.summary is not None:
            parts.append("Summary so far:\n" + conversation.summary)
        parts.append("New turns:\n" + render_turns(new))
        prompt = Prompt(self.instruction.format(max_tokens=self.summary_tokens), "\n\n".join(parts))
        call = ModelCall(
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
        with call as completion:
            call.record("passed")
        return dataclasses.replace(
            conversation, summary=completion.text, summarised=upto, start=upto
        )

    def run(self, request: Request, ledger: Ledger) -> Request:
        """Return the request with its conversation's window (and summary) set; record the turn."""
        started = time.perf_counter()
        conversation = request.conversation
        if conversation is None:
            self._record(request, ledger, started, Decimal(0), "")
            return request
        store = conversations(ledger)
        store.check(request)  # a reused request id is refused before anything is spent
        model_id = self.priced_as
        # Without the policy every earlier turn would be sent as it is, summarised ones too.
        full = _tokens(sendable(conversation.turns), model_id)
        start = self.window(conversation)
        if self.summarise_with is not None and start > conversation.summarised:
            conversation = self._summarise(request, ledger, conversation, start)
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
        store.record(
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
