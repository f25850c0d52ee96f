"""The chatbot's shop: an SQLite database, and the fact rules ``Lookup`` answers from.

The database holds customers, products (with categories and stock) and orders (with status and
dates). The data is generated (deterministically, from a seed) because no real shop is at hand; the
order numbers customers quote in the traffic can be added so that their orders exist.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path

from chainkit.stages.lookup import FactRule

CATEGORIES = {
    "laptop": "laptops",
    "phone": "phones",
    "headphone": "headphones",
    "camera": "cameras",
    "shoe": "shoes",
    "jacket": "jackets",
    "lamp": "lamps",
    "desk": "desks",
    "kettle": "kettles",
    "blender": "blenders",
}
STATUSES = ["processing", "shipped", "delivered", "delivered", "delivered", "cancelled", "returned"]
CARRIERS = ["UPS", "DHL", "FedEx", "Royal Mail"]


def build_shop(
    path: Path, *, order_ids: Iterable[int] = (), orders: int = 2_000, seed: int = 7
) -> Path:
    """Create the shop database at ``path`` (replacing it) and return the path."""
    rng = random.Random(seed)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    with db:
        db.executescript(
            """
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, country TEXT);
            CREATE TABLE products (
                id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL, stock INTEGER);
            CREATE TABLE orders (
                id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers,
                status TEXT, placed_on TEXT, shipped_on TEXT, delivered_on TEXT,
                carrier TEXT, total REAL);
            CREATE TABLE order_items (
                order_id INTEGER REFERENCES orders, product_id INTEGER REFERENCES products,
                quantity INTEGER);
            """
        )
        first = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Femi", "Grace", "Hugo", "Ines", "Jon"]
        last = ["Silva", "Okafor", "Martin", "Patel", "Novak", "Smith", "Garcia", "Khan"]
        places = [("Lyon", "France"), ("Leeds", "UK"), ("Austin", "USA"), ("Porto", "Portugal")]
        customers = [
            (i, f"{rng.choice(first)} {rng.choice(last)}", *rng.choice(places))
            for i in range(1, 501)
        ]
        db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
        products = []
        for i in range(1, 201):
            category = rng.choice(list(CATEGORIES.values()))
            stock = rng.choice([0, 0, 3, 12, 40, 150])
            price = round(rng.uniform(15, 1500), 2)
            products.append((i, f"{category[:-1].title()} {100 + i}", category, price, stock))
        db.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", products)
        ids = sorted(set(order_ids) | {rng.randrange(10_000, 99_999) for _ in range(orders)})
        today = date(2026, 11, 27)
        for order_id in ids:
            status = rng.choice(STATUSES)
            placed = today - timedelta(days=rng.randrange(1, 90))
            shipped = placed + timedelta(days=rng.randrange(1, 4))
            delivered = shipped + timedelta(days=rng.randrange(1, 6))
            items = rng.sample(products, rng.randrange(1, 4))
            db.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order_id,
                    rng.randrange(1, 501),
                    status,
                    placed.isoformat(),
                    None if status in ("processing", "cancelled") else shipped.isoformat(),
                    delivered.isoformat() if status in ("delivered", "returned") else None,
                    rng.choice(CARRIERS),
                    round(sum(p[3] for p in items), 2),
                ),
            )
            db.executemany(
                "INSERT INTO order_items VALUES (?, ?, ?)",
                [(order_id, p[0], rng.randrange(1, 3)) for p in items],
            )
    db.close()
    return path


def _category(word: str) -> str:
    return CATEGORIES[word.lower().rstrip("s")]


SHOP_RULES = (
    FactRule(
        slot="order_id",
        pattern=r"\b(?:order|purchase|package|parcel|number|no\.?|#)\D{0,12}?(\d{5,15})\b",
        sql="""SELECT o.id, o.status, o.placed_on, coalesce(o.shipped_on, 'not yet') AS shipped,
                      coalesce(o.delivered_on, 'not yet') AS delivered, o.carrier, o.total,
                      c.name AS customer
               FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = ?""",
        fact=(
            "Order {id} for {customer}: {status}; placed {placed_on}, shipped {shipped}, "
            "delivered {delivered}, carrier {carrier}, total ${total:.2f}."
        ),
        missing="There is no order {value} in the shop's records.",
        normalise=int,
    ),
    FactRule(
        slot="category",
        pattern=r"\b(" + "|".join(f"{word}s?" for word in CATEGORIES) + r")\b",
        sql="""SELECT category, count(*) AS models, sum(stock > 0) AS in_stock,
                      min(price) AS cheapest
               FROM products WHERE category = ? GROUP BY category""",
        fact="{category}: {in_stock} of {models} models in stock, from ${cheapest:.2f}.",
        missing="The shop does not sell {value}.",
        normalise=_category,
    ),
)
