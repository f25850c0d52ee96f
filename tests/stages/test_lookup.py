import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from chainkit import ConfigError, Ledger, Request
from chainkit.stages.lookup import FactRule, Lookup
from recipes.shop import SHOP_RULES, build_shop

ORDER_RULE = FactRule(
    slot="order_id",
    pattern=r"\border\s+#?(\d+)",
    sql="SELECT id, status, carrier FROM orders WHERE id = ?",
    fact="Order {id} is {status} with {carrier}.",
    normalise=int,
)
STOCK_RULE = FactRule(
    slot="category",
    pattern=r"\b(lamps|desks|kettles)\b",
    sql="SELECT name, stock FROM products WHERE category = ? ORDER BY name",
    fact="{name}: {stock} in stock.",
    missing="We do not sell {value}.",
)


def make_shop(path: Path) -> Path:
    db = sqlite3.connect(path)
    with db:
        db.executescript(
            """
            CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, carrier TEXT);
            CREATE TABLE products (name TEXT, category TEXT, stock INTEGER);
            INSERT INTO orders VALUES (10234, 'shipped', 'DHL');
            INSERT INTO orders VALUES (4587345, 'delivered', 'UPS');
            INSERT INTO orders VALUES (55501, 'processing', 'FedEx');
            INSERT INTO products VALUES ('Desk lamp', 'lamps', 4);
            INSERT INTO products VALUES ('Arc lamp', 'lamps', 0);
            INSERT INTO products VALUES ('Oak desk', 'desks', 2);
            """
        )
    db.close()
    return path


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return make_shop(tmp_path / "shop.db")


def test_a_matching_rule_puts_the_slot_and_the_fact_on_the_request(shop: Path) -> None:
    ledger = Ledger()
    request = Request(
        "Where is order 10234?",
        id="r1",
        tags={"tenant": "acme"},
        intent="track_order",
        slots={"name": "Ana"},
        facts=("Ana is a gold member.",),
    )

    out = Lookup(shop, [ORDER_RULE]).run(request, ledger)

    assert out.slots == {"name": "Ana", "order_id": "10234"}
    assert out.facts == ("Ana is a gold member.", "Order 10234 is shipped with DHL.")
    assert (out.id, out.text, out.intent) == ("r1", request.text, "track_order")
    # The request itself is a frozen record: the stage passes on a copy.
    assert request.facts == ("Ana is a gold member.",)
    [entry] = ledger.entries()
    assert entry.request_id == "r1"
    assert entry.stage == "lookup"
    assert entry.outcome == "passed"
    assert entry.cost == Decimal(0)
    assert entry.avoided_cost == Decimal(0)
    assert entry.model is None and entry.usage is None
    assert entry.intent == "track_order"
    assert entry.latency_s >= 0
    assert dict(entry.tags) == {"tenant": "acme"}
    assert entry.phase == "serve"


def test_every_row_becomes_a_fact(shop: Path) -> None:
    out = Lookup(shop, [STOCK_RULE]).run(Request("Any lamps left?"), Ledger())

    assert out.slots == {"category": "lamps"}
    assert out.facts == ("Arc lamp: 0 in stock.", "Desk lamp: 4 in stock.")


def test_every_matching_rule_adds_its_facts_in_rule_order(shop: Path) -> None:
    ledger = Ledger()

    out = Lookup(shop, [ORDER_RULE, STOCK_RULE], name="facts").run(
        Request("Did order 55501 include desks?", id="r1"), ledger
    )

    assert out.slots == {"order_id": "55501", "category": "desks"}
    assert out.facts == ("Order 55501 is processing with FedEx.", "Oak desk: 2 in stock.")
    assert [(e.stage, e.request_id) for e in ledger] == [("facts", "r1")]


def test_a_missing_row_gives_the_missing_fact_with_the_value(shop: Path) -> None:
    ledger = Ledger()

    out = Lookup(shop, [ORDER_RULE, STOCK_RULE]).run(
        Request("order 99999: two kettles", id="r1"), ledger
    )

    assert out.slots == {"order_id": "99999", "category": "kettles"}
    assert out.facts == ("No record was found for 99999.", "We do not sell kettles.")
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost) == ("passed", Decimal(0))


def test_normalise_int_strips_leading_zeros(shop: Path) -> None:
    out = Lookup(shop, [ORDER_RULE]).run(Request("cancel order 00004587345 please"), Ledger())

    # The slot keeps the text as the customer wrote it; the query gets the normalised value.
    assert out.slots == {"order_id": "00004587345"}
    assert out.facts == ("Order 4587345 is delivered with UPS.",)


def test_normalise_turns_the_matched_text_into_the_query_parameter(shop: Path) -> None:
    def plural(word: str) -> str:
        return word.lower() + "s"

    raw = FactRule(
        slot="category",
        pattern=r"\b(lamp|desk)s?\b",
        sql=STOCK_RULE.sql,
        fact=STOCK_RULE.fact,
        missing=STOCK_RULE.missing,
    )
    normalised = FactRule(
        slot="category",
        pattern=raw.pattern,
        sql=raw.sql,
        fact=raw.fact,
        missing=raw.missing,
        normalise=plural,
    )
    request = Request("Is that DESK sturdy?")

    assert Lookup(shop, [raw]).run(request, Ledger()).facts == ("We do not sell DESK.",)
    out = Lookup(shop, [normalised]).run(request, Ledger())
    assert out.slots == {"category": "DESK"}
    assert out.facts == ("Oak desk: 2 in stock.",)


def test_the_pattern_is_searched_case_insensitively(shop: Path) -> None:
    out = Lookup(shop, [ORDER_RULE]).run(Request("ORDER 10234 is late"), Ledger())

    assert out.facts == ("Order 10234 is shipped with DHL.",)


def test_intents_restrict_a_rule_to_requests_with_those_intents(shop: Path) -> None:
    rule = FactRule(
        slot="order_id",
        pattern=ORDER_RULE.pattern,
        sql=ORDER_RULE.sql,
        fact=ORDER_RULE.fact,
        normalise=int,
        intents=("track_order", "cancel_order"),
    )
    lookup = Lookup(shop, [rule])
    ledger = Ledger()
    text = "order 10234"

    tracked = lookup.run(Request(text, id="r1", intent="cancel_order"), ledger)
    other = Request(text, id="r2", intent="complaint")
    unlabelled = Request(text, id="r3")

    assert tracked.facts == ("Order 10234 is shipped with DHL.",)
    assert lookup.run(other, ledger) is other
    assert lookup.run(unlabelled, ledger) is unlabelled
    assert [(e.request_id, e.intent) for e in ledger] == [
        ("r1", "cancel_order"),
        ("r2", "complaint"),
        ("r3", None),
    ]


def test_a_request_nothing_matches_is_returned_unchanged_with_one_entry(shop: Path) -> None:
    ledger = Ledger()
    request = Request("hello there", id="r1", intent="greeting", facts=("known",))

    out = Lookup(shop, [ORDER_RULE, STOCK_RULE]).run(request, ledger)

    assert out is request
    [entry] = ledger.entries()
    assert (entry.request_id, entry.stage, entry.outcome) == ("r1", "lookup", "passed")
    assert entry.cost == Decimal(0)
    assert entry.intent == "greeting"
    assert entry.latency_s >= 0


def test_a_missing_database_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"

    with pytest.raises(ConfigError, match=r"nowhere\.db does not exist") as caught:
        Lookup(path, [ORDER_RULE])

    assert str(path) in str(caught.value)
    assert not path.exists()


def test_a_lookup_needs_at_least_one_rule(shop: Path) -> None:
    with pytest.raises(ConfigError, match="at least one FactRule"):
        Lookup(shop, [])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM invoices WHERE id = ?",
        "SELECT id, colour FROM orders WHERE id = ?",
        "SELECT id FROM orders WHERE id = ? AND carrier = ?",
        "SELEC id FROM orders WHERE id = ?",
    ],
)
def test_a_query_that_does_not_fit_the_schema_fails_at_construction(shop: Path, sql: str) -> None:
    rule = FactRule(slot="invoice", pattern=r"invoice (\d+)", sql=sql, fact="{id}")

    with pytest.raises(ConfigError, match="FactRule 'invoice'") as caught:
        Lookup(shop, [ORDER_RULE, rule])

    assert str(shop) in str(caught.value)


def test_a_pattern_without_a_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"FactRule 'order_id'.*needs a group"):
        FactRule(slot="order_id", pattern=r"order \d+", sql=ORDER_RULE.sql, fact="{id}")


def test_a_pattern_that_does_not_compile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"FactRule 'order_id': bad pattern"):
        FactRule(slot="order_id", pattern=r"order (\d+", sql=ORDER_RULE.sql, fact="{id}")


def test_the_database_is_opened_read_only(shop: Path) -> None:
    writer = FactRule(
        slot="note",
        pattern=r"note (\w+)",
        sql="INSERT INTO orders (id, status, carrier) VALUES (1, ?, 'none')",
        fact="{status}",
    )
    lookup = Lookup(shop, [writer])

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        lookup.run(Request("note hacked"), Ledger())

    db = sqlite3.connect(shop)
    try:
        assert db.execute("SELECT count(*) FROM orders WHERE id = 1").fetchone() == (0,)
    finally:
        db.close()


def test_a_database_path_with_uri_characters_opens_that_file_read_only(tmp_path: Path) -> None:
    # sqlite3 URIs end the path at '#' or '?', so the path must be quoted into the URI.
    folder = tmp_path / "shops#1"
    folder.mkdir()
    shop = make_shop(folder / "shop.db")

    out = Lookup(shop, [ORDER_RULE]).run(Request("order 10234"), Ledger())

    assert out.facts == ("Order 10234 is shipped with DHL.",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shops#1"]


def test_threads_sharing_a_lookup_get_the_same_facts_as_one_thread(shop: Path) -> None:
    lookup = Lookup(shop, [ORDER_RULE, STOCK_RULE])
    numbers = ["10234", "4587345", "55501", "99999", "0010234"]
    things = ["lamps", "desks", "kettles", "nothing"]
    requests = [
        Request(f"order {numbers[i % 5]} and {things[i % 4]}", id=f"r{i:03d}") for i in range(200)
    ]
    sequential_ledger = Ledger()
    sequential = {
        out.id: (out.facts, dict(out.slots))
        for out in (lookup.run(r, sequential_ledger) for r in requests)
    }

    threaded_ledger = Ledger()
    start = threading.Barrier(8)

    def work(chunk: list[Request]) -> list[Request]:
        start.wait(timeout=30)  # all eight threads are inside the stage at once
        return [lookup.run(r, threaded_ledger) for r in chunk]

    with ThreadPoolExecutor(max_workers=8) as pool:
        chunks = pool.map(work, [requests[i::8] for i in range(8)])
        threaded = {out.id: (out.facts, dict(out.slots)) for chunk in chunks for out in chunk}

    assert threaded == sequential
    assert sequential["r001"] == (
        ("Order 4587345 is delivered with UPS.", "Oak desk: 2 in stock."),
        {"order_id": "4587345", "category": "desks"},
    )
    assert len(threaded_ledger) == len(sequential_ledger) == 200
    assert sorted(e.request_id for e in threaded_ledger) == [r.id for r in requests]
    assert all(e.cost == Decimal(0) for e in threaded_ledger)


# -- the recipe's shop ---------------------------------------------------------------------


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
    finally:
        db.close()


@pytest.fixture
def recipe_shop(tmp_path: Path) -> Path:
    return build_shop(tmp_path / "shop.db", order_ids=[4587345, 113542617735902], orders=300)


def test_build_shop_creates_the_tables_with_the_requested_orders(recipe_shop: Path) -> None:
    db = sqlite3.connect(recipe_shop)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        requested = db.execute(
            "SELECT id FROM orders WHERE id IN (4587345, 113542617735902) ORDER BY id"
        ).fetchall()
        orders = db.execute("SELECT count(*) FROM orders").fetchone()[0]
        orphans = db.execute(
            "SELECT count(*) FROM orders WHERE customer_id NOT IN (SELECT id FROM customers)"
        ).fetchone()[0]
        itemless = db.execute(
            "SELECT count(*) FROM orders WHERE id NOT IN (SELECT order_id FROM order_items)"
        ).fetchone()[0]
    finally:
        db.close()

    assert recipe_shop.is_file()
    assert tables == {"customers", "products", "orders", "order_items"}
    assert requested == [(4587345,), (113542617735902,)]
    # 300 random five-digit ids (a few may repeat) plus the two requested ones.
    assert 250 < orders <= 302
    assert orphans == 0 and itemless == 0


def test_shop_rules_find_a_quoted_order_with_leading_zeros(recipe_shop: Path) -> None:
    ledger = Ledger()
    request = Request("track purchase 00004587345", id="r1", intent="track_order")

    out = Lookup(recipe_shop, SHOP_RULES).run(request, ledger)

    db = sqlite3.connect(recipe_shop)
    try:
        status, placed, shipped, delivered, carrier, total, name = db.execute(
            "SELECT o.status, o.placed_on, o.shipped_on, o.delivered_on, o.carrier, o.total,"
            " c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 4587345"
        ).fetchone()
    finally:
        db.close()
    assert out.slots == {"order_id": "00004587345"}
    assert out.facts == (
        f"Order 4587345 for {name}: {status}; placed {placed}, "
        f"shipped {shipped or 'not yet'}, delivered {delivered or 'not yet'}, "
        f"carrier {carrier}, total ${total:.2f}.",
    )
    [entry] = ledger.entries()
    assert (entry.stage, entry.outcome, entry.cost, entry.intent) == (
        "lookup",
        "passed",
        Decimal(0),
        "track_order",
    )


def test_shop_rules_find_a_category_in_stock(recipe_shop: Path) -> None:
    out = Lookup(recipe_shop, SHOP_RULES).run(Request("Do you have laptops in stock?"), Ledger())

    db = sqlite3.connect(recipe_shop)
    try:
        models, in_stock, cheapest = db.execute(
            "SELECT count(*), sum(stock > 0), min(price) FROM products WHERE category = 'laptops'"
        ).fetchone()
    finally:
        db.close()
    assert models > 0
    assert out.slots == {"category": "laptops"}
    assert out.facts == (f"laptops: {in_stock} of {models} models in stock, from ${cheapest:.2f}.",)


def test_shop_rules_tell_headphones_from_phones(recipe_shop: Path) -> None:
    out = Lookup(recipe_shop, SHOP_RULES).run(Request("Are your Headphones any good?"), Ledger())

    assert out.slots == {"category": "Headphones"}
    assert len(out.facts) == 1 and out.facts[0].startswith("headphones: ")


def test_shop_rules_state_an_unknown_order(recipe_shop: Path) -> None:
    out = Lookup(recipe_shop, SHOP_RULES).run(Request("where is order #12345678?"), Ledger())

    assert out.slots == {"order_id": "12345678"}
    assert out.facts == ("There is no order 12345678 in the shop's records.",)


def test_build_shop_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = build_shop(tmp_path / "a.db", order_ids=[4587345], orders=100, seed=3)
    again = build_shop(tmp_path / "b.db", order_ids=[4587345], orders=100, seed=3)
    other = build_shop(tmp_path / "c.db", order_ids=[4587345], orders=100, seed=4)

    for table in ("customers", "products", "orders", "order_items"):
        assert rows(first, table) == rows(again, table)
    assert rows(first, "orders") != rows(other, "orders")


def test_build_shop_replaces_an_existing_database(tmp_path: Path) -> None:
    path = build_shop(tmp_path / "shop.db", order_ids=[4587345], orders=10)

    build_shop(path, order_ids=[7654321], orders=10)

    ids = {r[0] for r in rows(path, "orders")}
    assert 7654321 in ids and 4587345 not in ids
