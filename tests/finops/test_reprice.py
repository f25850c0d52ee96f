from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import Catalogue, ConfigError, Entry, Ledger, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.reprice import (
    Swap,
    measure_swap,
    parse_swap,
    reference_corpus,
    reprice,
)
from chainkit.tokens import count_tokens
from tests.finops.conftest import filled

CAT = Catalogue.load()
MICRO = "amazon.nova-micro-v1:0"
PRO = "amazon.nova-pro-v1:0"
SONNET4 = "anthropic.claude-sonnet-4-20250514-v1:0"
LARGE = "mistral.mistral-large-2402-v1:0"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

# Models whose prices exercise every rule: cache reads and writes, one-hour writes, cross-region
# profiles, regions, tiers (batch), and models absent from some tiers and regions.
MODELS = [
    MICRO,
    PRO,
    SONNET4,
    LARGE,
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "eu.amazon.nova-micro-v1:0",
    "amazon.titan-text-express-v1",
    "meta.llama3-1-70b-instruct-v1:0",
]
REGIONS = [None, "us-east-1", "us-west-2", "eu-central-1", "eu-west-3"]
TIERS = ["on_demand", "batch", "flex", "priority"]


def recorded(
    model: str | None,
    usage: Usage | None,
    *,
    region: str | None = None,
    tier: str = "on_demand",
    minute: int = 0,
    request: str = "r",
) -> Entry:
    """An entry as a stage records it: priced by the catalogue, unknown if it cannot be."""
    cost: Decimal | None = Decimal(0)
    if usage is not None and model is not None:
        try:
            cost = CAT.cost(model, usage, region=region, tier=tier)  # type: ignore[arg-type]
        except ConfigError:
            cost = None
    return Entry(
        request,
        "generate" if model else "canned",
        "answered",
        cost,
        model=model,
        usage=usage,
        time=T0 + timedelta(minutes=minute),
    )


usages = st.builds(
    lambda i, o, r, w, h: Usage(i, o, r, w, min(h, w)),
    st.integers(0, 300_000),
    st.integers(0, 50_000),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
) | st.builds(Usage, st.integers(0, 10**9), st.integers(0, 10**9))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.tuples(st.sampled_from([*MODELS, None]), st.none() | usages), min_size=0, max_size=25
    ),
    region=st.sampled_from(REGIONS),
    tier=st.sampled_from(TIERS),
)
def test_repricing_at_the_recorded_prices_gives_back_the_recorded_cost_exactly(
    calls: list[tuple[str | None, Usage | None]], region: str | None, tier: str
) -> None:
    entries = [recorded(m, u, region=region, tier=tier) for m, u in calls]
    result = reprice(entries, catalogue=CAT, region=region, tier=tier)
    for row in result.rows:
        assert row.cost == row.recorded_cost
        assert row.unknown == sum(1 for e in entries if e.cost is None and e.model == row.model)
    known = [e.cost for e in entries if e.cost is not None]
    assert result.priced_cost == sum(known, Decimal(0))
    assert result.cost == result.recorded_cost
    if result.cost is not None:
        assert result.cost == sum(known, Decimal(0))
        assert result.delta == 0
    assert result.entries == len(entries)
    assert not result.estimated


def test_every_store_reprices_to_the_cent_and_beyond(store: Callable[[], Ledger]) -> None:
    rng = random.Random(7)
    entries = []
    for i in range(120):
        model = rng.choice([MICRO, PRO, "anthropic.claude-3-5-haiku-20241022-v1:0", None])
        usage = None
        if model is not None:
            write = rng.randrange(0, 5_000) if "claude" in model else 0
            usage = Usage(
                rng.randrange(1, 40_000),
                rng.randrange(0, 4_000),
                rng.randrange(0, 9_000),
                write,
                rng.randrange(0, write + 1),
            )
            if "nova" in model:
                # Nova's batch tier has no cache-read price: those calls would be unknown.
                usage = Usage(usage.input_tokens, usage.output_tokens)
        entries.append(recorded(model, usage, minute=i, request=f"r{i}"))
    ledger = filled(store, entries)
    result = reprice(ledger)
    expected = sum((e.cost for e in entries if e.cost is not None), Decimal(0))
    assert result.recorded_cost == expected
    assert result.cost == expected
    assert {r.model: r.cost == r.recorded_cost for r in result.rows} == {
        MICRO: True,
        PRO: True,
        "anthropic.claude-3-5-haiku-20241022-v1:0": True,
        None: True,
    }
    # Batch is half price for Nova: exactly half, entry by entry and in total.
    batch = reprice(ledger, tier="batch")
    rows = {r.model: r for r in batch.rows}
    for model in (MICRO, PRO):
        assert rows[model].cost == rows[model].recorded_cost / 2  # type: ignore[operator]


def test_batch_price_of_a_call_by_hand() -> None:
    entry = recorded(MICRO, Usage(1_000, 200))
    assert entry.cost == Decimal("0.000063")  # 1,000 x $0.035/M + 200 x $0.14/M
    result = reprice([entry], tier="batch")
    assert result.cost == Decimal("0.0000315")  # 1,000 x $0.0175/M + 200 x $0.07/M
    assert result.delta == Decimal("-0.0000315")
    assert json.loads(result.to_json())["cost"] == "0.0000315"


def test_a_tier_without_a_price_is_unknown_not_zero_and_says_why() -> None:
    entries = [recorded(SONNET4, Usage(1_000, 100)), recorded(MICRO, Usage(1_000, 200))]
    result = reprice(entries, tier="batch")
    assert result.cost is None
    assert result.unknown == 1
    assert result.priced_cost == Decimal("0.0000315")
    sonnet = next(r for r in result.rows if r.model == SONNET4)
    assert sonnet.cost is None and sonnet.priced_cost == 0
    assert any("no 'batch' price" in reason for reason in sonnet.reasons)
    table = result.to_table()
    assert "unknown (1)" in table and "priced part comes to $0.0000315" in table


def test_entries_without_usage_keep_their_recorded_cost() -> None:
    free = Entry("r1", "canned", "answered", Decimal(0))
    lost = Entry("r2", "generate", "failed", None, model=MICRO, bound=Decimal("0.01"))
    result = reprice([free, lost], tier="batch")
    rows = {r.model: r for r in result.rows}
    assert rows[None].cost == 0 and rows[None].kept == 1
    assert rows[MICRO].cost is None and rows[MICRO].kept == 1
    assert "no usage to reprice" in rows[MICRO].reasons[0]
    assert result.cost is None and result.recorded_cost is None


def test_another_region_prices_at_that_regions_rates() -> None:
    entry = recorded("amazon.titan-text-express-v1", Usage(1_000_000, 1_000_000))
    assert entry.cost == Decimal("0.8")  # us-east-1: $0.20 + $0.60
    result = reprice([entry], region="eu-central-1")
    assert result.cost == Decimal("1.163")  # eu-central-1: $0.30 + $0.863
    missing = reprice([entry], region="sa-east-1")
    assert missing.cost is None
    assert "no 'on_demand' price in region 'sa-east-1'" in missing.rows[0].reasons[0]


def test_a_swap_between_untokenized_families_keeps_counts_and_is_marked_estimated() -> None:
    entry = recorded(SONNET4, Usage(2_000, 300))
    result = reprice([entry], swaps={SONNET4: PRO})
    row = result.rows[0]
    assert (row.model, row.priced_as, row.estimated) == (SONNET4, PRO, True)
    assert row.usage == Usage(2_000, 300)
    assert row.cost == Decimal("0.00256")  # 2,000 x $0.80/M + 300 x $3.20/M
    assert result.swaps[0].ratio == 1
    assert "counts kept" in result.swaps[0].method
    assert result.estimated
    assert "~" in result.to_table()


def test_a_swap_to_mistral_scales_counts_by_the_measured_tokenizer_ratio() -> None:
    texts = [
        "Where is my order 10234? It was due on Monday.",
        "注文した商品がまだ届きません。いつ届きますか",
        "Refund please 🙏🚚 — the parcel arrived broken.",
    ]
    corpus = ("test corpus", texts)
    swap = measure_swap(SONNET4, LARGE, corpus)
    new = sum(count_tokens(t, LARGE) for t in texts)
    old = sum(count_tokens(t, SONNET4) for t in texts)
    assert swap.ratio == (Decimal(new) / Decimal(old)).quantize(Decimal("0.000001"))
    assert swap.ratio != 1
    entry = recorded(SONNET4, Usage(10_000, 1_000))
    result = reprice([entry], swaps=[swap])
    row = result.rows[0]
    scaled = [int((n * swap.ratio).to_integral_value()) for n in (10_000, 1_000)]
    assert row.usage == Usage(*scaled)
    assert row.cost == CAT.cost(LARGE, row.usage)
    assert row.recorded_usage == Usage(10_000, 1_000)


def test_swap_scaling_keeps_one_hour_writes_within_all_writes() -> None:
    swap = Swap("a", "b", Decimal("0.5"))
    scaled = swap.scale(Usage(3, 3, 3, 3, 3, queries=2))
    assert scaled == Usage(2, 2, 2, 2, 2, queries=2)  # 1.5 rounds half-even to 2
    assert Swap("a", "b", Decimal("1.5")).scale(Usage(1, 0, 0, 1, 1)).cache_write_1h_tokens == 2


def test_a_swap_matches_profile_ids_of_the_same_model() -> None:
    entry = recorded("us.anthropic.claude-3-5-haiku-20241022-v1:0", Usage(1_000, 100))
    result = reprice([entry], swaps={"anthropic.claude-3-5-haiku-20241022-v1:0": MICRO})
    assert result.rows[0].priced_as == MICRO


def test_bad_swaps_fail_in_one_line_with_the_value() -> None:
    with pytest.raises(ConfigError, match="'nova-mega'"):
        reprice([], swaps={SONNET4: "nova-mega"})
    for text in ("x", "=b", "a=", "a=b=c"):
        with pytest.raises(ConfigError, match="is not OLD=NEW"):
            parse_swap(text)
    assert parse_swap(" a = b ") == ("a", "b")
    with pytest.raises(ConfigError, match="swapped twice"):
        reprice([], swaps=[Swap(MICRO, PRO), Swap("eu." + MICRO, PRO)])


def test_reference_corpus_reads_text_and_json_lines_and_refuses_garbage(tmp_path: Path) -> None:
    name, texts = reference_corpus()
    assert name.endswith("demo_traffic.jsonl") and len(texts) > 10
    plain = tmp_path / "c.txt"
    plain.write_bytes("日本語のテキスト\n\nemoji 🚚\n".encode() + b"lone \xed\xa0\x80 surrogate\n")
    _, texts = reference_corpus(plain)
    assert texts[:2] == ["日本語のテキスト", "emoji 🚚"]
    assert texts[2].startswith("lone ") and "\ufffd" in texts[2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n')
    with pytest.raises(ConfigError, match="line 1 is JSON without a string 'text'"):
        reference_corpus(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="no text"):
        reference_corpus(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        reference_corpus(tmp_path / "missing.txt")


def test_an_empty_ledger_reprices_to_zero_in_every_format(store: Callable[[], Ledger]) -> None:
    result = reprice(store(), tier="flex")
    assert result.cost == 0 and result.recorded_cost == 0 and result.rows == ()
    for fmt in ("table", "markdown", "json", "csv"):
        assert result.render(fmt)
    assert json.loads(result.to_json())["cost"] == "0.00"


def test_unknown_tier_and_format_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="'cheap' is not one of batch"):
        reprice([], tier="cheap")
    with pytest.raises(ConfigError, match="'xml' is not one of"):
        reprice([]).render("xml")


def test_cli_reprices_a_saved_ledger_as_json_csv_and_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(recorded(MICRO, Usage(1_000, 200)))
        ledger.record(recorded(SONNET4, Usage(1_000, 100), request="r2"))
        ledger.record(Entry("r3", "canned", "answered", Decimal(0)))
    assert main(["reprice", str(path), "--tier", "batch", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tier"] == "batch" and data["cost"] is None
    assert data["priced_cost"] == "0.0000315" and data["unknown_entries"] == 1
    assert data["recorded_cost"] == "0.004563"  # 0.000063 + 1,000 x $3/M + 100 x $15/M
    assert main(["reprice", str(path), "--swap", f"{SONNET4}={MICRO}", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Both calls at Nova Micro: 63 µ$, then 1,000 x $0.035/M + 100 x $0.14/M = 49 µ$.
    assert lines[-1].split(",")[6] == "0.000112"
    assert main(["reprice", str(path), "--format", "markdown"]) == 0
    assert "| total |" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reprice", str(tmp_path / "none.db")]) == 2
    assert "No ledger at" in capsys.readouterr().err
    path = tmp_path / "ledger.db"
    SQLiteLedger(path).close()
    assert main(["reprice", str(path), "--swap", "oops"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'oops' is not OLD=NEW" in err
    with pytest.raises(SystemExit) as exc:
        main(["reprice", str(path), "--tier", "cheap"])
    assert exc.value.code == 2


def test_cli_reads_a_postgres_ledger(
    pg_dsn: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chainkit import PostgresLedger

    with PostgresLedger(pg_dsn, schema=pg_schema) as ledger:
        ledger.record(recorded(MICRO, Usage(1_000, 200)))
    assert main(["reprice", pg_dsn, "--schema", pg_schema, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"] == data["recorded_cost"] == "0.000063"


def test_tags_select_one_variant(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = Entry(
        "a",
        "generate",
        "answered",
        Decimal("0.000063"),
        model=MICRO,
        usage=Usage(1_000, 200),
        tags={"variant": "single-llm"},
    )
    b = Entry(
        "b",
        "generate",
        "answered",
        Decimal("0.000063"),
        model=MICRO,
        usage=Usage(1_000, 200),
        tags={"variant": "prescan", "tenant": "日本"},
    )
    assert reprice([a, b], tags={"variant": "prescan"}).entries == 1
    assert reprice([a, b], tags={"tenant": "日本"}).rows[0].entries == 1
    assert reprice([a, b], tags={"variant": "none"}).cost == 0
    path = tmp_path / "l.db"
    with SQLiteLedger(path) as ledger:
        ledger.record(a)
        ledger.record(b)
    assert main(["reprice", str(path), "--tag", "variant=single-llm", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["reprice", str(path), "--tag", "variant"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_default_reprices_each_entry_at_its_recorded_tier_tag(
    store: Callable[[], Ledger], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A batch job's entries carry tier=batch (recipes/long_docs.py writes it): with no --tier the
    # run reprices to exactly its recorded cost; an application's own "tier=gold" is no tier.
    usage = Usage(1_000_000, 100_000)
    od = recorded(MICRO, usage, request="od")
    batch = Entry(
        "bj",
        "generate",
        "answered",
        CAT.cost(MICRO, usage, tier="batch"),
        model=MICRO,
        usage=usage,
        tags={"tier": "batch"},
        time=T0,
    )
    gold = Entry(
        "g",
        "generate",
        "answered",
        CAT.cost(MICRO, usage),
        model=MICRO,
        usage=usage,
        tags={"tier": "gold"},
        time=T0,
    )
    ledger = filled(store, [od, batch, gold])
    result = reprice(ledger)
    assert result.recorded_cost == Decimal("0.1225")  # 0.049 + 0.0245 + 0.049
    assert result.cost == result.recorded_cost and result.delta == 0
    assert result.tier == "recorded" and dict(result.tiers) == {"on_demand": 2, "batch": 1}
    assert reprice(ledger, tier="batch").cost == Decimal("0.0735")
    path = tmp_path / "tiers.db"
    with SQLiteLedger(path) as saved:
        for e in (od, batch):
            saved.record(e)
    assert main(["reprice", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tier"] == "recorded" and data["cost"] == data["recorded_cost"] == "0.0735"


def test_a_tiny_corpus_warns_and_csv_cells_cannot_be_formulas() -> None:
    entry = recorded(SONNET4, Usage(1_000, 100))
    result = reprice([entry], swaps={SONNET4: LARGE}, corpus=("tiny.txt", ["Hello there."]))
    assert result.warnings and "measured on 12 characters of tiny.txt" in result.warnings[0]
    assert result.warnings[0] in result.to_table()
    assert json.loads(result.to_json())["warnings"] == result.warnings
    assert not reprice([entry], swaps={SONNET4: LARGE}).warnings  # the demo traffic is ample
    hostile = Entry(
        "r", "generate", "answered", None, model="=cmd|' /C calc'!A0", usage=Usage(1, 1), time=T0
    )
    lines = reprice([hostile]).to_csv().splitlines()
    assert lines[1].startswith("'=cmd|")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(MODELS), usages, st.sampled_from(TIERS)), min_size=1, max_size=20
    ),
    region=st.sampled_from(REGIONS),
)
def test_a_ledger_of_mixed_tiers_reprices_to_its_recorded_cost_without_a_tier(
    calls: list[tuple[str, Usage, str]], region: str | None
) -> None:
    entries = []
    for model, usage, tier in calls:
        entry = recorded(model, usage, region=region, tier=tier)
        # As chainkit records them: a batch (or flex, priority) call carries its tier as a tag.
        tags = {} if tier == "on_demand" else {"tier": tier}
        entries.append(dataclasses.replace(entry, tags=tags))
    result = reprice(entries, region=region)
    assert [r.cost for r in result.rows] == [r.recorded_cost for r in result.rows]
    assert result.cost == result.recorded_cost
    assert sum(result.tiers.values()) == len(entries)
