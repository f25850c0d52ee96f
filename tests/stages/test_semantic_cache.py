from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import (
    AnswerStore,
    Budget,
    Canned,
    Catalogue,
    ConfigError,
    Conversation,
    FactRule,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Lookup,
    Pipeline,
    Request,
    Result,
    ScriptedModel,
    SemanticCache,
    SQLiteLedger,
    Usage,
)
from chainkit.pipeline import Answered, TextDelta
from chainkit.providers.embeddings import (
    TITAN_EMBED_V2,
    BedrockEmbedder,
    HashedEmbedder,
    decode_vector,
    encode_vector,
)
from chainkit.providers.model import Chunk, Completion, Prompt
from chainkit.stages.semantic_cache import Match

SEED = Catalogue.load("seed-2024")
BEDROCK = Catalogue.load("bedrock-2026-11-29")
ROOT = Path(__file__).resolve().parents[2]
INTENTS = {"delivery_options", "check_refund_policy"}


def responder(reply: str = "We ship by courier in 2 days.") -> ScriptedModel:
    return ScriptedModel(model_id="generic.responder", reply=reply, usage=Usage(100, 50))


def cache(
    store: AnswerStore, model: ScriptedModel, *, threshold: float = 0.8, **kwargs: Any
) -> SemanticCache:
    return SemanticCache(
        store=store,
        embedder=kwargs.pop("embedder", HashedEmbedder()),
        then=Generate(model=model, max_tokens=200, catalogue=SEED),
        intents=kwargs.pop("intents", INTENTS),
        threshold=threshold,
        **kwargs,
    )


def ask(
    text: str, intent: str = "delivery_options", tenant: str | None = "acme", **kw: Any
) -> Request:
    tags = {} if tenant is None else {"tenant": tenant}
    return Request(text, intent=intent, tags=tags, **kw)


@pytest.fixture
def store() -> Iterator[AnswerStore]:
    s = AnswerStore()
    yield s
    s.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        yield Ledger()
    elif request.param == "sqlite":
        with SQLiteLedger(tmp_path / "ledger.db") as ledger:
            yield ledger
    else:
        from chainkit import PostgresLedger

        dsn = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")
        with PostgresLedger(dsn, schema=schema) as ledger:
            yield ledger


def test_a_miss_asks_then_stores_and_a_paraphrase_hits_with_the_avoided_cost(
    store: AnswerStore, any_ledger: Ledger
) -> None:
    model = responder()
    stage = cache(store, model)

    first = stage.run(ask("What delivery options do you have?", id="r1"), any_ledger)
    second = stage.run(ask("what delivery options do you offer", id="r2"), any_ledger)

    assert isinstance(first, Result) and first.stage == "generate"
    assert isinstance(second, Result) and second.stage == "semantic_cache"
    assert second.text == "We ship by courier in 2 days."
    assert [p.user for p in model.prompts] == ["What delivery options do you have?"]
    entries = [(e.request_id, e.stage, e.outcome, e.cost, e.avoided_cost) for e in any_ledger]
    # Generate on seed-2024 prices generic.responder; the avoided cost is its estimate for r2.
    avoided = stage.estimate_cost(ask("what delivery options do you offer"))
    assert avoided == SEED.cost("generic.responder", Usage(100, 50)) > 0
    called = SEED.cost("generic.responder", Usage(100, 50))
    assert entries == [
        ("r1", "semantic_cache", "passed", Decimal(0), Decimal(0)),
        ("r1", "generate", "answered", called, Decimal(0)),
        ("r2", "semantic_cache", "answered", Decimal(0), avoided),
    ]
    assert len(store) == 1


def test_tenants_never_see_each_others_answers(store: AnswerStore) -> None:
    model = responder()
    stage = cache(store, model)
    ledger = Ledger()
    text = "What delivery options do you have?"

    stage.run(ask(text, tenant="acme"), ledger)
    globex = stage.run(ask(text, tenant="globex"), ledger)
    untagged = stage.run(ask(text, tenant=None), ledger)
    acme = stage.run(ask(text, tenant="acme"), ledger)

    assert isinstance(globex, Result) and globex.stage == "generate"
    assert isinstance(untagged, Result) and untagged.stage == "generate"
    assert isinstance(acme, Result) and acme.stage == "semantic_cache"
    assert len(model.prompts) == 3
    assert len(store) == 3  # one answer per scope


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tenants=st.lists(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8),
        min_size=2,
        max_size=4,
        unique=True,
    ),
    text=st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1
    ).filter(lambda t: any(c.isalnum() for c in t)),
)
def test_property_no_answer_crosses_tenants(tenants: list[str], text: str) -> None:
    store = AnswerStore()
    answers = {t: f"answer of {t!r}" for t in tenants}
    stage = SemanticCache(
        store=store,
        embedder=HashedEmbedder(),
        then=Generate(
            model=ScriptedModel(
                model_id="generic.responder",
                reply=lambda p: answers[current[0]],
                usage=Usage(10, 5),
            ),
            catalogue=SEED,
        ),
        intents={"faq"},
        threshold=-1.0,  # any stored answer of the partition would do: only scope may stop it
    )
    current = [""]
    ledger = Ledger()
    for tenant in [*tenants, *tenants]:  # each tenant asks twice, the same text
        current[0] = tenant
        out = stage.run(Request(text, intent="faq", tags={"tenant": tenant}), ledger)
        assert isinstance(out, Result)
        assert out.text == answers[tenant]
    # The second round was answered from each tenant's own answer, the first by the model.
    assert [e.stage for e in ledger if e.stage != "semantic_cache"] == ["generate"] * len(tenants)
    store.close()


def test_answers_are_scoped_by_intent(store: AnswerStore) -> None:
    model = responder()
    stage = cache(store, model, threshold=0.0)
    ledger = Ledger()

    stage.run(ask("tell me about it", intent="delivery_options"), ledger)
    other = stage.run(ask("tell me about it", intent="check_refund_policy"), ledger)

    assert isinstance(other, Result) and other.stage == "generate"
    assert len(model.prompts) == 2


@pytest.mark.parametrize(
    "request_",
    [
        Request("where is my order?", intent="track_order", tags={"tenant": "acme"}),
        Request("delivery?", tags={"tenant": "acme"}),
        Request("delivery?", intent="delivery_options", facts=("Order 1: shipped",)),
        Request("delivery?", intent="delivery_options", slots={"order": "1234"}),
        Request("sum it up", intent="delivery_options", document="a customer's letter"),
    ],
    ids=["undeclared-intent", "no-intent", "facts", "slots", "document"],
)
def test_customer_dependent_requests_are_neither_embedded_nor_stored(request_: Request) -> None:
    calls: list[str] = []

    class Counting:
        dimension = 512
        model_id = "test.counting"

        def embed(self, text: str) -> Any:
            calls.append(text)
            return HashedEmbedder().embed(text)

    store = AnswerStore()
    model = responder()
    stage = cache(store, model, embedder=Counting(), threshold=-1.0)
    ledger = Ledger()
    for _ in range(2):
        out = stage.run(request_, ledger)
        assert isinstance(out, Result) and out.stage == "generate"
    assert calls == []
    assert len(store) == 0
    assert len(model.prompts) == 2


@dataclass(frozen=True)
class Fixed:
    """A local embedder that maps known texts to given vectors (to pin similarities exactly)."""

    vectors: dict[str, list[float]]
    dimension: int = 2
    model_id: str = "test.fixed"

    def embed(self, text: str) -> Any:
        return np.array(self.vectors[text], dtype=np.float32)


def test_threshold_is_inclusive_at_the_edge() -> None:
    # cos = 0.5 exactly in float32: [1, 0] . [0.5, 0.75 ** 0.5].
    embedder = Fixed({"stored": [1.0, 0.0], "asked": [0.5, 0.75**0.5]})
    for threshold, hits in [(0.5, True), (float(np.nextafter(np.float32(0.5), 1)), False)]:
        store = AnswerStore()
        stage = cache(store, responder(), threshold=threshold, embedder=embedder)
        stage.run(ask("stored"), Ledger())
        out = stage.run(ask("asked"), Ledger())
        assert isinstance(out, Result)
        assert (out.stage == "semantic_cache") is hits, threshold


def test_a_zero_vector_matches_nothing() -> None:
    embedder = Fixed({"🚚🚚": [0.0, 0.0]})
    store = AnswerStore()
    model = responder()
    stage = cache(store, model, threshold=-1.0, embedder=embedder)
    for _ in range(2):
        assert stage.run(ask("🚚🚚"), Ledger()).stage == "generate"  # type: ignore[union-attr]
    assert len(store) == 0


def test_japanese_emoji_and_surrogates() -> None:
    embedder = HashedEmbedder()
    store = AnswerStore()
    model = responder("配送は2日です 🚚")
    stage = cache(store, model, threshold=0.9)
    ledger = Ledger()
    stage.run(ask("配送 オプション 🚚 は\uff1f", tenant="東京"), ledger)
    out = stage.run(ask("配送 オプション 🚚 は\uff1f", tenant="東京"), ledger)
    assert isinstance(out, Result) and out.text == "配送は2日です 🚚"
    assert out.stage == "semantic_cache"
    # A lone surrogate cannot reach a Request, but the embedder itself takes any str.
    with pytest.raises(ConfigError, match="surrogate"):
        Request("bad \ud800", intent="delivery_options")
    vector = embedder.embed("bad \ud800 text")
    assert vector.shape == (512,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-6
    # An answer holding a lone surrogate (from a stage that does not repair it) is not stored.

    @dataclass(frozen=True)
    class Broken:
        name: str = "broken"

        def run(self, request: Request, ledger: Ledger) -> Result:
            return Result(request, "half \udc80", self.name)

    broken = SemanticCache(
        store=store, embedder=embedder, then=Broken(), intents={"faq"}, threshold=0.5
    )
    before = len(store)
    assert broken.run(Request("anything", intent="faq"), Ledger()).text == "half \udc80"  # type: ignore[union-attr]
    assert len(store) == before


def test_the_pipeline_binds_the_wrapped_stage_as_the_avoided_cost_of_earlier_stages() -> None:
    model = responder()
    store = AnswerStore()
    bot = Pipeline(
        [
            IntentScan(
                classifier=KeywordClassifier({"greeting": ["hi"], "delivery_options": ["ship"]})
            ),
            Canned(replies={"greeting": "Hello!"}),
            cache(store, model),
        ]
    )
    ledger = Ledger()
    bot.run(Request("hi", id="g"), ledger)
    bot.run(Request("do you ship abroad", id="a"), ledger)
    out = bot.run(Request("do you ship abroad?", id="b"), ledger)
    assert out.stage == "semantic_cache"
    canned = next(e for e in ledger if e.stage == "canned" and e.outcome == "answered")
    assert canned.avoided_cost == SEED.cost("generic.responder", Usage(100, 50))
    hit = next(e for e in ledger if e.request_id == "b" and e.outcome == "answered")
    assert (hit.stage, hit.avoided_cost) == ("semantic_cache", canned.avoided_cost)


def test_configuration_errors_say_what_to_do(store: AnswerStore) -> None:
    model = responder()
    with pytest.raises(ConfigError, match="declares no intents"):
        cache(store, model, intents=set())
    with pytest.raises(ConfigError, match="collection of intent names"):
        cache(store, model, intents="delivery_options")
    with pytest.raises(ConfigError, match="cosine similarity"):
        cache(store, model, threshold=1.5)
    with pytest.raises(ConfigError, match="embed"):
        cache(store, model, embedder=object())
    with pytest.raises(ConfigError, match="retention"):
        AnswerStore(retention=timedelta(0))
    with pytest.raises(ConfigError, match="non-empty dict"):
        store.nearest(np.ones(2), intent="x", scope={}, embedder="e")
    with pytest.raises(ConfigError, match="before="):
        store.purge()


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="cannot be opened as an answer store"):
        AnswerStore(path)


def test_purge_by_tenant_and_by_age(tmp_path: Path) -> None:
    store = AnswerStore(tmp_path / "answers.db")
    v = np.array([1.0, 0.0], dtype=np.float32)
    for tenant in ("acme", "globex"):
        store.add(v, f"{tenant}'s", intent="faq", scope={"tenant": tenant}, embedder="e")
    assert store.nearest(v, intent="faq", scope={"tenant": "acme"}, embedder="e") is not None

    assert store.purge(scope={"tenant": "acme"}) == 1
    assert store.nearest(v, intent="faq", scope={"tenant": "acme"}, embedder="e") is None
    found = store.nearest(v, intent="faq", scope={"tenant": "globex"}, embedder="e")
    assert found is not None and found.answer == "globex's"

    assert store.purge(before=datetime.now(UTC) - timedelta(days=1)) == 0
    assert store.purge(before=datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert len(store) == 0
    store.close()


def test_retention_deletes_old_answers_when_the_store_opens(tmp_path: Path) -> None:
    path = tmp_path / "answers.db"
    store = AnswerStore(path)
    store.add(np.ones(2), "old", intent="faq", scope=None, embedder="e")
    store._db.execute("UPDATE answers SET created = created - 86400 * 40")
    store.close()
    reopened = AnswerStore(path, retention=timedelta(days=30))
    assert len(reopened) == 0
    reopened.close()


_CHILD = """
import sys
import numpy as np
from chainkit import AnswerStore
store = AnswerStore(sys.argv[1])
if sys.argv[2] == "add":
    store.add(np.array([0.0, 1.0]), "from the child 🚚", intent="faq", scope={"tenant": "acme"},
              embedder="e")
else:
    print(store.purge(scope={"tenant": "acme"}))
store.close()
"""


def test_processes_sharing_a_file_see_each_others_answers_and_purges(tmp_path: Path) -> None:
    path = tmp_path / "answers.db"
    store = AnswerStore(path)
    v = np.array([0.0, 1.0], dtype=np.float32)
    scope = {"tenant": "acme"}
    assert store.nearest(v, intent="faq", scope=scope, embedder="e") is None  # partition cached

    def child(action: str) -> None:
        subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), action], check=True, cwd=ROOT, timeout=60
        )

    child("add")
    found = store.nearest(v, intent="faq", scope=scope, embedder="e")
    assert found is not None and found.answer == "from the child 🚚"
    assert found.similarity == pytest.approx(1.0)
    child("purge")
    assert store.nearest(v, intent="faq", scope=scope, embedder="e") is None
    store.close()


# -- a paid embedder: Titan Text Embeddings v2 on Bedrock, through botocore's Stubber ---------


def titan_reply(vector: list[float], tokens: int) -> dict[str, Any]:
    data = json.dumps({"embedding": vector, "inputTextTokenCount": tokens}).encode()
    return {"body": StreamingBody(io.BytesIO(data), len(data)), "contentType": "application/json"}


@pytest.fixture
def titan() -> Iterator[tuple[BedrockEmbedder, Stubber]]:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield BedrockEmbedder(client=client, dimension=256, max_attempts=2), stubber
        stubber.assert_no_pending_responses()


def expect(stubber: Stubber, text: str, vector: list[float], tokens: int) -> None:
    body = json.dumps({"inputText": text, "dimensions": 256, "normalize": True})
    stubber.add_response(
        "invoke_model",
        titan_reply(vector, tokens),
        {
            "modelId": TITAN_EMBED_V2,
            "body": body,
            "contentType": "application/json",
            "accept": "application/json",
        },
    )


def test_paid_embeddings_are_priced_per_token_in_their_own_entries(
    titan: tuple[BedrockEmbedder, Stubber],
) -> None:
    embedder, stubber = titan
    rng = np.random.default_rng(3)
    base = rng.standard_normal(256)
    near = base + 0.01 * rng.standard_normal(256)
    expect(stubber, "What delivery options?", base.tolist(), 6)
    expect(stubber, "what delivery options 日本", near.tolist(), 11)
    model = responder()
    store = AnswerStore()
    stage = cache(store, model, embedder=embedder, threshold=0.95, catalogue=BEDROCK)
    ledger = Ledger()

    stage.run(ask("What delivery options?", id="r1"), ledger)
    out = stage.run(ask("what delivery options 日本", id="r2"), ledger)

    assert isinstance(out, Result) and out.stage == "semantic_cache"
    embeds = [e for e in ledger if e.stage == "semantic_cache.embed"]
    assert [(e.request_id, e.model, e.usage, e.outcome) for e in embeds] == [
        ("r1", TITAN_EMBED_V2, Usage(6, 0), "passed"),
        ("r2", TITAN_EMBED_V2, Usage(11, 0), "passed"),
    ]
    # $0.02 per million input tokens (bedrock-2026-11-29, from the AWS Price List API).
    assert [e.cost for e in embeds] == [Decimal("0.00000012"), Decimal("0.00000022")]
    assert all(e.tags == {"tenant": "acme"} for e in embeds)


def test_a_malformed_or_failed_embedding_is_recorded_and_the_request_still_answered(
    titan: tuple[BedrockEmbedder, Stubber],
) -> None:
    embedder, stubber = titan
    stubber.add_response("invoke_model", titan_reply([0.1, 0.2], 5))  # 2 floats, not 256
    stubber.add_client_error(
        "invoke_model", "ThrottlingException", "slow down", http_status_code=429
    )
    stubber.add_client_error(
        "invoke_model", "ThrottlingException", "slow down", http_status_code=429
    )
    model = responder()
    store = AnswerStore()
    stage = cache(store, model, embedder=embedder, catalogue=BEDROCK)
    ledger = Ledger()

    first = stage.run(ask("delivery?", id="bad"), ledger)
    second = stage.run(ask("delivery?", id="slow"), ledger)

    assert isinstance(first, Result) and first.stage == "generate"
    assert isinstance(second, Result) and second.stage == "generate"
    embeds = [
        (e.request_id, e.outcome, e.cost, e.attempts) for e in ledger if e.model == TITAN_EMBED_V2
    ]
    # Malformed: billed, cost unknown (None, never $0). Throttled twice: not billed, $0.
    assert embeds == [("bad", "failed", None, 1), ("slow", "failed", Decimal(0), 2)]
    assert len(store) == 0


def test_a_budget_holds_the_embedding_call_before_it_is_sent(
    titan: tuple[BedrockEmbedder, Stubber],
) -> None:
    from chainkit import BudgetExceeded

    embedder, _ = titan  # no response queued: a call sent would fail the stubber
    ledger = Ledger(budgets=[Budget("0.0000001", period=None)])
    stage = cache(AnswerStore(), responder(), embedder=embedder, catalogue=BEDROCK)
    with pytest.raises(BudgetExceeded):
        stage.run(ask("x" * 10_000), ledger)
    [entry] = [e for e in ledger if e.stage == "semantic_cache.embed"]
    assert (entry.outcome, entry.cost) == ("refused", Decimal(0))


def test_vectors_pack_and_unpack() -> None:
    v = np.array([3.0, 4.0], dtype=np.float32)
    assert decode_vector(encode_vector(v), 2).tolist() == [0.6000000238418579, 0.800000011920929]
    for bad in ("not base64!", encode_vector(np.ones(3)), encode_vector(np.array([np.nan, 1.0]))):
        with pytest.raises(ValueError):
            decode_vector(bad, 2)


def test_hashed_embeddings_are_the_same_in_another_process() -> None:
    text = "Où est mon colis ? 配送 🚚"
    here = HashedEmbedder().embed(text)
    code = (
        "import sys; from chainkit.providers.embeddings import HashedEmbedder; "
        "sys.stdout.write(HashedEmbedder().embed(sys.argv[1]).tobytes().hex())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code, text], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert bytes.fromhex(there) == here.tobytes()


def test_idf_weights_change_the_space_and_its_name() -> None:
    texts = ["where is my order", "where is my refund", "cancel my order", "my account"]
    plain = HashedEmbedder()
    fitted = plain.fit(texts)
    assert fitted.model_id.startswith("local.hashed-ngrams+idf-")
    assert fitted.model_id != plain.model_id
    assert plain.fit(texts).model_id == fitted.model_id  # the same fit, the same space
    assert plain.fit([*texts, "refund"]).model_id != fitted.model_id
    assert fitted.fit(texts).model_id == fitted.model_id  # refitting names the base once
    # "my", shared by every text, weighs less once fitted: the two orders' questions differ more.
    a, b = "where is my order", "where is my refund"
    assert float(fitted.embed(a) @ fitted.embed(b)) < float(plain.embed(a) @ plain.embed(b))
    with pytest.raises(ConfigError, match="at least one text"):
        plain.fit([])
    # A store keeps each space apart: a plain vector never meets a fitted one.
    store = AnswerStore()
    store.add(plain.embed(a), "plain", intent="faq", scope=None, embedder=plain.model_id)
    assert (
        store.nearest(fitted.embed(a), intent="faq", scope=None, embedder=fitted.model_id) is None
    )


def test_the_readme_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Semantic cache", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    assert capsys.readouterr().out == "generate\nsemantic_cache\n"
    assert (tmp_path / "answers.db").is_file()


def test_a_question_longer_than_the_paid_embedder_takes_goes_on_unembedded(
    titan: tuple[BedrockEmbedder, Stubber],
) -> None:
    embedder, _ = titan  # nothing queued: a call sent would fail the stubber
    model = responder()
    stage = cache(AnswerStore(), model, embedder=embedder, catalogue=BEDROCK)
    ledger = Ledger()
    out = stage.run(ask("word " * 8_000, id="long"), ledger)  # ~10,000 tokens > 8,192
    assert isinstance(out, Result) and out.stage == "generate"
    assert [(e.stage, e.outcome) for e in ledger] == [
        ("semantic_cache", "passed"),
        ("generate", "answered"),
    ]


# -- defects found by adversarial testing: each test failed before its fix ------------------


def remembering(prompts: list[Prompt]) -> ScriptedModel:
    """A model that answers from the conversation it is sent, as a real one would."""

    def reply(prompt: Prompt) -> str:
        prompts.append(prompt)
        context = " ".join(turn.text for turn in prompt.history)
        return f"About {prompt.user!r}, given: {context}"

    return ScriptedModel(model_id="generic.responder", reply=reply, usage=Usage(100, 50))


def test_answers_to_follow_up_turns_are_never_stored_nor_served_from_the_store(
    store: AnswerStore,
) -> None:
    prompts: list[Prompt] = []
    stage = SemanticCache(
        store=store,
        embedder=HashedEmbedder(),
        then=Generate(model=remembering(prompts), max_tokens=200, catalogue=SEED),
        intents=INTENTS,
    )
    ledger = Ledger()
    alice = Conversation("alice", tags={"tenant": "acme"})
    first = alice.request("My name is Alice Smith, I live at 1 Secret Lane 🏠", id="a/0")
    alice = alice.after(Result(first, "Noted, Alice.", "generate"))
    asked = dataclasses.replace(
        alice.request("Do you ship to Canada?", id="a/1"), intent="delivery_options"
    )
    out = stage.run(asked, ledger)
    assert isinstance(out, Result) and "Secret Lane" in out.text and out.stage == "generate"
    assert len(store) == 0  # built from Alice's history: never stored

    # Bob, same tenant, no conversation: asks the model, never gets Alice's answer.
    bob = stage.run(ask("do you ship to canada", id="b/0"), ledger)
    assert isinstance(bob, Result) and bob.stage == "generate" and "Secret" not in bob.text
    assert len(store) == 1

    # A follow-up that reads the same is not served Bob's stored answer: it means something else.
    carol = Conversation("carol", tags={"tenant": "acme"})
    carol = carol.after(
        Result(carol.request("Do you ship to Japan?", id="c/0"), "Yes.", "generate")
    )
    follow = dataclasses.replace(
        carol.request("do you ship to canada", id="c/1"), intent="delivery_options"
    )
    out = stage.run(follow, ledger)
    assert isinstance(out, Result) and out.stage == "generate" and "Japan" in out.text
    # A conversation's first turn has no history: it is cached like any request.
    dave = Conversation("dave", tags={"tenant": "acme"})
    first_turn = dataclasses.replace(
        dave.request("do you ship to canada?", id="d/0"), intent="delivery_options"
    )
    out = stage.run(first_turn, ledger)
    assert isinstance(out, Result) and out.stage == "semantic_cache"
    assert [p.user for p in prompts] == [
        "Do you ship to Canada?",
        "do you ship to canada",
        "do you ship to canada",
    ]
    assert [e.outcome for e in ledger if e.request_id == "c/1"] == ["passed", "answered"]


@dataclass(frozen=True)
class AddFacts:
    """A stage inside ``then`` that learns one customer's facts (as a lookup would)."""

    name: str = "add_facts"

    def run(self, request: Request, ledger: Ledger) -> Request:
        return dataclasses.replace(request, facts=("Customer Alice lives at 1 Secret Lane.",))


def test_a_then_that_looks_up_facts_is_refused_and_facts_gained_inside_then_are_not_stored(
    store: AnswerStore, tmp_path: Path
) -> None:
    sqlite3.connect(tmp_path / "customers.db").close()
    look = Lookup(
        tmp_path / "customers.db",
        [FactRule(slot="email", pattern=r"(\S+@\S+)", sql="select 1 where ? = ''", fact="x")],
    )
    model = responder("We ship to 1 Secret Lane.")
    generate = Generate(model=model, max_tokens=200, catalogue=SEED)
    for then in (look, Pipeline([look, generate]), Pipeline([Pipeline([look, generate])])):
        with pytest.raises(ConfigError, match="holds a Lookup stage"):
            SemanticCache(store=store, embedder=HashedEmbedder(), then=then, intents=INTENTS)

    stage = SemanticCache(
        store=store,
        embedder=HashedEmbedder(),
        then=Pipeline([AddFacts(), generate]),
        intents=INTENTS,
    )
    ledger = Ledger()
    for text in ("do you ship to my address?", "do you ship to my address"):
        out = stage.run(ask(text), ledger)
        assert isinstance(out, Result) and out.stage == "generate"
    assert len(store) == 0
    assert len(model.prompts) == 2


def test_a_locked_or_broken_store_never_fails_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.db"
    store = AnswerStore(path, timeout_s=0.05)
    model = responder()
    stage = cache(store, model)
    ledger = Ledger()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, a purge)
    with caplog.at_level(logging.WARNING, logger="chainkit"):
        out = stage.run(ask("What delivery options do you have?", id="r1"), ledger)
    locker.execute("ROLLBACK")
    locker.close()
    assert isinstance(out, Result) and out.text == "We ship by courier in 2 days."
    assert "storing an answer failed" in caplog.text
    assert [(e.stage, e.outcome) for e in ledger] == [
        ("semantic_cache", "passed"),
        ("generate", "answered"),
    ]
    assert len(store) == 0
    # A store that cannot be read at all is a miss: the model answers.
    store.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chainkit"):
        out = stage.run(ask("What delivery options do you have?", id="r2"), ledger)
    assert isinstance(out, Result) and out.stage == "generate"
    assert "reading the answer store failed" in caplog.text
    assert len(model.prompts) == 2
    with pytest.raises(ConfigError, match="timeout_s"):
        AnswerStore(timeout_s=-1)


def test_every_setting_of_the_embedder_has_its_own_partition_and_no_size_mismatch_crashes(
    store: AnswerStore,
) -> None:
    ledger = Ledger()
    runs = []
    for embedder in (
        HashedEmbedder(),
        HashedEmbedder(),
        HashedEmbedder(dimension=256),
        HashedEmbedder(word_weight=0.9),
    ):
        out = cache(store, responder(), embedder=embedder).run(ask("do you ship to canada"), ledger)
        assert isinstance(out, Result)
        runs.append(out.stage)
    assert runs == ["generate", "semantic_cache", "generate", "generate"]
    assert len(store) == 3
    spaces = {
        HashedEmbedder().space,
        HashedEmbedder(dimension=256).space,
        HashedEmbedder(word_weight=0.9).space,
        HashedEmbedder().fit(["a b", "c"]).space,
        HashedEmbedder(idf=HashedEmbedder().fit(["a b"]).idf).space,  # fitted, default id
    }
    assert len(spaces) == 5
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    titan = {BedrockEmbedder(client=client, dimension=d).space for d in (256, 512, 1024)}
    assert len(titan) == 3
    # The store itself never compares vectors of different sizes in one partition.
    two, three = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    store.add(two, "two", intent="faq", scope=None, embedder="same-id")
    assert store.nearest(two, intent="faq", scope=None, embedder="same-id") == Match("two", 1.0)
    store.add(three, "three", intent="faq", scope=None, embedder="same-id")
    assert store.nearest(three, intent="faq", scope=None, embedder="same-id") == Match("three", 1.0)
    assert store.nearest(two, intent="faq", scope=None, embedder="same-id") == Match("two", 1.0)
    assert store.nearest(np.ones(5), intent="faq", scope=None, embedder="same-id") is None


def test_purge_empties_the_wal_file_of_the_purged_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "answers.db"
    store = AnswerStore(path, timeout_s=0.05)
    other = AnswerStore(path)  # another worker keeps the store open
    v = np.ones(8, dtype=np.float32)
    for i in range(5):
        store.add(v, f"PURGEME {i} 東京", intent="faq", scope={"tenant": "acme"}, embedder="e")
    store.add(v, "KEEP", intent="faq", scope={"tenant": "globex"}, embedder="e")
    wal = Path(f"{path}-wal")
    assert b"PURGEME" in wal.read_bytes()
    assert store.purge(scope={"tenant": "acme"}) == 5
    assert b"PURGEME" not in wal.read_bytes() + path.read_bytes()
    assert other.nearest(v, intent="faq", scope={"tenant": "globex"}, embedder="e") is not None

    # A reader in the middle of a read keeps the -wal file: the purge says so, and succeeds.
    store.add(v, "PURGEME again", intent="faq", scope={"tenant": "acme"}, embedder="e")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM answers").fetchone()
    with caplog.at_level(logging.WARNING, logger="chainkit"):
        assert store.purge(scope={"tenant": "acme"}) == 1
    assert "may remain" in caplog.text
    reader.execute("COMMIT")
    reader.close()
    other.close()
    store.close()


@pytest.mark.parametrize("reply", ["", "   \n\t"])
def test_empty_or_blank_answers_are_never_stored(store: AnswerStore, reply: str) -> None:
    model = responder(reply)
    stage = cache(store, model, threshold=-1.0)
    ledger = Ledger()
    for text in ("Do you ship to Canada?", "Do you ship to Canada?"):
        out = stage.run(ask(text), ledger)
        assert isinstance(out, Result) and out.stage == "generate"
    assert len(store) == 0
    assert [e.avoided_cost for e in ledger if e.stage == "semantic_cache"] == [Decimal(0)] * 2


class Streaming:
    """A provider that streams its reply word by word, then reports its usage."""

    model_id = "generic.responder"
    region = None
    tier = "on_demand"
    estimates_locally = True

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.asked = 0

    def complete(self, prompt: Prompt, *, max_tokens: int, metadata: Any = None) -> Completion:
        self.asked += 1
        return Completion(self.reply, Usage(100, 50), self.model_id)

    def estimate(self, prompt: Prompt, *, max_tokens: int) -> Usage:
        return Usage(100, max_tokens)

    async def astream(
        self, prompt: Prompt, *, max_tokens: int, metadata: Any = None
    ) -> AsyncGenerator[Chunk, None]:
        self.asked += 1
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield Chunk(word + " ")
        yield Chunk(usage=Usage(100, 50), model_id=self.model_id)


def test_astream_streams_thens_deltas_on_a_miss_and_stores_the_answer_at_the_end(
    store: AnswerStore,
) -> None:
    model = Streaming("We ship by courier in 2 days 🚚")
    bot = Pipeline(
        [
            IntentScan(classifier=KeywordClassifier({"delivery_options": ["ship"]})),
            SemanticCache(
                store=store,
                embedder=HashedEmbedder(),
                then=Generate(model=model, max_tokens=200, catalogue=SEED),
                intents=INTENTS,
            ),
        ]
    )
    ledger = Ledger()

    async def events(text: str, stop: int | None = None) -> list[Any]:
        seen: list[Any] = []
        async with aclosing(bot.astream(Request(text, tags={"tenant": "acme"}), ledger)) as it:
            async for event in it:
                seen.append(event)
                if stop is not None and len(seen) == stop:
                    break
        return seen

    # A reader that stops early leaves nothing stored.
    assert len(asyncio.run(events("Do you ship to Canada?", stop=2))) == 2
    assert len(store) == 0
    miss = asyncio.run(events("Do you ship to Canada?"))
    deltas = [e for e in miss if isinstance(e, TextDelta)]
    assert [d.text for d in deltas] == [
        "We ",
        "ship ",
        "by ",
        "courier ",
        "in ",
        "2 ",
        "days ",
        "🚚 ",
    ]
    assert {d.stage for d in deltas} == {"semantic_cache"}
    assert isinstance(miss[-1], Answered) and miss[-1].result.stage == "generate"
    assert len(store) == 1
    hit = asyncio.run(events("do you ship to canada"))
    assert [type(e) for e in hit] == [TextDelta, Answered]
    assert hit[0].text == "We ship by courier in 2 days 🚚 " == hit[1].result.text
    assert hit[1].result.stage == "semantic_cache"
    out = asyncio.run(bot.arun(Request("Do you ship to Canada", tags={"tenant": "acme"}), ledger))
    assert out.stage == "semantic_cache"
    assert model.asked == 2
