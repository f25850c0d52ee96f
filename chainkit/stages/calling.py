"""One priced, budgeted model call on behalf of a stage, recorded as exactly one entry."""

from __future__ import annotations

import time
from decimal import Decimal
from types import TracebackType
from typing import Literal

from chainkit.errors import BudgetExceeded, ConfigError, ProviderError, Throttled
from chainkit.ledger import Hold, Ledger
from chainkit.pricing import Catalogue
from chainkit.providers.model import Completion, Model, Prompt
from chainkit.records import Entry, Outcome, Phase, Request, Usage

__all__ = ["ModelCall", "check_model"]


def check_model(model: Model, catalogue: Catalogue, stage: str) -> None:
    """Fail at construction, not on the first request, if ``catalogue`` cannot price ``model``."""
    try:
        catalogue.card(model.model_id).price(model.region, model.tier)
    except ConfigError as exc:
        raise ConfigError(
            f"Stage {stage!r} cannot price its model: {exc} Pass `catalogue=` with a catalogue "
            "that prices it."
        ) from exc


class ModelCall:
    """A context manager around one model call: estimate, reserve, call, price, record.

    Entering checks the context window and the budgets from the estimate (recording a ``refused``
    entry if a budget says no), then calls the model (recording a ``failed`` entry if it fails).
    The stage then calls :meth:`record` with its outcome; if the block raises before that, the
    call is recorded as ``failed`` with what it cost, so no spend goes unrecorded.
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
    ) -> None:
        self.stage = stage
        self.model = model
        self.catalogue = catalogue
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.request = request
        self.ledger = ledger
        self.phase = phase
        self.completion: Completion | None = None
        self.cost: Decimal | None = None
        self._hold: Hold | None = None
        self._recorded = False

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
    ) -> Entry:
        return Entry(
            request_id=self.request.id,
            stage=self.stage,
            outcome=outcome,
            model=self.model.model_id,
            usage=usage,
            cost=cost,
            estimated=estimated,
            latency_s=latency_s,
            attempts=attempts,
            intent=intent,
            tags=self.request.tags,
            phase=self.phase,
        )

    def __enter__(self) -> Completion:
        model, request, prompt = self.model, self.request, self.prompt
        card = self.catalogue.card(model.model_id)
        budgets = self.ledger.budgets
        # The model's own estimate decides (it knows its template and tokenizer), even though a
        # byte count would often do: near the limit only the model can tell.
        estimate = model.estimate(prompt, max_tokens=self.max_tokens)
        needed = estimate.input_tokens + estimate.cache_read_tokens + estimate.cache_write_tokens
        if needed + self.max_tokens > card.context_window:
            raise ConfigError(
                f"Stage {self.stage!r}: a prompt of ~{needed} tokens plus {self.max_tokens} "
                f"output tokens does not fit {card.id!r}'s context window of "
                f"{card.context_window} tokens (request {request.id!r}). Shorten the input "
                "(Summarise or Compress first) or choose a model with a longer context."
            )
        try:
            if budgets:
                price = self.catalogue.price(card.id, model.region, model.tier)
                self._hold = self.ledger.reserve(
                    price.cost(estimate, model_id=card.id), request.tags, stage=self.stage
                )
        except BudgetExceeded:
            self.ledger.record(
                self._entry("refused", Decimal(0), None, intent=request.intent, estimated=True)
            )
            raise
        started = time.perf_counter()
        try:
            completion = model.complete(
                self.prompt,
                max_tokens=self.max_tokens,
                metadata={**request.tags, "stage": self.stage, "request_id": request.id},
            )
        except Exception as exc:
            # A throttled call was not billed; any other failure may have been, so it is unknown.
            cost = Decimal(0) if isinstance(exc, Throttled) else None
            entry = self._entry(
                "failed",
                cost,
                None,
                intent=request.intent,
                latency_s=time.perf_counter() - started,
                attempts=exc.attempts if isinstance(exc, ProviderError) else 1,
            )
            self.ledger.record(entry, hold=self._hold)
            raise
        self.completion = completion
        # The reply may name a model version the catalogue lacks; the configured id is priced.
        priced = completion.model_id if completion.model_id in self.catalogue else card.id
        try:
            self.cost = self.catalogue.cost(
                priced, completion.usage, region=model.region, tier=model.tier
            )
        except ConfigError:
            # Already paid for: record it as unknown (None), never as $0, and carry on.
            self.cost = None
        return completion

    def record(self, outcome: Outcome, *, intent: str | None = None) -> None:
        """Record the call's entry with the stage's ``outcome``; settle its budget hold."""
        completion = self.completion
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
        )
        self.ledger.record(entry, hold=self._hold)
        self._recorded = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self.completion is not None and not self._recorded:
            self.record("failed")
        return False
