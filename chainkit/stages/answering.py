"""What stages that answer early share: the cost they avoid, and how they record it."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Protocol, Self, runtime_checkable

from chainkit.ledger import Ledger
from chainkit.records import Entry, Outcome, Request, Result, Usage

__all__ = ["CostEstimator", "EarlyAnswer", "record_early", "record_free"]


@runtime_checkable
class CostEstimator(Protocol):
    """A stage that can say what it would cost to handle a request (the pipeline's final model)."""

    def estimate_cost(self, request: Request) -> Decimal | None:
        """Estimated cost of handling ``request``; ``None`` if unknown."""
        ...


@runtime_checkable
class EarlyAnswer(Protocol):
    """A stage that may answer before the final model; the pipeline binds that model to it."""

    fallback: CostEstimator | None

    def with_fallback(self, fallback: CostEstimator) -> Self:
        """A copy that prices avoided calls with ``fallback``."""
        ...


def record_free(
    stage: str,
    request: Request,
    ledger: Ledger,
    *,
    started: float | None = None,
    outcome: Outcome = "passed",
    intent: str | None = None,
    usage: Usage | None = None,
    avoided_cost: Decimal | None = Decimal(0),
    estimated: bool = False,
) -> None:
    """Record the entry of a stage that called no model: it cost $0, and says so.

    ``started`` is the stage's ``time.perf_counter()`` at entry; ``intent`` defaults to the
    request's.
    """
    ledger.record(
        Entry(
            request_id=request.id,
            stage=stage,
            outcome=outcome,
            cost=Decimal(0),
            usage=usage,
            avoided_cost=avoided_cost,
            estimated=estimated,
            intent=request.intent if intent is None else intent,
            latency_s=0.0 if started is None else time.perf_counter() - started,
            tags=request.tags,
        )
    )


def record_early(
    stage: str,
    fallback: CostEstimator | None,
    request: Request,
    ledger: Ledger,
    reply: str | None,
    started: float,
) -> Request | Result:
    """Record a free stage's entry: answered (with the avoided cost) if ``reply``, else passed."""
    if reply is None:
        record_free(stage, request, ledger, started=started)
        return request
    avoided: Decimal | None = Decimal(0)
    if fallback is not None:
        try:
            avoided = fallback.estimate_cost(request)
        except Exception:
            # What was avoided is unknown (the model could not estimate): say so, never $0,
            # and still answer: the answer itself cost nothing.
            avoided = None
    record_free(stage, request, ledger, started=started, outcome="answered", avoided_cost=avoided)
    return Result(request=request, text=reply, stage=stage)
