"""Canned: fixed replies for intents that need no model (greetings, thanks, refusals)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from chainkit.ledger import Ledger
from chainkit.records import Request, Result
from chainkit.stages.answering import CostEstimator, record_early

__all__ = ["Canned"]


@dataclass(frozen=True, kw_only=True)
class Canned:
    """Answer with a fixed reply when the request's intent has one; otherwise pass it on.

    >>> from chainkit import Ledger, Request
    >>> stage = Canned(replies={"greeting": "Hello! How can I help?"})
    >>> stage.run(Request("hi", intent="greeting"), Ledger()).text
    'Hello! How can I help?'
    """

    replies: Mapping[str, str]
    fallback: CostEstimator | None = None
    name: str = "canned"

    def with_fallback(self, fallback: CostEstimator) -> Self:
        """A copy that records what ``fallback`` would have cost for each answered request."""
        return self if self.fallback is not None else dataclasses.replace(self, fallback=fallback)

    def run(self, request: Request, ledger: Ledger) -> Request | Result:
        """Answer from ``replies`` by intent, or pass the request on."""
        started = time.perf_counter()
        reply = None if request.intent is None else self.replies.get(request.intent)
        return record_early(self.name, self.fallback, request, ledger, reply, started)

    async def arun(self, request: Request, ledger: Ledger) -> Request | Result:
        """:meth:`run`, inline on the event loop: a dictionary look-up does not block."""
        return self.run(request, ledger)
