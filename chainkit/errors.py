"""The chainkit error tree.

::

    ChainkitError
    ├── ConfigError          bad input: an unknown model, a malformed price file, a bad option
    ├── BudgetExceeded       a call would take a budget over its limit; nothing was spent
    ├── NoAnswer             every stage passed the request on and none answered
    ├── AlreadyAnswered      resuming a request answered before whose reply was not kept
    ├── InProgress           resuming a request another live run is answering
    ├── LedgerError          the ledger could not store entries; they are kept and retried
    └── ProviderError        a model provider failed
        ├── Throttled        the provider refused for rate or capacity; retried before raising
        ├── Timeout          the call passed its deadline; it may still have been billed
        └── BadResponse      the provider answered with something chainkit cannot use

Every message says what happened, with the values, and what to do next.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "AlreadyAnswered",
    "BadResponse",
    "BudgetExceeded",
    "ChainkitError",
    "ConfigError",
    "InProgress",
    "LedgerError",
    "NoAnswer",
    "ProviderError",
    "Throttled",
    "Timeout",
]


class ChainkitError(Exception):
    """Base of every error chainkit raises on purpose."""


class ConfigError(ChainkitError, ValueError):
    """The caller asked for something that does not exist or cannot work.

    Also a ``ValueError``: it is a bad value, and code that parses untrusted input (a provider's
    reply) can catch both with one clause.
    """


class BudgetExceeded(ChainkitError):
    """A model call was refused before it was made because a budget would be exceeded.

    Besides its message it carries the figures, for code that reports them (an HTTP 429 body):
    the budget's name and period, what it had spent and held, its limit, and what the call
    needed (``Decimal``; ``needed`` is ``None`` for a call whose price is unknown).
    """

    budget: str | None = None
    period: str | None = None
    spent: Decimal | None = None
    held: Decimal | None = None
    limit: Decimal | None = None
    needed: Decimal | None = None


class NoAnswer(ChainkitError):
    """No stage of a pipeline answered the request."""


class AlreadyAnswered(ChainkitError):
    """A resumed request was answered by an earlier run, which did not keep the reply.

    Answering it again would pay twice; keep replies with ``Resume(keep_text=True)`` to have
    them returned, or give the request a new id to answer it again.
    """


class InProgress(ChainkitError):
    """A resumed request is being answered by another run (thread, process or host) right now.

    Answering it here as well would pay twice; wait for that run, or resume it later.
    """


class LedgerError(ChainkitError):
    """The ledger's store failed to write (disk full, I/O error, lost connection).

    The entries are not lost: they stay pending in the process and are written by the next
    successful write, :meth:`~chainkit.Ledger.flush` or ``close()``, once each.
    """


class ProviderError(ChainkitError):
    """A model provider failed; the message carries the provider's code and the model id.

    ``code`` is the provider's error code, ``model_id`` the model called and ``attempts`` how
    many calls were made before giving up (retries included).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        model_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.model_id = model_id
        self.attempts = attempts


class Throttled(ProviderError):
    """The provider throttled the call and retries did not get through."""


class Timeout(ProviderError):
    """The call did not finish within its deadline (``timeout_s``).

    The provider may have processed, and billed, the call anyway: its entry records the cost as
    unknown, bounded by what was reserved for it.
    """


class BadResponse(ProviderError):
    """The provider's reply lacked something chainkit needs, such as token usage."""
