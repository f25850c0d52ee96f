"""Every Bedrock price genai-prices also has agrees with it, or is a reviewed exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices.data import providers
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import TieredPrices

from chainkit import Catalogue

EXCEPTIONS = Path(__file__).resolve().parent / "data" / "genai_prices_exceptions.json"
NOON = datetime(2026, 11, 29, 12, tzinfo=UTC)
FIELDS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
}


def differences() -> tuple[dict[tuple[str, str], dict[str, dict[str, str]]], int]:
    """(model, region) -> field -> both prices, for every on-demand row genai-prices prices."""
    reviewed = json.loads(EXCEPTIONS.read_text())
    catalogue = Catalogue.load(reviewed["catalogue"])
    snapshot = DataSnapshot(providers=providers, from_auto_update=False)
    found: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    agreed = 0
    for card in catalogue:
        for price in card.prices:
            if price.tier != "on_demand":
                continue  # genai-prices has no Bedrock batch, flex or priority prices
            # A global or geography row is genai-prices' global./us./eu. entry; a region's row
            # its plain model id (which genai-prices prices at the us-east-1 rate).
            regional = "-" in price.region
            ref = card.id if regional else f"{price.region}.{card.id}"
            try:
                _, model = snapshot.find_provider_model(ref, None, "aws", None)
            except LookupError:
                continue
            theirs_all = model.get_prices(NOON)
            for field, key in FIELDS.items():
                ours: Decimal | None = getattr(price, field)
                theirs: Any = getattr(theirs_all, key, None)
                if isinstance(theirs, TieredPrices):
                    theirs = theirs.base
                if ours is None or theirs is None:
                    continue
                if ours == theirs:
                    agreed += 1
                    continue
                found.setdefault((card.id, price.region), {})[field] = {
                    "chainkit": str(ours.normalize()),
                    "genai_prices": str(Decimal(theirs).normalize()),
                }
    return found, agreed


def test_pinned_to_the_reviewed_genai_prices_version() -> None:
    assert json.loads(EXCEPTIONS.read_text())["genai_prices"] == genai_prices.__version__


def test_bedrock_rows_agree_with_genai_prices_or_are_reviewed_exceptions() -> None:
    reviewed = json.loads(EXCEPTIONS.read_text())
    exceptions = {(e["model"], e["region"]): e for e in reviewed["exceptions"]}
    found, agreed = differences()
    assert agreed > 500
    unexplained = {key: fields for key, fields in found.items() if key not in exceptions}
    assert not unexplained, f"differ from genai-prices without a reviewed reason: {unexplained}"
    for key, entry in exceptions.items():
        assert key in found, f"{key} now agrees with genai-prices: remove its exception"
        assert found[key] == entry["fields"], f"{key} changed since it was reviewed"
        assert len(entry["reason"]) > 40, key
