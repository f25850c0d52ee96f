"""CloudWatch metrics of a ledger, published to moto's CloudWatch and as embedded metric format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from chainkit import ConfigError, Entry, Ledger, PostgresLedger, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.cloudwatch import (
    METRICS,
    PartialPublish,
    dimension_value,
    emf_records,
    is_deflection,
    metric_points,
    publish_metrics,
)

NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
NOVA = "amazon.nova-micro-v1:0"
JP = "日本の店 🚚"
JP_VALUE = dimension_value(JP)  # CloudWatch takes ASCII dimension values only


def entries() -> list[Entry]:
    def e(stage: str, outcome: str, cost: Decimal | None, model: str | None, **kw: Any) -> Entry:
        return Entry(
            request_id=kw.pop("rid"),
            stage=stage,
            outcome=outcome,  # type: ignore[arg-type]
            cost=cost,
            model=model,
            usage=None if model is None else Usage(100, 10),
            time=NOW + timedelta(minutes=kw.pop("minute", 0)),
            tags={"tenant": kw.pop("tenant", "acme")},
            **kw,
        )

    return [
        e("intent", "passed", Decimal("0.0001"), NOVA, rid="r1"),
        e("canned", "answered", Decimal(0), None, rid="r1", avoided_cost=Decimal("0.0040")),
        e("intent", "passed", Decimal("0.0001"), NOVA, rid="r2", tenant=JP),
        e("canned", "passed", Decimal(0), None, rid="r2", tenant=JP),
        e("generate", "answered", Decimal("0.0123"), SONNET, rid="r2", tenant=JP),
        e("intent", "passed", Decimal("0.0001"), NOVA, rid="r3", minute=1),
        e("generate", "failed", None, SONNET, rid="r3", minute=1, bound=Decimal("0.05")),
        e("canned", "answered", Decimal(0), None, rid="r4", minute=1, avoided_cost=None),
    ]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        made: Ledger = Ledger()
    elif request.param == "sqlite":
        made = SQLiteLedger(tmp_path / "l.db")
    else:
        made = PostgresLedger(
            request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema")
        )
    made.record_many(entries())
    yield made
    made.close()


def stat(client: Any, name: str, dims: dict[str, str], namespace: str = "chainkit") -> float:
    """The Sum of one metric over the test's hours, as CloudWatch (moto) returns it."""
    got = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=NOW - timedelta(hours=1),
        EndTime=NOW + timedelta(hours=1),
        Period=7200,
        Statistics=["Sum"],
    )
    return float(sum(p["Sum"] for p in got["Datapoints"]))


def test_spend_calls_avoided_and_deflections_reach_cloudwatch(ledger: Ledger) -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    sent = publish_metrics(ledger, client)
    assert sent == len(metric_points(ledger)) > 0
    by_stage = ledger.by_stage()
    # Per stage: spend of known costs, calls, and what the stage avoided.
    assert stat(client, "Spend", {"Stage": "intent"}) == pytest.approx(0.0003)
    assert stat(client, "Calls", {"Stage": "intent"}) == by_stage["intent"].calls == 3
    assert stat(client, "Spend", {"Stage": "generate"}) == pytest.approx(0.0123)
    assert stat(client, "UnknownCostCalls", {"Stage": "generate"}) == 1
    assert stat(client, "AvoidedCost", {"Stage": "canned"}) == pytest.approx(0.004)
    assert stat(client, "Deflections", {"Stage": "canned"}) == 2
    assert stat(client, "Deflections", {"Stage": "generate"}) == 0
    # Per model and per tenant (a Japanese and emoji tag value, escaped as CloudWatch needs).
    assert stat(client, "Spend", {"Model": SONNET}) == pytest.approx(0.0123)
    assert stat(client, "Calls", {"Model": "=none"}) == 3
    assert stat(client, "Spend", {"Tenant": JP_VALUE}) == pytest.approx(0.0124)
    assert stat(client, "Requests", {"Tenant": "acme"}) == 3
    names = {m["MetricName"] for m in client.list_metrics(Namespace="chainkit")["Metrics"]}
    assert names == set(METRICS)
    # The whole application: no dimension. (moto, unlike CloudWatch, sums every dimension set
    # for a query without dimensions: publish that rollup alone to read it back.)
    publish_metrics(ledger, client, namespace="app", rollups=[()])
    assert stat(client, "Spend", {}, namespace="app") == pytest.approx(0.0126)
    assert stat(client, "Answered", {}, namespace="app") == 3


def test_points_are_exact_per_minute_and_rollup() -> None:
    points = metric_points(entries(), rollups=[("Stage", "Tenant")])
    spend = {
        (p.timestamp, p.dimensions): p.value
        for p in points
        if p.name == "Spend" and p.value  # non-zero spend
    }
    assert spend == {
        (NOW, (("Stage", "intent"), ("Tenant", "acme"))): Decimal("0.0001"),
        (NOW, (("Stage", "intent"), ("Tenant", JP_VALUE))): Decimal("0.0001"),
        (NOW, (("Stage", "generate"), ("Tenant", JP_VALUE))): Decimal("0.0123"),
        (NOW + timedelta(minutes=1), (("Stage", "intent"), ("Tenant", "acme"))): Decimal("0.0001"),
    }
    hourly = metric_points(entries(), rollups=[()], resolution="hour")
    assert {p.timestamp for p in hourly} == {NOW.replace(minute=0)}
    total = {p.name: p.value for p in hourly}
    assert total["Spend"] == Decimal("0.0126") and total["UnknownCostCalls"] == 1
    assert total["Calls"] == 8 and total["Requests"] == 4 and total["Deflections"] == 2


def test_deflection_is_an_answer_without_the_final_model() -> None:
    canned, generate = entries()[1], entries()[4]
    assert is_deflection(canned) and not is_deflection(generate)
    early_model = Entry("r", "small", "answered", Decimal(1), model=NOVA, avoided_cost=Decimal(2))
    assert is_deflection(early_model)


def test_more_than_a_thousand_values_go_in_batches() -> None:
    many = [
        Entry(f"m{i}", "generate", "answered", Decimal("0.001"), model=NOVA,
              time=NOW - timedelta(minutes=i), tags={"tenant": f"t{i % 7}"})
        for i in range(60)
    ]  # fmt: skip
    client = boto3.client("cloudwatch", region_name="us-east-1")
    sent = publish_metrics(many, client, namespace="batch-test")
    assert sent > 1000  # 60 minutes x 4 rollups x 7 metrics
    got = client.get_metric_statistics(
        Namespace="batch-test",
        MetricName="Calls",
        Dimensions=[{"Name": "Model", "Value": NOVA}],
        StartTime=NOW - timedelta(hours=2),
        EndTime=NOW + timedelta(hours=1),
        Period=3600 * 3,
        Statistics=["Sum"],
    )
    assert sum(p["Sum"] for p in got["Datapoints"]) == 60


def test_since_and_until_select_entries() -> None:
    later = metric_points(entries(), rollups=[()], since=NOW + timedelta(minutes=1))
    assert {p.name: p.value for p in later}["Calls"] == 3
    earlier = metric_points(entries(), rollups=[()], until=NOW + timedelta(minutes=1))
    assert {p.name: p.value for p in earlier}["Calls"] == 5
    assert metric_points([], rollups=[()]) == []
    client = boto3.client("cloudwatch", region_name="us-east-1")
    assert publish_metrics([], client) == 0


def test_bad_options_are_config_errors() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    with pytest.raises(ConfigError, match="reserved"):
        publish_metrics(entries(), client, namespace="AWS/Bedrock")
    with pytest.raises(ConfigError, match="1 to 255"):
        publish_metrics(entries(), client, namespace="")
    with pytest.raises(ConfigError, match="rollup"):
        metric_points(entries(), rollups=[("Stage", "Stage")])
    with pytest.raises(ConfigError, match="rollup"):
        metric_points(entries(), rollups=[("Region",)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="timezone"):
        metric_points(entries(), since=datetime(2026, 1, 1))
    with pytest.raises(ConfigError, match="resolution"):
        metric_points(entries(), resolution="second")  # type: ignore[arg-type]


def test_embedded_metric_format_records() -> None:
    records = list(emf_records(entries(), namespace="support-bot"))
    assert len(records) == len({(p.timestamp, p.dimensions) for p in metric_points(entries())})
    for record in records:
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "support-bot"
        for name in directive["Dimensions"][0]:
            assert isinstance(record[name], str)  # each dimension is a key of the record
        for metric in directive["Metrics"]:
            assert isinstance(record[metric["Name"]], float)
        assert record["_aws"]["Timestamp"] % 60_000 == 0
    tenant = [r for r in records if r.get("Tenant") == JP_VALUE]
    assert sum(r["Spend"] for r in tenant) == pytest.approx(0.0124)


def test_chainkit_export_cloudwatch_and_emf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SQLiteLedger(tmp_path / "l.db") as ledger:
        ledger.record_many(entries())
    db = str(tmp_path / "l.db")
    assert main(["export", db, "--format", "cloudwatch", "--namespace", "cli-test",
                 "--region", "eu-west-1", "--summary-format", "json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["values"] == len(metric_points(entries()))
    assert printed["region"] == "eu-west-1"
    client = boto3.client("cloudwatch", region_name="eu-west-1")
    assert stat(client, "Spend", {"Model": SONNET}, namespace="cli-test") == pytest.approx(0.0123)
    out = tmp_path / "m.jsonl"
    assert main(["export", db, "--format", "emf", "--out", str(out), "--resolution", "hour"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert JP_VALUE in out.read_text(encoding="utf-8")
    assert len(lines) == len(metric_points(entries(), resolution="hour")) // len(METRICS)
    assert main(["export", db, "--format", "cloudwatch", "--namespace", "AWS/x"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert main(["export", db, "--format", "cloudwatch", "--since", "yesterday"]) == 2
    assert "--since 'yesterday' is not a time" in capsys.readouterr().err
