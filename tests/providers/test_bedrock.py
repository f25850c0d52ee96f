from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import (
    BadResponse,
    Budget,
    BudgetExceeded,
    Catalogue,
    ConfigError,
    Generate,
    Ledger,
    Prompt,
    ProviderError,
    Request,
    Throttled,
    Usage,
)
from chainkit.providers.bedrock import (
    BedrockModel,
    decode_metadata,
    encode_metadata,
    request_metadata,
)
from chainkit.providers.model import METADATA_KEYS
from chainkit.records import Tags
from tests.providers.bedrock_http import CACHE_TTL_COSTS, json_reply, stream_reply

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
CATALOGUE = Catalogue.load("bedrock-2026-11")


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1")


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def model(client: Any, model_id: str = HAIKU, **kwargs: Any) -> BedrockModel:
    kwargs.setdefault("count_tokens", False)
    return BedrockModel(model_id, client=client, wait_initial=0, wait_max=0, **kwargs)


def converse_params(model_id: str, text: str, **extra: Any) -> dict[str, Any]:
    params = {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "system": ANY,
        "inferenceConfig": {"maxTokens": 200},
        "requestMetadata": ANY,
    }
    params.update(extra)
    return params


def per_million(tokens: int, price: Decimal) -> Decimal:
    return tokens * price / 1_000_000


def test_plain_reply_is_recorded_with_reported_usage_and_priced(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    request = Request("Where is order 10234?", id="req-1", tags={"tenant": "acme"})
    metadata = {"tenant": "acme", "stage": "generate", "request_id": "req-1"}
    stub.add_response(
        "converse",
        bedrock_reply("converse_plain"),
        converse_params(HAIKU, "Where is order 10234?", requestMetadata=metadata),
    )
    ledger = Ledger()
    stage = Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE)
    result = stage.run(request, ledger)

    assert result.text.startswith("Your order 10234 left our warehouse")
    (entry,) = ledger.entries()
    assert entry.usage == Usage(412, 23)
    assert entry.estimated is False
    assert entry.attempts == 1
    price = CATALOGUE.card(HAIKU).price("us-east-1")
    assert entry.cost == per_million(412, price.input) + per_million(23, price.output)
    assert entry.cost == Decimal("0.00013175")


def test_cached_prompt_reply_priced_to_the_cent(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    stub.add_response("converse", bedrock_reply("converse_cached"), converse_params(SONNET4, "q"))
    ledger = Ledger()
    Generate(model=model(client, SONNET4), max_tokens=200, catalogue=CATALOGUE).run(
        Request("q"), ledger
    )
    (entry,) = ledger.entries()
    # Bedrock's inputTokens excludes cached tokens: nothing is counted twice.
    assert entry.usage == Usage(120, 300, cache_read_tokens=2000, cache_write_tokens=1000)
    p = CATALOGUE.card(SONNET4).price("us-east-1")
    by_hand = (
        per_million(120, p.input)
        + per_million(300, p.output)
        + per_million(2000, p.cache_read or Decimal("NaN"))
        + per_million(1000, p.cache_write or Decimal("NaN"))
    )
    assert entry.cost == by_hand
    # $3/M in, $15/M out, $0.30/M cache read, $3.75/M cache write.
    assert entry.cost == Decimal("0.00921")


def test_throttled_twice_then_success_records_three_attempts(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    for _ in range(2):
        stub.add_client_error("converse", "ThrottlingException", "Too many requests", 429)
    stub.add_response("converse", bedrock_reply("converse_plain"))
    ledger = Ledger()
    Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE).run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert entry.attempts == 3
    assert entry.outcome == "answered"
    assert entry.usage == Usage(412, 23)


def test_throttling_that_never_clears_raises_throttled_and_costs_nothing(
    client: Any, stub: Stubber
) -> None:
    for _ in range(3):
        stub.add_client_error("converse", "ThrottlingException", "Rate exceeded", 429)
    ledger = Ledger()
    stage = Generate(model=model(client, max_attempts=3), max_tokens=200, catalogue=CATALOGUE)
    with pytest.raises(Throttled) as info:
        stage.run(Request("q"), ledger)
    assert info.value.attempts == 3
    assert "ThrottlingException" in str(info.value) and HAIKU in str(info.value)
    (entry,) = ledger.entries()
    assert (entry.outcome, entry.cost, entry.attempts) == ("failed", Decimal(0), 3)


def test_access_denied_is_not_retried_and_says_what_to_do(client: Any, stub: Stubber) -> None:
    stub.add_client_error(
        "converse", "AccessDeniedException", "You don't have access to the model", 403
    )
    ledger = Ledger()
    stage = Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE)
    with pytest.raises(ProviderError) as info:
        stage.run(Request("q"), ledger)
    error = info.value
    assert not isinstance(error, Throttled)
    assert error.code == "AccessDeniedException"
    assert error.attempts == 1
    assert HAIKU in str(error) and "Model access" in str(error)
    (entry,) = ledger.entries()
    assert (entry.outcome, entry.attempts) == ("failed", 1)


def test_validation_error_is_not_retried(client: Any, stub: Stubber) -> None:
    stub.add_client_error("converse", "ValidationException", "maxTokens too large", 400)
    with pytest.raises(ProviderError) as info:
        model(client).complete(Prompt("", "q"), max_tokens=200)
    assert (info.value.code, info.value.attempts) == ("ValidationException", 1)


def test_server_error_is_retried(client: Any, stub: Stubber, bedrock_reply: Any) -> None:
    stub.add_client_error("converse", "InternalServerException", "oops", 500)
    stub.add_response("converse", bedrock_reply("converse_plain"))
    completion = model(client).complete(Prompt("", "q"), max_tokens=200)
    assert completion.attempts == 2


def test_reply_without_usage_is_a_bad_response_of_unknown_cost(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    # Stubber refuses a reply without the required `usage`, so it is served as raw HTTP.
    serve(client, "Converse", json_reply(bedrock_reply("converse_no_usage")))
    ledger = Ledger()
    stage = Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE)
    with pytest.raises(BadResponse, match="no `usage`"):
        stage.run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert entry.outcome == "failed"
    assert entry.cost is None  # billed by Bedrock, but by how much is unknown
    assert ledger.cost is None


def test_application_inference_profile_arn_is_sent_and_priced_as_its_model(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    stub.add_response("converse", bedrock_reply("converse_plain"), converse_params(ARN, "q"))
    ledger = Ledger()
    arn_model = model(client, ARN, priced_as=HAIKU)
    Generate(model=arn_model, max_tokens=200, catalogue=CATALOGUE).run(Request("q"), ledger)
    (entry,) = ledger.entries()
    assert entry.model == HAIKU
    assert entry.cost == Decimal("0.00013175")


def test_arn_without_priced_as_is_refused() -> None:
    with pytest.raises(ConfigError, match="priced_as"):
        BedrockModel(ARN, client=object())


def test_cross_region_profile_id_is_priced_as_the_base_model(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    profile = "us." + HAIKU
    stub.add_response("converse", bedrock_reply("converse_plain"), converse_params(profile, "q"))
    ledger = Ledger()
    Generate(model=model(client, profile), max_tokens=200, catalogue=CATALOGUE).run(
        Request("q"), ledger
    )
    assert ledger.entries()[0].cost == Decimal("0.00013175")


def test_service_tier_is_sent_and_batch_is_refused(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    stub.add_response(
        "converse",
        bedrock_reply("converse_plain"),
        {
            "modelId": HAIKU,
            "messages": ANY,
            "inferenceConfig": ANY,
            "serviceTier": {"type": "priority"},
        },
    )
    model(client, tier="priority").complete(Prompt("", "q"), max_tokens=200)
    with pytest.raises(ConfigError, match="batch"):
        BedrockModel(HAIKU, client=client, tier="batch")


# The documented alphabet (botocore's RequestMetadataKeyString/ValueString), with Java's \s:
# ASCII whitespace only, and ,-. the range ',' to '.'.
DOCUMENTED = re.compile(r"[a-zA-Z0-9 \t\n\x0b\f\r:_@$#=/+,\-.]*")
OK = {
    "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
    "metrics": {"latencyMs": 1},
}


def sent(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every (operation, params) the client is asked to send, from now on."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def remember(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, copy.deepcopy(params)))

    client.meta.events.register("before-parameter-build.bedrock-runtime", remember)
    return calls


def valid(metadata: dict[str, str]) -> bool:
    """Whether ``metadata`` is what Converse documents for requestMetadata."""
    return 1 <= len(metadata) <= 16 and all(
        DOCUMENTED.fullmatch(k) and DOCUMENTED.fullmatch(v) and 1 <= len(k) <= 256 >= len(v)
        for k, v in metadata.items()
    )


AWKWARD = {
    "nbsp": "\u00a0",
    "line separator": "\u2028",
    "next line": "\u0085",
    "tab": "\t",
    "japanese": "東京の顧客",
    "emoji": "🚚📦",
}


@pytest.mark.parametrize("text", AWKWARD.values(), ids=AWKWARD.keys())
def test_request_metadata_is_escaped_into_the_documented_alphabet_and_decodes_back(
    client: Any, stub: Stubber, text: str
) -> None:
    calls = sent(client)
    stub.add_response("converse", OK)
    tags = {f"tenant{text}": f"acme{text}corp", "plain": "acme corp"}
    model(client).complete(Prompt("", "q"), max_tokens=200, metadata=tags)

    [(_, params)] = calls
    metadata = params["requestMetadata"]
    assert valid(metadata)
    assert {decode_metadata(k): decode_metadata(v) for k, v in metadata.items()} == tags
    assert metadata["plain"] == "acme corp"  # what fits the alphabet is sent as it is


def test_keys_that_sanitised_alike_are_both_sent_and_distinct() -> None:
    # The old sanitiser sent both as `a_`: one tag silently replaced the other.
    metadata = request_metadata({"a!": "1", "a?": "2", "a_": "3", "a=21": "4"})
    assert metadata == {"a=21": "1", "a=3F": "2", "a_": "3", "a=3D21": "4"}
    assert {decode_metadata(k) for k in metadata} == {"a!", "a?", "a_", "a=21"}


def test_the_documented_example_encodes_as_shown() -> None:
    assert encode_metadata("Café=1\u00a0東京") == "Caf=C3=A9=3D1=C2=A0=E6=9D=B1=E4=BA=AC"
    assert encode_metadata("acme-corp, eu/west: #1 @ $5 + x.y") == (
        "acme-corp, eu/west: #1 @ $5 + x.y"
    )


def test_decode_refuses_text_no_encoding_gives() -> None:
    for text in ("a=", "a=4", "a=zz", "=FF", "=e3=81=82"):
        with pytest.raises(ValueError):
            decode_metadata(text)


# Tag keys and values within chainkit's Tags limits (no NUL, no lone surrogate), weighted
# towards what collided or slipped through before.
TAG_CHARS = st.one_of(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    st.sampled_from("=!?_a \t\n\u00a0\u2028\u0085東🚚"),
)
TAG_KEYS = st.text(TAG_CHARS, min_size=1, max_size=20).filter(lambda k: k not in METADATA_KEYS)
# 21 characters of at most 12 encoded each: every value fits Bedrock's 256.
TAGS = st.dictionaries(TAG_KEYS, st.text(TAG_CHARS, max_size=21), max_size=14).map(Tags)


@given(TAGS, TAGS)
@settings(max_examples=300, deadline=None)
def test_metadata_encoding_is_injective_valid_and_reversible(
    first: dict[str, str], second: dict[str, str]
) -> None:
    own = {"stage": "generate", "request_id": "req-1"}
    a = request_metadata({**first, **own})
    b = request_metadata({**second, **own})
    assert valid(a)
    assert list(a)[:2] == ["stage", "request_id"]
    assert {decode_metadata(k): decode_metadata(v) for k, v in a.items()} == {**first, **own}
    assert (a == b) == (first == second)


def test_chainkit_keys_are_sent_first_with_fifteen_tags_refused_before_the_call(
    client: Any, stub: Stubber
) -> None:
    calls = sent(client)
    tags = {f"tag{i:02}": "x" for i in range(15)}
    stage = Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE)
    ledger = Ledger()
    with pytest.raises(ConfigError) as info:
        stage.run(Request("q", id="r1", tags=tags), ledger)
    message = str(info.value)
    assert "at most 16 pairs; this call has 17" in message
    assert "'tag00'" in message and "'tag14'" in message
    assert "Mark at least 1 of the tags private" in message
    assert calls == []

    # Fourteen tags fit beside stage and request_id, which come first.
    del tags["tag14"]
    stub.add_response("converse", OK)
    stage.run(Request("q", id="r2", tags=tags), ledger)
    [(_, params)] = calls
    assert list(params["requestMetadata"])[:2] == ["stage", "request_id"]
    assert params["requestMetadata"]["request_id"] == "r2"
    assert len(params["requestMetadata"]) == 16


def test_more_tags_than_fit_are_sent_once_some_are_private(client: Any, stub: Stubber) -> None:
    tags = {f"tag{i:02}": "x" for i in range(20)}
    private = [f"tag{i:02}" for i in range(14, 20)]
    stub.add_response("converse", OK)
    stage = Generate(model=model(client, private_tags=private), max_tokens=200, catalogue=CATALOGUE)
    ledger = Ledger()
    stage.run(Request("q", id="r1", tags=tags), ledger)
    [entry] = ledger.entries()
    assert entry.tags == tags  # all kept in the ledger


def test_private_tags_stay_in_the_ledger_and_are_never_sent(client: Any, stub: Stubber) -> None:
    calls = sent(client)
    stub.add_response("converse", OK)
    stub.add_response("converse", OK)
    bedrock = model(client, private_tags=("customer_email", "customer_name"))
    tags = {"tenant": "acme", "customer_email": "jane@example.com", "customer_name": "Jane Doe"}
    ledger = Ledger()
    Generate(model=bedrock, max_tokens=200, catalogue=CATALOGUE).run(
        Request("q", id="r1", tags=tags), ledger
    )
    bedrock.complete(Prompt("", "q"), max_tokens=200, metadata=tags)  # direct calls too

    [entry] = ledger.entries()
    assert entry.tags == tags
    assert [params["requestMetadata"] for _, params in calls] == [
        {"stage": "generate", "request_id": "r1", "tenant": "acme"},
        {"tenant": "acme"},
    ]
    for _, params in calls:
        assert "jane" not in json.dumps(params).lower()


def test_private_tags_must_be_a_collection_of_tag_keys(client: Any) -> None:
    with pytest.raises(ConfigError, match=r"private_tags=\('customer_email',\), not str"):
        model(client, private_tags="customer_email")
    with pytest.raises(ConfigError, match="every item must be a tag key"):
        model(client, private_tags=("customer_email", 3))
    with pytest.raises(ConfigError, match="collection of tag keys"):
        model(client, private_tags=None)
    assert model(client, private_tags={"a", "b"}).private_tags == frozenset({"a", "b"})


def test_a_tag_named_like_a_chainkit_key_is_refused_unless_private(
    client: Any, stub: Stubber
) -> None:
    calls = sent(client)
    ledger = Ledger()
    request = Request("q", id="r1", tags={"stage": "beta", "tenant": "acme"})
    with pytest.raises(ConfigError, match=r"tag named 'stage'.*private_tags=\('stage',\)"):
        Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE).run(request, ledger)
    assert calls == []
    [refused] = ledger.entries()
    assert (refused.outcome, refused.cost) == ("refused", Decimal(0))

    # Private, the tag is kept in the ledger and chainkit's own stage is sent.
    stub.add_response("converse", OK)
    private = model(client, private_tags=("stage",))
    Generate(model=private, max_tokens=200, catalogue=CATALOGUE).run(request, ledger)
    [(_, params)] = calls
    assert params["requestMetadata"] == {"stage": "generate", "request_id": "r1", "tenant": "acme"}
    assert ledger.entries()[-1].tags == {"stage": "beta", "tenant": "acme"}


def test_a_value_too_long_once_encoded_is_refused_before_anything_is_sent_or_held(
    client: Any, stub: Stubber
) -> None:
    calls = sent(client)
    note = "東京" * 43  # 86 characters, 774 once encoded
    # count_tokens on: the estimate would ask Bedrock first, were the metadata not checked before.
    bedrock = model(client, count_tokens=True)
    ledger = Ledger(budgets=[Budget(Decimal(10), name="all")])
    request = Request("q", id="r1", tags={"tenant": "acme", "delivery_note": note})
    with pytest.raises(ConfigError) as info:
        Generate(model=bedrock, max_tokens=200, catalogue=CATALOGUE).run(request, ledger)

    assert str(info.value) == (
        "Bedrock requestMetadata value of 'delivery_note' (86 characters) is 774 characters once "
        "encoded, over Bedrock's limit of 256 (characters outside letters, digits and "
        "' :_@$#/+,-.' take 3 to 12 each). Shorten it, or mark the tag private "
        "(BedrockModel(..., private_tags=('delivery_note',))) to keep it in the ledger without "
        "sending it."
    )
    assert note not in str(info.value)  # a tag may be personal data: never quoted
    assert calls == []  # neither CountTokens nor Converse
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.usage, entry.stage) == (
        "refused",
        Decimal(0),
        None,
        "generate",
    )
    assert entry.note.startswith("metadata refused: ConfigError: Bedrock requestMetadata value")
    assert entry.tags == request.tags
    assert ledger.spent("all") == Decimal(0)

    # Called directly, the model refuses before the client is asked, too.
    with pytest.raises(ConfigError, match="774 characters once encoded"):
        bedrock.complete(Prompt("", "q"), max_tokens=200, metadata=request.tags)
    with pytest.raises(ConfigError, match=r"key 'k{40}.*over Bedrock's limit"):
        bedrock.complete(Prompt("", "q"), max_tokens=200, metadata={"k" * 40 + "!" * 80: "v"})
    assert calls == []


def test_a_request_id_too_long_once_encoded_says_to_shorten_it() -> None:
    with pytest.raises(ConfigError, match="use a shorter request id"):
        request_metadata({"stage": "generate", "request_id": "注文" * 50})


def test_estimate_uses_count_tokens_then_falls_back_when_unsupported(
    client: Any, stub: Stubber, bedrock_reply: Any
) -> None:
    expected = {
        "modelId": SONNET4,
        "input": {
            "converse": {
                "messages": [{"role": "user", "content": [{"text": "How long is delivery?"}]}],
                "system": [{"text": "Be brief."}],
            }
        },
    }
    stub.add_response("count_tokens", bedrock_reply("count_tokens"), expected)
    m = model(client, "us." + SONNET4, count_tokens=True)
    prompt = Prompt("Be brief.", "How long is delivery?")
    assert m.estimate(prompt, max_tokens=100) == Usage(431, 100)

    haiku = model(client, count_tokens=True)
    stub.add_client_error("count_tokens", "ValidationException", "not supported", 400)
    offline = haiku.estimate(prompt, max_tokens=100)
    assert offline == Usage(3 + 6, 100)  # ceil(9/4) + ceil(21/4): the offline estimator
    # Unsupported once, never asked again (no stubbed response left for a second call).
    assert haiku.estimate(prompt, max_tokens=100) == offline


def test_budget_refuses_before_calling_bedrock(client: Any, stub: Stubber) -> None:
    ledger = Ledger(budgets=[Budget(Decimal("0.0001"), name="tiny")])
    stage = Generate(model=model(client), max_tokens=200, catalogue=CATALOGUE)
    with pytest.raises(BudgetExceeded, match="tiny"):
        stage.run(Request("q" * 400), ledger)
    # The Stubber holds no response: a call would have failed with "Unexpected call".
    (entry,) = ledger.entries()
    assert entry.outcome == "refused"


def test_stream_takes_usage_from_the_metadata_event(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    serve(client, "ConverseStream", stream_reply(bedrock_reply("converse_stream")))
    stream = model(client, SONNET4).stream(Prompt("", "q"), max_tokens=200)
    assert list(stream) == ["Your order ", "ships today."]
    assert stream.completion is not None
    assert stream.completion.text == "Your order ships today."
    assert stream.completion.usage == Usage(37, 6, cache_read_tokens=1200)
    cost = CATALOGUE.cost(SONNET4, stream.completion.usage)
    assert cost == Decimal("0.000561")  # 37 x $3 + 6 x $15 + 1200 x $0.30, per million


def test_stream_without_metadata_is_a_bad_response(
    client: Any, bedrock_reply: Any, serve: Any
) -> None:
    serve(client, "ConverseStream", stream_reply(bedrock_reply("converse_stream")[:-1]))
    stream = model(client).stream(Prompt("", "q"), max_tokens=200)
    with pytest.raises(BadResponse, match="metadata"):
        list(stream)


class _Timing:
    """A bedrock-runtime stand-in whose converse fails with botocore's own connection errors."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0
        self.meta = type("Meta", (), {"region_name": "us-east-1"})()

    def converse(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {
            "output": {"message": {"content": [{"text": "ok"}]}},
            "usage": {"inputTokens": 10, "outputTokens": 5},
        }


def test_a_read_timeout_is_not_retried_and_ends_as_timeout_with_cost_unknown() -> None:
    # The request reached Bedrock: it may have run and been billed. Retrying would pay twice.
    from botocore.exceptions import ReadTimeoutError

    from chainkit.errors import Timeout

    fake = _Timing([ReadTimeoutError(endpoint_url="https://bedrock-runtime")])
    stage = Generate(model=model(fake), catalogue=CATALOGUE, max_tokens=200)
    ledger = Ledger()
    with pytest.raises(Timeout, match="may have run and billed"):
        stage.run(Request("hello", id="r1"), ledger)
    assert fake.calls == 1
    [entry] = ledger.entries()
    assert (entry.outcome, entry.cost, entry.flags) == ("failed", None, ("timeout",))
    assert entry.bound is not None and entry.bound > 0


def test_a_connect_timeout_never_reached_bedrock_and_is_retried() -> None:
    from botocore.exceptions import ConnectTimeoutError

    fake = _Timing([ConnectTimeoutError(endpoint_url="https://bedrock-runtime")])
    stage = Generate(model=model(fake), catalogue=CATALOGUE, max_tokens=200)
    ledger = Ledger()
    assert stage.run(Request("hello", id="r1"), ledger).text == "ok"
    assert fake.calls == 2
    [entry] = ledger.entries()
    assert (entry.outcome, entry.attempts) == ("answered", 2)


def test_retries_stop_before_the_deadline() -> None:
    from chainkit.providers.bedrock import RetryPolicy, call_aws

    def attempts_made(timeout_s: float | None) -> int:
        fake = _Timing([_client_error("ThrottlingException", 429) for _ in range(10)])
        with pytest.raises(Throttled):
            call_aws(
                fake.converse,
                {},
                retry=RetryPolicy(max_attempts=5, wait_initial=0, wait_max=0),
                fail=lambda exc, n: Throttled(str(exc), attempts=n),
                timeout_s=timeout_s,
            )
        return fake.calls

    assert attempts_made(None) == 5
    assert attempts_made(0.0) == 1  # any further attempt would start at or past the deadline


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Converse",
    )


# -- cache writes split by TTL (cacheDetails) ----------------------------------------------------

CURRENT = Catalogue.load("bedrock-2026-11-29")


@pytest.mark.parametrize("reply", sorted(CACHE_TTL_COSTS))
def test_cache_details_price_five_minute_and_one_hour_writes(
    client: Any, stub: Stubber, bedrock_reply: Any, reply: str
) -> None:
    stub.add_response("converse", bedrock_reply(reply), None)
    ledger = Ledger()
    stage = Generate(model=model(client, "us." + SONNET4), max_tokens=200, catalogue=CURRENT)
    stage.run(Request("What is the returns policy?"), ledger)
    (entry,) = ledger.entries()
    assert entry.usage is not None
    assert entry.usage.cache_write_tokens == 1000
    assert entry.usage.cache_write_1h_tokens == (400 if "1h" in reply else 0)
    assert entry.cost == Decimal(CACHE_TTL_COSTS[reply])


def test_cache_details_without_write_total_use_their_sum() -> None:
    from chainkit.providers.bedrock import usage_from_bedrock

    usage = usage_from_bedrock(
        {
            "inputTokens": 1,
            "outputTokens": 2,
            "cacheDetails": [{"ttl": "1h", "inputTokens": 5}, {"ttl": "5m", "inputTokens": 7}],
        },
        SONNET4,
    )
    assert usage == Usage(1, 2, 0, 12, cache_write_1h_tokens=5)


def test_cache_details_larger_than_the_write_total_is_a_bad_response() -> None:
    from chainkit.providers.bedrock import usage_from_bedrock

    with pytest.raises(BadResponse, match="malformed usage"):
        usage_from_bedrock(
            {
                "inputTokens": 1,
                "outputTokens": 2,
                "cacheWriteInputTokens": 3,
                "cacheDetails": [{"ttl": "1h", "inputTokens": 5}],
            },
            SONNET4,
        )


@pytest.mark.parametrize(
    "usage",
    [
        {"inputTokens": 1.9, "outputTokens": 1},
        {"inputTokens": "5", "outputTokens": 1},
        {"inputTokens": True, "outputTokens": 1},
        {"inputTokens": 1, "outputTokens": 1, "cacheDetails": [None]},
        {"inputTokens": 1, "outputTokens": 1, "cacheDetails": {"ttl": "1h"}},
        {"inputTokens": 1, "outputTokens": 1, "cacheReadInputTokens": 2.5},
    ],
)
def test_usage_that_is_not_whole_token_counts_is_a_bad_response_never_rounded(
    usage: dict[str, object],
) -> None:
    from chainkit.providers.bedrock import usage_from_bedrock

    with pytest.raises(BadResponse, match="malformed usage"):
        usage_from_bedrock(usage, SONNET4)


@pytest.mark.parametrize("ttl", ["30m", "1H"])
def test_cache_writes_of_an_unknown_ttl_are_unknown_cost_not_the_5_minute_rate(
    client: Any, stub: Stubber, ttl: str
) -> None:
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": 120,
            "outputTokens": 30,
            "totalTokens": 1150,
            "cacheWriteInputTokens": 1000,
            "cacheDetails": [{"ttl": ttl, "inputTokens": 400}, {"ttl": "5m", "inputTokens": 600}],
        },
        "metrics": {"latencyMs": 1},
    }
    stub.add_response("converse", reply, None)
    ledger = Ledger()
    stage = Generate(model=model(client, "us." + SONNET4), max_tokens=200, catalogue=CURRENT)
    assert stage.run(Request("q"), ledger).text == "ok"
    (entry,) = ledger.entries()
    assert entry.usage is not None and entry.usage.cache_write_tokens == 1000
    assert entry.cost is None
    assert repr(ttl) in entry.note


def test_botocore_does_not_retry_a_read_timeout_behind_chainkits_back() -> None:
    # A real HTTP server on loopback that answers too late, and a client made the way the README
    # makes one (botocore's default retries on). Before, the server saw two requests for one
    # entry: a call that may have been billed twice.
    import http.server
    import socketserver
    import threading
    import time

    from botocore.config import Config
    from moto.core.models import botocore_stubber

    from chainkit.errors import Timeout

    hits = []

    class Late(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            time.sleep(1.0)
            try:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:
                pass  # the client gave up: that is the point

        def log_message(self, *args: Any) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Late)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            config=Config(read_timeout=0.3),
        )
        client.meta.events.unregister("before-send", botocore_stubber)  # past moto's fence
        stage = Generate(model=model(client), catalogue=CATALOGUE, max_tokens=200, timeout_s=5)
        ledger = Ledger()
        with pytest.raises(Timeout):
            stage.run(Request("hello", id="r1"), ledger)
        assert len(hits) == 1
        [entry] = ledger.entries()
        assert (entry.outcome, entry.cost) == ("failed", None)
    finally:
        server.shutdown()
        server.server_close()
