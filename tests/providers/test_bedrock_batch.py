from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from chainkit import (
    BadResponse,
    Catalogue,
    Completion,
    ConfigError,
    OfflineModel,
    Prompt,
    ProviderError,
    Throttled,
    Usage,
    count_tokens,
)
from chainkit.providers.bedrock_batch import (
    BatchRecord,
    BedrockBatch,
    OfflineBatch,
    decode_output,
    encode_input,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "bedrock_batch"
CATALOGUE = Catalogue.load("bedrock-2026-11")
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA = "amazon.nova-micro-v1:0"
LLAMA = "meta.llama3-1-8b-instruct-v1:0"
MIXTRAL = "mistral.mixtral-8x7b-instruct-v0:1"
BUCKET = "chainkit-batch-test"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchInference"
JOB = "nightly-summaries"
JOB_ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/k2x7q9m4p1zd"
INPUT_KEY = f"jobs/{JOB}/input.jsonl"
OUTPUT_KEY = f"jobs/{JOB}/output/k2x7q9m4p1zd/input.jsonl.out"
_TIMESTAMPS = ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime")


def reply(name: str) -> Any:
    """A recorded reply, with timestamps parsed as botocore parses them."""
    data = json.loads((DATA / f"{name}.json").read_text())
    for field in _TIMESTAMPS:
        if field in data:
            data[field] = datetime.fromisoformat(data[field])
    return data


@pytest.fixture
def bedrock() -> Any:
    return boto3.client("bedrock", region_name="us-east-1")


@pytest.fixture
def stub(bedrock: Any) -> Iterator[Stubber]:
    with Stubber(bedrock) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def s3() -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def sleeps() -> list[float]:
    return []


def batch(bedrock: Any, s3: Any, sleeps: list[float], model_id: str = HAIKU, **kwargs: Any) -> Any:
    kwargs.setdefault("poll_seconds", 30.0)
    return BedrockBatch(
        model_id,
        bedrock=bedrock,
        s3=s3,
        bucket=BUCKET,
        prefix="jobs",
        role_arn=ROLE,
        sleep=sleeps.append,
        wait_initial=0,
        wait_max=0,
        **kwargs,
    )


def calls(n: int = 120) -> list[BatchRecord]:
    return [
        BatchRecord(f"req-{i:04d}", Prompt("Summarise the call in one line.", f"Call {i}"), 200)
        for i in range(n)
    ]


def put_lines(s3: Any, key: str, lines: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(line) + "\n" for line in lines)
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())


def read_lines(s3: Any, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


# -- encode / decode, per family ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model_id", "prompt", "max_tokens", "text", "usage"),
    [
        (
            "anthropic_output_line",
            HAIKU,
            Prompt(
                "Answer from the returns policy only.", "How long do I have to return a jacket?"
            ),
            300,
            "You have 30 days from delivery to return the jacket.",
            Usage(42, 14, cache_read_tokens=2400, cache_write_tokens=1500),
        ),
        (
            "nova_output_line",
            NOVA,
            Prompt("Classify the intent in one word.", "Where is my parcel? It was due Monday."),
            8,
            "track_order",
            Usage(23, 3),
        ),
        (
            "llama_output_line",
            LLAMA,
            Prompt(
                "Summarise in one line.",
                "The customer called twice about a late refund for order 10234.",
            ),
            64,
            "Customer chased a late refund for order 10234 twice.",
            Usage(41, 13),
        ),
    ],
)
def test_round_trip_with_reported_usage(
    name: str, model_id: str, prompt: Prompt, max_tokens: int, text: str, usage: Usage
) -> None:
    assert model_id in CATALOGUE
    line = reply(name)
    record = BatchRecord(line["recordId"], prompt, max_tokens)
    assert encode_input(record, model_id) == {
        "recordId": line["recordId"],
        "modelInput": line["modelInput"],
    }
    completion = decode_output(line, model_id)
    assert completion == Completion(text=text, usage=usage, model_id=model_id, estimated=False)


def test_mistral_round_trip_counts_offline_and_is_estimated() -> None:
    assert MIXTRAL in CATALOGUE
    line = reply("mistral_output_line")
    prompt = Prompt("Answer in one sentence.", "How long does standard delivery take?")
    record = BatchRecord("req-mixtral-1", prompt, 100)
    assert encode_input(record, MIXTRAL) == {
        "recordId": "req-mixtral-1",
        "modelInput": line["modelInput"],
    }
    completion = decode_output(line, MIXTRAL)
    assert completion.text == " Standard delivery takes three to five working days."
    assert completion.estimated is True
    # The prompt as sent, template included, and the reply, by Mistral's own tokenizer.
    assert completion.usage == Usage(
        count_tokens(line["modelInput"]["prompt"], MIXTRAL),
        count_tokens(completion.text, MIXTRAL),
    )
    assert completion.usage == Usage(24, 10)


def test_prompts_without_system_omit_it() -> None:
    record = BatchRecord("r", Prompt("", "Hi"), 10)
    assert "system" not in encode_input(record, HAIKU)["modelInput"]
    assert "system" not in encode_input(record, NOVA)["modelInput"]
    assert "system" not in encode_input(record, LLAMA)["modelInput"]["prompt"]
    assert encode_input(record, "us." + NOVA)["modelInput"]["schemaVersion"] == "messages-v1"


def test_error_line_is_a_bad_response_naming_record_model_and_error() -> None:
    with pytest.raises(BadResponse) as info:
        decode_output(reply("error_output_line"), HAIKU)
    message = str(info.value)
    assert "req-0003" in message and HAIKU in message and "input is too long" in message
    assert (info.value.code, info.value.model_id) == ("400", HAIKU)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda line: line.pop("modelOutput"), "MissingOutput"),
        (lambda line: line["modelOutput"].pop("usage"), "MalformedOutput"),
        (lambda line: line["modelOutput"]["usage"].update(input_tokens=-1), "MalformedOutput"),
        (lambda line: line["modelOutput"]["usage"].update(output_tokens="14"), "MalformedOutput"),
        (lambda line: line["modelOutput"]["usage"].update(input_tokens=None), "MalformedOutput"),
    ],
)
def test_unusable_output_is_a_bad_response(change: Any, code: str) -> None:
    line = copy.deepcopy(reply("anthropic_output_line"))
    change(line)
    with pytest.raises(BadResponse) as info:
        decode_output(line, HAIKU)
    assert info.value.code == code
    assert "req-haiku-1" in str(info.value)


def test_unsupported_family_lists_the_supported_ones(bedrock: Any, s3: Any) -> None:
    record = BatchRecord("r", Prompt("", "Hi"), 10)
    for call in (
        lambda: encode_input(record, "amazon.titan-text-express-v1"),
        lambda: BedrockBatch(
            "amazon.titan-text-express-v1",
            bedrock=bedrock,
            s3=s3,
            bucket=BUCKET,
            prefix="jobs",
            role_arn=ROLE,
        ),
        lambda: OfflineBatch(OfflineModel(model_id="amazon.titan-text-express-v1")),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        for family in ("Anthropic Claude", "Amazon Nova", "Meta Llama 3", "Mistral AI"):
            assert family in str(info.value)


# -- BedrockBatch against moto S3 and a stubbed Bedrock --------------------------------------


def test_run_uploads_creates_polls_and_reads_every_record_back(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    records = calls(120)
    stub.add_response(
        "create_model_invocation_job",
        reply("create_model_invocation_job"),
        {
            "jobName": JOB,
            "roleArn": ROLE,
            "clientRequestToken": ANY,
            "modelId": HAIKU,
            "inputDataConfig": {
                "s3InputDataConfig": {
                    "s3InputFormat": "JSONL",
                    "s3Uri": f"s3://{BUCKET}/{INPUT_KEY}",
                }
            },
            "outputDataConfig": {
                "s3OutputDataConfig": {"s3Uri": f"s3://{BUCKET}/jobs/{JOB}/output/"}
            },
        },
    )
    stub.add_response(
        "get_model_invocation_job",
        reply("get_model_invocation_job_in_progress"),
        {"jobIdentifier": JOB_ARN},
    )
    stub.add_response(
        "get_model_invocation_job",
        reply("get_model_invocation_job_completed"),
        {"jobIdentifier": JOB_ARN},
    )
    # What Bedrock writes at <output uri>/<job id>/input.jsonl.out: req-0003 failed, and
    # req-0007 is absent (not processed); plus the manifest, which holds no records.
    template = reply("anthropic_output_line")["modelOutput"]
    lines: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if i == 7:
            continue
        if i == 3:
            lines.append(reply("error_output_line"))
            continue
        output = copy.deepcopy(template)
        output["content"][0]["text"] = f"Summary of call {i}."
        output["usage"] = {
            "input_tokens": 100 + i,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 20 + i,
        }
        lines.append({**encode_input(record, HAIKU), "modelOutput": output})
    put_lines(s3, OUTPUT_KEY, lines)
    put_lines(
        s3,
        f"jobs/{JOB}/output/k2x7q9m4p1zd/manifest.json.out",
        [{"totalRecordCount": 120, "processedRecordCount": 119, "successRecordCount": 118}],
    )

    results = batch(bedrock, s3, sleeps).run(records, job_name=JOB)

    uploaded = read_lines(s3, INPUT_KEY)
    assert [line["recordId"] for line in uploaded] == [r.record_id for r in records]
    assert uploaded == [encode_input(r, HAIKU) for r in records]
    assert uploaded[5]["modelInput"] == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "system": "Summarise the call in one line.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Call 5"}]}],
    }
    assert sleeps == [30.0]  # one poll found it InProgress, the next Completed

    assert list(results) == [r.record_id for r in records]
    assert results["req-0000"] == Completion("Summary of call 0.", Usage(100, 20), HAIKU)
    assert results["req-0119"] == Completion("Summary of call 119.", Usage(219, 139), HAIKU)
    failed = results["req-0003"]
    assert isinstance(failed, BadResponse) and failed.code == "400"
    assert "req-0003" in str(failed) and "too long" in str(failed)
    missing = results["req-0007"]
    assert isinstance(missing, BadResponse) and missing.code == "MissingRecord"
    assert "req-0007" in str(missing) and JOB_ARN in str(missing)
    completions = [r for r in results.values() if isinstance(r, Completion)]
    assert len(completions) == 118


def test_batch_completions_priced_at_the_catalogue_batch_price(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    records = calls(100)
    stub.add_response("create_model_invocation_job", reply("create_model_invocation_job"))
    stub.add_response("get_model_invocation_job", reply("get_model_invocation_job_completed"))
    template = reply("anthropic_output_line")["modelOutput"]
    lines = []
    for i, record in enumerate(records):
        output = copy.deepcopy(template)
        output["usage"] = {"input_tokens": 1000 + i, "output_tokens": 200 + i}
        lines.append({**encode_input(record, HAIKU), "modelOutput": output})
    put_lines(s3, OUTPUT_KEY, lines)

    runner = batch(bedrock, s3, sleeps)
    results = runner.run(records, job_name=JOB)
    assert (runner.tier, runner.region, runner.model_id) == ("batch", "us-east-1", HAIKU)

    total = sum(
        CATALOGUE.cost(c.model_id, c.usage, region=runner.region, tier=runner.tier)
        for c in results.values()
        if isinstance(c, Completion)
    )
    # Claude 3 Haiku batch: $0.125 in and $0.625 out per million tokens, half of on-demand.
    price = CATALOGUE.card(HAIKU).price("us-east-1", "batch")
    assert (price.input, price.output) == (Decimal("0.125"), Decimal("0.625"))
    inputs = sum(1000 + i for i in range(100))  # 104,950
    outputs = sum(200 + i for i in range(100))  # 24,950
    by_hand = (inputs * Decimal("0.125") + outputs * Decimal("0.625")) / 1_000_000
    assert total == by_hand == Decimal("0.02871250")
    on_demand = sum(
        CATALOGUE.cost(c.model_id, c.usage) for c in results.values() if isinstance(c, Completion)
    )
    assert on_demand == 2 * total


def test_failed_job_raises_with_the_jobs_message(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    stub.add_response("get_model_invocation_job", reply("get_model_invocation_job_in_progress"))
    stub.add_response("get_model_invocation_job", reply("get_model_invocation_job_failed"))
    with pytest.raises(ProviderError) as info:
        batch(bedrock, s3, sleeps).wait(JOB_ARN)
    assert not isinstance(info.value, Throttled)
    assert info.value.code == "Failed"
    assert "Unable to access the input data" in str(info.value)
    assert JOB_ARN in str(info.value) and HAIKU in str(info.value)
    assert sleeps == [30.0]


@pytest.mark.parametrize("status", ["Stopped", "Expired"])
def test_stopped_or_expired_job_raises(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float], status: str
) -> None:
    stub.add_response(
        "get_model_invocation_job",
        {**reply("get_model_invocation_job_failed"), "status": status},
    )
    with pytest.raises(ProviderError, match=status):
        batch(bedrock, s3, sleeps).wait(JOB_ARN)


def test_wait_times_out_without_real_sleeping(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    for _ in range(3):
        stub.add_response("get_model_invocation_job", reply("get_model_invocation_job_in_progress"))
    runner = batch(bedrock, s3, sleeps, poll_seconds=60.0, timeout_seconds=120.0)
    with pytest.raises(ProviderError) as info:
        runner.wait(JOB_ARN)
    assert info.value.code == "Timeout"
    assert "InProgress" in str(info.value) and "StopModelInvocationJob" in str(info.value)
    assert sleeps == [60.0, 60.0]


def test_fewer_than_100_records_is_refused_before_anything_is_sent(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    runner = batch(bedrock, s3, sleeps)
    assert BedrockBatch.min_records == 100
    with pytest.raises(ConfigError) as info:
        runner.run(calls(99), job_name=JOB)
    message = str(info.value)
    assert "at least 100" in message and "got 99" in message and "on demand" in message
    # Nothing uploaded; the Stubber holds no response, so a Bedrock call would have failed.
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_records_must_be_non_empty_and_unique(bedrock: Any, s3: Any, sleeps: list[float]) -> None:
    runner = batch(bedrock, s3, sleeps)
    with pytest.raises(ConfigError, match="at least one record"):
        runner.submit([], job_name=JOB)
    records = [*calls(100), BatchRecord("req-0042", Prompt("", "again"), 10)]
    with pytest.raises(ConfigError, match="req-0042"):
        runner.submit(records, job_name=JOB)
    with pytest.raises(ConfigError, match="Job name"):
        runner.submit(calls(100), job_name="bad name!")


def test_create_is_retried_on_throttling_with_one_idempotency_token(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    tokens: list[str] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        tokens.append(params["clientRequestToken"])

    bedrock.meta.events.register("before-parameter-build.bedrock.*", remember)
    for _ in range(2):
        stub.add_client_error(
            "create_model_invocation_job", "ThrottlingException", "Too many requests", 429
        )
    stub.add_response("create_model_invocation_job", reply("create_model_invocation_job"))
    assert batch(bedrock, s3, sleeps).submit(calls(100), job_name=JOB) == JOB_ARN
    assert len(tokens) == 3 and len(set(tokens)) == 1


def test_throttling_that_never_clears_raises_throttled(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    for _ in range(3):
        stub.add_client_error(
            "get_model_invocation_job", "ThrottlingException", "Rate exceeded", 429
        )
    with pytest.raises(Throttled) as info:
        batch(bedrock, s3, sleeps, max_attempts=3).wait(JOB_ARN)
    assert (info.value.code, info.value.attempts, info.value.model_id) == (
        "ThrottlingException",
        3,
        HAIKU,
    )


def test_access_denied_is_not_retried_and_says_what_to_do(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    stub.add_client_error(
        "create_model_invocation_job",
        "AccessDeniedException",
        "User is not authorized to perform iam:PassRole",
        403,
    )
    with pytest.raises(ProviderError) as info:
        batch(bedrock, s3, sleeps).submit(calls(100), job_name=JOB)
    assert not isinstance(info.value, Throttled)
    assert (info.value.code, info.value.attempts) == ("AccessDeniedException", 1)
    assert HAIKU in str(info.value) and "iam:PassRole" in str(info.value)


def test_missing_bucket_is_a_provider_error(bedrock: Any, sleeps: list[float]) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")  # no bucket created
    with pytest.raises(ProviderError) as info:
        batch(bedrock, s3, sleeps).submit(calls(100), job_name=JOB)
    assert info.value.code == "NoSuchBucket"
    assert BUCKET in str(info.value)


def test_results_after_the_fact_reads_the_output_location_from_the_job(
    bedrock: Any, stub: Stubber, s3: Any, sleeps: list[float]
) -> None:
    # A later process has only the ARN: the output URI comes from GetModelInvocationJob.
    stub.add_response(
        "get_model_invocation_job",
        reply("get_model_invocation_job_completed"),
        {"jobIdentifier": JOB_ARN},
    )
    put_lines(s3, OUTPUT_KEY, [reply("anthropic_output_line")])
    record = BatchRecord("req-haiku-1", Prompt("", "q"), 300)
    results = batch(bedrock, s3, sleeps).results(JOB_ARN, [record])
    assert results["req-haiku-1"] == Completion(
        "You have 30 days from delivery to return the jacket.",
        Usage(42, 14, cache_read_tokens=2400, cache_write_tokens=1500),
        HAIKU,
    )


def test_arn_needs_priced_as(bedrock: Any, s3: Any, sleeps: list[float]) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
    with pytest.raises(ConfigError, match="priced_as"):
        batch(bedrock, s3, sleeps, model_id=arn)
    runner = batch(bedrock, s3, sleeps, model_id=arn, priced_as=NOVA)
    assert (runner.invoke_id, runner.model_id) == (arn, NOVA)


# -- OfflineBatch ----------------------------------------------------------------------------

QUESTIONS = [
    "Where is order 10234? It was due on Monday and the tracking page has not moved.",
    "Can I change the delivery address after dispatch? I am moving flat this week.",
    "The jacket arrived in the wrong size. How do I swap it for a medium?",
    "Do you ship to Norway, and are duties included in the price at checkout?",
    "My refund for order 99812 has not arrived after ten days. What should I do?",
]


def offline_records() -> list[BatchRecord]:
    return [
        BatchRecord(f"off-{i}", Prompt("Answer the customer briefly.", q), 40)
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.mark.parametrize("model_id", [NOVA, HAIKU, LLAMA])
def test_offline_batch_reports_the_offline_models_usage(model_id: str, tmp_path: Path) -> None:
    model = OfflineModel(model_id=model_id)
    runner = OfflineBatch(model, workdir=tmp_path)
    assert (runner.model_id, runner.tier) == (model_id, "batch")
    results = runner.run(offline_records(), job_name="offline-check")

    assert list(results) == [f"off-{i}" for i in range(5)]
    for record in offline_records():
        got = results[record.record_id]
        direct = model.complete(record.prompt, max_tokens=record.max_tokens)
        assert isinstance(got, Completion)
        assert (got.text, got.usage, got.model_id) == (direct.text, direct.usage, model_id)
        assert got.estimated is True  # the offline estimator's counts, still marked as such

    inputs = (tmp_path / "offline-check" / "input.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in inputs] == [
        encode_input(r, model_id) for r in offline_records()
    ]
    (out,) = (tmp_path / "offline-check" / "output").rglob("*.jsonl.out")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and all("modelOutput" in line for line in lines)


def test_offline_batch_writes_the_native_usage_fields(tmp_path: Path) -> None:
    OfflineBatch(OfflineModel(model_id=NOVA), workdir=tmp_path).run(
        offline_records(), job_name="nova"
    )
    (out,) = (tmp_path / "nova").rglob("*.jsonl.out")
    usage = json.loads(out.read_text().splitlines()[0])["modelOutput"]["usage"]
    assert set(usage) == {
        "inputTokens",
        "outputTokens",
        "totalTokens",
        "cacheReadInputTokenCount",
        "cacheWriteInputTokenCount",
    }


def test_offline_batch_for_mistral_counts_the_prompt_as_sent() -> None:
    results = OfflineBatch(OfflineModel(model_id=MIXTRAL)).run(offline_records(), job_name="mx")
    for record in offline_records():
        got = results[record.record_id]
        assert isinstance(got, Completion) and got.estimated is True
        sent = encode_input(record, MIXTRAL)["modelInput"]["prompt"]
        assert got.usage == Usage(count_tokens(sent, MIXTRAL), count_tokens(got.text, MIXTRAL))


def test_offline_batch_has_no_minimum_but_needs_unique_ids() -> None:
    runner = OfflineBatch(OfflineModel(model_id=NOVA))
    assert len(runner.run(offline_records()[:1], job_name="one")) == 1
    with pytest.raises(ConfigError, match="unique"):
        runner.run([*offline_records(), offline_records()[0]], job_name="dup")


def test_a_job_is_held_record_by_record_before_it_is_submitted_all_or_none() -> None:
    from chainkit import Budget, BudgetExceeded, Entry, Ledger
    from chainkit.providers.bedrock_batch import hold_records

    catalogue = Catalogue.load("bedrock-2026-11")
    model_id = "anthropic.claude-3-haiku-20240307-v1:0"
    records = [
        BatchRecord(f"rec{i}", Prompt("Summarise.", "meeting notes " * 50), 200) for i in range(3)
    ]
    args: Any = {
        "model_id": model_id,
        "catalogue": catalogue,
        "entry_ids": {r.record_id: f"e{i}" for i, r in enumerate(records)},
        "request_ids": {r.record_id: f"doc{i}" for i, r in enumerate(records)},
        "stage": "summarise",
    }
    # Each record: 10 + 700 bytes + 2 x 32 + 32 = 806 input tokens and 200 output, at Haiku's
    # batch price ($0.125 / $0.625 per 1M): $0.00022575.
    each = catalogue.cost(model_id, Usage(806, 200), tier="batch")
    assert each == Decimal("0.00022575")
    small = Ledger([Budget(each * 2)])
    with pytest.raises(BudgetExceeded):
        hold_records(small, records, **args)
    assert small.status()[0].held == 0  # all or none: nothing stays held
    # Refused as a stage is: one `refused` entry per record at $0, none with a record's entry id.
    refused = small.entries()
    assert [(e.request_id, e.outcome, e.cost, e.bound) for e in refused] == [
        (f"doc{i}", "refused", Decimal(0), each) for i in range(3)
    ]
    assert not {e.id for e in refused} & {"e0", "e1", "e2"}

    ledger = Ledger([Budget(each * 3)])
    holds = hold_records(ledger, records, **args)
    assert ledger.status()[0].held == each * 3
    for i, r in enumerate(records):
        held = holds[r.record_id]
        assert held is not None and held.id == f"e{i}"
        ledger.record(
            Entry(f"doc{i}", "summarise", "passed", cost=Decimal("0.0001"), model=model_id,
                  id=held.id, bound=held.amount),
            hold=held,
        )  # fmt: skip
    status = ledger.status()[0]
    assert (status.held, status.spent) == (Decimal(0), Decimal("0.0003"))
