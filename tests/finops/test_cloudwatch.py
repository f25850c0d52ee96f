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
from botocore.exceptions import ClientError, NoCredentialsError
from hypothesis import given
from hypothesis import strategies as st

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
from chainkit.providers.bedrock import decode_metadata

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


class StrictCloudWatch:
    """moto's CloudWatch behind the PutMetricData rules AWS documents and moto does not enforce.

    Dimension values of 1 to 1,024 printable ASCII characters, not all whitespace; at most 30
    dimensions and 1,000 values a call; timestamps at most two weeks old and two hours ahead.
    One breach refuses the whole call, as CloudWatch does. ``fail_on`` refuses that call (1 is
    the first) as a throttled one, to test what was published before it.
    """

    def __init__(self, client: Any, *, fail_on: int | None = None) -> None:
        self.client = client
        self.fail_on = fail_on
        self.calls = 0
        self.sent: list[dict[str, Any]] = []

    def put_metric_data(self, *, Namespace: str, MetricData: list[dict[str, Any]]) -> Any:
        self.calls += 1
        now = datetime.now(UTC)
        problems = [] if 1 <= len(MetricData) <= 1000 else [f"{len(MetricData)} values"]
        for datum in MetricData:
            dims = datum.get("Dimensions", [])
            problems += [f"{len(dims)} dimensions"] if len(dims) > 30 else []
            for dim in dims:
                value = dim["Value"]
                if not (
                    1 <= len(value) <= 1024
                    and all(" " <= c <= "~" for c in value)
                    and value.strip()
                ):
                    problems.append(f"dimension value {value!r:.60}")
            when = datum["Timestamp"]
            if not now - timedelta(days=14) <= when <= now + timedelta(hours=2):
                problems.append(f"timestamp {when}")
        if problems:
            raise ClientError(
                {"Error": {"Code": "InvalidParameterValue", "Message": problems[0]}},
                "PutMetricData",
            )
        if self.calls == self.fail_on:
            raise ClientError(
                {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "PutMetricData"
            )
        self.sent.extend(MetricData)
        return self.client.put_metric_data(Namespace=Namespace, MetricData=MetricData)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def strict(region: str, **kw: Any) -> StrictCloudWatch:
    """A CloudWatch client (moto's) that refuses what the real service refuses."""
    return StrictCloudWatch(boto3.client("cloudwatch", region_name=region), **kw)


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
    client = strict("us-east-1")
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
    client = strict("us-east-1")
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
    client = strict("us-east-1")
    assert publish_metrics([], client) == 0


def test_bad_options_are_config_errors() -> None:
    client = strict("us-east-1")
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


# -- what the real service refuses, and what is published when it does ------------------------


def valid_for_cloudwatch(value: str) -> bool:
    """AWS's rule for a dimension value (PutMetricData, Dimension.Value)."""
    return 1 <= len(value) <= 1024 and all(" " <= c <= "~" for c in value) and bool(value.strip())


@given(st.text(st.characters(exclude_categories=()), max_size=600))
def test_dimension_values_meet_cloudwatch_rules_and_read_back(text: str) -> None:
    value = dimension_value(text)
    assert valid_for_cloudwatch(value)
    assert dimension_value(text) == value  # deterministic
    if text:
        # Reversible wherever it fits, so two texts never share a value; a text whose escaped
        # form is longer than CloudWatch takes is cut and ends in a hash of the whole text.
        if value[-17:-16] == "~" and len(text.encode("utf-8", "surrogatepass")) * 3 > 1024:
            assert value == dimension_value(text) and len(value) <= 1024
        else:
            assert decode_metadata(value) == text
    else:
        assert value == "=none"


@given(st.text(st.characters(exclude_categories=()), min_size=300, max_size=3000))
def test_long_dimension_values_are_cut_with_a_hash(text: str) -> None:
    value = dimension_value(text)
    assert valid_for_cloudwatch(value)
    if len(value) > 1000:
        assert value[-17] == "~"
        assert dimension_value(text + "x") != value


AWKWARD = {
    "日本の店 🚚": "=E6=97=A5=E6=9C=AC=E3=81=AE=E5=BA=97 =F0=9F=9A=9A",
    "tab\there": "tab=09here",
    "   ": "=20=20=20",
    "x=1": "x=3D1",
    "none": "none",
}


def test_awkward_tenants_and_stages_reach_cloudwatch() -> None:
    def e(i: int, tags: dict[str, str], stage: str = "generate") -> Entry:
        return Entry(f"a{i}", stage, "answered", Decimal("0.001"), model=NOVA, usage=Usage(1, 1),
                     time=NOW, tags=tags)  # fmt: skip

    many = [e(i, {"tenant": t}) for i, t in enumerate([*AWKWARD, "🚚" * 200])]
    many += [e(10, {}, stage="サポート\n"), e(11, {"team": "a"})]  # untagged, twice
    client = strict("us-east-1")
    assert publish_metrics(many, client, namespace="awkward") == len(metric_points(many))
    for tenant, value in AWKWARD.items():
        assert stat(client, "Calls", {"Tenant": value}, namespace="awkward") == 1, tenant
    long = dimension_value("🚚" * 200)  # 2,400 characters escaped: cut, with a hash
    assert len(long) <= 1024 and stat(client, "Calls", {"Tenant": long}, namespace="awkward") == 1
    # Untagged entries are "=none", apart from the tenant named "none".
    assert stat(client, "Calls", {"Tenant": "=none"}, namespace="awkward") == 2
    stage = {"Stage": "=E3=82=B5=E3=83=9D=E3=83=BC=E3=83=88=0A"}
    assert stat(client, "Calls", stage, namespace="awkward") == 1


def hour_of_calls(tenants: int = 7) -> list[Entry]:
    return [
        Entry(f"m{i}", "generate", "answered", Decimal("0.001"), model=NOVA,
              time=NOW - timedelta(minutes=i), tags={"tenant": f"t{i % tenants}"})
        for i in range(60)
    ]  # fmt: skip


def test_a_refused_batch_after_accepted_ones_says_where_to_resume() -> None:
    many = hour_of_calls()
    client = strict("us-east-1", fail_on=2)
    with pytest.raises(PartialPublish) as raised:
        publish_metrics(many, client, namespace="resume")
    partial = raised.value
    assert partial.sent == len(client.sent) > 0
    assert "Throttling" in str(partial) and "model id" not in str(partial)
    assert f"--since {partial.resume:%Y-%m-%dT%H:%M}Z" in str(partial)
    # What was accepted lies wholly before the resume time: resuming sends none of it again.
    assert max(d["Timestamp"] for d in client.sent) < partial.resume
    assert partial.last == max(d["Timestamp"] for d in client.sent)
    rest = strict("us-east-1")
    publish_metrics(many, rest, namespace="resume", since=partial.resume)
    assert min(d["Timestamp"] for d in rest.sent) == partial.resume
    # Both runs together: every call once.
    assert stat(rest, "Calls", {"Model": NOVA}, namespace="resume") == 60
    assert stat(rest, "Calls", {"Tenant": "t3"}, namespace="resume") == len(range(3, 60, 7))


def test_a_refused_first_batch_publishes_nothing_and_names_cloudwatch() -> None:
    client = strict("us-east-1", fail_on=1)
    with pytest.raises(ConfigError, match="nothing was published") as raised:
        publish_metrics(hour_of_calls(), client)
    assert "PutMetricData" in str(raised.value) and "model id" not in str(raised.value)
    assert client.sent == []


def test_values_older_than_two_weeks_are_skipped_with_a_note() -> None:
    old = [
        Entry(f"o{i}", "generate", "answered", Decimal("0.001"), model=NOVA,
              time=NOW - timedelta(days=20, minutes=i))
        for i in range(3)
    ]  # fmt: skip
    notes: list[str] = []
    client = strict("us-east-1")
    sent = publish_metrics([*old, *entries()], client, notes=notes.append)
    assert sent == len(metric_points(entries())) == len(client.sent)
    skipped = len(metric_points(old))
    assert len(notes) == 1 and f"skipped {skipped} values older than two weeks" in notes[0]
    assert "--since" in notes[0]


def test_the_command_reports_a_partial_publish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLiteLedger(tmp_path / "l.db") as ledger:
        ledger.record_many(hour_of_calls())
    failing = strict("us-east-1", fail_on=2)
    monkeypatch.setattr(boto3, "client", lambda *a, **kw: failing)
    argv = ["export", str(tmp_path / "l.db"), "--format", "cloudwatch", "--summary-format", "json"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["values"] == len(failing.sent) > 0
    assert f"--since {summary['resume_since']} " in err and len(err.splitlines()) == 1


def test_a_request_spanning_a_minute_boundary_counts_once() -> None:
    start = NOW + timedelta(seconds=50)
    calls = [
        Entry("r1", "intent", "passed", Decimal("0.0001"), model=NOVA, time=start),
        Entry("r1", "generate", "answered", Decimal("0.01"), model=SONNET,
              time=start + timedelta(seconds=20)),
    ]  # fmt: skip
    points = [p for p in metric_points(calls, rollups=[()]) if p.name == "Requests"]
    assert [(p.timestamp, p.value) for p in points if p.value] == [(NOW, 1)]
    assert sum(p.value for p in points) == 1
    # Each stage saw it once too, each at its own entry's minute.
    by_stage = [p for p in metric_points(calls, rollups=[("Stage",)]) if p.name == "Requests"]
    assert sum(p.value for p in by_stage) == 2
    # Published from its second minute on, it is not counted again.
    later = metric_points(calls, rollups=[()], since=NOW + timedelta(minutes=1))
    assert sum(p.value for p in later if p.name == "Requests") == 0


def test_an_answer_of_unknown_avoided_cost_is_not_a_deflection() -> None:
    final = Entry("r", "generate", "answered", Decimal(1), model=SONNET, avoided_cost=None)
    assert not is_deflection(final)
    points = metric_points([final], rollups=[()])
    assert {p.name: p.value for p in points}["Deflections"] == 0


def test_missing_credentials_say_what_to_do_for_cloudwatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLiteLedger(tmp_path / "l.db") as ledger:
        ledger.record_many(entries())

    class NoCredentials:
        meta = boto3.client("cloudwatch", region_name="us-east-1").meta

        def put_metric_data(self, **kw: Any) -> None:
            raise NoCredentialsError()

    monkeypatch.setattr(boto3, "client", lambda *a, **kw: NoCredentials())
    assert main(["export", str(tmp_path / "l.db"), "--format", "cloudwatch"]) == 2
    err = capsys.readouterr().err
    assert "No AWS credentials" in err and "--provider" not in err and "--format emf" in err
