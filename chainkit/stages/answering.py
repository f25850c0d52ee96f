"""What stages that answer early share: the cost they avoid, and how they record it."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Protocol, Self, runtime_checkable

from chainkit.ledger import Ledger
from chainkit.records import Entry, Request, Result

__all__ = ["CostEstimator", "EarlyAnswer", "record_early"]


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


def record_early(
    stage: str,
    fallback: CostEstimator | None,
    request: Request,
    ledger: Ledger,
    reply: str | None,
    started: float,
) -> Request | Result:
    """Record a free stage's entry: answered (with the avoided cost) if ``reply``, else passed."""
    answered = reply is not None
    avoided: Decimal | None = Decimal(0)
    if answered and fallback is not None:
        avoided = fallback.estimate_cost(request)
    ledger.record(
        Entry(
            request_id=request.id,
            stage=stage,
            outcome="answered" if answered else "passed",
            cost=Decimal(0),
            avoided_cost=avoided,
            intent=request.intent,
            latency_s=time.perf_counter() - started,
            tags=request.tags,
        )
    )
    if reply is None:
        return request
    return Result(request=request, text=reply, stage=stage)
