"""Amazon Bedrock batch inference: many prompts as one model invocation job, at the batch price.

A job reads a JSONL file from S3, one ``{"recordId": ..., "modelInput": {...}}`` line per prompt,
where ``modelInput`` is the model family's native InvokeModel body. Bedrock writes
``<output S3 URI>/<job id>/<input file name>.out`` with one line per record: the input again and
either ``modelOutput`` (the native InvokeModel response body) or ``error``. Usage comes from each
family's native fields; Mistral's text-completion replies carry none, so those counts are made
offline and marked estimated.

Clients are handed in, so that tests can stub them::

    batch = BedrockBatch("anthropic.claude-3-haiku-20240307-v1:0",
                         bedrock=boto3.client("bedrock"), s3=boto3.client("s3"),
                         bucket="my-bucket", prefix="chainkit", role_arn="arn:aws:iam::...")
    results = batch.run(records, job_name="nightly-summaries")

Control-plane calls are retried on throttling and 5xx (tenacity); every other error leaves as a
chainkit error naming the Bedrock error code and the model. ``OfflineBatch`` runs the same job
locally with an offline model, through the same JSONL encoding and decoding.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

from chainkit.errors import BadResponse, BudgetExceeded, ConfigError, ProviderError, Throttled
from chainkit.ledger import Hold, Ledger
from chainkit.pricing import Catalogue, Tier, base_model_id
from chainkit.providers.bedrock import RetryPolicy, call_aws, error_code, error_detail
from chainkit.providers.model import Completion, Model, Prompt
from chainkit.providers.offline import OfflineModel
from chainkit.records import Entry, Usage
from chainkit.tokens import count_tokens

__all__ = [
    "BatchRecord",
    "BedrockBatch",
    "OfflineBatch",
    "decode_output",
    "encode_input",
    "hold_records",
    "model_family",
]

Family = Literal["anthropic", "nova", "llama", "mistral"]

# Model id prefixes (after any cross-region profile prefix) and the native body each family takes.
_FAMILIES: tuple[tuple[str, Family], ...] = (
    ("anthropic.claude", "anthropic"),
    ("amazon.nova", "nova"),
    # Llama 4 and Llama 2 use other prompt templates; only Llama 3.x is encoded here.
    ("meta.llama3", "llama"),
    ("mistral.", "mistral"),
)
SUPPORTED_FAMILIES = (
    "Anthropic Claude (anthropic.claude-*), Amazon Nova (amazon.nova-*), "
    "Meta Llama 3 (meta.llama3-*) and Mistral AI (mistral.*)"
)
ANTHROPIC_VERSION = "bedrock-2023-05-31"
NOVA_SCHEMA = "messages-v1"

_ARN = re.compile(r"^arn:aws[\w-]*:bedrock:")
# Patterns from the CreateModelInvocationJob API model, checked here so a bad name fails before
# anything is uploaded.
_JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
_S3_URI = re.compile(
    r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?"
)
_ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")

_DONE = frozenset({"Completed", "PartiallyCompleted"})
_FAILED = frozenset({"Failed", "Stopped", "Expired"})
_HINTS = {
    "AccessDeniedException": (
        "The caller needs bedrock:CreateModelInvocationJob and iam:PassRole on the service role, "
        "and the role needs s3:GetObject, s3:PutObject and s3:ListBucket on the bucket."
    ),
    "ValidationException": (
        "Bedrock rejected the job; check that the model supports batch inference in this "
        "region, that the role ARN exists and that the S3 URIs are in the same region."
    ),
    "ServiceQuotaExceededException": (
        "Too many batch jobs are submitted or in progress for this model; wait for one to "
        "finish or request a higher quota."
    ),
    "ResourceNotFoundException": "No such job or model in this region; check the ARN or id.",
    "ConflictException": "A job with this name may already exist; choose another job_name.",
    "ThrottlingException": "Poll less often, or request a higher quota.",
}


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One prompt of a batch job; ``record_id`` is also the ledger request id later."""

    record_id: str
    prompt: Prompt
    max_tokens: int


def hold_records(
    ledger: Ledger,
    records: Sequence[BatchRecord],
    *,
    model_id: str,
    catalogue: Catalogue,
    entry_ids: Mapping[str, str],
    request_ids: Mapping[str, str],
    stage: str,
    tags: Mapping[str, str] | None = None,
    region: str | None = None,
    lease_s: float = 72 * 3600.0,
) -> dict[str, Hold | None]:
    """Hold every record's bound at batch prices before the job is submitted, all or none.

    Each record's entry (id ``entry_ids[record_id]``) settles its own hold when the job's output
    is read; a job that never finishes leaves holds that expire into entries of unknown cost. A
    job that does not fit a budget raises ``BudgetExceeded`` and holds nothing. The lease covers
    Bedrock's longest job (a job may stay in progress for days).
    """
    from chainkit.stages.calling import cost_bound  # here: stages build on providers

    if not ledger.budgets:
        return {}
    model = OfflineModel(model_id=model_id, region=region, tier="batch")
    bounds = [cost_bound(catalogue, model, r.prompt, r.max_tokens) for r in records]
    items = [
        {
            "amount": bound,
            "tags": dict(tags or {}),
            "stage": stage,
            "model": model_id,
            "request_id": request_ids[r.record_id],
            "entry_id": entry_ids[r.record_id],
            "lease_s": lease_s,
        }
        for r, bound in zip(records, bounds, strict=True)
    ]
    try:
        holds = ledger.reserve_many(items)
    except BudgetExceeded as exc:
        # As a refused stage does: one `refused` entry per record, at $0 (nothing was sent), each
        # with its own id (the record's entry id stays free for the job, should it run later).
        ledger.record_many(
            Entry(
                request_id=request_ids[r.record_id],
                stage=stage,
                outcome="refused",
                cost=Decimal(0),
                model=model_id,
                tags=tags or {},
                bound=bound,
                estimated=True,
                note=f"batch job refused: {exc}"[:1000],
            )
            for r, bound in zip(records, bounds, strict=True)
        )
        raise
    return {r.record_id: h for r, h in zip(records, holds, strict=True)}


def model_family(model_id: str) -> Family:
    """Return the native-body family of ``model_id``; raise ``ConfigError`` if unsupported."""
    if _ARN.match(model_id):
        raise ConfigError(
            f"{model_id!r} is an ARN, which does not say which model family it runs; pass "
            "priced_as='<catalogue model id>' so the request bodies can be encoded."
        )
    base = base_model_id(model_id)
    for prefix, family in _FAMILIES:
        if base.startswith(prefix):
            return family
    raise ConfigError(
        f"Model {model_id!r} has no batch encoding in chainkit; supported families: "
        f"{SUPPORTED_FAMILIES}. Run it on demand with BedrockModel instead."
    )


def _llama_prompt(prompt: Prompt) -> str:
    system = (
        f"<|start_header_id|>system<|end_header_id|>\n\n{prompt.system}<|eot_id|>"
        if prompt.system
        else ""
    )
    return (
        f"<|begin_of_text|>{system}<|start_header_id|>user<|end_header_id|>\n\n"
        f"{prompt.user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def _mistral_prompt(prompt: Prompt) -> str:
    # Mistral's instruct template has no system role: the instruction goes first in the user turn.
    text = f"{prompt.system}\n\n{prompt.user}" if prompt.system else prompt.user
    return f"<s>[INST] {text} [/INST]"


def _body(family: Family, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
    if prompt.history:
        # Batch jobs answer single prompts (documents); dropping the turns would answer
        # another question than the one asked.
        raise ConfigError(
            f"A batch record carries {len(prompt.history)} conversation turns; batch inference "
            "takes single prompts here. Run conversations on demand (BedrockModel)."
        )
    if family == "anthropic":
        body: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": max_tokens}
        if prompt.system:
            body["system"] = prompt.system
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": prompt.user}]}]
        return body
    if family == "nova":
        body = {"schemaVersion": NOVA_SCHEMA}
        if prompt.system:
            body["system"] = [{"text": prompt.system}]
        body["messages"] = [{"role": "user", "content": [{"text": prompt.user}]}]
        body["inferenceConfig"] = {"maxTokens": max_tokens}
        return body
    if family == "llama":
        return {"prompt": _llama_prompt(prompt), "max_gen_len": max_tokens}
    return {"prompt": _mistral_prompt(prompt), "max_tokens": max_tokens}


def encode_input(record: BatchRecord, model_id: str) -> dict[str, Any]:
    """One input JSONL line for ``model_id``: the record id and the family's native body.

    >>> line = encode_input(BatchRecord("r1", Prompt("", "Hi"), 50), "mistral.mistral-7b-instruct-v0:2")
    >>> line["recordId"], line["modelInput"]
    ('r1', {'prompt': '<s>[INST] Hi [/INST]', 'max_tokens': 50})
    """  # noqa: E501
    return {
        "recordId": record.record_id,
        "modelInput": _body(model_family(model_id), record.prompt, record.max_tokens),
    }


def _tokens(value: Any, *, optional: bool = False) -> int:
    """A token count from a reply: an int, or the line is malformed (0 if optional and null)."""
    if value is None and optional:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"token count {value!r} is not an integer")
    return value


def _decode_anthropic(body: Mapping[str, Any]) -> tuple[str, Usage]:
    text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
    usage = body["usage"]
    # Anthropic's input_tokens already excludes cache reads and writes, as Usage expects.
    return text, Usage(
        input_tokens=_tokens(usage["input_tokens"]),
        output_tokens=_tokens(usage["output_tokens"]),
        cache_read_tokens=_tokens(usage.get("cache_read_input_tokens"), optional=True),
        cache_write_tokens=_tokens(usage.get("cache_creation_input_tokens"), optional=True),
    )


def _decode_nova(body: Mapping[str, Any]) -> tuple[str, Usage]:
    content = body["output"]["message"]["content"]
    text = "".join(block["text"] for block in content if "text" in block)
    usage = body["usage"]
    # InvokeModel names the cache counts ...TokenCount; Converse names them ...Tokens.
    read = usage.get("cacheReadInputTokenCount", usage.get("cacheReadInputTokens"))
    write = usage.get("cacheWriteInputTokenCount", usage.get("cacheWriteInputTokens"))
    return text, Usage(
        input_tokens=_tokens(usage["inputTokens"]),
        output_tokens=_tokens(usage["outputTokens"]),
        cache_read_tokens=_tokens(read, optional=True),
        cache_write_tokens=_tokens(write, optional=True),
    )


def _decode_llama(body: Mapping[str, Any]) -> tuple[str, Usage]:
    return str(body["generation"]), Usage(
        input_tokens=_tokens(body["prompt_token_count"]),
        output_tokens=_tokens(body["generation_token_count"]),
    )


def _decode_mistral(body: Mapping[str, Any], model_input: Any, model_id: str) -> tuple[str, Usage]:
    text = str(body["outputs"][0]["text"])
    if not isinstance(model_input, Mapping) or not isinstance(model_input.get("prompt"), str):
        raise KeyError("modelInput.prompt, needed to count the input tokens")
    # The reply has no token counts: count the prompt as sent (template included) and the text.
    return text, Usage(
        input_tokens=count_tokens(model_input["prompt"], model_id),
        output_tokens=count_tokens(text, model_id),
    )


def decode_output(line: Mapping[str, Any], model_id: str) -> Completion:
    """One output JSONL line as a Completion; an error line or unusable output is a BadResponse."""
    record_id = line.get("recordId", "?")
    family = model_family(model_id)
    error = line.get("error")
    if error is not None:
        code: Any = error.get("errorCode") if isinstance(error, Mapping) else None
        detail = error.get("errorMessage", error) if isinstance(error, Mapping) else error
        raise BadResponse(
            f"Bedrock batch record {record_id!r} for model {model_id!r} failed with error "
            f"{code}: {detail}. Fix the record's input, or run it on demand.",
            code=str(code) if code is not None else "RecordError",
            model_id=model_id,
        )
    body = line.get("modelOutput")
    if not isinstance(body, Mapping):
        raise BadResponse(
            f"Bedrock batch record {record_id!r} for model {model_id!r} has no modelOutput, so "
            "its reply and usage are unknown. Resubmit the record.",
            code="MissingOutput",
            model_id=model_id,
        )
    try:
        if family == "anthropic":
            text, usage = _decode_anthropic(body)
        elif family == "nova":
            text, usage = _decode_nova(body)
        elif family == "llama":
            text, usage = _decode_llama(body)
        else:
            text, usage = _decode_mistral(body, line.get("modelInput"), model_id)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise BadResponse(
            f"Bedrock batch record {record_id!r} for model {model_id!r} has a malformed "
            f"{family} modelOutput ({type(exc).__name__}: {exc}); chainkit cannot price it.",
            code="MalformedOutput",
            model_id=model_id,
        ) from exc
    return Completion(text=text, usage=usage, model_id=model_id, estimated=family == "mistral")


def _check_records(records: Sequence[BatchRecord], minimum: int) -> None:
    if not records:
        raise ConfigError("A batch job needs at least one record; got none.")
    seen: set[str] = set()
    duplicates: list[str] = []
    for record in records:
        if not isinstance(record.record_id, str) or not record.record_id:
            raise ConfigError(f"Record id {record.record_id!r} must be a non-empty string.")
        if record.max_tokens < 1:
            raise ConfigError(
                f"Record {record.record_id!r} has max_tokens={record.max_tokens}; it must be at "
                "least 1."
            )
        if record.record_id in seen:
            duplicates.append(record.record_id)
        seen.add(record.record_id)
    if duplicates:
        raise ConfigError(
            f"Record ids must be unique within a job, since results are matched by id; "
            f"repeated: {sorted(set(duplicates))[:5]}."
        )
    if len(records) < minimum:
        raise ConfigError(
            f"Bedrock batch inference needs at least {minimum} records per job (the quota "
            f"'Minimum number of records per batch inference job'); got {len(records)}. Run "
            "these on demand with BedrockModel instead, or gather more records first."
        )


def _check_job_name(job_name: str) -> None:
    if len(job_name) > 63 or not _JOB_NAME.fullmatch(job_name) or "+" in job_name:
        raise ConfigError(
            f"Job name {job_name!r} is not valid: use 1-63 letters, digits, '-' and '.', "
            "starting with a letter or digit."
        )


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class BedrockBatch:
    """Run many prompts as one Bedrock batch inference job: JSONL to S3, create, poll, read back.

    Args:
        model_id: a model id or cross-region inference profile id; an ARN needs ``priced_as``.
        bedrock: a ``bedrock`` (control-plane) client.
        s3: an ``s3`` client for the bucket, in the same region as the job.
        bucket: where the input is written and the output read back.
        prefix: key prefix; a job's files live under ``<prefix>/<job_name>/``.
        role_arn: the service role Bedrock assumes to read and write the bucket.
        region: the region, for prices (default: the Bedrock client's).
        priced_as: the catalogue model id to price and encode as.
        poll_seconds: time between GetModelInvocationJob calls.
        timeout_seconds: how long ``wait`` polls before giving up (the job keeps running).
        sleep: how to wait between polls; tests pass a recorder.
        max_attempts: calls made at most per control-plane request, retries included.
    """

    min_records: ClassVar[int] = 100

    def __init__(
        self,
        model_id: str,
        *,
        bedrock: Any,
        s3: Any,
        bucket: str,
        prefix: str,
        role_arn: str,
        region: str | None = None,
        priced_as: str | None = None,
        poll_seconds: float = 60.0,
        timeout_seconds: float = 24 * 3600,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 5,
        wait_initial: float = 1.0,
        wait_max: float = 30.0,
    ) -> None:
        self.invoke_id = model_id
        self.model_id = priced_as or model_id
        model_family(self.model_id)
        if not _ROLE_ARN.fullmatch(role_arn):
            raise ConfigError(
                f"role_arn {role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/...); "
                "batch jobs run as a service role that can read and write the bucket."
            )
        if not _S3_URI.fullmatch(f"s3://{_join(bucket, prefix)}"):
            raise ConfigError(
                f"Bucket {bucket!r} with prefix {prefix!r} does not make a valid S3 URI for "
                "Bedrock; prefix segments may use letters, digits and -!_*'()."
            )
        if poll_seconds <= 0 or timeout_seconds <= 0 or max_attempts < 1:
            raise ConfigError(
                f"poll_seconds ({poll_seconds}) and timeout_seconds ({timeout_seconds}) must be "
                f"positive and max_attempts ({max_attempts}) at least 1."
            )
        self.bedrock = bedrock
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.role_arn = role_arn
        self.region = region or getattr(getattr(bedrock, "meta", None), "region_name", None)
        self.tier: Tier = "batch"
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self._sleep = sleep
        self._retry = RetryPolicy(max_attempts, wait_initial, wait_max)
        # Final job descriptions seen by wait(), so results() need not ask again.
        self._jobs: dict[str, Mapping[str, Any]] = {}

    def __repr__(self) -> str:
        return f"BedrockBatch({self.invoke_id!r}, region={self.region!r}, bucket={self.bucket!r})"

    # -- calls -----------------------------------------------------------------------------

    def _call(self, operation: str, **kwargs: Any) -> Any:
        """Call a Bedrock control-plane operation, retrying throttling and 5xx."""

        def fail(exc: Exception, attempts: int) -> ProviderError:
            code = error_code(exc)[0] or type(exc).__name__
            message = (
                f"Bedrock {code} on {operation} for model {self.invoke_id!r} after {attempts} "
                f"attempt(s): {error_detail(exc)}. {_HINTS.get(code, '')}"
            ).strip()
            cls = Throttled if code == "ThrottlingException" else ProviderError
            return cls(message, code=code, model_id=self.invoke_id, attempts=attempts)

        return call_aws(getattr(self.bedrock, operation), kwargs, retry=self._retry, fail=fail)[0]

    def _s3_call(self, operation: str, where: str, **kwargs: Any) -> Any:
        # boto3's S3 client retries throttling itself; errors here are access or missing objects.
        try:
            return getattr(self.s3, operation)(**kwargs)
        except Exception as exc:
            code = error_code(exc)[0] or type(exc).__name__
            raise ProviderError(
                f"S3 {code} on {operation} {where} for the batch job of model "
                f"{self.invoke_id!r}: {error_detail(exc)}. Check that the bucket exists in "
                f"{self.region} and that the caller can read and write it.",
                code=code,
                model_id=self.invoke_id,
            ) from exc

    # -- the job ---------------------------------------------------------------------------

    def submit(self, records: Sequence[BatchRecord], *, job_name: str) -> str:
        """Write ``<prefix>/<job_name>/input.jsonl``, create the job and return its ARN."""
        _check_records(records, self.min_records)
        _check_job_name(job_name)
        key = _join(self.prefix, job_name, "input.jsonl")
        input_uri = f"s3://{self.bucket}/{key}"
        output_uri = f"s3://{self.bucket}/{_join(self.prefix, job_name, 'output')}/"
        lines = (json.dumps(encode_input(r, self.model_id), ensure_ascii=False) for r in records)
        self._s3_call(
            "put_object",
            input_uri,
            Bucket=self.bucket,
            Key=key,
            Body=("\n".join(lines) + "\n").encode("utf-8"),
            ContentType="application/jsonl",
        )
        # One token for every attempt of this submit: a retried create never makes two jobs.
        # modelInvocationType is left at its default (InvokeModel, the native bodies written
        # above) so that older botocore releases, which do not know the field, still work.
        reply = self._call(
            "create_model_invocation_job",
            jobName=job_name,
            roleArn=self.role_arn,
            clientRequestToken=uuid.uuid4().hex,
            modelId=self.invoke_id,
            inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": input_uri}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        )
        return str(reply["jobArn"])

    def wait(self, job_arn: str) -> str:
        """Poll the job until it ends; return Completed or PartiallyCompleted, else raise."""
        started = time.monotonic()
        slept = 0.0
        while True:
            job = self._call("get_model_invocation_job", jobIdentifier=job_arn)
            status = str(job.get("status", "Submitted"))
            if status in _DONE:
                self._jobs[job_arn] = job
                return status
            if status in _FAILED:
                raise ProviderError(
                    f"Bedrock batch job {job_arn} for model {self.invoke_id!r} ended {status}: "
                    f"{job.get('message') or 'no message given'}. Fix the cause and resubmit "
                    "under a new job name.",
                    code=status,
                    model_id=self.invoke_id,
                )
            # Real time and requested sleeps both count, so an injected sleep still times out.
            elapsed = max(time.monotonic() - started, slept)
            if elapsed >= self.timeout_seconds:
                raise ProviderError(
                    f"Bedrock batch job {job_arn} for model {self.invoke_id!r} is still {status} "
                    f"after {elapsed:.0f}s (timeout_seconds={self.timeout_seconds:.0f}). It keeps "
                    "running in Bedrock: call wait() again later, or stop it with "
                    "StopModelInvocationJob.",
                    code="Timeout",
                    model_id=self.invoke_id,
                )
            self._sleep(self.poll_seconds)
            slept += self.poll_seconds

    def _output_lines(
        self, job_arn: str, job: Mapping[str, Any], wanted: set[str]
    ) -> dict[str, Mapping[str, Any]]:
        """The job's output lines for the ``wanted`` record ids, from all its ``.out`` files."""
        output_uri = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        bucket, prefix = _split_s3(output_uri)
        folder = _join(prefix, job_arn.rsplit("/", 1)[-1]) + "/"
        where = f"s3://{bucket}/{folder}"
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    # manifest.json.out holds job totals, not records.
                    if key.endswith(".out") and not key.endswith("manifest.json.out"):
                        keys.append(key)
        except Exception as exc:
            code = error_code(exc)[0] or type(exc).__name__
            raise ProviderError(
                f"S3 {code} listing {where} for the batch job of model {self.invoke_id!r}: "
                f"{error_detail(exc)}.",
                code=code,
                model_id=self.invoke_id,
            ) from exc
        lines: dict[str, Mapping[str, Any]] = {}
        for key in sorted(keys):
            reply = self._s3_call("get_object", f"s3://{bucket}/{key}", Bucket=bucket, Key=key)
            # Streamed line by line: an output file can hold tens of thousands of records.
            for raw in reply["Body"].iter_lines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    # An unreadable line cannot be matched to a record; that record is reported
                    # missing below rather than dropped.
                    continue
                if isinstance(line, Mapping) and line.get("recordId") in wanted:
                    lines.setdefault(line["recordId"], line)
        return lines

    def results(
        self, job_arn: str, records: Sequence[BatchRecord]
    ) -> dict[str, Completion | ProviderError]:
        """Read the job's output back: a Completion or an error for every submitted record."""
        job = self._jobs.get(job_arn) or self._call(
            "get_model_invocation_job", jobIdentifier=job_arn
        )
        lines = self._output_lines(job_arn, job, {r.record_id for r in records})
        status = job.get("status", "unknown")
        out: dict[str, Completion | ProviderError] = {}
        for record in records:
            line = lines.get(record.record_id)
            if line is None:
                out[record.record_id] = BadResponse(
                    f"Bedrock batch job {job_arn} (status {status}) has no output line for "
                    f"record {record.record_id!r} of model {self.model_id!r}; it was submitted "
                    "but not processed. Resubmit it, or run it on demand.",
                    code="MissingRecord",
                    model_id=self.model_id,
                )
                continue
            try:
                out[record.record_id] = decode_output(line, self.model_id)
            except ProviderError as exc:
                out[record.record_id] = exc
        return out

    def run(
        self, records: Sequence[BatchRecord], *, job_name: str
    ) -> dict[str, Completion | ProviderError]:
        """Submit the records, wait for the job and return every record's result."""
        job_arn = self.submit(records, job_name=job_name)
        self.wait(job_arn)
        return self.results(job_arn, records)


def _native_output(
    family: Family, model_id: str, text: str, usage: Usage, truncated: bool
) -> dict[str, Any]:
    """The InvokeModel response body Bedrock would write for ``family``."""
    if family == "anthropic":
        name = re.sub(r"-v\d+(:\d+)?$", "", base_model_id(model_id).removeprefix("anthropic."))
        return {
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.input_tokens,
                "cache_creation_input_tokens": usage.cache_write_tokens,
                "cache_read_input_tokens": usage.cache_read_tokens,
                "output_tokens": usage.output_tokens,
            },
        }
    if family == "nova":
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "max_tokens" if truncated else "end_turn",
            "usage": {
                "inputTokens": usage.input_tokens,
                "outputTokens": usage.output_tokens,
                "totalTokens": usage.total_tokens,
                "cacheReadInputTokenCount": usage.cache_read_tokens,
                "cacheWriteInputTokenCount": usage.cache_write_tokens,
            },
        }
    if family == "llama":
        return {
            "generation": text,
            "prompt_token_count": usage.input_tokens,
            "generation_token_count": usage.output_tokens,
            "stop_reason": "length" if truncated else "stop",
        }
    # Mistral's text completion reports no token counts; decode_output counts them offline.
    return {"outputs": [{"text": text, "stop_reason": "length" if truncated else "stop"}]}


class OfflineBatch:
    """The same job simulated locally with an offline model, through the same JSONL encode/decode.

    Input and output JSONL files are written under ``workdir/<job_name>/`` (a temporary
    directory by default), the output in the layout and native body Bedrock writes for the
    model's family, with the offline model's reply and token counts. There is no minimum
    number of records. For Mistral the counts are re-made from the prompt as sent, as they would
    be for a real job.
    """

    def __init__(self, model: Model, *, workdir: Path | None = None) -> None:
        model_family(model.model_id)
        self.model = model
        self.model_id = model.model_id
        self.region = model.region
        self.tier: Tier = "batch"
        self.workdir = workdir

    def __repr__(self) -> str:
        return f"OfflineBatch({self.model_id!r}, workdir={self.workdir!r})"

    def run(
        self, records: Sequence[BatchRecord], *, job_name: str
    ) -> dict[str, Completion | ProviderError]:
        """Write the input JSONL, answer it offline as Bedrock would, and decode the output."""
        _check_records(records, minimum=1)
        _check_job_name(job_name)
        if self.workdir is not None:
            return self._run(records, self.workdir / job_name)
        with tempfile.TemporaryDirectory(prefix="chainkit-batch-") as tmp:
            return self._run(records, Path(tmp) / job_name)

    def _run(
        self, records: Sequence[BatchRecord], folder: Path
    ) -> dict[str, Completion | ProviderError]:
        family = model_family(self.model_id)
        input_path = folder / "input.jsonl"
        output_path = folder / "output" / "offline" / "input.jsonl.out"
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with input_path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(encode_input(record, self.model_id), ensure_ascii=False) + "\n")

        by_id = {record.record_id: record for record in records}
        offline: dict[str, Completion] = {}
        with input_path.open(encoding="utf-8") as src, output_path.open("w", encoding="utf-8") as f:
            for raw in src:
                line: dict[str, Any] = json.loads(raw)
                record = by_id[line["recordId"]]
                try:
                    done = self.model.complete(record.prompt, max_tokens=record.max_tokens)
                except ProviderError as exc:
                    line["error"] = {"errorCode": 500, "errorMessage": str(exc)}
                else:
                    offline[record.record_id] = done
                    truncated = done.usage.output_tokens >= record.max_tokens
                    line["modelOutput"] = _native_output(
                        family, self.model_id, done.text, done.usage, truncated
                    )
                f.write(json.dumps(line, ensure_ascii=False) + "\n")

        out: dict[str, Completion | ProviderError] = {}
        with output_path.open(encoding="utf-8") as f:
            for raw in f:
                line = json.loads(raw)
                record_id = line["recordId"]
                try:
                    completion = decode_output(line, self.model_id)
                except ProviderError as exc:
                    out[record_id] = exc
                    continue
                done = offline[record_id]
                # Counts from the offline estimator stay marked estimated after the round trip.
                out[record_id] = replace(
                    completion,
                    estimated=completion.estimated or done.estimated,
                    latency_s=done.latency_s,
                )
        return out
