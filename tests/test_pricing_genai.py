"""The genai-prices catalogue: every provider's models, priced as genai-prices prices them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot

from chainkit import Catalogue, ConfigError, Usage

DAY = date(2026, 11, 29)
NOON = datetime(2026, 11, 29, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def genai() -> Catalogue:
    return Catalogue.load(f"genai-prices@{DAY.isoformat()}")


def their_price(usage: Usage, model_ref: str, provider: str, **context: str) -> Decimal:
    """genai-prices' own calc_price; its input_tokens include cached tokens."""
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    theirs = genai_prices.Usage(
        input_tokens=usage.input_tokens + cached,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    one_hour = getattr(usage, "cache_write_1h_tokens", 0)
    if one_hour:
        theirs.cache_write_1h_tokens = one_hour
    return genai_prices.calc_price(
        theirs,
        model_ref,
        provider_id=provider,
        genai_request_timestamp=NOON,
        price_context=context or None,
    ).total_price


def test_gpt_4o_mini_equals_genai_prices_calc_price(genai: Catalogue) -> None:
    usage = Usage(1_200, 350, cache_read_tokens=800)
    ours = genai.cost("openai:gpt-4o-mini", usage)
    assert ours == their_price(usage, "gpt-4o-mini", "openai")
    # 1200*0.15 + 350*0.6 + 800*0.075 = 450 per million
    assert ours == Decimal("0.00045")


def test_ids_are_provider_and_model(genai: Catalogue) -> None:
    card = genai.card("anthropic:claude-sonnet-4-5")
    assert (card.provider, card.id) == ("anthropic", "anthropic:claude-sonnet-4-5")
    # Any name genai-prices matches resolves to its card, dated or not, with or without provider.
    assert genai.card("openai:gpt-4o-mini-2024-07-18").id == "openai:gpt-4o-mini"
    assert genai.card("gpt-4o-mini").id == "openai:gpt-4o-mini"
    assert "openai:gpt-9-preview" not in genai


def test_one_hour_cache_writes_equal_calc_price(genai: Catalogue) -> None:
    usage = Usage(100, 50, 1_000, 2_000, cache_write_1h_tokens=500)
    assert genai.cost("anthropic:claude-sonnet-4-5", usage) == their_price(
        usage, "claude-sonnet-4-5", "anthropic"
    )


@pytest.mark.parametrize("usage", [Usage(1_000, 500, 200, 100), Usage(300_000, 500)])
def test_every_model_agrees_with_calc_price(genai: Catalogue, usage: Usage) -> None:
    checked = 0
    for card in genai:
        provider, _, model = card.id.partition(":")
        try:
            theirs = their_price(usage, model, provider)
        except LookupError:
            continue  # an id genai-prices' own matching does not find (its regional.* entries)
        assert genai.cost(card.id, usage, at=NOON) == theirs, card.id
        checked += 1
    assert checked > 2_000


def test_long_context_tier_equals_calc_price(genai: Catalogue) -> None:
    tiered = [c for c in genai if c.prices[0].tiers]
    assert tiered
    card = tiered[0]
    threshold = card.prices[0].tiers[0][0]
    provider, _, model = card.id.partition(":")
    for usage in (Usage(threshold, 10), Usage(threshold + 1, 10)):
        assert genai.cost(card.id, usage) == their_price(usage, model, provider)
    assert genai.cost(card.id, Usage(threshold + 1, 0)) > genai.cost(card.id, Usage(threshold, 0))


def test_batch_and_priority_variants_equal_calc_price(genai: Catalogue) -> None:
    usage = Usage(10_000, 2_000)
    for tier, context in (
        ("batch", {"processing": "batch"}),
        ("priority", {"service_tier": "priority"}),
    ):
        ours = genai.cost("openai:gpt-4o-mini", usage, tier=tier)
        assert ours == their_price(usage, "gpt-4o-mini", "openai", **context)
    assert genai.cost("openai:gpt-4o-mini", usage, tier="batch") < genai.cost(
        "openai:gpt-4o-mini", usage
    )


def test_price_history_picks_the_price_in_force(genai: Catalogue) -> None:
    changed = next(
        c
        for c in genai
        if c.prices[0].effective_date < DAY and c.prices[0].effective_date > date(2024, 1, 1)
    )
    started = changed.prices[0].effective_date
    before = Catalogue.load(f"genai-prices@{date.fromordinal(started.toordinal() - 1)}")
    provider, _, model = changed.id.partition(":")
    usage = Usage(1_000_000, 1_000_000)
    day_before = datetime.combine(date.fromordinal(started.toordinal() - 1), NOON.timetz())
    theirs_before = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        model,
        provider_id=provider,
        genai_request_timestamp=day_before,
    ).total_price
    assert before.cost(changed.id, usage) == theirs_before


def test_source_is_the_package_version_and_date(genai: Catalogue) -> None:
    version = genai_prices.__version__
    assert genai.name == f"genai-prices-{version}@2026-11-29"
    assert f"genai-prices {version}" in genai.description
    price = genai.price("openai:gpt-4o-mini")
    assert price.source_url == f"https://pypi.org/project/genai-prices/{version}/"
    assert Catalogue.load(f"genai-prices-{version}@2026-11-29") is genai


def test_wrong_version_or_date_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="is installed"):
        Catalogue.load("genai-prices-0.0.1")
    with pytest.raises(ConfigError, match="not a date"):
        Catalogue.load("genai-prices@soon")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("chainkit tried to reach the network for prices")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(genai_prices.UpdatePrices, "fetch", refuse)
    yield


def test_loading_never_fetches_prices_and_ignores_a_custom_snapshot(no_network: None) -> None:
    fake = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    data_snapshot.set_custom_snapshot(fake)
    try:
        catalogue = Catalogue.load("genai-prices@2026-11-28")
        assert catalogue.cost("openai:gpt-4o-mini", Usage(1_000, 0)) == Decimal("0.00015")
        assert catalogue.card("gpt-4o-mini").id == "openai:gpt-4o-mini"
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_genai_prices_is_listed_and_lists_its_providers(capsys: pytest.CaptureFixture[str]) -> None:
    from chainkit.cli import main

    assert "genai-prices" in Catalogue.names()
    assert main(["prices", "--catalogue", "genai-prices", "--provider", "openai"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[2:-1]]
    assert rows
    assert all(r[0].startswith("openai:") for r in rows)
    assert any(r[0] == "openai:gpt-4o-mini" and r[3] == "0.15" for r in rows)


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-flash", "deepseek-reasoner"])
def test_time_of_day_prices_follow_the_calls_utc_time(genai: Catalogue, model: str) -> None:
    usage = Usage(999_000, 1_000_000, cache_read_tokens=1_000)
    seen = set()
    for hour in range(24):
        for minute in (0, 29, 30, 59):
            at = datetime(2026, 11, 29, hour, minute, tzinfo=UTC)
            theirs = genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000
                ),
                model,
                provider_id="deepseek",
                genai_request_timestamp=at,
            ).total_price
            assert genai.cost("deepseek:" + model, usage, at=at) == theirs, at
            seen.add(theirs)
    assert len(seen) == 2  # a peak and an off-peak price, both applied


def test_a_time_of_day_price_takes_the_calls_zone_into_account(genai: Catalogue) -> None:
    from datetime import timedelta, timezone

    tokyo = timezone(timedelta(hours=9))
    usage = Usage(1_000_000, 1_000_000)
    # 01:00 in Tokyo is 16:00 UTC (peak, before 16:30), 02:00 is 17:00 UTC (off-peak).
    peak = genai.cost("deepseek:deepseek-chat", usage, at=datetime(2026, 11, 30, 1, tzinfo=tokyo))
    off = genai.cost("deepseek:deepseek-chat", usage, at=datetime(2026, 11, 30, 2, tzinfo=tokyo))
    assert (peak, off) == (Decimal("1.37"), Decimal("0.685"))


def test_azure_follows_genai_prices_fallback_to_openais_models(genai: Catalogue) -> None:
    usage = Usage(2_000, 100)
    theirs = their_price(usage, "gpt-4o-mini", "azure")
    assert genai.cost("azure:gpt-4o-mini", usage) == theirs == Decimal("0.00036")
    assert genai.card("azure:gpt-4o-mini-2024-07-18").id == "openai:gpt-4o-mini"


def test_model_names_with_colons_get_their_provider() -> None:
    from chainkit.pricing_genai import genai_model_id

    fine_tune = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    assert genai_model_id("openai", fine_tune) == "openai:" + fine_tune
    assert genai_model_id("openai", "openai:gpt-4o-mini") == "openai:gpt-4o-mini"
    assert genai_model_id("openai", "gpt-4o-mini") == "openai:gpt-4o-mini"


def test_the_current_catalogue_follows_the_date(monkeypatch: pytest.MonkeyPatch) -> None:
    from chainkit import pricing_genai

    monkeypatch.setattr(pricing_genai, "_today", lambda: date(2026, 11, 30))
    current = pricing_genai.current_genai_catalogue()
    usage = Usage(400_000, 100_000)
    before = current.cost("google:gemini-4-argon", usage)
    assert current.name.endswith("@2026-11-30")
    monkeypatch.setattr(pricing_genai, "_today", lambda: date(2026, 12, 1))
    after = current.cost("google:gemini-4-argon", usage)
    assert current.name.endswith("@2026-12-01")
    assert after == Catalogue.load("genai-prices@2026-12-01").cost("google:gemini-4-argon", usage)
    assert after != before


@pytest.mark.parametrize(
    "model_id",
    [
        "eu.openai:gpt-4o-mini",
        "us.anthropic:claude-sonnet-4-5",
        "global.anthropic:claude-sonnet-4-5",
        "jp.claude-sonnet-4-5",
    ],
)
def test_a_bedrock_profile_prefix_names_no_genai_prices_model(
    genai: Catalogue, model_id: str
) -> None:
    assert model_id not in genai
    with pytest.raises(ConfigError, match="Unknown model"):
        genai.cost(model_id, Usage(1_000, 0))
