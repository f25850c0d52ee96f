"""A run killed while its Bedrock batch job runs waits for that job when restarted: no resubmit."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from chainkit import Catalogue, OfflineModel, Request, SQLiteLedger
from chainkit.providers.bedrock_batch import BedrockBatch
from recipes.long_docs import Setup, _record_id, run_batch_variant

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
BUCKET = "chainkit-batch-resume"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchInference"
ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{}"


class Killed(Exception):
    """The process dying while it polls."""


def job_reply(job_id: str, status: str) -> dict[str, Any]:
    return {
        "jobArn": ARN.format(job_id),
        "jobName": job_id,
        "modelId": HAIKU,
        "roleArn": ROLE,
        "status": status,
        "submitTime": "2026-11-27T09:00:00Z",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"s3://{BUCKET}/in/input.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://{BUCKET}/out/"}},
    }


def write_output(s3: Any, job_id: str, model_id: str, inputs: list[dict[str, Any]]) -> None:
    """What Bedrock writes for a finished job: each input line with its model output."""
    lines = []
    for line in inputs:
        output = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": [{"type": "text", "text": f"out {line['recordId']}"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1_000, "output_tokens": 100},
        }
        lines.append(json.dumps({**line, "modelOutput": output}))
    s3.put_object(Bucket=BUCKET, Key=f"out/{job_id}/input.jsonl.out", Body="\n".join(lines))


def setup(bedrock: Any, s3: Any, sleep: Any) -> Setup:
    def job(model_id: str) -> BedrockBatch:
        return BedrockBatch(
            model_id,
            bedrock=bedrock,
            s3=s3,
            bucket=BUCKET,
            prefix="jobs",
            role_arn=ROLE,
            sleep=sleep,
            poll_seconds=1,
            wait_initial=0,
            wait_max=0,
        )

    return Setup(
        summariser=OfflineModel(model_id=HAIKU),
        generator=OfflineModel(model_id=SONNET),
        catalogue=Catalogue.load("bedrock-2026-11"),
        compress_to=0.33,
        batch=(job(HAIKU), job(SONNET)),
    )


def test_a_restarted_run_waits_for_the_job_it_submitted(tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    requests = [
        Request("Write the report.", id=f"chained-batch:m{i}", document=f"Meeting {i}: budget.")
        for i in range(100)
    ]
    path = tmp_path / "run.db"

    # First run: the summaries job is created, then the process dies while it is running.
    bedrock = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(bedrock) as stub, SQLiteLedger(path) as ledger:
        stub.add_response("create_model_invocation_job", {"jobArn": ARN.format("sum1")})
        stub.add_response("get_model_invocation_job", job_reply("sum1", "InProgress"))

        def die(seconds: float) -> None:
            raise Killed

        with pytest.raises(Killed):
            run_batch_variant(
                setup(bedrock, s3, die), requests, ledger, resume=True, name="chained-batch"
            )
        assert len(ledger) == 0  # nothing came back yet, so nothing is recorded
        submitted = s3.get_object(Bucket=BUCKET, Key=_input_key(s3, "summarise"))["Body"]
        summary_records = [json.loads(line) for line in submitted.read().decode().splitlines()]

    # The job finishes while nobody watches; Bedrock writes its output.
    write_output(s3, "sum1", HAIKU, summary_records)

    # Second run: no second summaries job (the Stubber would refuse one), only the reports job.
    bedrock = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(bedrock) as stub, SQLiteLedger(path) as ledger:
        stub.add_response(
            "get_model_invocation_job",
            job_reply("sum1", "Completed"),
            {"jobIdentifier": ARN.format("sum1")},
        )
        stub.add_response(
            "create_model_invocation_job",
            {"jobArn": ARN.format("gen1")},
            {
                "jobName": ANY,
                "roleArn": ROLE,
                "clientRequestToken": ANY,
                "modelId": SONNET,
                "inputDataConfig": ANY,
                "outputDataConfig": ANY,
            },
        )
        # The reports job will finish at once: its output is where Bedrock will write it.
        write_output(s3, "gen1", SONNET, [{"recordId": _record_id(r.id)} for r in requests])
        stub.add_response("get_model_invocation_job", job_reply("gen1", "Completed"))
        batch = setup(bedrock, s3, lambda seconds: None)
        results = run_batch_variant(batch, requests, ledger, resume=True, name="chained-batch")
        stub.assert_no_pending_responses()

        assert len(results) == 100
        stages = ledger.by_stage()
        assert stages["summarise"].calls == 100 and stages["generate"].calls == 100
        # Priced at batch rates: Haiku $0.125/$0.625, Sonnet 3.5 v2 $1.50/$7.50 per million.
        assert (
            stages["summarise"].cost
            == 100 * (1_000 * Decimal("0.125") + 100 * Decimal("0.625")) / 1_000_000
        )
        assert (
            stages["generate"].cost
            == 100 * (1_000 * Decimal("1.5") + 100 * Decimal("7.5")) / 1_000_000
        )


def _input_key(s3: Any, stage: str) -> str:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="jobs/")["Contents"]]
    (key,) = [k for k in keys if f"-{stage}-" in k and k.endswith("input.jsonl")]
    return key


def test_a_saved_job_only_answers_the_requests_it_was_submitted_for(tmp_path: Path) -> None:
    """A rerun with a changed request list never hands one request another's output."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    docs = [
        Request("Write the report.", id=f"chained-batch:m{i}",
                document=f"Meeting {i} of customer CUST{i:03d}: budget.")
        for i in range(101)
    ]  # fmt: skip
    path = tmp_path / "run.db"
    bedrock = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(bedrock) as stub, SQLiteLedger(path) as ledger:
        stub.add_response("create_model_invocation_job", {"jobArn": ARN.format("sum1")})
        stub.add_response("get_model_invocation_job", job_reply("sum1", "InProgress"))

        def die(seconds: float) -> None:
            raise Killed

        with pytest.raises(Killed):
            run_batch_variant(setup(bedrock, s3, die), docs, ledger, resume=True,
                              name="chained-batch")  # fmt: skip
        body = s3.get_object(Bucket=BUCKET, Key=_input_key(s3, "summarise"))["Body"]
        submitted = [json.loads(line) for line in body.read().decode().splitlines()]
    # Each summary names its customer, as a real one would.
    for line in submitted:
        text = line["modelInput"]["messages"][0]["content"][0]["text"]
        line["customer"] = text[text.index("CUST") : text.index("CUST") + 7]
    lines = []
    for line in submitted:
        out = {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": HAIKU,
            "content": [{"type": "text", "text": f"summary for {line.pop('customer')}"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1_000, "output_tokens": 100},
        }
        lines.append(json.dumps({**line, "modelOutput": out}))
    s3.put_object(Bucket=BUCKET, Key="out/sum1/input.jsonl.out", Body="\n".join(lines))

    rerun = docs[1:]  # meeting 0 was withdrawn from the data set
    bedrock = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(bedrock) as stub, SQLiteLedger(path) as ledger:
        stub.add_response("get_model_invocation_job", job_reply("sum1", "Completed"),
                          {"jobIdentifier": ARN.format("sum1")})  # fmt: skip
        stub.add_response("create_model_invocation_job", {"jobArn": ARN.format("gen1")})
        write_output(s3, "gen1", SONNET, [{"recordId": _record_id(r.id)} for r in rerun])
        stub.add_response("get_model_invocation_job", job_reply("gen1", "Completed"))
        run_batch_variant(setup(bedrock, s3, lambda seconds: None), rerun, ledger, resume=True,
                          name="chained-batch")  # fmt: skip
        stub.assert_no_pending_responses()  # the saved summaries job was reused, not redone
    body = s3.get_object(Bucket=BUCKET, Key=_input_key(s3, "generate"))["Body"]
    prompts = {
        line["recordId"]: line["modelInput"]["messages"][0]["content"][0]["text"]
        for line in map(json.loads, body.read().decode().splitlines())
    }
    for r in rerun:
        own = f"CUST{int(r.id.split(':m')[1]):03d}"
        assert f"summary for {own}" in prompts[_record_id(r.id)], r.id
