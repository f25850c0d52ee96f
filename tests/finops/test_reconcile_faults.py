"""Reconciliation under attack: wrong money, missed and false differences, hostile input.

Each test pins one defect an adversarial review found; the bills and log records are written in
the layouts ``tests/finops/test_reconcile.py`` documents (CUR 2.0, FOCUS 1.2, Bedrock's
invocation logs).
"""

from __future__ import annotations

import csv
import decimal
import gzip
import io
import json
import zlib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import ConfigError, Entry, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.reconcile import (
    BillExport,
    Invocation,
    read_bill,
    read_invocation_logs,
    reconcile_bill,
    reconcile_invocations,
)
from chainkit.providers.bedrock import request_metadata
from tests.finops.test_reconcile import (
    CATALOGUE,
    DAY1,
    HAIKU,
    NOVA,
    SONNET4,
    Line,
    cur_csv_gz,
    focus_parquet,
)


def priced(request_id: str, model: str, usage: Usage, minute: int = 0) -> Entry:
    """An answered call priced by the catalogue (us-east-1), as a stage records it."""
    return Entry(
        request_id,
        "generate",
        "answered",
        cost=CATALOGUE.cost(model, usage, region="us-east-1"),
        model=model,
        usage=usage,
        time=DAY1 + timedelta(minutes=minute),
    )


def bill_of(entries: list[Entry]) -> list[Line]:
    """What AWS bills for ``entries`` at list price, a line per class."""
    lines = []
    for e in entries:
        assert e.usage is not None and e.model is not None
        for cls, tokens in (("input", e.usage.input_tokens), ("output", e.usage.output_tokens)):
            if tokens:
                lines.append(Line(DAY1, e.model, cls, tokens))
    return lines


# -- wrong money ----------------------------------------------------------------------------------


def test_an_unknown_cost_is_listed_whenever_aws_billed_there_below_the_threshold(
    tmp_path: Path,
) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    failed = Entry("r2", "generate", "failed", None, model=HAIKU, time=DAY1 + timedelta(minutes=1))
    lines = [*bill_of([ok]), Line(DAY1, HAIKU, "input", 12_000, cost=Decimal("0.003"))]
    (tmp_path / "b.csv.gz").write_bytes(cur_csv_gz(lines))
    bill = reconcile_bill([ok, failed], read_bill(tmp_path / "b.csv.gz"), "0.01")
    [row] = bill.discrepancies  # $0.003 is under the threshold; the ledger cannot say it agrees
    assert (row.model, row.usage_type, row.ledger_cost, row.billed_cost) == (
        HAIKU,
        "input",
        None,
        Decimal("0.003"),
    )
    assert bill.kind_of(row) == "unknown" and not bill.ok and bill.ledger_cost is None


def test_a_cost_without_usage_counts_in_the_ledgers_total(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    fee = Entry("r3", "generate", "answered", Decimal("0.50"), model=NOVA, time=DAY1)
    (tmp_path / "b.csv.gz").write_bytes(cur_csv_gz(bill_of([ok])))
    bill = reconcile_bill([ok, fee], read_bill(tmp_path / "b.csv.gz"), "0.01")
    assert ok.cost is not None
    assert bill.ledger_cost == ok.cost + Decimal("0.50")
    assert sum(r.ledger_cost or 0 for r in bill.rows) == bill.ledger_cost
    [row] = bill.discrepancies
    assert (row.usage_type, row.ledger_tokens, row.ledger_cost) == (
        "unclassified",
        None,
        Decimal("0.50"),
    )
    assert row.difference == Decimal("-0.50") and "cannot be placed" in row.note()


def test_a_model_the_catalogue_lacks_is_unknown_never_zero(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    new = Entry(
        "r4",
        "generate",
        "answered",
        None,
        model="amazon.nova-9-ultra-v1:0",
        usage=Usage(1_000, 1_000),
        time=DAY1,
    )
    text = gzip.decompress(
        cur_csv_gz([*bill_of([ok]), Line(DAY1, NOVA, "input", 1_000, cost=Decimal(7))])
    ).decode()
    # The last line is the new model's: relabel its usage type.
    head, *rows = text.splitlines()
    rows[-1] = rows[-1].replace("NovaMicro", "Nova9Ultra")
    (tmp_path / "b.csv").write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    bill = reconcile_bill([ok, new], read_bill(tmp_path / "b.csv"), "0.01")
    assert bill.ledger_cost is None  # an entry of unknown cost: the total is unknown
    unplaced = next(r for r in bill.rows if r.model == "Nova9Ultra")
    assert (unplaced.ledger_tokens, unplaced.ledger_cost) == (None, None)
    assert unplaced in bill.discrepancies
    ledger_side = [r for r in bill.rows if r.model == "amazon.nova-9-ultra-v1:0"]
    assert {(r.usage_type, r.ledger_tokens, r.ledger_cost) for r in ledger_side} == {
        ("input", 1_000, None),
        ("output", 1_000, None),
    }
    mapped = read_bill(tmp_path / "b.csv", model_map={"Nova9Ultra": "amazon.nova-9-ultra-v1:0"})
    row = next(
        r
        for r in reconcile_bill([ok, new], mapped).rows
        if r.usage_type == "input" and r.model == "amazon.nova-9-ultra-v1:0"
    )
    assert (row.ledger_tokens, row.billed_tokens, row.ledger_cost) == (1_000, 1_000, None)
    # A known cost of a model the catalogue cannot price is counted, in no token class.
    priced_new = Entry(
        "r5",
        "generate",
        "answered",
        Decimal("0.02"),
        model="amazon.nova-9-ultra-v1:0",
        usage=Usage(10, 10),
        time=DAY1,
    )
    known = reconcile_bill([ok, priced_new], mapped)
    assert known.ledger_cost == ok.cost + Decimal("0.02")  # type: ignore[operator]


_COSTS = st.integers(1, 10**30).map(lambda n: Decimal(n).scaleb(-24))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([NOVA, HAIKU, SONNET4]),
            st.integers(0, 10**9),
            st.integers(0, 10**9),
            st.integers(0, 10**6),
            _COSTS,
        ),
        min_size=1,
        max_size=40,
    )
)
def test_sums_and_shares_are_exact_to_the_24th_place(
    calls: list[tuple[str, int, int, int, Decimal]],
) -> None:
    entries = [
        Entry(
            f"r{n}",
            "generate",
            "answered",
            cost,
            model=model,
            usage=Usage(inp, out, cache_read_tokens=0 if model == HAIKU else cached),
            time=DAY1 + timedelta(minutes=n),
        )
        for n, (model, inp, out, cached, cost) in enumerate(calls)
    ]
    bill = reconcile_bill(entries, BillExport("cur2", (), None, None, {}, (), 0), "0")
    with decimal.localcontext(decimal.Context(prec=200)):
        exact = sum((e.cost for e in entries if e.cost is not None), Decimal(0))
        rows = sum((r.ledger_cost for r in bill.rows if r.ledger_cost is not None), Decimal(0))
    assert bill.ledger_cost == exact and rows == exact
    for r in bill.rows:
        assert r.ledger_cost is not None and r.ledger_cost >= 0
        exponent = r.ledger_cost.as_tuple().exponent
        assert isinstance(exponent, int) and exponent >= -24  # whole 1e-24 USD, never 60 digits
    for model in {e.model for e in entries}:
        spent = [e.cost for e in entries if e.model == model]
        shares = [r.ledger_cost for r in bill.rows if r.model == model]
        with decimal.localcontext(decimal.Context(prec=200)):
            assert sum(shares, Decimal(0)) == sum(spent, Decimal(0))  # type: ignore[arg-type]
    assert json.dumps(bill.to_json_data())  # exact strings, serialisable


# -- missed differences ---------------------------------------------------------------------------


def test_token_differences_are_listed_even_when_the_cost_agrees(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    lines = bill_of([ok])
    same_cost = lines[0].price()
    lines[0] = Line(DAY1, NOVA, "input", 6_000, cost=same_cost)  # 5,000 more tokens, same $
    (tmp_path / "b.csv.gz").write_bytes(cur_csv_gz(lines))
    bill = reconcile_bill([ok], read_bill(tmp_path / "b.csv.gz"), "0.01")
    [row] = bill.discrepancies
    assert (row.usage_type, row.token_difference, row.difference) == ("input", 5_000, 0)
    assert bill.kind_of(row) == "tokens" and not bill.ok
    assert "1 in tokens only" in bill.summary()


# -- another currency, duplicates -----------------------------------------------------------------


def test_a_bill_in_another_currency_is_refused_not_summed_as_usd(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    text = gzip.decompress(cur_csv_gz(bill_of([ok]))).decode()
    (tmp_path / "jpy.csv").write_text(text.replace(",USD,", ",JPY,"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"jpy\.csv:2: the bill's costs are in JPY"):
        read_bill(tmp_path / "jpy.csv")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(io.BytesIO(focus_parquet(bill_of([ok]))))
    column = table.schema.get_field_index("BillingCurrency")
    euros = table.set_column(column, "BillingCurrency", pa.array(["EUR"] * table.num_rows))
    pq.write_table(euros, tmp_path / "eur.parquet")
    with pytest.raises(ConfigError, match="in EUR, the ledger's in USD"):
        read_bill(tmp_path / "eur.parquet")


def test_the_same_export_under_two_prefixes_is_counted_once(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "x.csv.gz").write_bytes(cur_csv_gz(bill_of([ok])))
    export = read_bill(tmp_path)
    assert len(export.lines) == 2 and len(export.duplicates) == 2
    assert "identical to" in export.duplicates[0].reason
    bill = reconcile_bill([ok], export, "0")
    assert bill.ok and bill.billed_cost == ok.cost
    assert "2 duplicate lines ignored" in bill.summary()


# -- unreadable input -----------------------------------------------------------------------------


def test_a_bad_line_costs_that_line_only_with_its_number(tmp_path: Path) -> None:
    entries = [priced(f"r{n}", NOVA, Usage(1_000 + n, 200)) for n in range(3)]
    text = gzip.decompress(cur_csv_gz(bill_of(entries))).decode()
    head, *rows = text.splitlines()
    latin = "\n".join([head, *rows]).encode("utf-8").split(b"\n")
    latin[1] = latin[1].replace(b"li-0", b"caf\xe9")  # one Latin-1 byte on line 2
    latin[3] = latin[3][:-5] + b',"' + b"x" * 200_000 + b'"'  # a field over csv's 128 KB
    (tmp_path / "a.csv").write_bytes(b"\n".join(latin) + b"\n")
    export = read_bill(tmp_path / "a.csv")
    reasons = {p.source.rsplit("/", 1)[-1]: p.reason for p in export.problems}
    assert set(reasons) == {"a.csv:2", "a.csv:4"}
    assert "not UTF-8" in reasons["a.csv:2"]
    assert len(export.lines) == 4  # six lines, two unreadable

    whole = cur_csv_gz(bill_of(entries) * 300)
    (tmp_path / "b.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    cut = read_bill(tmp_path / "b.csv.gz")
    assert len(cut.lines) > 100  # what came before the break is read
    [problem] = cut.problems
    assert problem.source.endswith("b.csv.gz") and "gzip stream broken after line" in problem.reason


def test_an_endless_line_is_reported_and_reading_stays_bounded(tmp_path: Path) -> None:
    ok = priced("r1", NOVA, Usage(1_000, 200))
    text = gzip.decompress(cur_csv_gz(bill_of([ok]))).decode()
    head, *rows = text.splitlines()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    with (tmp_path / "bomb.csv.gz").open("wb") as out:
        out.write(deflate.compress(f"{head}\n{rows[0]}\nx,".encode()))
        for _ in range(8):  # 8 MiB of one line from a few KiB on disk
            out.write(deflate.compress(b"a" * (1 << 20)))
        out.write(deflate.compress(f"\n{rows[1]}\n".encode()) + deflate.flush())
    export = read_bill(tmp_path / "bomb.csv.gz")
    [problem] = export.problems
    assert problem.source.endswith("bomb.csv.gz:3") and "longer than 1,048,576 bytes" in (
        problem.reason
    )
    assert reconcile_bill([ok], export, "0").rows[0].billed_tokens == 1_000  # lines 2 and 4 read
    logs = tmp_path / "logs"
    logs.mkdir()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    with (logs / "a.json.gz").open("wb") as out:
        out.write(deflate.compress(b'{"requestId": "'))
        for _ in range(8):
            out.write(deflate.compress(b"a" * (1 << 20)))
        out.write(deflate.flush())
    read = read_invocation_logs(logs)
    assert not read.invocations and "longer than" in read.problems[0].reason


def test_a_file_that_is_not_a_bill_is_refused_without_its_contents(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("Jane Doe,jane@example.com,+44 20 7946 0000\n1,2,3\n")
    with pytest.raises(ConfigError) as exc:
        read_bill(tmp_path / "x.csv")
    assert "jane" not in str(exc.value).lower() and "among its 3 columns" in str(exc.value)


# -- the join with the invocation logs ------------------------------------------------------------


def logged(entry: Entry, seconds: float, usage: Usage | None = None, **extra: Any) -> Invocation:
    """The record Bedrock logs of ``entry``'s call, ``seconds`` after the entry's time."""
    assert entry.model is not None
    used = usage if usage is not None else entry.usage
    assert used is not None
    return Invocation(
        extra.pop("aws", f"aws-{entry.request_id}-{seconds}"),
        entry.time + timedelta(seconds=seconds),
        entry.model,
        used,
        {"request_id": entry.request_id, "stage": entry.stage},
        **extra,
    )


def test_a_model_the_catalogue_lacks_is_joined_not_missing() -> None:
    known = priced("r1", NOVA, Usage(100, 10))
    new = Entry(
        "r2",
        "generate",
        "answered",
        None,
        model="amazon.nova-9-ultra-v1:0",
        usage=Usage(50, 5),
        time=DAY1 + timedelta(seconds=30),
    )
    result = reconcile_invocations([known, new], [logged(known, 1), logged(new, 1)])
    assert result.ok and result.matched == 2 and result.ledger_entries == 2


def test_calls_under_one_key_pair_by_tokens_not_greedily_by_time() -> None:
    # A rerun under the same request id and stage: the long first call's record is logged after
    # the short second call's. Pairing by time alone would report two false mismatches.
    first = priced("r1", NOVA, Usage(100, 10))
    second = Entry(
        "r1",
        "generate",
        "answered",
        first.cost,
        model=NOVA,
        usage=Usage(300, 30),
        time=DAY1 + timedelta(seconds=10),
    )
    records = [logged(first, 20), logged(second, 2)]
    result = reconcile_invocations([first, second], records)
    assert result.ok and result.matched == 2
    # Three of each, shuffled in time: still exactly paired.
    third = Entry(
        "r1",
        "generate",
        "answered",
        first.cost,
        model=NOVA,
        usage=Usage(7, 1),
        time=DAY1 + timedelta(seconds=11),
    )
    records = [logged(first, 40), logged(second, -5), logged(third, 0.5)]
    assert reconcile_invocations([first, second, third], records).ok


def test_throttled_attempts_are_not_the_call_and_not_missing() -> None:
    u = Usage(1_000, 200)
    call = Entry(
        "r1",
        "generate",
        "answered",
        CATALOGUE.cost(NOVA, u),
        model=NOVA,
        usage=u,
        time=DAY1,
        attempts=3,
    )
    throttled = [
        logged(call, s, Usage(1_000, 0), error_code="ThrottlingException", aws=f"t{s}")
        for s in (0, 2)
    ]
    result = reconcile_invocations([call], [*throttled, logged(call, 5)])
    assert result.ok and result.matched == 1 and result.failed_attempts == 2
    # The answered call's own record missing: the throttled attempts do not stand in for it.
    alone = reconcile_invocations([call], throttled)
    assert [d.kind for d in alone.differences] == ["missing_in_logs"]
    # Nothing in the ledger for the request: its failed attempt is listed, with its error.
    stranger = logged(priced("r9", NOVA, u), 1, error_code="ThrottlingException")
    [missing] = reconcile_invocations([call], [logged(call, 5), stranger]).differences
    assert missing.kind == "missing_in_ledger" and "ThrottlingException" in missing.note


def test_a_record_delivered_twice_counts_once(tmp_path: Path) -> None:
    call = priced("r1", NOVA, Usage(1_000, 200))
    record = logged(call, 1, aws="same-aws-id")
    result = reconcile_invocations([call], [record, record])
    assert result.ok and result.matched == 1 and len(result.duplicates) == 1
    assert "duplicate records ignored" in result.summary()


def test_the_ledger_calls_counted_are_those_of_the_window_shown() -> None:
    inside = priced("r1", NOVA, Usage(100, 10))
    edge = Entry(
        "r2",
        "generate",
        "answered",
        inside.cost,
        model=NOVA,
        usage=Usage(100, 10),
        time=DAY1 + timedelta(minutes=8),
    )
    result = reconcile_invocations(
        [inside, edge],
        [logged(inside, 1)],
        since=DAY1 - timedelta(minutes=1),
        until=DAY1 + timedelta(minutes=5),
    )
    # r2 is read (within the margin around the window) but not in the window itself.
    assert result.ledger_entries == 1 and result.ok


# -- the command line -----------------------------------------------------------------------------


def saved(tmp_path: Path, entries: list[Entry]) -> str:
    path = tmp_path / "run.db"
    with SQLiteLedger(path) as ledger:
        for entry in entries:
            ledger.record(entry)
    return str(path)


def test_cli_refuses_since_after_until(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = saved(tmp_path, [])
    (tmp_path / "b.csv.gz").write_bytes(cur_csv_gz([Line(DAY1, NOVA, "input", 1)]))
    args = ["reconcile", db, "--bill", str(tmp_path / "b.csv.gz")]
    assert main([*args, "--since", "2026-11-28", "--until", "2026-11-27"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since 2026-11-28 is after --until 2026-11-27" in err


def test_cli_csv_has_numeric_token_columns_and_no_formulas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = Entry(
        '=HYPERLINK("http://x")',
        "gen\nerate",
        "answered",
        Decimal(0),
        model=NOVA,
        usage=Usage(100, 10),
        time=DAY1,
    )
    db = saved(tmp_path, [hostile])
    logs = tmp_path / "logs"
    logs.mkdir()
    record = {
        "requestId": "a1",
        "timestamp": "2026-11-27T10:00:01Z",
        "modelId": NOVA,
        "input": {"inputTokenCount": 100},
        "output": {"outputTokenCount": 12},
        "requestMetadata": request_metadata(
            {"request_id": hostile.request_id, "stage": hostile.stage}
        ),
    }
    (logs / "a.json.gz").write_bytes(gzip.compress(json.dumps(record).encode() + b"\n"))
    args = ["reconcile", db, "--invocation-logs", str(logs)]
    assert main([*args, "--format", "csv"]) == 1
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["kind"] == "mismatch" and row["request_id"] == '\'=HYPERLINK("http://x")'
    assert (row["ledger_input_tokens"], row["ledger_output_tokens"]) == ("100", "10")
    assert (row["aws_input_tokens"], row["aws_output_tokens"]) == ("100", "12")
    assert main(args) == 1
    table = capsys.readouterr().out
    assert "gen\\nerate" in table and len(table.strip().splitlines()) == 3  # title, head, row


def test_cli_without_aws_credentials_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    db = saved(tmp_path, [])
    assert main(["reconcile", db, "--bill", "s3://finops/cur/"]) == 2
    err = capsys.readouterr().err
    assert "No AWS credentials to read from S3" in err and "--provider" not in err
