"""The HTTP service: chat (JSON and SSE), tenants, budgets, conversations, metrics, uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import (
    Budget,
    Canned,
    Catalogue,
    Entry,
    Generate,
    History,
    IntentScan,
    KeywordClassifier,
    Ledger,
    OfflineModel,
    Pipeline,
    PostgresLedger,
    Prompt,
    SQLiteLedger,
)
from chainkit.ledger.conversations import conversations
from chainkit.serve import create_app
from chainkit.serve.metrics import Histogram, escape_label, ledger_metrics

ROOT = Path(__file__).resolve().parents[1]
MODEL = "amazon.nova-micro-v1:0"
CATALOGUE = Catalogue.load()
ORDER = "Where is my order 10234? It was due on Monday."


class Asked:
    """An offline model's ``answer`` that remembers every prompt it was given."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []

    def __call__(self, prompt: Prompt, budget: int) -> str:
        self.prompts.append(prompt)
        return "Your order left the depot today and should arrive tomorrow before noon."


def make_bot(asked: Asked | None = None, latency_s: float = 0.0) -> Pipeline:
    model = OfflineModel(model_id=MODEL, latency_s=latency_s, answer=asked)
    return Pipeline(
        [
            History(priced_as=MODEL, last_turns=4, catalogue=CATALOGUE),
            IntentScan(classifier=KeywordClassifier({"greeting": ["hi", "hello"]})),
            Canned(replies={"greeting": "Hello! How can I help?"}),
            Generate(model=model, max_tokens=100, catalogue=CATALOGUE),
        ],
        name="test-bot",
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """Ledgers of every kind (a second one of a kind opens the same store: a restart)."""
    made: list[Ledger] = []

    def make(**kwargs: Any) -> Ledger:
        if request.param == "memory":
            ledger = Ledger(**kwargs)
        elif request.param == "sqlite":
            ledger = SQLiteLedger(tmp_path / "serve.db", **kwargs)
        else:
            dsn = request.getfixturevalue("pg_dsn")
            ledger = PostgresLedger(dsn, schema=request.getfixturevalue("pg_schema"), **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


def call(app: Any, *steps: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    """Send ``(method, path, httpx kwargs)`` requests in order to ``app``, in process."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            return [await client.request(m, p, **kw) for m, p, kw in steps]

    return asyncio.run(go())


def chat(
    message: str, tenant: str | bytes = "acme", **body: Any
) -> tuple[str, str, dict[str, Any]]:
    return (
        "POST",
        "/v1/chat",
        {"json": {"message": message, **body}, "headers": {"X-Tenant": tenant}},
    )


def stream(message: str, tenant: str = "acme", **body: Any) -> tuple[str, str, dict[str, Any]]:
    step = chat(message, tenant, **body)
    return ("POST", "/v1/chat/stream", step[2])


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse a Server-Sent Events body into (event, data) pairs."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def entries_of(ledger: Ledger, request_id: str) -> list[Entry]:
    return [e for e in ledger.iter_entries() if e.request_id == request_id]


# -- chat ------------------------------------------------------------------------------------


def test_chat_answers_records_and_goes_on_with_the_conversation(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    asked = Asked()
    app = create_app(make_bot(asked), ledger)
    (hi,) = call(app, chat("hi there"))
    assert hi.status_code == 200
    first = hi.json()
    assert (first["reply"], first["stage"], first["turn"]) == (
        "Hello! How can I help?",
        "canned",
        0,
    )
    cid = first["conversation_id"]
    assert hi.headers["x-conversation-id"] == cid
    assert hi.headers["x-request-id"] == first["request_id"]
    (order,) = call(app, chat(ORDER, conversation_id=cid))
    second = order.json()
    assert (second["stage"], second["turn"], second["conversation_id"]) == ("generate", 1, cid)
    # The model was sent the first turn and its answer as history.
    assert [(t.role, t.text) for t in asked.prompts[0].history] == [
        ("user", "hi there"),
        ("assistant", "Hello! How can I help?"),
    ]
    for body in (first, second):
        recorded = entries_of(ledger, body["request_id"])
        # The response names exactly the request's entries, one per stage it went through.
        assert sorted(e["id"] for e in body["entries"]) == sorted(e.id for e in recorded)
        stages = [e.stage for e in recorded]
        assert len(stages) == len(set(stages))
        assert all(e.tags["tenant"] == "acme" for e in recorded)
        assert Decimal(body["cost"]) == sum((e.cost or Decimal(0) for e in recorded), Decimal(0))
    assert [e["stage"] for e in first["entries"]] == ["history", "intent_scan", "canned"]
    generate = next(e for e in entries_of(ledger, second["request_id"]) if e.stage == "generate")
    assert generate.cost is not None and generate.cost > 0
    assert Decimal(second["cost"]) == generate.cost
    # The conversation is in the ledger: ids, counts and digests, no text (the default).
    turns = conversations(ledger).turns(cid)
    assert [(t.role, t.turn) for t in turns] == [
        ("user", 0), ("assistant", 0), ("user", 1), ("assistant", 1)
    ]  # fmt: skip
    assert all(t.text is None and len(t.digest) == 64 for t in turns)


def test_stream_sends_deltas_then_the_answer_with_its_entries(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    app = create_app(make_bot(), ledger)
    greeting, order = call(app, stream("hello"), stream(ORDER))
    for response in (greeting, order):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
    kinds = events(greeting.text)
    assert [k for k, _ in kinds] == ["delta", "answer"]
    assert kinds[0][1] == {"stage": "canned", "text": "Hello! How can I help?"}
    streamed = events(order.text)
    deltas = [d["text"] for k, d in streamed if k == "delta"]
    answer = streamed[-1][1]
    assert streamed[-1][0] == "answer" and len(deltas) > 3
    assert "".join(deltas) == answer["reply"]
    assert answer["stage"] == "generate"
    recorded = entries_of(ledger, answer["request_id"])
    assert sorted(e["id"] for e in answer["entries"]) == sorted(e.id for e in recorded)
    assert [e.stage for e in recorded].count("generate") == 1
    assert Decimal(answer["cost"]) == next(e.cost for e in recorded if e.stage == "generate")


# -- budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_a_tenant_over_its_budget_gets_429_and_the_ledger_the_refusal(
    make_ledger: Callable[..., Ledger], path: str
) -> None:
    ledger = make_ledger(budgets=[Budget("0.00001", period="month", tag=("tenant", "acme"))])
    app = create_app(make_bot(), ledger)
    _, _, kwargs = chat(ORDER)
    other = {**kwargs, "headers": {"X-Tenant": "globex"}}
    refused, served, canned = call(
        app, ("POST", path, kwargs), ("POST", path, other), ("POST", path, chat("hi")[2])
    )
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"] == "budget_exceeded"
    assert (body["budget"], body["limit"], body["spent"], body["tenant"]) == (
        "tenant=acme/month", "0.00001", "0", "acme"
    )  # fmt: skip
    assert Decimal(body["needed"]) > Decimal("0.00001")
    assert "would be exceeded" in body["message"] and "tenant=acme/month" in body["message"]
    recorded = {e.stage: e for e in entries_of(ledger, body["request_id"])}
    assert recorded["generate"].outcome == "refused" and recorded["generate"].cost == 0
    # Another tenant, and the free path of the same tenant, are served.
    assert served.status_code == 200 and canned.status_code == 200


def test_tenant_limit_gives_every_tenant_its_own_budget() -> None:
    ledger = Ledger()
    app = create_app(make_bot(), ledger, tenant_limit="0.0001", tenant_period="day")
    answers = call(app, *[chat(ORDER, tenant="日本🚚".encode()) for _ in range(20)])
    codes = [r.status_code for r in answers]
    # Served until the next call could take the tenant over its limit, refused from then on.
    served = codes.count(200)
    assert 2 <= served < 20 and codes == [200] * served + [429] * (20 - served)
    assert answers[-1].json()["budget"] == "tenant=日本🚚/day"
    budget = next(b for b in ledger.budgets if b.tag == ("tenant", "日本🚚"))
    assert (budget.limit, budget.period) == (Decimal("0.0001"), "day")
    spent = ledger.totals(lambda e: e.tags.get("tenant") == "日本🚚").cost
    assert spent is not None and 0 < spent <= Decimal("0.0001")
    # Another tenant has a budget of its own.
    assert call(app, chat(ORDER, tenant="globex"))[0].status_code == 200


# -- bad input -------------------------------------------------------------------------------

BAD = [
    ({"headers": {}}, 400, "missing_tenant"),
    ({"headers": {"X-Tenant": b"\xff\xfe"}}, 400, "bad_tenant"),
    # A lone surrogate cannot be UTF-8: its encoded bytes are refused as not UTF-8.
    ({"headers": {"X-Tenant": b"\xed\xa0\x80"}}, 400, "bad_tenant"),
    ({"headers": {"X-Tenant": "x" * 300}}, 400, "bad_tenant"),
    ({"content": b"{not json", "ctype": "application/json"}, 400, "bad_json"),
    ({"content": b"\xff{}", "ctype": "application/json"}, 400, "bad_json"),
    ({"content": b"hi", "ctype": "text/plain"}, 415, "unsupported_media_type"),
    ({"json": ["hi"]}, 422, "invalid_body"),
    ({"json": {"text": "hi"}}, 422, "invalid_body"),
    ({"json": {"message": "hi", "user": "bob"}}, 422, "invalid_body"),
    ({"json": {"message": "   "}}, 422, "invalid_body"),
    ({"json": {"message": 7}}, 422, "invalid_body"),
    ({"json": {"message": "x" * 5000}}, 422, "message_too_long"),
    ({"content": b'{"message": "hi \\ud800"}', "ctype": "application/json"}, 422, "invalid_body"),
    ({"json": {"message": "hi\x00"}}, 422, "invalid_body"),
    ({"json": {"message": "hi", "conversation_id": "c" * 129}}, 422, "invalid_body"),
    ({"json": {"message": "hi", "conversation_id": 5}}, 422, "invalid_body"),
    ({"content": b'{"message": "' + b"x" * 20_000 + b'"}', "ctype": "application/json"}, 413,
     "body_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("request_kwargs", "status", "code"), BAD)
@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_bad_input_is_refused_with_what_was_wrong_and_spends_nothing(
    request_kwargs: dict[str, Any], status: int, code: str, path: str
) -> None:
    ledger = Ledger()
    app = create_app(make_bot(), ledger)
    kwargs = dict(request_kwargs)
    headers = kwargs.pop("headers", {"X-Tenant": "acme"})
    if "ctype" in kwargs:
        headers = {**headers, "content-type": kwargs.pop("ctype")}
    if "json" not in kwargs and "content" not in kwargs:
        kwargs["json"] = {"message": "hi"}
    (response,) = call(app, ("POST", path, {**kwargs, "headers": headers}))
    assert response.status_code == status
    body = response.json()
    assert body["error"] == code and len(body["message"]) > 10
    assert len(ledger) == 0


def test_unknown_routes_and_methods_answer_json() -> None:
    app = create_app(make_bot(), Ledger())
    missing, wrong = call(app, ("GET", "/v2/chat", {}), ("GET", "/v1/chat", {}))
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")


def test_tenant_allow_list_and_default_tenant() -> None:
    ledger = Ledger()
    app = create_app(make_bot(), ledger, tenants={"acme"}, default_tenant="acme")
    plain = ("POST", "/v1/chat", {"json": {"message": "hi"}})
    ok, stranger = call(app, plain, chat("hi", tenant="globex"))
    assert ok.status_code == 200
    assert (stranger.status_code, stranger.json()["error"]) == (403, "unknown_tenant")
    assert {e.tags["tenant"] for e in ledger} == {"acme"}


# -- conversations ---------------------------------------------------------------------------


def test_a_conversation_belongs_to_its_tenant() -> None:
    # Kept per tenant, as in the ledger: globex's "shared-id" is a conversation of its own, and
    # neither tenant's turns reach the other's.
    asked = Asked()
    app = create_app(make_bot(asked), Ledger())
    first, other, again = call(
        app,
        chat("hi", tenant="acme", conversation_id="shared-id"),
        chat(ORDER, tenant="globex", conversation_id="shared-id"),
        chat(ORDER, tenant="acme", conversation_id="shared-id"),
    )
    assert [r.status_code for r in (first, other, again)] == [200, 200, 200]
    assert (other.json()["turn"], again.json()["turn"]) == (0, 1)
    assert [[t.text for t in p.history] for p in asked.prompts] == [
        [],
        ["hi", "Hello! How can I help?"],
    ]


def test_another_tenant_cannot_take_over_a_conversation_after_a_restart() -> None:
    ledger = Ledger()
    (started,) = call(create_app(make_bot(), ledger), chat("hi", conversation_id="c1"))
    restarted = create_app(make_bot(), ledger)
    other, own = call(
        restarted,
        chat("hi", tenant="globex", conversation_id="c1"),
        chat(ORDER, tenant="acme", conversation_id="c1"),
    )
    assert (started.status_code, other.status_code) == (200, 200)
    # acme's own conversation is not globex's: it expired with the server (no text kept).
    assert (own.status_code, own.json()["error"]) == (409, "conversation_expired")


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    app = create_app(make_bot(), Ledger())
    step = ("POST", "/v1/chat", {"content": "[" * 5000, "headers": {"X-Tenant": "acme",
            "Content-Type": "application/json"}})  # fmt: skip
    (reply,) = call(app, step)
    assert (reply.status_code, reply.json()["error"]) == (400, "bad_json")


def test_without_kept_text_an_evicted_conversation_cannot_go_on(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    app = create_app(make_bot(), ledger, max_conversations=2)
    (a,) = call(app, chat("hi", conversation_id="a"))
    call(app, chat("hi", conversation_id="b"), chat("hi", conversation_id="c"))  # a falls out
    (again,) = call(app, chat("hi", conversation_id="a"))
    assert a.status_code == 200
    assert (again.status_code, again.json()["error"]) == (409, "conversation_expired")
    assert "start a new conversation" in again.json()["message"]
    # A restarted server (a new app on the same ledger) cannot go on with it either.
    (restarted,) = call(create_app(make_bot(), ledger), chat("hi", conversation_id="b"))
    assert restarted.status_code == 409


def test_with_kept_text_a_restart_goes_on_where_the_conversation_was(
    make_ledger: Callable[..., Ledger],
) -> None:
    ledger = make_ledger()
    app = create_app(make_bot(), ledger, keep_text=True)
    (hi,) = call(app, chat("hi", conversation_id="chat-1"))
    assert hi.status_code == 200
    asked = Asked()
    restarted = create_app(make_bot(asked), ledger, keep_text=True)
    (order,) = call(restarted, chat(ORDER, conversation_id="chat-1"))
    assert (order.status_code, order.json()["turn"]) == (200, 1)
    assert [t.text for t in asked.prompts[0].history] == ["hi", "Hello! How can I help?"]
    # Another tenant cannot load it from the ledger either: conversations are kept per tenant,
    # so globex's "chat-1" is a conversation of its own, with none of acme's turns.
    seen = Asked()
    third = create_app(make_bot(seen), ledger, keep_text=True)
    (other,) = call(third, chat(ORDER, tenant="globex", conversation_id="chat-1"))
    assert (other.status_code, other.json()["turn"]) == (200, 0)
    assert [t.text for t in seen.prompts[0].history] == []


def test_a_conversation_has_at_most_max_turns() -> None:
    app = create_app(make_bot(), Ledger(), max_turns=2)
    answers = call(app, *[chat("hi", conversation_id="long") for _ in range(3)])
    assert [r.status_code for r in answers] == [200, 200, 409]
    assert answers[2].json()["error"] == "conversation_full"


def test_turns_of_one_conversation_sent_at_once_are_answered_in_order() -> None:
    asked = Asked()
    app = create_app(make_bot(asked, latency_s=0.05), Ledger())

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            _, path, kwargs = chat(ORDER, conversation_id="busy")
            return await asyncio.gather(*[client.post(path, **kwargs) for _ in range(5)])

    answers = asyncio.run(go())
    assert sorted(r.json()["turn"] for r in answers) == [0, 1, 2, 3, 4]
    # Each call saw every earlier turn (up to History's window of four), none missing.
    assert [len(p.history) for p in asked.prompts] == [0, 2, 4, 6, 8]


# -- metrics ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
    """The exposition format read back (labels unescaped), every line checked."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        float(value)
        assert any(name == t or name.startswith(t + "_") for t in types), name
        pairs = []
        for key, raw in _LABEL.findall(labels or ""):
            pairs.append((key, re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), raw)))
        assert ",".join(f'{k}="{v}"' for k, v in _LABEL.findall(labels or "")) == (labels or "")
        out[name, tuple(pairs)] = value
    assert text.endswith("\n")
    return out


def test_metrics_agree_with_the_ledger(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    app = create_app(make_bot(), ledger)
    tenant = 'quote"back\\slash'
    steps = [chat("hi", tenant=tenant), chat(ORDER, tenant=tenant), stream(ORDER), stream("hi")]
    *_, scraped = call(app, *steps, ("GET", "/metrics", {}))
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = parse_metrics(scraped.text)
    for stage, totals in ledger.by_stage().items():
        labels = (("stage", stage),)
        assert int(metrics["chainkit_calls_total", labels]) == totals.calls
        assert Decimal(metrics["chainkit_spend_usd_total", labels]) == totals.cost
        assert Decimal(metrics["chainkit_avoided_usd_total", labels]) == totals.avoided_cost
    spent = ledger.by_tag("tenant")[tenant].cost
    assert Decimal(metrics["chainkit_spend_by_tenant_usd_total", (("tenant", tenant),)]) == spent
    # Two requests per endpoint, one canned and one generated.
    for endpoint in ("chat", "stream"):
        for path in ("canned", "generate"):
            labels = (("endpoint", endpoint), ("path", path))
            assert metrics["chainkit_request_duration_seconds_count", labels] == "1"
            inf = (*labels, ("le", "+Inf"))
            assert metrics["chainkit_request_duration_seconds_bucket", inf] == "1"
    generate_count = metrics[
        "chainkit_stage_latency_seconds_count", (("outcome", "answered"), ("stage", "generate"))
    ]
    assert generate_count == "2"


def test_metrics_leave_out_unknown_spend_and_escape_every_label() -> None:
    ledger = Ledger()
    ledger.record(Entry("r1", "generate", "failed", cost=None, bound=Decimal("0.25"),
                        tags={"tenant": "line\nbreak"}))  # fmt: skip
    ledger.record(Entry("r2", "generate", "answered", cost=Decimal("0.5")))
    metrics = parse_metrics("\n".join(ledger_metrics(ledger)) + "\n")
    labels = (("stage", "generate"),)
    assert ("chainkit_spend_usd_total", labels) not in metrics  # unknown, never 0
    assert Decimal(metrics["chainkit_spend_upper_bound_usd_total", labels]) == Decimal("0.75")
    assert metrics["chainkit_unknown_cost_calls_total", labels] == "1"
    assert metrics["chainkit_calls_by_tenant_total", (("tenant", "line\nbreak"),)] == "1"


def test_metrics_of_an_empty_ledger_are_well_formed() -> None:
    (scraped,) = call(create_app(make_bot(), Ledger()), ("GET", "/metrics", {}))
    metrics = parse_metrics(scraped.text)
    assert metrics[("chainkit_in_flight_requests", ())] == "0"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escaped_labels_read_back_as_they_were(value: str) -> None:
    escaped = escape_label(value)
    assert "\n" not in escaped
    assert re.fullmatch(r'(?:[^"\\]|\\.)*', escaped, flags=re.S)
    assert re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), escaped, flags=re.S) == value


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram("t_seconds", "test", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 5.0):
        h.observe(value, stage="x")
    metrics = parse_metrics("\n".join(h.lines()) + "\n")
    got = [
        metrics["t_seconds_bucket", (("stage", "x"), ("le", le))] for le in ("0.1", "1.0", "+Inf")
    ]
    assert got == ["1", "3", "4"]
    assert float(metrics["t_seconds_sum", (("stage", "x"),)]) == pytest.approx(6.05)


def test_healthz() -> None:
    (health,) = call(create_app(make_bot(), Ledger()), ("GET", "/healthz", {}))
    assert health.json()["status"] == "ok" and health.json()["pipeline"] == "test-bot"


# -- a real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``chainkit serve`` (the offline support bot, 3 s per call) on loopback, then stopped."""
    port, db = free_port(), tmp_path / "served.db"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chainkit.cli", "serve", "--ledger", str(db), "--port",
             str(port), "--latency", "3", "--no-access-log", "--replies", str(tmp_path / "r")],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # Start-up precomputes three policy replies at 3 s each.
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chainkit serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, db
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert status == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_real_server_streams_and_a_client_that_leaves_closes_the_model_stream(
    server: tuple[str, Path],
) -> None:
    url, db = server
    headers = {"X-Tenant": "日本🚚".encode()}
    with httpx.Client(base_url=url, timeout=30) as client:
        hi = client.post("/v1/chat", json={"message": "hello"}, headers=headers)
        assert (hi.status_code, hi.json()["stage"]) == (200, "canned")
        started = time.monotonic()
        # A client reads the first words of a generated answer, then goes away.
        with client.stream(
            "POST", "/v1/chat/stream", json={"message": ORDER}, headers=headers
        ) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["stage"] == "generate"
        left_after = time.monotonic() - started
        assert left_after < 3  # it left before the model's 3 s were up
        ledger = SQLiteLedger(db, read_only=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                found = [e for e in ledger.iter_entries() if e.request_id == unquote(request_id)]
                if any(e.stage == "generate" for e in found) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            ledger.close()
        generate = [e for e in found if e.stage == "generate"]
        assert len(generate) == 1, found
        assert generate[0].outcome == "failed" and "cancelled" in generate[0].flags
        # No usage had come: counted at the call's upper bound, marked estimated.
        assert generate[0].cost == generate[0].bound and generate[0].estimated
        assert "after 1 pieces" in generate[0].note
        # The server goes on serving, and a full stream ends with the answer event.
        full = client.post("/v1/chat/stream", json={"message": "hi"}, headers=headers)
        assert [k for k, _ in events(full.text)] == ["delta", "answer"]
        metrics = parse_metrics(client.get("/metrics").text)
        assert metrics["chainkit_in_flight_requests", ()] == "0"


# -- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--bot", "no_such_module_here:make"], "cannot import 'no_such_module_here'"),
        (["--bot", "recipes.serve"], "is not module:function"),
        (["--bot", "recipes.serve:nothing"], "has no function 'nothing'"),
        (["--port", "70000"], "--port 70000 is not a port"),
        (["--threads", "0"], "--threads 0 must be 1 or more"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chainkit.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chainkit: ") and says in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["acme", "acme=five", "=5", "acme=-1", "acme=nan"])
def test_serve_budget_option_wants_tenant_and_amount(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chainkit.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--budget", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --budget" in err and ("TENANT=USD" in err or "amount of USD" in err)


def test_the_readme_serve_command_parses() -> None:
    import argparse

    from chainkit.serve.command import add_arguments

    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("chainkit serve "))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(line.split("#")[0].split()[2:])
    assert (args.ledger, args.port, args.tenant_limit) == ("serve.db", 8000, Decimal("5.00"))


def test_service_limits_are_checked_where_they_are_given() -> None:
    from chainkit import ConfigError

    with pytest.raises(ConfigError, match="float"):
        create_app(make_bot(), Ledger(), tenant_limit=0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_turns must be a positive int"):
        create_app(make_bot(), Ledger(), max_turns=0)
    with pytest.raises(ConfigError, match="tenant header"):
        create_app(make_bot(), Ledger(), tenant_header="")


def test_a_body_that_does_not_arrive_in_time_is_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    import chainkit.serve.app as served

    monkeypatch.setattr(served, "BODY_TIMEOUT_S", 0.2)

    async def slow() -> Any:
        yield b'{"mess'
        await asyncio.sleep(5)  # a client that stops sending
        yield b'age": "hi"}'

    app = create_app(make_bot(), Ledger())
    step = ("POST", "/v1/chat", {"content": slow(), "headers": {"X-Tenant": "acme",
            "Content-Type": "application/json"}})  # fmt: skip
    (reply,) = call(app, step)
    assert (reply.status_code, reply.json()["error"]) == (408, "body_timeout")


def test_the_serve_command_takes_a_tenant_allow_list() -> None:
    import argparse

    from chainkit.serve.command import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--tenant", "acme", "--tenant", "globex"])
    assert args.tenants == ["acme", "globex"]
    app = create_app(make_bot(), Ledger(), tenants=args.tenants)
    ok, stranger = call(app, chat("hi"), chat("hi", tenant="initech"))
    assert (ok.status_code, stranger.status_code) == (200, 403)
