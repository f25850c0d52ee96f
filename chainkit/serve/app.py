"""The ASGI app: a pipeline behind ``POST /v1/chat``, its SSE stream, health and metrics.

Conversations live in this process, in a bounded LRU table (``max_conversations`` of at most
``max_turns`` turns each); the ledger keeps each turn's ids, token counts and digests, and, with
``keep_text=True``, its texts, from which a conversation that fell out of memory (or a restart)
is loaded back. Without ``keep_text`` (the default: no customer text at rest) such a
conversation cannot go on, and the service answers 409 ``conversation_expired``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import time
from collections.abc import AsyncGenerator, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from chainkit.errors import (
    BudgetExceeded,
    ChainkitError,
    ConfigError,
    LedgerError,
    NoAnswer,
    ProviderError,
    Throttled,
    Timeout,
)
from chainkit.ledger import Budget, Ledger
from chainkit.ledger.budgets import Period
from chainkit.ledger.conversations import conversations
from chainkit.ledger.core import watch
from chainkit.money import exact_sum, from_units, to_units
from chainkit.pipeline import Answered, Pipeline, TextDelta
from chainkit.records import Conversation, Entry, Result, check_text
from chainkit.serve.metrics import CONTENT_TYPE, Histogram, ledger_metrics, sample

__all__ = ["Service", "create_app"]

MAX_CONVERSATION_ID = 128  # leaves room in a request id (256) for the turn and a nonce
BODY_TIMEOUT_S = 30.0  # the longest a request body may take to arrive (408 beyond)
_FIELDS = {"message", "conversation_id"}


class HTTPError(Exception):
    """A client error: status, a short code and a message saying what was wrong."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        """``extra`` fields go into the JSON body beside ``error`` and ``message``."""
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        body = {"error": self.code, "message": self.message, **self.extra}
        return JSONResponse(body, status_code=self.status)


def _money(value: Decimal | None) -> str | None:
    """Exact, without trailing zeros or an exponent (``"0.00002177"``); ``None`` if unknown."""
    return None if value is None else format(from_units(to_units(value)), "f")


@dataclass(slots=True)
class _Slot:
    """One conversation in memory, and the lock that keeps its turns in order."""

    tenant: str
    conversation: Conversation | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Service:
    """What the app serves and its limits; :func:`create_app` builds one and wires it up."""

    pipeline: Pipeline
    ledger: Ledger
    tenant_header: str = "X-Tenant"
    default_tenant: str | None = None
    tenants: Collection[str] | None = None
    tenant_limit: Decimal | int | str | None = None
    tenant_period: Period | None = "month"
    keep_text: bool = False
    max_conversations: int = 10_000
    max_turns: int = 50
    max_body_bytes: int = 16_384
    max_message_chars: int = 4_000
    started: float = field(default_factory=time.monotonic)
    # Conversations are kept per tenant, as in the ledger: another tenant's id is another key.
    _slots: collections.OrderedDict[tuple[str, str], _Slot] = field(
        default_factory=collections.OrderedDict
    )
    _budgeted: set[str] = field(default_factory=set)
    in_flight: int = 0
    stage_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "chainkit_stage_latency_seconds",
            "Latency of each stage's ledger entry, by stage and outcome (this process).",
        )
    )
    request_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "chainkit_request_duration_seconds",
            "Time to answer an HTTP chat request, by endpoint and answering stage (this "
            "process; a stream until its last event).",
        )
    )
    responses: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        check_text(self.tenant_header, "tenant header")
        if self.default_tenant is not None:
            check_text(self.default_tenant, "default tenant")
        if self.tenant_limit is not None:
            # Checked as a Budget checks it (a float refused, a str or Decimal kept exactly).
            # (Budget takes a str or an int too, and converts it; its field is typed Decimal.)
            limit = cast(Decimal, self.tenant_limit)
            self.tenant_limit = Budget(limit, name="tenant limit").limit
        for name in ("max_conversations", "max_turns", "max_body_bytes", "max_message_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"Service {name} must be a positive int, got {value!r}.")

    # -- input ---------------------------------------------------------------------------

    def tenant(self, scope: Scope) -> str:
        """The tenant named by the request's header (UTF-8), checked as a tag value is."""
        wanted = self.tenant_header.lower().encode("latin-1")
        raw = [v for k, v in scope["headers"] if k == wanted]
        if not raw:
            if self.default_tenant is not None:
                return self._known(self.default_tenant)
            raise HTTPError(
                400,
                "missing_tenant",
                f"The {self.tenant_header} header is missing: name the tenant the request is "
                "for (UTF-8, up to 256 characters).",
            )
        if len(raw) > 1:
            raise HTTPError(400, "bad_tenant", f"The {self.tenant_header} header is repeated.")
        try:
            tenant = raw[0].decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise HTTPError(
                400,
                "bad_tenant",
                f"The {self.tenant_header} header is not UTF-8 ({raw[0][:40]!r}): send the "
                "tenant's name encoded as UTF-8.",
            ) from exc
        try:
            check_text(tenant, f"{self.tenant_header} header")
        except ConfigError as exc:
            raise HTTPError(400, "bad_tenant", str(exc)) from exc
        return self._known(tenant)

    def _known(self, tenant: str) -> str:
        if self.tenants is not None and tenant not in self.tenants:
            raise HTTPError(
                403, "unknown_tenant", f"Tenant {tenant!r} is not served here.", tenant=tenant
            )
        return tenant

    async def body(self, request: HTTPRequest) -> tuple[str, str | None]:
        """The JSON body's ``message`` and ``conversation_id``, checked; else an HTTPError."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPError(
                415,
                "unsupported_media_type",
                f"The body must be JSON (Content-Type: application/json), got {kind or 'none'!r}.",
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(int(declared))
        data = bytearray()
        try:
            # A client that sends its body a byte at a time (or stops) must not hold a
            # connection, and the server's shutdown, for ever.
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for chunk in request.stream():
                    data += chunk
                    if len(data) > self.max_body_bytes:
                        raise self._too_large(len(data))
        except TimeoutError:
            raise HTTPError(
                408,
                "body_timeout",
                f"The body did not arrive within {BODY_TIMEOUT_S:.0f} s; send it whole.",
            ) from None
        except ClientDisconnect:
            # Gone before its question arrived: nothing was spent, nothing to answer.
            raise HTTPError(
                400, "client_disconnected", "The client left during the body."
            ) from None
        try:
            parsed = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise HTTPError(400, "bad_json", f"The body is not UTF-8: {exc}.") from exc
        except json.JSONDecodeError as exc:
            raise HTTPError(
                400, "bad_json", f"The body is not valid JSON: {exc.msg} at character {exc.pos}."
            ) from exc
        except RecursionError as exc:  # thousands of nested brackets
            raise HTTPError(400, "bad_json", "The body nests JSON too deeply.") from exc
        if not isinstance(parsed, dict):
            raise HTTPError(
                422,
                "invalid_body",
                f'The body must be a JSON object like {{"message": "..."}}, got '
                f"{type(parsed).__name__}.",
            )
        unknown = sorted(set(parsed) - _FIELDS)
        if unknown:
            raise HTTPError(
                422,
                "invalid_body",
                f"Unknown fields {unknown}: the body takes 'message' and, to go on with a "
                "conversation, 'conversation_id'.",
            )
        message = parsed.get("message")
        if not isinstance(message, str) or not message.strip():
            raise HTTPError(
                422,
                "invalid_body",
                f"'message' must be a non-empty string, got {message!r:.60}.",
            )
        if len(message) > self.max_message_chars:
            raise HTTPError(
                422,
                "message_too_long",
                f"'message' has {len(message):,} characters; at most {self.max_message_chars:,} "
                "are taken. Send a shorter message.",
            )
        try:
            check_text(message, "'message'", max_len=self.max_message_chars)
        except ConfigError as exc:
            raise HTTPError(422, "invalid_body", str(exc)) from exc
        conversation_id = parsed.get("conversation_id")
        if conversation_id is not None:
            try:
                check_text(conversation_id, "'conversation_id'", max_len=MAX_CONVERSATION_ID)
            except ConfigError as exc:
                raise HTTPError(422, "invalid_body", str(exc)) from exc
        return message, conversation_id

    def _too_large(self, size: int) -> HTTPError:
        return HTTPError(
            413,
            "body_too_large",
            f"The body has {size:,} bytes or more; at most {self.max_body_bytes:,} are taken.",
        )

    # -- budgets -------------------------------------------------------------------------

    async def budget_for(self, tenant: str) -> None:
        """Give ``tenant`` the per-tenant budget on first sight (kept by the ledger's store)."""
        if self.tenant_limit is None or tenant in self._budgeted:
            return
        limit = cast(Decimal, self.tenant_limit)  # made a Decimal in __post_init__
        budget = Budget(limit, period=self.tenant_period, tag=("tenant", tenant))
        await asyncio.to_thread(self.ledger.add_budget, budget)
        self._budgeted.add(tenant)

    # -- conversations -------------------------------------------------------------------

    def slot(self, tenant: str, conversation_id: str | None) -> tuple[str, _Slot]:
        """The conversation's slot (made if new), most recently used; the id it goes by."""
        cid = conversation_id or f"c-{secrets.token_hex(12)}"
        key = (tenant, cid)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(tenant)
            while len(self._slots) > self.max_conversations:
                self._slots.popitem(last=False)
        self._slots.move_to_end(key)
        return cid, slot

    def _not_found(self, cid: str, tenant: str) -> HTTPError:
        # The same answer whether it exists for another tenant or not at all: ids leak nothing.
        return HTTPError(
            404,
            "conversation_not_found",
            f"Tenant {tenant!r} has no conversation {cid!r}. Leave 'conversation_id' out to "
            "start one.",
            conversation_id=cid,
        )

    async def conversation(self, tenant: str, cid: str, slot: _Slot, *, new: bool) -> None:
        """Fill ``slot`` (its lock held): new, or loaded back from the ledger, or an error."""
        if slot.conversation is not None:
            return
        store = conversations(self.ledger)
        if not new:
            known = await asyncio.to_thread(store.turns, cid, tenant=tenant)
            if known:
                loaded: Conversation | None = None
                if self.keep_text:
                    try:
                        loaded = await asyncio.to_thread(store.load, cid, tenant=tenant)
                    except ConfigError:
                        loaded = None
                if loaded is not None and loaded.tags.get("tenant") != tenant:
                    self._forget(cid, slot)
                    raise self._not_found(cid, tenant)
                if loaded is None:
                    self._forget(cid, slot)
                    raise HTTPError(
                        409,
                        "conversation_expired",
                        f"Conversation {cid!r} is no longer in this server's memory and its "
                        "text was not kept (the server keeps no customer text at rest unless "
                        "started with keep_text): start a new conversation.",
                        conversation_id=cid,
                    )
                slot.conversation = loaded
                return
        slot.conversation = Conversation(cid, tags={"tenant": tenant}, keep_text=self.keep_text)

    def _forget(self, cid: str, slot: _Slot) -> None:
        if self._slots.get((slot.tenant, cid)) is slot:
            del self._slots[slot.tenant, cid]

    # -- answering -----------------------------------------------------------------------

    def answer_body(
        self, result: Result, conversation: Conversation, entries: list[Entry]
    ) -> dict[str, Any]:
        """What ``/v1/chat`` returns (and the stream's last event carries) for one answer."""
        request = result.request
        return {
            "conversation_id": conversation.id,
            "turn": conversation.turn_index - 1,
            "request_id": request.id,
            "reply": result.text,
            "stage": result.stage,
            "model": result.model,
            "intent": request.intent,
            "cost": _money(exact_sum(e.cost for e in entries)),
            "avoided_cost": _money(exact_sum(e.avoided_cost for e in entries)),
            "entries": [
                {
                    "id": e.id,
                    "stage": e.stage,
                    "outcome": e.outcome,
                    "cost": _money(e.cost),
                    "estimated": e.estimated,
                }
                for e in entries
            ],
        }

    def observe(self, endpoint: str, path: str, seconds: float, entries: list[Entry]) -> None:
        """Count one request's latency under its answer path and each entry's under its stage."""
        self.request_latency.observe(seconds, endpoint=endpoint, path=path)
        for e in entries:
            self.stage_latency.observe(e.latency_s, stage=e.stage, outcome=e.outcome)

    def failure(
        self, exc: BaseException, tenant: str, cid: str, request_id: str
    ) -> HTTPError | None:
        """The HTTP error for a pipeline failure; ``None`` for a bug (let it raise)."""
        where = {"tenant": tenant, "conversation_id": cid, "request_id": request_id}
        if isinstance(exc, BudgetExceeded):
            return HTTPError(
                429,
                "budget_exceeded",
                str(exc),
                budget=exc.budget,
                period=exc.period,
                spent=_money(exc.spent),
                held=_money(exc.held),
                limit=_money(exc.limit),
                needed=_money(exc.needed),
                **where,
            )
        if isinstance(exc, Throttled):
            return HTTPError(503, "throttled", str(exc), **where)
        if isinstance(exc, Timeout):
            return HTTPError(504, "timeout", str(exc), **where)
        if isinstance(exc, ProviderError | NoAnswer):
            return HTTPError(502, "no_answer", str(exc), **where)
        if isinstance(exc, LedgerError):
            return HTTPError(503, "ledger_unavailable", str(exc), **where)
        if isinstance(exc, ConfigError):
            return HTTPError(422, "refused", str(exc), **where)
        if isinstance(exc, ChainkitError):
            return HTTPError(500, "error", str(exc), **where)
        return None

    def status_of(self, result_stage: str | None, status: int) -> None:
        """Count a response by answering stage (or error) for ``/metrics``."""
        self.responses[(result_stage or "none", str(status))] += 1


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    # One JSON line per event: JSON escapes newlines, so no data line is ever split.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _EventStream(Response):
    """A Server-Sent Events response that closes its source the moment the client goes.

    Starlette's ``StreamingResponse`` may leave the source suspended when the client disconnects
    while a chunk is being sent; here the source is always closed (awaited) before the response
    returns, so a model stream it reads is closed and recorded at once.
    """

    media_type = "text/event-stream"

    def __init__(self, source: AsyncGenerator[bytes, None], headers: Mapping[str, str]) -> None:
        """Stream ``source``'s chunks as they come."""
        super().__init__(
            content=None,
            headers={"cache-control": "no-store", "x-accel-buffering": "no", **headers},
            media_type=self.media_type,
        )
        # Response sets Content-Length for its empty body; a stream has none (chunked).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the events until the source ends or the client disconnects."""

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.source:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.ensure_future(pump())
        listening = asyncio.ensure_future(listen())
        try:
            await asyncio.wait({pumping, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, listening):
                task.cancel()
            results = await asyncio.gather(pumping, listening, return_exceptions=True)
            await self.source.aclose()
        for outcome in results:
            # A client gone mid-send (OSError) is the disconnect the listener saw; a bug raises.
            if isinstance(outcome, Exception) and not isinstance(outcome, OSError):
                raise outcome


def create_app(
    pipeline: Pipeline,
    ledger: Ledger,
    *,
    tenant_header: str = "X-Tenant",
    default_tenant: str | None = None,
    tenants: Collection[str] | None = None,
    tenant_limit: Decimal | int | str | None = None,
    tenant_period: Period | None = "month",
    keep_text: bool = False,
    max_conversations: int = 10_000,
    max_turns: int = 50,
    max_body_bytes: int = 16_384,
    max_message_chars: int = 4_000,
) -> Starlette:
    """An ASGI app serving ``pipeline`` and recording into ``ledger``.

    Routes: ``POST /v1/chat`` (JSON), ``POST /v1/chat/stream`` (Server-Sent Events),
    ``GET /healthz``, ``GET /metrics`` (Prometheus text).

    Args:
        pipeline: the bot; its requests carry the tenant as tag ``tenant``.
        ledger: where every stage records; its budgets (and the per-tenant ones) are enforced.
        tenant_header: the header naming the tenant (UTF-8; checked as a tag value).
        default_tenant: the tenant of a request without the header (else 400).
        tenants: the tenants served (others get 403); every tenant if ``None``.
        tenant_limit: a budget for each tenant, added on its first request
            (``Budget(tenant_limit, period=tenant_period, tag=("tenant", name))``).
        tenant_period: the period of ``tenant_limit``: "day", "month" or None (all time).
        keep_text: keep conversations' texts in the ledger, so they can be loaded back after
            they leave memory (off: only ids, counts and digests are kept at rest).
        max_conversations: conversations kept in memory (least recently used go first).
        max_turns: user turns per conversation; a longer one is refused (409).
        max_body_bytes: the largest request body taken (413 beyond).
        max_message_chars: the longest message taken (422 beyond).
    """
    service = Service(
        pipeline,
        ledger,
        tenant_header=tenant_header,
        default_tenant=default_tenant,
        tenants=None if tenants is None else frozenset(tenants),
        tenant_limit=tenant_limit,
        tenant_period=tenant_period,
        keep_text=keep_text,
        max_conversations=max_conversations,
        max_turns=max_turns,
        max_body_bytes=max_body_bytes,
        max_message_chars=max_message_chars,
    )

    async def prepare(request: HTTPRequest) -> tuple[str, str, _Slot, str, bool]:
        tenant = service.tenant(request.scope)
        message, given = await service.body(request)
        await service.budget_for(tenant)
        cid, slot = service.slot(tenant, given)
        return tenant, cid, slot, message, given is None

    async def chat(request: HTTPRequest) -> Response:
        started = time.perf_counter()
        try:
            tenant, cid, slot, message, new = await prepare(request)
        except HTTPError as exc:
            service.status_of(None, exc.status)
            return exc.response()
        async with slot.lock:
            try:
                await service.conversation(tenant, cid, slot, new=new)
                assert slot.conversation is not None
                conversation = slot.conversation
                if conversation.turn_index >= service.max_turns:
                    raise _too_many_turns(cid, service.max_turns)
            except HTTPError as exc:
                service.status_of(None, exc.status)
                return exc.response()
            ask = conversation.request(message, id=_request_id(conversation))
            service.in_flight += 1
            try:
                with watch(ask.id) as entries:
                    try:
                        result = await pipeline.arun(ask, ledger)
                    except Exception as exc:
                        error = service.failure(exc, tenant, cid, ask.id)
                        if error is None:
                            raise
                        service.status_of(None, error.status)
                        service.observe("chat", "error", time.perf_counter() - started, entries)
                        return error.response()
                    await asyncio.to_thread(conversations(ledger).record_reply, result)
            finally:
                service.in_flight -= 1
            slot.conversation = conversation.after(result)
            body = service.answer_body(result, slot.conversation, entries)
        service.observe("chat", result.stage, time.perf_counter() - started, entries)
        service.status_of(result.stage, 200)
        return JSONResponse(body, headers=_ids(body["request_id"], cid))

    async def chat_stream(request: HTTPRequest) -> Response:
        started = time.perf_counter()
        try:
            tenant, cid, slot, message, new = await prepare(request)
        except HTTPError as exc:
            service.status_of(None, exc.status)
            return exc.response()
        # The lock is held for the whole stream: a conversation's turns go in order.
        await slot.lock.acquire()
        stack = ExitStack()
        stack.callback(slot.lock.release)
        try:
            await service.conversation(tenant, cid, slot, new=new)
            assert slot.conversation is not None
            conversation = slot.conversation
            if conversation.turn_index >= service.max_turns:
                raise _too_many_turns(cid, service.max_turns)
        except HTTPError as exc:
            stack.close()
            service.status_of(None, exc.status)
            return exc.response()
        ask = conversation.request(message, id=_request_id(conversation))
        entries = stack.enter_context(watch(ask.id))
        events = pipeline.astream(ask, ledger)
        service.in_flight += 1
        stack.callback(_decrement, service)
        # The first event is read before answering, so that a refusal (a budget) is a real
        # HTTP status (429), not an error event inside a 200 stream.
        try:
            first = await anext(events)
        except Exception as exc:
            await events.aclose()
            stack.close()
            error = service.failure(exc, tenant, cid, ask.id)
            if error is None:
                raise
            service.status_of(None, error.status)
            service.observe("stream", "error", time.perf_counter() - started, entries)
            return error.response()
        except BaseException:
            await events.aclose()
            stack.close()
            raise

        async def source() -> AsyncGenerator[bytes, None]:
            path = "cancelled"
            try:
                event: TextDelta | Answered | None = first
                while event is not None:
                    if isinstance(event, TextDelta):
                        yield _sse("delta", {"stage": event.stage, "text": event.text})
                    else:
                        result = event.result
                        await asyncio.to_thread(conversations(ledger).record_reply, result)
                        slot.conversation = conversation.after(result)
                        path = result.stage
                        body = service.answer_body(result, slot.conversation, entries)
                        yield _sse("answer", body)
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        event = None
            except Exception as exc:
                error = service.failure(exc, tenant, cid, ask.id)
                if error is None:
                    raise
                path = "error"
                yield _sse("error", {"status": error.status, "error": error.code,
                                     "message": error.message, **error.extra})  # fmt: skip
            finally:
                # Closing the pipeline's stream records what the model had generated.
                await events.aclose()
                stack.close()
                service.observe("stream", path, time.perf_counter() - started, entries)
                service.status_of(path, 200)

        return _EventStream(source(), _ids(ask.id, cid))

    async def healthz(request: HTTPRequest) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "pipeline": pipeline.name,
                "uptime_s": round(time.monotonic() - service.started, 3),
                "in_flight": service.in_flight,
                "conversations_in_memory": len(service._slots),
            }
        )

    async def metrics(request: HTTPRequest) -> Response:
        lines = await asyncio.to_thread(ledger_metrics, ledger)
        lines += [
            "# HELP chainkit_http_responses_total Chat responses by answering stage and status.",
            "# TYPE chainkit_http_responses_total counter",
            *(
                sample("chainkit_http_responses_total", {"stage": k[0], "status": k[1]}, n)
                for k, n in sorted(service.responses.items())
            ),
            "# HELP chainkit_in_flight_requests Chat requests being answered now.",
            "# TYPE chainkit_in_flight_requests gauge",
            sample("chainkit_in_flight_requests", {}, service.in_flight),
            "# HELP chainkit_conversations_in_memory Conversations this process holds.",
            "# TYPE chainkit_conversations_in_memory gauge",
            sample("chainkit_conversations_in_memory", {}, len(service._slots)),
        ]
        lines += service.stage_latency.lines() + service.request_latency.lines()
        return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)

    async def not_allowed(request: HTTPRequest, exc: Exception) -> Response:
        return JSONResponse(
            {"error": "method_not_allowed", "message": f"{request.method} is not allowed here."},
            status_code=405,
        )

    async def not_found(request: HTTPRequest, exc: Exception) -> Response:
        return JSONResponse(
            {
                "error": "not_found",
                "message": f"No route {request.url.path!r}: the routes are POST /v1/chat, "
                "POST /v1/chat/stream, GET /healthz and GET /metrics.",
            },
            status_code=404,
        )

    app = Starlette(
        routes=[
            Route("/v1/chat", chat, methods=["POST"]),
            Route("/v1/chat/stream", chat_stream, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.state.service = service
    return app


def _ids(request_id: str, conversation_id: str) -> dict[str, str]:
    # Header values are Latin-1: ids outside it are sent percent-encoded (RFC 3986), as UTF-8.
    return {
        "x-request-id": quote(request_id, safe="/-._~"),
        "x-conversation-id": quote(conversation_id, safe="/-._~"),
    }


def _decrement(service: Service) -> None:
    service.in_flight -= 1


def _request_id(conversation: Conversation) -> str:
    # Turn number for people, a nonce so that a retried turn (after a refusal or a cut stream)
    # is its own request in the ledger.
    return f"{conversation.id}/{conversation.turn_index}/{secrets.token_hex(4)}"


def _too_many_turns(cid: str, limit: int) -> HTTPError:
    return HTTPError(
        409,
        "conversation_full",
        f"Conversation {cid!r} has reached {limit} turns, the most this server takes: start a "
        "new conversation.",
        conversation_id=cid,
    )
