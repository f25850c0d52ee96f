"""Reconciliation under attack: wrong money, missed and false differences, hostile input.

Each test pins one defect an adversarial review found; the bills and log records are written in
the layouts ``tests/finops/test_reconcile.py`` documents (CUR 2.0, FOCUS 1.2, Bedrock's
invocation logs).
"""

from __future__ import annotations

import decimal
import gzip
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from chainkit import Entry, Usage
from chainkit.finops.reconcile import BillExport, read_bill, reconcile_bill
from tests.finops.test_reconcile import (
    CATALOGUE,
    DAY1,
    HAIKU,
    NOVA,
    SONNET4,
    Line,
    cur_csv_gz,
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
    new = Entry("r4", "generate", "answered", None, model="amazon.nova-9-ultra-v1:0",
                usage=Usage(1_000, 1_000), time=DAY1)  # fmt: skip
    text = gzip.decompress(cur_csv_gz([*bill_of([ok]), Line(DAY1, NOVA, "input", 1_000,
                                                            cost=Decimal(7))])).decode()  # fmt: skip
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
    row = next(r for r in reconcile_bill([ok, new], mapped).rows if r.usage_type == "input"
               and r.model == "amazon.nova-9-ultra-v1:0")  # fmt: skip
    assert (row.ledger_tokens, row.billed_tokens, row.ledger_cost) == (1_000, 1_000, None)
    # A known cost of a model the catalogue cannot price is counted, in no token class.
    priced_new = Entry("r5", "generate", "answered", Decimal("0.02"),
                       model="amazon.nova-9-ultra-v1:0", usage=Usage(10, 10), time=DAY1)  # fmt: skip
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
        Entry(f"r{n}", "generate", "answered", cost, model=model,
              usage=Usage(inp, out, cache_read_tokens=0 if model == HAIKU else cached),
              time=DAY1 + timedelta(minutes=n))  # fmt: skip
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
