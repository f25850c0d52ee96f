"""Reconciling the ledger with Bedrock invocation logs and the AWS bill, on moto's S3.

The ledger is written by real chainkit calls (``Generate`` on a ``BedrockModel`` whose client is
pinned with botocore's ``Stubber``); the invocation log records are made from the very
``requestMetadata`` those calls sent, in the record layout of "Monitor model invocation using
CloudWatch Logs and Amazon S3"
(https://docs.aws.amazon.com/bedrock/latest/userguide/model-invocation-logging.html: ``schemaType``,
``timestamp``, ``requestId``, ``modelId``, ``input.inputTokenCount``,
``input.cacheReadInputTokenCount``, ``input.cacheWriteInputTokenCount``,
``output.outputTokenCount``, ``requestMetadata``), gzip-compressed JSON Lines under
``AWSLogs/<account>/BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/``. The bills follow the
CUR 2.0 data dictionary (https://docs.aws.amazon.com/cur/latest/userguide/table-dictionary-cur2.html)
and "FOCUS 1.2 with AWS columns"
(https://docs.aws.amazon.com/cur/latest/userguide/table-dictionary-focus-1-2-aws-columns.html),
with Bedrock's usage types as "Understanding your Amazon Bedrock Cost and Usage Report data"
describes them (https://docs.aws.amazon.com/bedrock/latest/userguide/cost-mgmt-understanding-cur-data.html):
``USE1-NovaMicro-input-tokens`` for Amazon's models, ``USE1-MP:USE1_InputTokenCount-Units`` named by
the product ("Claude 3 Haiku (Amazon Bedrock Edition)") for Anthropic's. The pricing unit "1K
tokens" is this fixture's assumption: the documents give no example of that column for Bedrock.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import Entry, Ledger, PostgresLedger, Request, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.errors import ConfigError
from chainkit.finops.reconcile import (
    BillExport,
    Invocation,
    parse_invocation,
    read_bill,
    read_invocation_logs,
    reconcile_bill,
    reconcile_invocations,
    usage_class,
)
from chainkit.pricing import Catalogue
from chainkit.providers.bedrock import BedrockModel
from chainkit.stages import Generate

CATALOGUE = Catalogue.load()
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
NOVA = "amazon.nova-micro-v1:0"
ACCOUNT = "123456789012"
BUCKET = "finops"
DAY1 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 28, 15, 30, tzinfo=UTC)
PRODUCT = {  # the product name Anthropic's models are billed under (Bedrock's CUR page)
    HAIKU: "Claude 3 Haiku (Amazon Bedrock Edition)",
    SONNET4: "Claude Sonnet 4 (Amazon Bedrock Edition)",
}


@dataclass
class Call:
    """One call a test makes through chainkit: who, when, and the usage Bedrock replies with."""

    request_id: str
    stage: str
    model: str
    when: datetime
    usage: Usage
    tags: dict[str, str] = field(default_factory=dict)
    sent: dict[str, Any] = field(default_factory=dict)  # the Converse parameters chainkit sent


CALLS = [
    Call("r1", "generate", HAIKU, DAY1, Usage(412, 23), {"tenant": "acme"}),
    Call(
        "r2", "generate", HAIKU, DAY1 + timedelta(minutes=5), Usage(380, 50), {"tenant": "東京🚚"}
    ),
    Call("r3", "intent", NOVA, DAY1 + timedelta(hours=1), Usage(120, 4), {"tenant": "acme"}),
    Call("注文-🚚-4", "generate", HAIKU, DAY2, Usage(900, 120), {"顧客": "山田 😀"}),
    Call(
        "r5",
        "generate",
        SONNET4,
        DAY2 + timedelta(minutes=1),
        Usage(200, 80, cache_read_tokens=3000, cache_write_tokens=1000),
        {"tenant": "acme"},
    ),
]


def converse_reply(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
    }
    if usage.cache_read_tokens or usage.cache_write_tokens:
        body["cacheReadInputTokens"] = usage.cache_read_tokens
        body["cacheWriteInputTokens"] = usage.cache_write_tokens
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": "Done."}]}},
        "stopReason": "end_turn",
        "usage": body,
        "metrics": {"latencyMs": 12},
    }


def run_calls(ledger: Any, clock: list[datetime], calls: list[Call]) -> list[Call]:
    """Make ``calls`` through Generate on a stubbed Bedrock client; keep what each one sent."""
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "before-parameter-build.bedrock-runtime.Converse",
        lambda params, **_: sent.append(copy.deepcopy(params)),
    )
    done = []
    with Stubber(client) as stub:
        for call in calls:
            stub.add_response("converse", converse_reply(call.usage), {**_ANY_CONVERSE})
            clock[0] = call.when
            model = BedrockModel(
                call.model, client=client, count_tokens=False, wait_initial=0, wait_max=0
            )
            stage = Generate(model=model, max_tokens=500, name=call.stage, catalogue=CATALOGUE)
            stage.run(Request("Where is my order?", id=call.request_id, tags=call.tags), ledger)
            done.append(Call(**{**call.__dict__, "sent": sent[-1]}))
    return done


_ANY_CONVERSE = {
    "modelId": ANY,
    "messages": ANY,
    "system": ANY,
    "inferenceConfig": ANY,
    "requestMetadata": ANY,
}


# -- the invocation log and bill fixtures ---------------------------------------------------------


def log_record(call: Call, usage: Usage | None = None, aws_id: str | None = None) -> dict[str, Any]:
    """The record Bedrock's invocation logging writes for ``call`` (its documented fields)."""
    usage = usage or call.usage
    params = call.sent
    record: dict[str, Any] = {
        "schemaType": "ModelInvocationLog",
        "schemaVersion": "1.0",
        "timestamp": (call.when + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "accountId": ACCOUNT,
        "identity": {"arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/app/i-0abc"},
        "region": "us-east-1",
        "requestId": aws_id or f"aws-{call.request_id.encode().hex()}",
        "operation": "Converse",
        "modelId": params["modelId"],
        "input": {
            "inputContentType": "application/json",
            "inputBodyJson": {"messages": params["messages"]},
            "inputTokenCount": usage.input_tokens,
            "cacheReadInputTokenCount": usage.cache_read_tokens,
            "cacheWriteInputTokenCount": usage.cache_write_tokens,
        },
        "output": {
            "outputContentType": "application/json",
            "outputBodyJson": converse_reply(usage),
            "outputTokenCount": usage.output_tokens,
        },
    }
    if "requestMetadata" in params:
        record["requestMetadata"] = params["requestMetadata"]
    return record


def gz_lines(records: list[Any]) -> bytes:
    text = "".join(
        (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records
    )
    return gzip.compress(text.encode("utf-8"))


def log_key(when: datetime, name: str) -> str:
    return (
        f"bedrock-logs/AWSLogs/{ACCOUNT}/BedrockModelInvocationLogs/us-east-1/"
        f"{when:%Y/%m/%d/%H}/{when:%Y%m%dT%H%MZ}_{name}.json.gz"
    )


_CLASS_RATE = {
    "input": "input",
    "output": "output",
    "cache_read": "cache_read",
    "cache_write": "cache_write",
}
_MP = {  # Anthropic (marketplace) usage type per token class
    "input": "USE1-MP:USE1_InputTokenCount-Units",
    "output": "USE1-MP:USE1_OutputTokenCount-Units",
    "cache_read": "USE1-MP:USE1_CacheReadInputTokenCount-Units",
    "cache_write": "USE1-MP:USE1_CacheWriteInputTokenCount-Units",
}
_NOVA = {
    "input": "USE1-NovaMicro-input-tokens",
    "output": "USE1-NovaMicro-output-tokens",
    "cache_read": "USE1-NovaMicro-cache-read-input-token-count",
    "cache_write": "USE1-NovaMicro-cache-write-input-token-count",
}


@dataclass
class Line:
    """One hourly bill line, before it is written as CUR 2.0 or FOCUS 1.2."""

    start: datetime
    model: str
    cls: str
    tokens: int
    kind: str = "Usage"
    service: str = ""
    cost: Decimal | None = None

    def usage_type(self) -> str:
        if self.model == "s3":
            return "USE1-TimedStorage-ByteHrs"
        return (_NOVA if self.model == NOVA else _MP)[self.cls]

    def amount(self) -> Decimal:
        return Decimal(self.tokens) / 1000

    def price(self) -> Decimal:
        if self.cost is not None:
            return self.cost
        rate = getattr(CATALOGUE.price(self.model, "us-east-1"), _CLASS_RATE[self.cls])
        return self.tokens * rate / 1_000_000

    def product(self) -> tuple[str, str]:
        """(service code, product name) as the bill names them."""
        if self.model == "s3":
            return "AmazonS3", "Amazon Simple Storage Service"
        if self.model == NOVA:
            return "AmazonBedrock", "Amazon Bedrock"
        return "AnthropicClaude", PRODUCT[self.model]


def bill_lines(calls: list[Call]) -> list[Line]:
    """What AWS bills for ``calls``: a line per call hour, model and token class, at list price."""
    lines = []
    for call in calls:
        hour = call.when.replace(minute=0, second=0)
        for cls, tokens in (
            ("input", call.usage.input_tokens),
            ("output", call.usage.output_tokens),
            ("cache_read", call.usage.cache_read_tokens),
            ("cache_write", call.usage.cache_write_tokens),
        ):
            if tokens:
                lines.append(Line(hour, call.model, cls, tokens))
    # Lines that are not Bedrock usage: another service, a credit and a tax on Bedrock.
    lines.append(Line(DAY1.replace(minute=0), "s3", "storage", 0, cost=Decimal("3.20")))
    lines.append(Line(DAY1.replace(minute=0), HAIKU, "input", 0, kind="Credit", cost=Decimal("-5")))
    lines.append(Line(DAY2.replace(minute=0), HAIKU, "input", 0, kind="Tax", cost=Decimal("0.40")))
    return lines


CUR_COLUMNS = [
    "identity_line_item_id",
    "bill_billing_period_start_date",
    "bill_billing_period_end_date",
    "line_item_line_item_type",
    "line_item_usage_start_date",
    "line_item_usage_end_date",
    "line_item_product_code",
    "line_item_usage_type",
    "line_item_operation",
    "line_item_usage_amount",
    "pricing_unit",
    "line_item_currency_code",
    "line_item_unblended_cost",
    "line_item_resource_id",
    "product",
]


def cur_csv_gz(lines: list[Line]) -> bytes:
    """A CUR 2.0 CSV export (gzip), its product map column as JSON as Data Exports writes it."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CUR_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for n, line in enumerate(lines):
        code, name = line.product()
        tax_or_credit = line.kind in ("Credit", "Tax")
        end = line.start + timedelta(hours=1)
        writer.writerow(
            {
                "identity_line_item_id": f"li-{n}",
                "bill_billing_period_start_date": "2026-11-01T00:00:00.000Z",
                "bill_billing_period_end_date": "2026-12-01T00:00:00.000Z",
                "line_item_line_item_type": line.kind,
                "line_item_usage_start_date": f"{line.start:%Y-%m-%dT%H:%M:%S.000Z}",
                "line_item_usage_end_date": f"{end:%Y-%m-%dT%H:%M:%S.000Z}",
                "line_item_product_code": code,
                "line_item_usage_type": "" if tax_or_credit else line.usage_type(),
                "line_item_operation": "Converse",
                "line_item_usage_amount": "" if tax_or_credit else str(line.amount()),
                "pricing_unit": "" if tax_or_credit else "1K tokens",
                "line_item_currency_code": "USD",
                "line_item_unblended_cost": str(line.price()),
                "line_item_resource_id": "",
                "product": json.dumps({"servicecode": code, "product_name": name}),
            }
        )
    return gzip.compress(out.getvalue().encode("utf-8"))


def focus_parquet(lines: list[Line]) -> bytes:
    """A FOCUS 1.2 with AWS columns export as Parquet (costs as doubles, times in ms, UTC)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for line in lines:
        code, name = line.product()
        usage = line.kind == "Usage"
        rows.append(
            {
                "BillingPeriodStart": datetime(2026, 11, 1, tzinfo=UTC),
                "BillingPeriodEnd": datetime(2026, 12, 1, tzinfo=UTC),
                "ChargePeriodStart": line.start,
                "ChargePeriodEnd": line.start + timedelta(hours=1),
                "ChargeCategory": {"Credit": "Credit", "Tax": "Tax"}.get(line.kind, "Usage"),
                "ProviderName": "AWS",
                "ServiceName": name,
                "x_ServiceCode": code,
                "x_UsageType": line.usage_type() if usage else None,
                "PricingQuantity": float(line.amount()) if usage else None,
                "PricingUnit": "1K tokens" if usage else None,
                "BilledCost": float(line.price()),
                "BillingCurrency": "USD",
                "ResourceId": None,
            }
        )
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("BillingPeriodStart", pa.timestamp("ms", tz="UTC")),
                ("BillingPeriodEnd", pa.timestamp("ms", tz="UTC")),
                ("ChargePeriodStart", pa.timestamp("ms", tz="UTC")),
                ("ChargePeriodEnd", pa.timestamp("ms", tz="UTC")),
                ("ChargeCategory", pa.string()),
                ("ProviderName", pa.string()),
                ("ServiceName", pa.string()),
                ("x_ServiceCode", pa.string()),
                ("x_UsageType", pa.string()),
                ("PricingQuantity", pa.float64()),
                ("PricingUnit", pa.string()),
                ("BilledCost", pa.float64()),
                ("BillingCurrency", pa.string()),
                ("ResourceId", pa.string()),
            ]
        ),
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


# -- ledgers ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger_and_clock(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, list[datetime]]]:
    clock = [DAY1]
    if request.param == "memory":
        ledger: Any = Ledger(clock=lambda: clock[0])
    elif request.param == "sqlite":
        ledger = SQLiteLedger(tmp_path / "run.db", clock=lambda: clock[0])
    else:
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        ledger = PostgresLedger(dsn, schema=schema, clock=lambda: clock[0])
    yield ledger, clock
    ledger.close()


@dataclass
class Planted:
    """Fixtures on moto's S3 with three planted differences, and what a run should find."""

    calls: list[Call]
    logs: str
    cur: str
    focus: str


LATE = Call("r9", "generate", HAIKU, DAY2 + timedelta(minutes=2), Usage(300, 40))
EXTRA_BILLED = Decimal("0.25")  # 200,000 Haiku output tokens on day 2 the ledger never had
# ...and on the same row, r9's 40 output tokens ($0.00005) that only AWS saw.
DAY2_OUTPUT_DIFFERENCE = EXTRA_BILLED + Decimal("0.00005")


def plant(calls: list[Call], s3: Any) -> Planted:
    """Write logs and bills for ``calls`` to S3, with the three planted differences.

    1. AWS logged a call chainkit made (request r9, by its metadata) that the ledger lacks: a
       process that died before recording. Its cost ($0.000125) is below the bill threshold.
    2. AWS logged r2 with 57 output tokens; the ledger has 50 ($0.00000875 on the bill: below).
    3. AWS billed day 2 $0.25 more Haiku output than the ledger recorded.
    """
    s3.create_bucket(Bucket=BUCKET)
    r2 = next(c for c in calls if c.request_id == "r2")
    late = Call(**{**LATE.__dict__, "sent": {**r2.sent, "requestMetadata": {
        "stage": "generate", "request_id": "r9", "tenant": "acme"}}})  # fmt: skip
    day1 = [log_record(c, Usage(380, 57) if c is r2 else None) for c in calls if c.when < DAY2]
    day1.append(  # another application's call in the same account: not chainkit's
        {**log_record(calls[0], aws_id="other-app-1"), "requestMetadata": {"team": "search"}}
    )
    day2 = [log_record(c) for c in calls if c.when >= DAY2] + [log_record(late)]
    s3.put_object(Bucket=BUCKET, Key=log_key(DAY1, "a1"), Body=gz_lines(day1))
    s3.put_object(Bucket=BUCKET, Key=log_key(DAY2, "b2"), Body=gz_lines(day2))

    lines = bill_lines([*calls, late])
    lines.append(Line(DAY2.replace(minute=0, hour=20), HAIKU, "output", 200_000))
    lines.append(Line(DAY1.replace(minute=0), HAIKU, "output", 7))  # r2's 7 extra tokens
    prefix = "exports/chainkit-cur/data/BILLING_PERIOD=2026-11"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/chainkit-cur-00001.csv.gz", Body=cur_csv_gz(lines))
    s3.put_object(
        Bucket=BUCKET,
        Key="exports/chainkit-cur/metadata/BILLING_PERIOD=2026-11/chainkit-cur-Manifest.json",
        Body=b'{"reportName": "chainkit-cur"}',
    )
    focus = "exports/chainkit-focus/data/BILLING_PERIOD=2026-11"
    s3.put_object(
        Bucket=BUCKET, Key=f"{focus}/chainkit-focus-00001.parquet", Body=focus_parquet(lines)
    )
    return Planted(
        calls, f"s3://{BUCKET}/bedrock-logs/", f"s3://{BUCKET}/exports/chainkit-cur/",
        f"s3://{BUCKET}/exports/chainkit-focus/",
    )  # fmt: skip


@pytest.fixture
def s3() -> Any:
    return boto3.client("s3", region_name="us-east-1")


# -- the planted run ------------------------------------------------------------------------------


def test_planted_differences_are_found_and_nothing_else(
    ledger_and_clock: tuple[Any, list[datetime]], s3: Any
) -> None:
    ledger, clock = ledger_and_clock
    planted = plant(run_calls(ledger, clock, CALLS), s3)

    logs = read_invocation_logs(planted.logs)
    assert logs.files == 2 and not logs.problems and len(logs.invocations) == 7
    result = reconcile_invocations(ledger, logs)
    found = {(d.kind, d.request_id, d.stage, d.fields) for d in result.differences}
    assert found == {
        ("missing_in_ledger", "r9", "generate", ()),
        ("mismatch", "r2", "generate", ("output_tokens",)),
    }
    mismatch = next(d for d in result.differences if d.kind == "mismatch")
    assert (mismatch.ledger, mismatch.logged) == (Usage(380, 50), Usage(380, 57))
    assert result.matched == 5 and result.not_chainkit == 1 and result.ledger_entries == 5

    bill = reconcile_bill(ledger, read_bill(planted.cur), Decimal("0.01"))
    # Differences in cost over the threshold, and in tokens whatever they cost (r2's 7 output
    # tokens, r9's 300 input tokens: cheaper than the threshold, still not in the ledger).
    assert {(r.day, r.usage_type): bill.kind_of(r) for r in bill.discrepancies} == {
        (DAY1.date(), "output"): "tokens",
        (DAY2.date(), "input"): "tokens",
        (DAY2.date(), "output"): "difference",
    }
    [row] = [r for r in bill.discrepancies if bill.kind_of(r) == "difference"]
    assert (row.day, row.model, row.usage_type) == (DAY2.date(), HAIKU, "output")
    assert row.difference == DAY2_OUTPUT_DIFFERENCE
    assert (row.ledger_tokens, row.billed_tokens) == (120, 120 + 40 + 200_000)
    # Every other row agrees to the cent; the ledger's total is exactly what the calls cost.
    assert bill.ledger_cost == sum(e.cost for e in ledger.iter_entries())
    assert bill.skipped == {"other services": 1, "Bedrock Credit lines": 1, "Bedrock Tax lines": 1}
    assert bill.first_day == DAY1.date() and bill.last_day == DAY2.date()


def test_focus_parquet_bill_finds_the_same_day(s3: Any) -> None:
    ledger, clock = Ledger(clock=lambda: clock[0]), [DAY1]
    planted = plant(run_calls(ledger, clock, CALLS), s3)
    export = read_bill(planted.focus)
    assert export.kind == "focus" and not export.problems
    bill = reconcile_bill(ledger, export, "0.01")
    assert [
        (r.day, r.model, r.usage_type, r.difference)
        for r in bill.discrepancies
        if bill.kind_of(r) == "difference"
    ] == [(DAY2.date(), HAIKU, "output", DAY2_OUTPUT_DIFFERENCE)]
    cur = reconcile_bill(ledger, read_bill(planted.cur), "0.01")
    assert [r.billed_cost for r in bill.rows] == [r.billed_cost for r in cur.rows]


def test_a_lower_threshold_lists_the_cheap_differences_too(s3: Any) -> None:
    ledger, clock = Ledger(clock=lambda: clock[0]), [DAY1]
    planted = plant(run_calls(ledger, clock, CALLS), s3)
    bill = reconcile_bill(ledger, read_bill(planted.cur), Decimal("0.000001"))
    found = {(r.day, r.usage_type, r.difference) for r in bill.discrepancies}
    assert found == {
        (DAY1.date(), "output", Decimal("0.00000875")),  # r2's 7 tokens at $1.25/M
        (DAY2.date(), "input", Decimal("0.000075")),  # r9: 300 at $0.25/M
        (DAY2.date(), "output", Decimal("0.25005")),  # r9's 40 at $1.25/M, and the $0.25
    }


def test_clean_fixtures_find_nothing(s3: Any) -> None:
    ledger, clock = Ledger(clock=lambda: clock[0]), [DAY1]
    calls = run_calls(ledger, clock, CALLS)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(
        Bucket=BUCKET, Key=log_key(DAY1, "x"), Body=gz_lines([log_record(c) for c in calls])
    )
    s3.put_object(Bucket=BUCKET, Key="cur/part-1.csv.gz", Body=cur_csv_gz(bill_lines(calls)))
    invocations = reconcile_invocations(ledger, read_invocation_logs(f"s3://{BUCKET}/bedrock-logs"))
    bill = reconcile_bill(ledger, read_bill(f"s3://{BUCKET}/cur"))
    assert invocations.ok and invocations.matched == len(CALLS)
    assert bill.ok and bill.ledger_cost == bill.billed_cost


# -- the command ----------------------------------------------------------------------------------


def test_cli_reports_the_planted_differences_and_exits_1(
    tmp_path: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = [DAY1]
    with SQLiteLedger(tmp_path / "run.db", clock=lambda: clock[0]) as ledger:
        planted = plant(run_calls(ledger, clock, CALLS), s3)
    args = ["reconcile", str(tmp_path / "run.db"), "--invocation-logs", planted.logs]
    args += ["--bill", planted.cur]

    assert main([*args, "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert sorted(d["kind"] for d in data["invocations"]["differences"]) == [
        "mismatch",
        "missing_in_ledger",
    ]
    [row] = [r for r in data["bill"]["discrepancies"] if r["kind"] == "difference"]
    assert row["difference"] == "0.25005" and row["day"] == "2026-11-28"
    assert row["billed_cost"] == "0.2502"  # 120 + 40 + 200,000 output tokens at $1.25/M

    assert main([*args, "--format", "csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["section"], r["kind"]) for r in rows] == [
        ("invocations", "mismatch"),
        ("invocations", "missing_in_ledger"),
        ("bill", "tokens"),
        ("bill", "tokens"),
        ("bill", "difference"),
    ]
    assert rows[0]["request_id"] == "r2" and rows[4]["difference"] == "0.25005"

    assert main([*args]) == 1
    table = capsys.readouterr().out
    assert "1 logged but not in the ledger" in table and "$0.25" in table
    assert main([*args, "--format", "markdown"]) == 1
    assert "| mismatch | r2 | generate |" in capsys.readouterr().out


def test_cli_exits_0_when_everything_agrees_and_2_on_a_mistake(
    tmp_path: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = [DAY1]
    with SQLiteLedger(tmp_path / "run.db", clock=lambda: clock[0]) as ledger:
        calls = run_calls(ledger, clock, CALLS)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.json.gz").write_bytes(gz_lines([log_record(c) for c in calls]))
    db = str(tmp_path / "run.db")
    assert main(["reconcile", db, "--invocation-logs", str(logs)]) == 0
    assert "No differences." in capsys.readouterr().out

    assert main(["reconcile", db]) == 2
    assert "Nothing to reconcile with" in capsys.readouterr().err
    assert main(["reconcile", db, "--invocation-logs", str(logs), "--threshold", "lots"]) == 2
    assert "'lots', not a number: give an amount in USD" in capsys.readouterr().err
    assert main(["reconcile", str(tmp_path / "nope.db"), "--bill", str(logs)]) == 2
    assert "No ledger at" in capsys.readouterr().err
    assert main(["reconcile", db, "--bill", "s3://no-such-bucket-here/x"]) == 2
    assert "NoSuchBucket" in capsys.readouterr().err


# -- faults ---------------------------------------------------------------------------------------


def test_malformed_log_lines_are_reported_with_their_place_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    ledger, clock = Ledger(clock=lambda: clock[0]), [DAY1]
    calls = run_calls(ledger, clock, CALLS[:2])
    good = log_record(calls[0])
    no_model = {k: v for k, v in log_record(calls[1]).items() if k != "modelId"}
    bad_count = copy.deepcopy(good) | {"requestId": "x"}
    bad_count["output"]["outputTokenCount"] = "many"
    bad_meta = copy.deepcopy(good) | {"requestMetadata": {"request_id": "r=ZZ1", "stage": "g"}}
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.json.gz").write_bytes(
        gz_lines([good, "{not json", no_model, bad_count, bad_meta, "[1, 2]"])
    )
    whole = gz_lines([log_record(calls[1])])
    (folder / "b.json.gz").write_bytes(whole[: len(whole) // 2])  # cut short in transfer

    logs = read_invocation_logs(folder)
    assert [i.request_id for i in logs.invocations] == ["r1"]
    reasons = {p.source.rsplit("/", 1)[-1]: p.reason for p in logs.problems}
    assert set(reasons) == {
        "a.json.gz:2",
        "a.json.gz:3",
        "a.json.gz:4",
        "a.json.gz:5",
        "a.json.gz:6",
        "b.json.gz",
    }
    assert "missing modelId" in reasons["a.json.gz:3"]
    assert "outputTokenCount is 'many'" in reasons["a.json.gz:4"]
    assert "'request_id' does not decode" in reasons["a.json.gz:5"]
    assert "gzip stream broken" in reasons["b.json.gz"]
    result = reconcile_invocations(ledger, logs)
    assert not result.ok and len(result.problems) == 6
    # r2's record was unreadable: the ledger's r2 shows as not logged, never silently matched.
    assert [(d.kind, d.request_id) for d in result.differences] == [("missing_in_logs", "r2")]


def test_unreadable_bill_files_and_lines_are_problems_not_crashes(tmp_path: Path) -> None:
    folder = tmp_path / "bill"
    folder.mkdir()
    lines = [Line(DAY1, HAIKU, "input", 1000)]
    (folder / "a.csv.gz").write_bytes(cur_csv_gz(lines)[:40])  # truncated
    (folder / "b.parquet").write_bytes(b"PAR1 not really")
    text = gzip.decompress(cur_csv_gz(lines)).decode()
    (folder / "c.csv").write_text(text.replace("0.00025", "a quarter"), encoding="utf-8")
    export = read_bill(folder)
    assert [p.source.rsplit("/", 1)[-1] for p in export.problems] == [
        "a.csv.gz",
        "b.parquet",
        "c.csv:2",
    ]
    assert "'a quarter', not a number" in export.problems[2].reason
    assert not reconcile_bill(Ledger(), export).ok


def test_a_monthly_export_is_refused_with_what_to_do(tmp_path: Path) -> None:
    text = gzip.decompress(cur_csv_gz([Line(DAY1, HAIKU, "input", 1000)])).decode()
    monthly = text.replace("2026-11-27T11:00:00.000Z", "2026-12-01T00:00:00.000Z")
    (tmp_path / "m.csv").write_text(monthly, encoding="utf-8")
    with pytest.raises(ConfigError, match="TIME_GRANULARITY DAILY or HOURLY"):
        read_bill(tmp_path / "m.csv")


def test_a_file_of_neither_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"neither a CUR 2\.0 export"):
        read_bill(tmp_path / "x.csv")


def test_an_unknown_ledger_cost_is_shown_unknown_with_what_aws_billed(tmp_path: Path) -> None:
    failed = Entry("r7", "generate", "failed", cost=None, model=HAIKU, time=DAY1, note="500")
    answered = Entry("r8", "generate", "answered", cost=Decimal("0.000125"), model=HAIKU,
                     usage=Usage(300, 40), time=DAY1)  # fmt: skip
    (tmp_path / "b.csv.gz").write_bytes(
        cur_csv_gz([Line(DAY1, HAIKU, "input", 600), Line(DAY1, HAIKU, "output", 80)])
    )
    bill = reconcile_bill([failed, answered], read_bill(tmp_path / "b.csv.gz"), "0.000001")
    assert {r.usage_type: (r.ledger_cost, r.difference) for r in bill.discrepancies} == {
        "input": (None, None),
        "output": (None, None),
    }
    assert bill.ledger_cost is None and bill.billed_cost == Decimal("0.00025")
    assert "1 ledger entries of unknown cost" in bill.discrepancies[0].note()
    data = bill.to_json_data()
    assert data["ledger_cost"] is None and data["discrepancies"][0]["difference"] is None

    # In the logs, the failed call is matched (it ran), and its tokens are what AWS logged.
    logged = [
        _inv("r7", HAIKU, Usage(300, 40)),
        _inv("r8", HAIKU, Usage(300, 40)),
    ]
    result = reconcile_invocations([failed, answered], logged)
    assert [(d.kind, d.request_id, d.fields) for d in result.differences] == [
        ("mismatch", "r7", ("usage",))
    ]


def _inv(request_id: str, model: str, usage: Usage) -> Invocation:
    return Invocation(f"aws-{request_id}", DAY1 + timedelta(seconds=1), model, usage,
                      {"request_id": request_id, "stage": "generate"})  # fmt: skip


def test_an_unmapped_model_label_is_listed_and_a_model_map_places_it(tmp_path: Path) -> None:
    text = gzip.decompress(cur_csv_gz([Line(DAY1, NOVA, "input", 1000)])).decode()
    (tmp_path / "b.csv").write_text(text.replace("NovaMicro", "NovaFuture"), encoding="utf-8")
    entry = Entry("r1", "intent", "answered", cost=Decimal("0.000035"), model=NOVA,
                  usage=Usage(1000, 0), time=DAY1)  # fmt: skip
    bill = reconcile_bill([entry], read_bill(tmp_path / "b.csv"), "0.00001")
    assert {(r.model, r.mapped) for r in bill.discrepancies} == {
        ("NovaFuture", False),
        (NOVA, True),
    }
    assert (
        "--model-map 'NovaFuture=<model id>'"
        in next(r for r in bill.discrepancies if not r.mapped).note()
    )
    mapped = read_bill(tmp_path / "b.csv", model_map={"NovaFuture": NOVA})
    assert reconcile_bill([entry], mapped, "0.00001").ok


def test_an_empty_ledger_shows_everything_aws_recorded(s3: Any) -> None:
    ledger, clock = Ledger(clock=lambda: clock[0]), [DAY1]
    planted = plant(run_calls(Ledger(clock=lambda: clock[0]), clock, CALLS), s3)
    result = reconcile_invocations(ledger, read_invocation_logs(planted.logs))
    assert {d.kind for d in result.differences} == {"missing_in_ledger"}
    assert len(result.differences) == 6  # five calls and r9; the other application's is not ours
    bill = reconcile_bill(ledger, read_bill(planted.cur))
    assert all(r.ledger_cost == 0 for r in bill.rows) and bill.ledger_cost == 0


def test_usage_types_name_their_token_class() -> None:
    assert usage_class("USE1-MP:USE1_CacheWriteInputTokenCount-Units") == "cache_write"
    assert usage_class("EUC1-Claude4.5Sonnet-mantle-output-tokens-global") == "output"
    assert usage_class("USW2-NovaMicro-input-tokens-batch") == "input"
    assert usage_class("USE1-NovaReel-T2V-Medfps-HDRes") is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([HAIKU, SONNET4, NOVA]),
            st.integers(0, 50_000),
            st.integers(0, 5_000),
            st.integers(0, 20_000),
            st.integers(0, 1),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_token_class_shares_add_up_to_exactly_what_the_entries_cost(
    calls: list[tuple[str, int, int, int, int]],
) -> None:
    entries = []
    for n, (model, inp, out, cached, day) in enumerate(calls):
        # Haiku 3 has no cache prices: its calls read no cache.
        usage = Usage(inp, out, cache_read_tokens=0 if model == HAIKU else cached)
        cost = CATALOGUE.cost(model, usage, region="us-east-1")
        entries.append(Entry(f"r{n}", "generate", "answered", cost=cost, model=model, usage=usage,
                             time=DAY1 + timedelta(days=day)))  # fmt: skip
    empty = BillExport("cur2", (), None, None, {}, (), 0)
    bill = reconcile_bill(entries, empty, "0", since=DAY1.date(), until=DAY2.date())
    for day in {e.time.date() for e in entries}:
        for model in {e.model for e in entries}:
            shares = [r.ledger_cost for r in bill.rows if r.day == day and r.model == model]
            spent = [e.cost for e in entries if e.time.date() == day and e.model == model]
            assert sum(shares, Decimal(0)) == sum(spent, Decimal(0))  # type: ignore[arg-type]


def test_the_public_api_is_pinned() -> None:
    from chainkit.finops import reconcile

    assert set(reconcile.__all__) == {
        "CSV_COLUMNS", "TOKEN_CLASSES", "BillExport", "BillLine", "BillReconciliation",
        "BillRow", "Invocation", "InvocationDifference", "InvocationLogs",
        "InvocationReconciliation", "Problem", "add_command", "parse_invocation", "read_bill",
        "read_invocation_logs", "reconcile_bill", "reconcile_invocations", "render",
        "usage_class",
    }  # fmt: skip


_IDS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=20,  # 20 four-byte characters escape to 240, within Bedrock's 256 per value
)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.tuples(_IDS, st.sampled_from(["generate", "intent", "要約 ✂️"])),
        st.tuples(st.sampled_from([HAIKU, NOVA]), st.integers(0, 9_999), st.integers(0, 999)),
        min_size=1,
        max_size=15,
    ),
    st.data(),
)
def test_the_join_finds_exactly_the_calls_that_were_changed(
    calls: dict[tuple[str, str], tuple[str, int, int]], data: st.DataObject
) -> None:
    from chainkit.providers.bedrock import request_metadata

    keys = sorted(calls)
    dropped = data.draw(st.sets(st.sampled_from(keys)))
    bumped = data.draw(st.sets(st.sampled_from(keys))) - dropped
    entries, records = [], []
    for n, key in enumerate(keys):
        model, inp, out = calls[key]
        usage = Usage(inp, out)
        entries.append(Entry(key[0], key[1], "answered", cost=Decimal(0), model=model,
                             usage=usage, time=DAY1, tags={"tenant": key[0]}))  # fmt: skip
        if key in dropped:
            continue
        meta = request_metadata({"tenant": key[0], "stage": key[1], "request_id": key[0]})
        logged = Call(key[0], key[1], model, DAY1, Usage(inp, out + (key in bumped)))
        logged.sent = {"modelId": model, "messages": [], "requestMetadata": meta}
        # Through JSON and the parser, as a log line is read.
        records.append(
            parse_invocation(json.loads(json.dumps(log_record(logged, aws_id=str(n)))), "x")
        )
    result = reconcile_invocations(entries, records, since=DAY1 - timedelta(1), until=DAY2)
    assert {(d.kind, d.request_id, d.stage) for d in result.differences} == (
        {("missing_in_logs", *k) for k in dropped} | {("mismatch", *k) for k in bumped}
    )
    assert result.matched == len(keys) - len(dropped)


def test_profiles_and_arns_match_their_model_and_another_model_is_a_mismatch() -> None:
    profile = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us." + HAIKU
    app = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    entries = [
        Entry(
            f"r{n}",
            "generate",
            "answered",
            cost=Decimal(0),
            model=HAIKU,
            usage=Usage(10, 1),
            time=DAY1,
        )
        for n in range(4)
    ]
    logged = [_inv("r0", profile, Usage(10, 1)), _inv("r1", app, Usage(10, 1))]
    logged += [_inv("r2", "us." + HAIKU, Usage(10, 1)), _inv("r3", NOVA, Usage(10, 1))]
    result = reconcile_invocations(entries, logged)
    assert [(d.request_id, d.fields) for d in result.differences] == [("r3", ("model",))]
    assert result.matched == 4


def test_a_cur_parquet_export_with_its_product_map_reads_like_its_csv(s3: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = bill_lines(CALLS)
    text = gzip.decompress(cur_csv_gz(lines)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:  # Parquet keeps the product map as a map, and numbers as doubles
        row["product"] = list(json.loads(row["product"]).items())  # type: ignore[assignment]
        for column in ("line_item_usage_amount", "line_item_unblended_cost"):
            row[column] = float(row[column]) if row[column] else None  # type: ignore[assignment]
    schema = pa.schema(
        [
            (c, pa.map_(pa.string(), pa.string()))
            if c == "product"
            else (c, pa.float64())
            if c in ("line_item_usage_amount", "line_item_unblended_cost")
            else (c, pa.string())
            for c in CUR_COLUMNS
        ]
    )
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="cur2/data/part-00001.snappy.parquet", Body=out.getvalue())
    s3.put_object(Bucket=BUCKET, Key="cur2/data/part-00002.csv.gz", Body=cur_csv_gz(lines))
    export = read_bill(f"s3://{BUCKET}/cur2/")
    assert export.kind == "cur2" and export.files == 2 and not export.problems
    by_source: dict[bool, list[tuple[Any, ...]]] = {True: [], False: []}
    for line in export.lines:
        by_source[line.source.split(":")[1].endswith("parquet")].append(
            (line.day, line.model, line.usage_type, line.tokens, line.cost)
        )
    assert by_source[True] == by_source[False] and len(by_source[True]) == 12


def test_since_and_until_choose_the_days_on_both_sides(
    tmp_path: Path, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = [DAY1]
    with SQLiteLedger(tmp_path / "run.db", clock=lambda: clock[0]) as ledger:
        planted = plant(run_calls(ledger, clock, CALLS), s3)
    args = ["reconcile", str(tmp_path / "run.db"), "--invocation-logs", planted.logs]
    args += ["--bill", planted.focus, "--format", "json"]

    def found(*window: str) -> tuple[list[tuple[str, str]], list[str]]:
        assert main([*args, *window]) == 1
        data = json.loads(capsys.readouterr().out)
        calls = sorted((d["kind"], d["request_id"]) for d in data["invocations"]["differences"])
        return calls, [r["day"] for r in data["bill"]["discrepancies"]]

    # r2's 7 output tokens on the 27th; r9's tokens and the $0.25 on the 28th.
    assert found("--until", "2026-11-27") == ([("mismatch", "r2")], ["2026-11-27"])
    assert found("--since", "2026-11-28") == (
        [("missing_in_ledger", "r9")],
        ["2026-11-28", "2026-11-28"],
    )
    assert main([*args, "--since", "28 Nov"]) == 2
    assert "'28 Nov' is not a date" in capsys.readouterr().err


def test_batch_entries_are_not_expected_in_the_logs_but_are_on_the_bill(tmp_path: Path) -> None:
    batch = Entry("doc-1", "summarise", "answered", cost=Decimal("0.0000625"), model=HAIKU,
                  usage=Usage(300, 40), time=DAY1, tags={"tier": "batch"})  # fmt: skip
    result = reconcile_invocations([batch], [_inv("r0", HAIKU, Usage(1, 1))])
    assert [(d.kind, d.request_id) for d in result.differences] == [("missing_in_ledger", "r0")]
    at_batch_price = Line(DAY1, HAIKU, "input", 300, cost=Decimal("0.0000375"))  # $0.125/M
    (tmp_path / "b.csv.gz").write_bytes(cur_csv_gz([at_batch_price]))
    [row] = reconcile_bill([batch], read_bill(tmp_path / "b.csv.gz"), "0").discrepancies
    assert (row.usage_type, row.ledger_tokens, row.billed_tokens) == ("output", 40, 0)
