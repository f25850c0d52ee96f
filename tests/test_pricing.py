"""Price catalogues: the article's prices, Bedrock lookups, cache and batch prices, bad files."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import Catalogue, ConfigError, Usage

SEED = "seed-2024"
BEDROCK = "bedrock-2026-11"
CURRENT = "bedrock-2026-11-29"
SONNET_4 = "anthropic.claude-sonnet-4-20250514-v1:0"
HAIKU_3 = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture(scope="module")
def seed() -> Catalogue:
    return Catalogue.load(SEED)


@pytest.fixture(scope="module")
def bedrock() -> Catalogue:
    return Catalogue.load(BEDROCK)


# -- the article's prices ------------------------------------------------------------------------


def test_article_worked_example_costs_0_184_exactly(seed: Catalogue) -> None:
    cost = seed.cost("anthropic.claude-v2", Usage(11_000, 4_000))
    assert cost == Decimal("0.184")
    assert isinstance(cost, Decimal)


@pytest.mark.parametrize(
    ("model_id", "input_per_1k", "output_per_1k"),
    [
        ("anthropic.claude-v2", "0.008", "0.024"),
        ("anthropic.claude-instant-v1", "0.0008", "0.0024"),
        ("anthropic.claude-3-sonnet-20240229-v1:0", "0.003", "0.015"),
        ("anthropic.claude-3-opus-20240229-v1:0", "0.015", "0.075"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "0.00025", "0.00125"),
        ("mistral.mixtral-8x7b-instruct-v0:1", "0.00045", "0.0007"),
        ("davinci", "0.06", "0.06"),
        ("generic.powerful", "0.06", "0.06"),
        ("generic.intent", "0.003", "0.003"),
        ("generic.responder", "0.006", "0.006"),
    ],
)
def test_seed_prices_per_1k_tokens(
    seed: Catalogue, model_id: str, input_per_1k: str, output_per_1k: str
) -> None:
    assert seed.cost(model_id, Usage(input_tokens=1_000)) == Decimal(input_per_1k)
    assert seed.cost(model_id, Usage(output_tokens=1_000)) == Decimal(output_per_1k)


def test_seed_titan_text_express_input_price(seed: Catalogue) -> None:
    assert seed.cost("amazon.titan-text-express-v1", Usage(1_000, 0)) == Decimal("0.0008")


def test_seed_chatbot_powerful_call_of_100_tokens_costs_0_006(seed: Catalogue) -> None:
    # The article's chatbot: 100 tokens processed per interaction at $0.06 per 1K.
    assert seed.cost("powerful", Usage(50, 50)) == Decimal("0.006")


def test_seed_prices_apply_in_any_region(seed: Catalogue) -> None:
    usage = Usage(11_000, 4_000)
    assert seed.cost("claude-2", usage, region="eu-west-3") == Decimal("0.184")


# -- lookups -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("claude-sonnet-4", SONNET_4),
        ("nova-micro", "amazon.nova-micro-v1:0"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", SONNET_4),
        ("global.anthropic.claude-sonnet-4-20250514-v1:0", SONNET_4),
        ("eu.anthropic.claude-3-haiku-20240307-v1:0", HAIKU_3),
        # A profile id the file does not list as an alias resolves by its prefix.
        ("us.amazon.titan-text-express-v1", "amazon.titan-text-express-v1"),
        ("us.mistral.mixtral-8x7b-instruct-v0:1", "mistral.mixtral-8x7b-instruct-v0:1"),
    ],
)
def test_lookup_by_alias_and_cross_region_profile(
    bedrock: Catalogue, model_id: str, expected: str
) -> None:
    assert bedrock.card(model_id).id == expected
    assert model_id in bedrock


def test_profile_id_is_priced_like_the_base_model(bedrock: Catalogue) -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert bedrock.cost("us." + SONNET_4, usage) == bedrock.cost(SONNET_4, usage) == Decimal(18)


def test_unknown_model_names_closest_ids(seed: Catalogue) -> None:
    with pytest.raises(ConfigError) as info:
        seed.cost("anthropic.claude-v3", Usage(10, 10))
    message = str(info.value)
    assert "'anthropic.claude-v3'" in message
    assert "anthropic.claude-v2" in message
    assert "chainkit prices --catalogue seed-2024" in message


def test_unknown_model_is_not_in_catalogue(bedrock: Catalogue) -> None:
    assert "openai.gpt-9" not in bedrock
    assert "us.openai.gpt-9" not in bedrock
    with pytest.raises(ConfigError, match=r"Unknown model 'us\.openai\.gpt-9'"):
        bedrock.card("us.openai.gpt-9")


# -- cache, tiers, regions -----------------------------------------------------------------------


def test_cache_tokens_priced_from_catalogue(bedrock: Catalogue) -> None:
    price = bedrock.card(SONNET_4).price()
    # The catalogue's per-million figures the hand calculation below rests on.
    assert (price.input, price.output) == (Decimal(3), Decimal(15))
    assert (price.cache_read, price.cache_write) == (Decimal("0.3"), Decimal("3.75"))
    usage = Usage(1_000, 500, cache_read_tokens=20_000, cache_write_tokens=4_000)
    # 1000*3 + 500*15 + 20000*0.3 + 4000*3.75 = 31500 per million -> $0.0315
    assert bedrock.cost(SONNET_4, usage) == Decimal("0.0315")


def test_cache_read_is_cheaper_than_input_not_free(bedrock: Catalogue) -> None:
    cached = bedrock.cost(SONNET_4, Usage(cache_read_tokens=1_000_000))
    assert cached == Decimal("0.3")
    assert Decimal(0) < cached < bedrock.cost(SONNET_4, Usage(input_tokens=1_000_000))


def test_cache_read_on_model_without_cache_price_is_an_error(bedrock: Catalogue) -> None:
    with pytest.raises(ConfigError) as info:
        bedrock.cost("claude-3-sonnet", Usage(100, 10, cache_read_tokens=5))
    message = str(info.value)
    assert "anthropic.claude-3-sonnet-20240229-v1:0" in message
    assert "cache-read" in message
    assert "5 cache-read tokens" in message


def test_cache_write_on_model_with_only_cache_read_price_is_an_error(bedrock: Catalogue) -> None:
    assert bedrock.cost("nova-micro", Usage(cache_read_tokens=1_000_000)) == Decimal("0.00875")
    with pytest.raises(ConfigError, match="no cache-write price"):
        bedrock.cost("nova-micro", Usage(cache_write_tokens=1))


def test_zero_cache_tokens_on_uncached_model_is_fine(bedrock: Catalogue) -> None:
    assert bedrock.cost("claude-3-sonnet", Usage(1_000, 1_000)) == Decimal("0.018")


def test_batch_tier_cheaper_than_on_demand_wherever_both_exist(bedrock: Catalogue) -> None:
    pairs = 0
    for card in bedrock:
        for batch in (p for p in card.prices if p.tier == "batch"):
            on_demand = card.price(batch.region, "on_demand")
            assert batch.input < on_demand.input, card.id
            assert batch.output < on_demand.output, card.id
            pairs += 1
    assert pairs >= 5


def test_batch_tier_halves_haiku_cost(bedrock: Catalogue) -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert bedrock.cost(HAIKU_3, usage) == Decimal("1.5")
    assert bedrock.cost(HAIKU_3, usage, tier="batch") == Decimal("0.75")


def test_tier_without_price_is_an_error_listing_tiers(bedrock: Catalogue) -> None:
    with pytest.raises(ConfigError) as info:
        bedrock.cost(SONNET_4, Usage(1, 1), tier="flex")
    assert "'flex'" in str(info.value)
    assert "['on_demand']" in str(info.value)


def test_regional_price_differs(bedrock: Catalogue) -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert bedrock.cost("mixtral-8x7b", usage) == Decimal("1.15")
    assert bedrock.cost("mixtral-8x7b", usage, region="eu-west-3") == Decimal("1.50")


def test_unknown_region_is_an_error_listing_regions(bedrock: Catalogue) -> None:
    with pytest.raises(ConfigError) as info:
        bedrock.cost(HAIKU_3, Usage(1, 1), region="mars-1")
    message = str(info.value)
    assert "'mars-1'" in message
    assert "['eu-central-1', 'us-east-1']" in message


def test_region_without_price_for_model_is_an_error(bedrock: Catalogue) -> None:
    with pytest.raises(ConfigError, match=r"'eu-central-1'.*\['us-east-1'\]"):
        bedrock.cost(SONNET_4, Usage(1, 1), region="eu-central-1")


# -- bundled catalogues --------------------------------------------------------------------------


def test_names_lists_both_bundled_catalogues() -> None:
    names = Catalogue.names()
    assert SEED in names
    assert BEDROCK in names


def test_default_catalogue_is_the_dated_bedrock_one() -> None:
    assert Catalogue.load().name == CURRENT


@pytest.mark.parametrize("name", Catalogue.names())
def test_every_bundled_catalogue_loads_with_sourced_prices(name: str) -> None:
    catalogue = Catalogue.load(name)
    assert catalogue.name.startswith(name)
    assert len(catalogue) > 0
    for card in catalogue:
        assert card.prices, card.id
        for price in card.prices:
            assert price.source_url.startswith("https://"), (card.id, price.source_url)
            assert price.effective_date.year >= 2023, card.id
            assert price.input >= 0
            assert price.output >= 0


@pytest.mark.parametrize("name", Catalogue.names())
def test_ids_and_aliases_unique_in_bundled_catalogue(name: str) -> None:
    keys = [key for card in Catalogue.load(name) for key in (card.id, *card.aliases)]
    assert len(keys) == len(set(keys))


def test_unknown_bundled_catalogue_lists_bundled_names() -> None:
    with pytest.raises(ConfigError) as info:
        Catalogue.load("seed2024")
    message = str(info.value)
    assert "'seed2024'" in message
    assert BEDROCK in message
    assert "Did you mean 'seed-2024'?" in message


# -- price files ---------------------------------------------------------------------------------


def _price(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "region": "us-east-1",
        "tier": "on_demand",
        "input": "0.5",
        "output": "1.5",
        "source_url": "https://example.com/prices",
        "effective_date": "2025-01-01",
    }
    row.update(changes)
    return row


def _file(tmp_path: Path, prices: list[dict[str, Any]], **card: Any) -> Path:
    data = {
        "catalogue": "test",
        "unit_tokens": 1_000_000,
        "models": [
            {
                "id": "other.model",
                "name": "Other",
                "provider": "t",
                "context_window": 10,
                "prices": [_price()],
            },
            {
                "id": "test.model-v1",
                "name": "Test",
                "provider": "t",
                "context_window": 1000,
                "prices": prices,
                **card,
            },
        ],
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_price_file_loads_and_prices(tmp_path: Path) -> None:
    path = _file(tmp_path, [_price(cache_read="0.05")], aliases=["test"])
    catalogue = Catalogue.load(str(path))
    usage = Usage(2_000, 1_000, cache_read_tokens=10_000)
    # 2000*0.5 + 1000*1.5 + 10000*0.05 = 3000 per million
    assert catalogue.cost("test", usage) == Decimal("0.003")


def test_price_file_per_1k_is_scaled_to_per_million(tmp_path: Path) -> None:
    path = _file(tmp_path, [_price(input=0.003)])
    raw = json.loads(path.read_text())
    raw["unit_tokens"] = 1000
    path.write_text(json.dumps(raw))
    price = Catalogue.from_file(path).card("test.model-v1").price()
    assert price.input == Decimal(3)
    assert price.output == Decimal(1500)


def _malformed(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Catalogue.from_file(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (_price(input="abc"), "prices.0.input"),
        (_price(input="-0.25"), "prices.0.input"),
        (_price(output="NaN"), "prices.0.output"),
        (_price(tier="spot"), "prices.0.tier"),
        (_price(discount="0.1"), "prices.0.discount"),
        ({k: v for k, v in _price().items() if k != "output"}, "prices.0.output"),
        ({k: v for k, v in _price().items() if k != "source_url"}, "prices.0.source_url"),
        (_price(effective_date="soon"), "prices.0.effective_date"),
    ],
)
def test_malformed_price_row_names_file_model_and_field(
    tmp_path: Path, row: dict[str, Any], field: str
) -> None:
    path = _file(tmp_path, [row])
    message = _malformed(path)
    assert str(path) in message
    assert "'test.model-v1'" in message
    assert f"'{field}'" in message


def test_negative_price_message_shows_the_value(tmp_path: Path) -> None:
    message = _malformed(_file(tmp_path, [_price(input="-0.25")]))
    assert "-0.25" in message


def test_unknown_tier_message_shows_the_value(tmp_path: Path) -> None:
    message = _malformed(_file(tmp_path, [_price(tier="spot")]))
    assert "'spot'" in message


def test_missing_card_field_names_model_and_field(tmp_path: Path) -> None:
    path = _file(tmp_path, [_price()], context_window=None)
    message = _malformed(path)
    assert str(path) in message
    assert "'test.model-v1'" in message
    assert "'context_window'" in message


def test_extra_card_field_names_model_and_field(tmp_path: Path) -> None:
    message = _malformed(_file(tmp_path, [_price()], colour="blue"))
    assert "'test.model-v1'" in message
    assert "'colour'" in message


def test_non_json_price_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"catalogue": "x", "models": [', encoding="utf-8")
    message = _malformed(path)
    assert str(path) in message
    assert "not valid JSON" in message


def test_missing_price_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    assert str(path) in _malformed(path)


def test_duplicate_alias_names_both_models(tmp_path: Path) -> None:
    message = _malformed(_file(tmp_path, [_price()], aliases=["other.model"]))
    assert "'other.model'" in message
    assert "'test.model-v1'" in message


def test_default_region_falls_back_to_first_priced_region(tmp_path: Path) -> None:
    catalogue = Catalogue.from_file(_file(tmp_path, [_price(region="eu-west-3", input="0.7")]))
    assert catalogue.cost("test.model-v1", Usage(1_000_000, 0)) == Decimal("0.7")


def test_explicit_region_without_price_is_not_silently_priced_elsewhere(tmp_path: Path) -> None:
    path = _file(tmp_path, [_price(region="eu-west-3", input="0.7")])
    catalogue = Catalogue.from_file(path)
    with pytest.raises(ConfigError, match=r"'us-east-1'.*\['eu-west-3'\]"):
        catalogue.cost("test.model-v1", Usage(1_000_000, 0), region="us-east-1")


# -- cross-region profiles -----------------------------------------------------------------------


def _geo_catalogue(tmp_path: Path) -> Catalogue:
    return Catalogue.from_file(
        _file(
            tmp_path,
            [
                _price(region="global", input="3", output="15"),
                _price(region="us-east-1", input="3.3", output="16.5"),
                _price(region="us-west-2", input="3.3", output="16.5"),
                _price(region="eu-central-1", input="3.3", output="16.5"),
                _price(region="eu-west-3", input="3.4", output="17"),
                _price(region="ap-northeast-1", input="3.5", output="17.5"),
            ],
        )
    )


@pytest.mark.parametrize(
    ("model_id", "region", "expected"),
    [
        ("global.test.model-v1", None, "18"),
        ("global.test.model-v1", "eu-west-3", "18"),
        ("us.test.model-v1", None, "19.8"),
        ("us.test.model-v1", "us-west-2", "19.8"),
        ("eu.test.model-v1", "eu-west-3", "20.4"),
        ("eu.test.model-v1", "eu-central-1", "19.8"),
        ("jp.test.model-v1", None, "21"),
        ("apac.test.model-v1", "ap-northeast-1", "21"),
        ("test.model-v1", None, "19.8"),
        ("test.model-v1", "eu-west-3", "20.4"),
    ],
)
def test_profiles_priced_as_aws_bills_them(
    tmp_path: Path, model_id: str, region: str | None, expected: str
) -> None:
    catalogue = _geo_catalogue(tmp_path)
    assert catalogue.cost(model_id, Usage(1_000_000, 1_000_000), region=region) == Decimal(expected)


def test_geographic_profile_without_region_refuses_when_its_regions_differ(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ConfigError, match=r"eu\. profile.*\['eu-central-1', 'eu-west-3'\].*region="
    ):
        _geo_catalogue(tmp_path).cost("eu.test.model-v1", Usage(1, 1))


def test_geographic_profile_is_never_priced_at_another_geography(tmp_path: Path) -> None:
    catalogue = Catalogue.from_file(_file(tmp_path, [_price(region="us-east-1")]))
    with pytest.raises(ConfigError, match=r"no 'on_demand' price in the 'eu' geography"):
        catalogue.cost("eu.test.model-v1", Usage(1, 1))
    with pytest.raises(ConfigError, match=r"global cross-region profile"):
        catalogue.cost("global.test.model-v1", Usage(1, 1))


def test_profile_called_from_a_region_outside_its_geography_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eu\. cross-region profile.*'us-east-1'"):
        _geo_catalogue(tmp_path).cost("eu.test.model-v1", Usage(1, 1), region="us-east-1")


def test_geography_row_prices_a_profile_from_any_of_its_regions(tmp_path: Path) -> None:
    catalogue = Catalogue.from_file(
        _file(tmp_path, [_price(region="us-east-1"), _price(region="eu", input="0.6")])
    )
    usage = Usage(1_000_000, 0)
    assert catalogue.cost("eu.test.model-v1", usage) == Decimal("0.6")
    assert catalogue.cost("eu.test.model-v1", usage, region="eu-north-1") == Decimal("0.6")


def test_eu_llama_profile_priced_at_its_eu_row_not_us_east_1(bedrock: Catalogue) -> None:
    usage = Usage(1_000_000, 0)
    assert bedrock.cost("meta.llama3-2-1b-instruct-v1:0", usage) == Decimal("0.1")
    assert bedrock.cost("eu.meta.llama3-2-1b-instruct-v1:0", usage) == Decimal("0.13")


# -- one-hour cache writes, queries, requests, long-context tiers --------------------------------


def test_one_hour_cache_writes_priced_at_their_own_rate(tmp_path: Path) -> None:
    row = _price(input="3", output="15", cache_read="0.3", cache_write="3.75", cache_write_1h="6")
    catalogue = Catalogue.from_file(_file(tmp_path, [row]))
    usage = Usage(100, 10, cache_write_tokens=1_000, cache_write_1h_tokens=400)
    # 100*3 + 10*15 + 600*3.75 + 400*6 = 300 + 150 + 2250 + 2400 = 5100 per million
    assert catalogue.cost("test.model-v1", usage) == Decimal("0.0051")
    # A plain Usage prices every write at the five-minute rate.
    plain = Usage(100, 10, cache_write_tokens=1_000)
    assert catalogue.cost("test.model-v1", plain) == Decimal("0.0042")


def test_one_hour_cache_write_without_price_is_an_error(tmp_path: Path) -> None:
    catalogue = Catalogue.from_file(_file(tmp_path, [_price(cache_write="0.6")]))
    usage = Usage(0, 0, cache_write_tokens=10, cache_write_1h_tokens=10)
    with pytest.raises(ConfigError, match="no one-hour cache-write price"):
        catalogue.cost("test.model-v1", usage)


def test_billed_usage_validates_and_adds() -> None:
    with pytest.raises(ValueError, match="exceeds cache_write_tokens"):
        Usage(cache_write_tokens=1, cache_write_1h_tokens=2)
    with pytest.raises(ValueError, match="queries must be a non-negative int"):
        Usage(queries=-1)
    total = Usage(1, 1, 0, 5, 5, 2) + Usage(1, 1, 0, 3)
    assert total == Usage(2, 2, 0, 8, 5, 2)


def test_rerank_queries_priced_per_thousand(tmp_path: Path) -> None:
    row = _price(input="0", output="0", per_1k_queries="2")
    catalogue = Catalogue.from_file(_file(tmp_path, [row]))
    assert catalogue.cost("test.model-v1", Usage(queries=3)) == Decimal("0.006")
    with pytest.raises(ConfigError, match="no per-query price"):
        Catalogue.from_file(_file(tmp_path, [_price()])).cost("test.model-v1", Usage(queries=1))


def test_per_request_fee_added_to_every_call(tmp_path: Path) -> None:
    catalogue = Catalogue.from_file(_file(tmp_path, [_price(per_1k_requests="5")]))
    # 1000*0.5 + 0 per million = 0.0005, plus $5 per 1,000 requests
    assert catalogue.cost("test.model-v1", Usage(1_000, 0)) == Decimal("0.0055")


def test_long_context_tier_prices_the_whole_call(tmp_path: Path) -> None:
    tier = {"above_prompt_tokens": 200_000, "input": "6", "output": "22.5"}
    catalogue = Catalogue.from_file(
        _file(tmp_path, [_price(input="3", output="15", cache_read="0.3", tiers=[tier])])
    )
    at = Usage(200_000, 1_000)
    over = Usage(150_000, 1_000, cache_read_tokens=50_001)
    assert catalogue.cost("test.model-v1", at) == Decimal("0.615")
    # Over the threshold every token pays the tier's rate; the tier has no cache-read price.
    with pytest.raises(ConfigError, match="cache-read"):
        catalogue.cost("test.model-v1", over)
    assert catalogue.cost("test.model-v1", Usage(200_001, 1_000)) == Decimal("1.222506")


def test_price_row_confidence_and_note_load(tmp_path: Path) -> None:
    row = _price(confidence="low", note="transcribed by hand")
    price = Catalogue.from_file(_file(tmp_path, [row])).price("test.model-v1")
    assert (price.confidence, price.note) == ("low", "transcribed by hand")
    assert _malformed(_file(tmp_path, [_price(confidence="maybe")]))


# -- the dated Bedrock catalogue -----------------------------------------------------------------


@pytest.fixture(scope="module")
def current() -> Catalogue:
    return Catalogue.load(CURRENT)


SONNET_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU_45 = "anthropic.claude-haiku-4-5-20251001-v1:0"
OPUS_45 = "anthropic.claude-opus-4-5-20251101-v1:0"


@pytest.mark.parametrize(
    ("model_id", "global_rates", "geo_rates"),
    [
        (SONNET_45, ("3", "15"), ("3.3", "16.5")),
        (HAIKU_45, ("1", "5"), ("1.1", "5.5")),
        (OPUS_45, ("5", "25"), ("5.5", "27.5")),
    ],
)
def test_claude_45_geographic_profiles_cost_10_percent_over_global(
    current: Catalogue, model_id: str, global_rates: tuple[str, str], geo_rates: tuple[str, str]
) -> None:
    def rates(profile_id: str, region: str | None = None) -> tuple[Decimal, Decimal]:
        price = current.price(profile_id, region)
        return price.input, price.output

    assert rates("global." + model_id) == tuple(map(Decimal, global_rates))
    for profile_id, region in [
        ("us." + model_id, None),
        ("us." + model_id, "us-west-2"),
        ("eu." + model_id, None),
        ("eu." + model_id, "eu-west-1"),
        (model_id, None),
        (model_id, "us-east-1"),
    ]:
        assert rates(profile_id, region) == tuple(map(Decimal, geo_rates)), profile_id


@pytest.mark.parametrize(
    ("model_id", "cache_read", "cache_write", "cache_write_1h"),
    [
        ("us." + SONNET_45, "0.33", "4.125", "6.6"),
        ("global." + SONNET_45, "0.3", "3.75", "6"),
        ("us." + HAIKU_45, "0.11", "1.375", "2.2"),
        ("us." + OPUS_45, "0.55", "6.875", "11"),
        ("anthropic.claude-opus-4-1-20250805-v1:0", "1.5", "18.75", "30"),
        (SONNET_4, "0.3", "3.75", "6"),
    ],
)
def test_cache_prices_of_claude_4_models(
    current: Catalogue, model_id: str, cache_read: str, cache_write: str, cache_write_1h: str
) -> None:
    price = current.price(model_id)
    assert (price.cache_read, price.cache_write, price.cache_write_1h) == (
        Decimal(cache_read),
        Decimal(cache_write),
        Decimal(cache_write_1h),
    )
    # Anthropic bills five-minute writes at 1.25x input and one-hour writes at 2x.
    assert price.cache_write == price.input * Decimal("1.25")
    assert price.cache_write_1h == price.input * 2


def test_eu_profiles_never_priced_at_us_east_1(current: Catalogue) -> None:
    assert current.cost("eu.meta.llama3-2-1b-instruct-v1:0", Usage(1_000_000, 0)) == Decimal("0.13")
    with pytest.raises(ConfigError, match=r"no 'on_demand' price in the 'eu' geography"):
        current.cost("eu.amazon.nova-micro-v1:0", Usage(1_000, 100))


def test_us_west_2_prices_models(current: Catalogue) -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert current.cost(HAIKU_3, usage, region="us-west-2") == Decimal("1.5")
    assert current.cost("amazon.nova-micro-v1:0", usage, region="us-west-2") == Decimal("0.175")
    assert current.cost("us." + SONNET_45, usage, region="us-west-2") == Decimal("19.8")


def test_claude_3_opus_is_priced_in_us_west_2_only(current: Catalogue) -> None:
    card = current.card("anthropic.claude-3-opus-20240229-v1:0")
    assert card.regions == ("us-west-2",)
    assert current.cost("us.anthropic.claude-3-opus-20240229-v1:0", Usage(1_000, 0)) == Decimal(
        "0.015"
    )


@pytest.mark.parametrize(
    ("model_id", "input_price", "output_price"),
    [
        ("us.anthropic.claude-sonnet-4-6-v1:0", "3.3", "16.5"),
        ("global.anthropic.claude-opus-4-6-v1:0", "5", "25"),
        ("global.anthropic.claude-opus-4-7-v1:0", "5", "25"),
        ("us.anthropic.claude-opus-4-8-v1:0", "5.5", "27.5"),
        ("meta.llama4-maverick-17b-instruct-v1:0", "0.24", "0.97"),
        ("us.meta.llama4-scout-17b-instruct-v1:0", "0.17", "0.66"),
        ("us.deepseek.r1-v1:0", "1.35", "5.4"),
        ("openai.gpt-oss-20b-1:0", "0.07", "0.3"),
        ("openai.gpt-oss-120b-1:0", "0.15", "0.6"),
        ("qwen.qwen3-32b-v1:0", "0.15", "0.6"),
        ("mistral.mistral-large-3-675b-instruct", "0.5", "1.5"),
        ("mistral.pixtral-large-2502-v1:0", "2", "6"),
        ("mistral.ministral-3-8b-instruct", "0.15", "0.15"),
        ("global.amazon.nova-2-lite-v1:0", "0.3", "2.5"),
        ("us.amazon.nova-2-lite-v1:0", "0.33", "2.75"),
        ("google.gemma-3-27b-it", "0.23", "0.38"),
        ("amazon.titan-embed-text-v2:0", "0.02", "0"),
    ],
)
def test_models_bedrock_users_run_today_are_priced(
    current: Catalogue, model_id: str, input_price: str, output_price: str
) -> None:
    price = current.price(model_id)
    assert (price.input, price.output) == (Decimal(input_price), Decimal(output_price))
    assert price.source_url.startswith("https://")


def test_embeddings_priced_per_input_token(current: Catalogue) -> None:
    assert current.cost("amazon.titan-embed-text-v2:0", Usage(50_000, 0)) == Decimal("0.001")


def test_llama_4_batch_is_half_price(current: Catalogue) -> None:
    usage = Usage(1_000_000, 1_000_000)
    model = "meta.llama4-maverick-17b-instruct-v1:0"
    assert current.cost(model, usage, tier="batch") * 2 == current.cost(model, usage)


def test_long_context_tier_in_the_dated_catalogue(current: Catalogue) -> None:
    price = current.price("global.anthropic.claude-haiku-5-5")
    assert price.tiers
    threshold, long = price.tiers[0]
    assert threshold == 100_000
    assert long.input > price.input


def test_every_row_of_the_dated_catalogue_has_source_date_and_confidence(
    current: Catalogue,
) -> None:
    for card in current:
        for price in card.prices:
            assert price.source_url.startswith("https://"), card.id
            assert price.confidence in ("high", "low")
            if "Aditya-Poddar" in price.source_url:
                assert price.confidence == "low", card.id


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("input", "1E+999999", "less than or equal to 1000000"),
        ("output", "NaN", "finite"),
        ("cache_read", "Infinity", "finite"),
        ("per_1k_requests", "1e7", "less than or equal to 1000000"),
        ("input", "-1", "greater than or equal to 0"),
    ],
)
def test_price_files_with_absurd_prices_are_refused_on_load(
    tmp_path: Path, field: str, value: str, says: str
) -> None:
    path = _file(tmp_path, [_price(**{field: value})])
    with pytest.raises(ConfigError, match=says) as caught:
        Catalogue.from_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"field 'prices.0.{field}'" in message and "test.model-v1" in message


def test_chainkit_prices_refuses_an_overflowing_price_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chainkit.cli import main

    path = _file(tmp_path, [_price(input="1E+999999")])
    code = main(["prices", "--catalogue", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "1E+999999" in err


@pytest.mark.parametrize("name", [n for n in Catalogue.names() if not n.startswith("genai")])
def test_a_catalogue_claims_rerank_prices_only_if_it_has_them(name: str) -> None:
    catalogue = Catalogue.load(name)
    priced = [c.id for c in catalogue for p in c.prices if p.per_1k_queries is not None]
    claims = "rerank per" in catalogue.description.lower()
    assert claims == bool(priced), (name, priced)
    if not priced:
        with pytest.raises(ConfigError, match="Unknown model"):
            catalogue.cost("amazon.rerank-v1:0", Usage(queries=1_000))


@pytest.mark.parametrize(
    "model_id",
    [
        "meta.llama3-8b-instruct-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ],
)
@pytest.mark.parametrize("region", ["", " ", "eu-west-1 "])
def test_an_empty_or_padded_region_is_refused_the_same_way_everywhere(
    model_id: str, region: str
) -> None:
    with pytest.raises(ConfigError, match="is not an AWS region name"):
        Catalogue.load().cost(model_id, Usage(1_000, 0), region=region)
