from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import (
    Canned,
    Catalogue,
    ConfigError,
    Generate,
    IntentScan,
    KeywordClassifier,
    Ledger,
    Pipeline,
    Precomputed,
    Prompt,
    ReplyStore,
    Request,
    Result,
    ScriptedModel,
    Usage,
    precompute,
)

SEED = Catalogue.load("seed-2024")
QUESTIONS = {
    "delivery_options": "What delivery options does the shop offer?",
    "check_refund_policy": "What is the refund policy?",
}
DECLARED = dict.fromkeys(QUESTIONS, ())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReplyStore]:
    store = ReplyStore(tmp_path / "replies")
    yield store
    store.close()


def writer() -> ScriptedModel:
    return ScriptedModel(
        model_id="generic.responder", reply=lambda p: f"Reply to: {p.user}", usage=Usage(100, 50)
    )


def test_a_hit_answers_with_one_free_entry(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()

    out = Precomputed(store=store, keys=DECLARED).run(
        Request("shipping?", id="r1", intent="delivery_options", tags={"tenant": "acme"}), ledger
    )

    assert isinstance(out, Result)
    assert (out.text, out.stage, out.model) == ("We ship by courier.", "precomputed", None)
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "precomputed"
    assert entry.outcome == "answered"
    assert entry.cost == Decimal(0)
    assert entry.avoided_cost == Decimal(0)
    assert entry.intent == "delivery_options"
    assert dict(entry.tags) == {"tenant": "acme"}


def test_a_miss_passes_with_one_free_entry(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()
    request = Request("refund?", id="r1", intent="check_refund_policy")

    out = Precomputed(store=store, keys=DECLARED).run(request, ledger)

    assert out is request
    [entry] = ledger.entries()
    assert (entry.stage, entry.outcome, entry.cost) == ("precomputed", "passed", Decimal(0))
    assert entry.intent == "check_refund_policy"


def test_a_request_without_intent_passes(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    ledger = Ledger()

    out = Precomputed(store=store, keys=DECLARED).run(Request("shipping?", id="r1"), ledger)

    assert isinstance(out, Request)
    assert [e.outcome for e in ledger] == ["passed"]


def test_keys_select_the_slots_a_reply_depends_on(store: ReplyStore) -> None:
    store.put("delivery_options", "Courier in France.", {"country": "FR"})
    stage = Precomputed(store=store, keys={"delivery_options": ["country"]})
    ledger = Ledger()

    # Slots not named in `keys` are ignored.
    hit = stage.run(
        Request(
            "ship?", id="hit", intent="delivery_options", slots={"country": "FR", "lang": "en"}
        ),
        ledger,
    )
    other = stage.run(
        Request("ship?", id="other", intent="delivery_options", slots={"country": "DE"}), ledger
    )
    missing = stage.run(Request("ship?", id="missing", intent="delivery_options"), ledger)

    assert isinstance(hit, Result) and hit.text == "Courier in France."
    assert isinstance(other, Request)
    assert isinstance(missing, Request)
    assert [(e.request_id, e.outcome) for e in ledger] == [
        ("hit", "answered"),
        ("other", "passed"),
        ("missing", "passed"),
    ]


def test_without_declared_slots_slots_on_the_request_do_not_matter(store: ReplyStore) -> None:
    store.put("delivery_options", "We ship by courier.")
    stage = Precomputed(store=store, keys=DECLARED)

    out = stage.run(
        Request("x", id="r1", intent="delivery_options", slots={"country": "FR"}), Ledger()
    )

    assert isinstance(out, Result)


def test_reply_store_keys_ignore_slot_order(store: ReplyStore) -> None:
    store.put("delivery_options", "Courier to Lyon.", {"country": "FR", "city": "Lyon"})

    assert store.get("delivery_options", {"city": "Lyon", "country": "FR"}) == "Courier to Lyon."
    assert store.get("delivery_options", {"country": "FR"}) is None
    assert store.get("delivery_options") is None
    assert len(store) == 1


def test_precompute_writes_one_priced_setup_entry_per_intent(store: ReplyStore) -> None:
    model = writer()
    ledger = Ledger()

    total = precompute(
        store,
        QUESTIONS,
        model=model,
        ledger=ledger,
        catalogue=SEED,
        tags={"variant": "well-architected"},
    )

    # 150 tokens at $0.006 per 1K, twice.
    assert total == Decimal("0.0018")
    entries = ledger.entries()
    # One request per intent and per what its reply depends on (tags, system prompt, model,
    # output budget), told apart by a digest of them.
    ids = [e.request_id for e in entries]
    assert [i.rsplit(":", 1)[0] for i in ids] == [
        "precompute:delivery_options",
        "precompute:check_refund_policy",
    ]
    assert len({i.rsplit(":", 1)[1] for i in ids}) == 1 and len(ids[0].rsplit(":", 1)[1]) == 12
    for entry, intent in zip(entries, QUESTIONS, strict=True):
        assert entry.stage == "precompute"
        assert entry.phase == "setup"
        assert entry.model == "generic.responder"
        assert entry.usage == Usage(100, 50)
        assert entry.cost == Decimal("0.0009")
        assert entry.intent == intent
        assert dict(entry.tags) == {"variant": "well-architected"}
    system = "Write the reply a customer-support assistant should give to this question."
    assert model.prompts == [Prompt(system, q) for q in QUESTIONS.values()]
    assert store.get("delivery_options") == f"Reply to: {QUESTIONS['delivery_options']}"
    assert store.get("check_refund_policy") == f"Reply to: {QUESTIONS['check_refund_policy']}"


def test_after_precompute_hits_cost_nothing_and_record_the_avoided_call(
    store: ReplyStore,
) -> None:
    ledger = Ledger()
    precompute(store, QUESTIONS, model=writer(), ledger=ledger, catalogue=SEED)
    final = ScriptedModel(model_id="generic.powerful", reply="answer", usage=Usage(50, 50))
    bot = Pipeline(
        [
            IntentScan(
                classifier=KeywordClassifier(
                    {
                        "delivery_options": ["deliver"],
                        "greeting": ["hello"],
                        "check_refund_policy": ["refund"],
                    }
                )
            ),
            Canned(replies={"greeting": "Hello!"}),
            Precomputed(store=store, keys=DECLARED),
            Generate(model=final, max_tokens=50, catalogue=SEED),
        ]
    )

    result = bot.run(Request("Do you deliver to Lyon?", id="r1"), ledger)

    assert result.stage == "precomputed"
    assert result.text == f"Reply to: {QUESTIONS['delivery_options']}"
    assert final.prompts == []
    serve = [e for e in ledger if e.phase == "serve"]
    assert [(e.stage, e.outcome, e.cost) for e in serve] == [
        ("intent_scan", "passed", Decimal(0)),
        ("canned", "passed", Decimal(0)),
        ("precomputed", "answered", Decimal(0)),
    ]
    assert serve[1].avoided_cost == Decimal(0)
    assert serve[2].avoided_cost == Decimal("0.006")
    assert ledger.totals(lambda e: e.phase == "setup").cost == Decimal("0.0018")


def test_a_reopened_store_still_has_the_precomputed_reply(tmp_path: Path) -> None:
    directory = tmp_path / "replies"
    first = ReplyStore(directory)
    precompute(first, QUESTIONS, model=writer(), ledger=Ledger(), catalogue=SEED)
    first.close()

    again = ReplyStore(directory)
    try:
        ledger = Ledger()
        out = Precomputed(store=again, keys=DECLARED).run(
            Request("x", id="r1", intent="check_refund_policy"), ledger
        )
        assert isinstance(out, Result)
        assert out.text == f"Reply to: {QUESTIONS['check_refund_policy']}"
        assert len(again) == 2
    finally:
        again.close()


def test_precompute_with_an_unpriced_model_fails_before_any_call(store: ReplyStore) -> None:
    model = ScriptedModel(model_id="generic.responder", reply="x")
    ledger = Ledger()

    # generic.responder is only in seed-2024; the default catalogue cannot price it.
    with pytest.raises(ConfigError, match=r"generic\.responder"):
        precompute(store, QUESTIONS, model=model, ledger=ledger)

    assert model.prompts == []
    assert len(ledger) == 0
    assert len(store) == 0


def test_precompute_of_no_questions_costs_nothing(store: ReplyStore) -> None:
    assert precompute(store, {}, model=writer(), ledger=Ledger(), catalogue=SEED) == Decimal(0)


# -- keys: one per distinct (intent, slots, scope) -----------------------------------------------


def test_separators_inside_a_slot_value_do_not_pose_as_another_slot(store: ReplyStore) -> None:
    store.put("order_status", "Jane Doe, your order 1 ...", {"order": "1|x=2"})

    assert store.get("order_status", {"order": "1", "x": "2"}) is None
    assert ReplyStore.key("order_status", {"order": "1|x=2"}) != ReplyStore.key(
        "order_status", {"order": "1", "x": "2"}
    )


def test_an_intent_cannot_pose_as_an_intent_with_slots() -> None:
    assert ReplyStore.key("a|order=10234") != ReplyStore.key("a", {"order": "10234"})


def test_a_scoped_key_differs_from_the_global_and_other_scopes() -> None:
    keys = {
        ReplyStore.key("faq"),
        ReplyStore.key("faq", scope={"tenant": "acme"}),
        ReplyStore.key("faq", scope={"tenant": "globex"}),
        ReplyStore.key("faq", {"tenant": "acme"}),
    }

    assert len(keys) == 4


def test_keys_ignore_the_order_of_slots_and_scope_tags() -> None:
    assert ReplyStore.key("x", {"a": "1", "b": "2"}, scope={"tenant": "t", "team": "u"}) == (
        ReplyStore.key("x", {"b": "2", "a": "1"}, scope={"team": "u", "tenant": "t"})
    )


Triple = tuple[str, dict[str, str], dict[str, str] | None]

# Separators and JSON syntax, where a naive encoding's collisions lie, and any Unicode a store
# accepts in names (no NUL, no lone surrogate: emoji, Japanese, line separators, combining
# marks). Slot values may hold anything, lone surrogates included.
SYNTAX = st.sampled_from([*'|=:,"\\{}[]@ ', "🚚", "日", "本", "\u2028", "\u0301"])
ANY = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
NAME = st.one_of(st.text(SYNTAX, min_size=1, max_size=4), st.text(ANY, min_size=1, max_size=8))
VALUE = st.one_of(st.text(SYNTAX, max_size=4), st.text(st.characters(), max_size=8))
SCOPE = st.dictionaries(NAME, st.one_of(st.text(SYNTAX, max_size=4), st.text(ANY, max_size=8)))
TRIPLE: st.SearchStrategy[Triple] = st.tuples(
    NAME,
    st.dictionaries(NAME, VALUE, max_size=3),
    st.one_of(st.none(), SCOPE.filter(bool)),
)


@st.composite
def regrouped(draw: st.DrawFn) -> list[Triple]:
    """A triple, and the same characters regrouped: one slot (or scope tag) folded into the
    intent (or a slot) between two separators, which is how an unescaped join would read it.
    """
    intent, slots, scope = draw(TRIPLE)
    first, second = draw(SYNTAX), draw(SYNTAX)
    out: list[Triple] = [(intent, slots, scope)]
    for name, value in slots.items():
        rest = {k: v for k, v in slots.items() if k != name}
        if "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value):
            out.append((intent + first + name + second + value, rest, scope))
    for name, value in (scope or {}).items():
        rest = {k: v for k, v in (scope or {}).items() if k != name} or None
        out.append((intent, {**slots, name: value}, rest))
        out.append((intent + first + name + second + value, slots, rest))
    return out


def distinct(triples: list[Triple]) -> set[object]:
    return {
        (intent, frozenset(slots.items()), None if scope is None else frozenset(scope.items()))
        for intent, slots, scope in triples
    }


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TRIPLE, min_size=1, max_size=6), regrouped())
def test_distinct_intent_slots_and_scope_give_distinct_keys(
    triples: list[Triple], lookalikes: list[Triple]
) -> None:
    everything = triples + lookalikes
    keys = {ReplyStore.key(intent, slots, scope=scope) for intent, slots, scope in everything}

    assert len(keys) == len(distinct(everything))


# -- scope: a tenant's reply is that tenant's ----------------------------------------------------


def scoped_bot(store: ReplyStore, **options: object) -> tuple[Pipeline, ScriptedModel]:
    final = ScriptedModel(model_id="generic.powerful", reply="generated", usage=Usage(50, 50))
    stage = Precomputed(store=store, keys={"returns_policy": ()}, **options)  # type: ignore[arg-type]
    return Pipeline([stage, Generate(model=final, max_tokens=50, catalogue=SEED)]), final


def ask(bot: Pipeline, ledger: Ledger, request_id: str, **tags: str) -> Result:
    request = Request("returns?", id=request_id, intent="returns_policy", tags=tags)
    return bot.run(request, ledger)


def outcomes(ledger: Ledger, request_id: str) -> list[tuple[str, str]]:
    return [(e.stage, e.outcome) for e in ledger if e.request_id == request_id]


def test_a_tenants_reply_is_served_to_no_other_tenant_nor_an_untagged_request(
    store: ReplyStore,
) -> None:
    store.put("returns_policy", "Acme: 30 days, free.", scope={"tenant": "acme"})
    bot, final = scoped_bot(store)
    ledger = Ledger()

    acme = ask(bot, ledger, "acme", tenant="acme")
    globex = ask(bot, ledger, "globex", tenant="globex")
    untagged = ask(bot, ledger, "untagged")

    assert (acme.stage, acme.text) == ("precomputed", "Acme: 30 days, free.")
    assert (globex.stage, globex.text) == ("generate", "generated")
    assert (untagged.stage, untagged.text) == ("generate", "generated")
    assert outcomes(ledger, "acme") == [("precomputed", "answered")]
    for request_id in ("globex", "untagged"):
        assert outcomes(ledger, request_id) == [("precomputed", "passed"), ("generate", "answered")]
    assert len(final.prompts) == 2


def test_a_global_reply_serves_every_tenant_and_untagged_requests(store: ReplyStore) -> None:
    store.put("returns_policy", "30 days, free.")
    bot, final = scoped_bot(store)
    ledger = Ledger()

    replies = [
        ask(bot, ledger, "acme", tenant="acme"),
        ask(bot, ledger, "globex", tenant="globex"),
        ask(bot, ledger, "untagged"),
    ]

    assert [(r.stage, r.text) for r in replies] == [("precomputed", "30 days, free.")] * 3
    assert [(e.stage, e.outcome) for e in ledger] == [("precomputed", "answered")] * 3
    assert final.prompts == []


def test_a_tenants_own_reply_comes_before_the_global_one(store: ReplyStore) -> None:
    store.put("returns_policy", "30 days, free.")
    store.put("returns_policy", "Acme: 60 days.", scope={"tenant": "acme"})
    bot, _ = scoped_bot(store)
    ledger = Ledger()

    assert ask(bot, ledger, "acme", tenant="acme").text == "Acme: 60 days."
    assert ask(bot, ledger, "globex", tenant="globex").text == "30 days, free."


def test_the_scope_tag_is_configurable(store: ReplyStore) -> None:
    store.put("returns_policy", "Shop 7: 14 days.", scope={"shop": "7"})
    bot, _ = scoped_bot(store, scope_tag="shop")
    ledger = Ledger()

    assert ask(bot, ledger, "shop7", shop="7").text == "Shop 7: 14 days."
    # The tenant tag means nothing to this stage: a "shop"-scoped reply needs the "shop" tag.
    assert ask(bot, ledger, "tenant7", tenant="7").stage == "generate"


def test_an_undeclared_intent_passes_even_with_a_stored_reply(store: ReplyStore) -> None:
    store.put("track_order", "Jane Doe, your order 10234 to 1 Main St is on its way.")
    store.put("track_order", "Jane Doe, order 10234.", scope={"tenant": "acme"})
    stage = Precomputed(store=store, keys={"returns_policy": ()})
    ledger = Ledger()
    request = Request("where is 10234?", id="r1", intent="track_order", tags={"tenant": "acme"})

    out = stage.run(request, ledger)

    assert out is request
    assert [(e.stage, e.outcome) for e in ledger] == [("precomputed", "passed")]


def test_precompute_stores_a_tenants_replies_for_that_tenant_only(store: ReplyStore) -> None:
    ledger = Ledger()
    precompute(
        store,
        QUESTIONS,
        model=writer(),
        ledger=ledger,
        catalogue=SEED,
        tags={"tenant": "acme", "variant": "v"},
    )
    stage = Precomputed(store=store, keys=DECLARED)

    acme = stage.run(
        Request("x", id="a", intent="delivery_options", tags={"tenant": "acme"}), ledger
    )
    globex = stage.run(
        Request("x", id="g", intent="delivery_options", tags={"tenant": "globex"}), ledger
    )

    assert isinstance(acme, Result)
    assert isinstance(globex, Request)
    assert store.get("delivery_options") is None
    assert store.get("delivery_options", scope={"tenant": "acme"}) == acme.text
    assert {dict(e.tags)["tenant"] for e in ledger if e.phase == "setup"} == {"acme"}


# -- configuration errors ------------------------------------------------------------------------


def test_a_precomputed_stage_that_declares_no_intent_is_a_config_error(store: ReplyStore) -> None:
    with pytest.raises(ConfigError, match=r"declares no intents.*keys=\{'delivery_options': \(\)"):
        Precomputed(store=store)
    with pytest.raises(ConfigError, match="declares no intents"):
        Precomputed(store=store, keys={})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"delivery_options": "country"}, r"keys\['delivery_options'\] must be a sequence of slot"),
        (
            {"delivery_options": [3]},
            r"Slot name of Precomputed intent 'delivery_options' must be a str",
        ),
        ({7: ()}, "Precomputed intent must be a str, got int 7"),
        ({"": ()}, "Precomputed intent '' must not be empty"),
    ],
)
def test_malformed_keys_are_config_errors(store: ReplyStore, keys: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Precomputed(store=store, keys=keys)  # type: ignore[arg-type]


def test_a_malformed_scope_tag_is_a_config_error(store: ReplyStore) -> None:
    with pytest.raises(ConfigError, match="Precomputed scope_tag '' must not be empty"):
        Precomputed(store=store, keys=DECLARED, scope_tag="")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.put(3, "r"), "Reply intent must be a str, got int 3"),
        (lambda s: s.put("faq", None), "Reply for intent 'faq' must be a str, got NoneType None"),
        (
            lambda s: s.put("faq", "r", {"country": 33}),
            r"Slot 'country' of intent 'faq' must be a str, got int 33\. Convert slot values",
        ),
        (lambda s: s.put("faq", "r", ["FR"]), "Slots of intent 'faq' must be a mapping"),
        (lambda s: s.get("faq", {1: "x"}), "Slot name of intent 'faq' must be a str, got int 1"),
        (
            lambda s: s.put("faq", "r", scope={}),
            r"scope must be a non-empty mapping .* got dict \{\}\. Pass scope=None",
        ),
        (lambda s: s.get("faq", scope="acme"), r"got str 'acme'\. Pass scope=None"),
        (
            lambda s: s.put("faq", "r", scope={"tenant": 5}),
            "Reply scope 'tenant' value must be a str, got int 5",
        ),
        (lambda s: s.get("faq", scope={"": "acme"}), "Reply scope key '' must not be empty"),
    ],
)
def test_malformed_store_inputs_are_config_errors(
    store: ReplyStore, call: Callable[[ReplyStore], object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        call(store)

    assert len(store) == 0
