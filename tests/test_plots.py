import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import ConfigError, Entry, Ledger, Report, Usage
from chainkit.plots import plot_report

plt = pytest.importorskip("matplotlib.pyplot")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def ledgers() -> tuple[Ledger, Ledger]:
    """Four requests each: one powerful model for all, or a scan, canned replies and a responder."""
    single, pipeline = Ledger(), Ledger()
    for i in range(4):
        single.record(
            Entry(
                f"s{i}",
                "generate",
                "answered",
                cost=Decimal("0.006"),
                model="generic.powerful",
                usage=Usage(50, 50),
            )
        )
        rid = f"p{i}"
        pipeline.record(
            Entry(
                rid,
                "intent_scan",
                "passed",
                cost=Decimal("0.00006"),
                model="generic.intent",
                usage=Usage(15, 5),
            )
        )
        canned = i < 3  # three of the four are greetings
        pipeline.record(
            Entry(
                rid,
                "canned",
                "answered" if canned else "passed",
                cost=Decimal(0),
                avoided_cost=Decimal("0.0006") if canned else Decimal(0),
            )
        )
        if not canned:
            pipeline.record(
                Entry(
                    rid,
                    "generate",
                    "answered",
                    cost=Decimal("0.0006"),
                    model="generic.responder",
                    usage=Usage(50, 50),
                )
            )
    return single, pipeline


def bars(ax: Any) -> dict[str, list[tuple[float, float]]]:
    """Each bar series of an axes by label: (bottom, height) per bar."""
    return {c.get_label(): [(p.get_y(), p.get_height()) for p in c.patches] for c in ax.containers}


def test_plot_report_saves_a_png_of_monthly_cost_and_stage_shares(tmp_path: Path) -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)], traffic_per_day=10_000)
    # $0.006 per request; (4 x $0.00006 + $0.0006) / 4 = $0.00021 per request; x 300,000 a month.
    assert [v.monthly_cost for v in report.variants] == [Decimal("1800"), Decimal("63")]
    path = tmp_path / "report.png"

    fig = plot_report(report, path)

    assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 2
    cost, shares = fig.axes
    assert [p.get_height() for p in cost.patches] == pytest.approx([1800.0, 63.0])
    assert [t.get_text() for t in cost.get_xticklabels()] == ["single-llm", "pipeline"]
    # Stacked: each stage's share of the variant's requests, in percent.
    assert bars(shares) == {
        "generate": [(0.0, pytest.approx(100.0)), (0.0, pytest.approx(25.0))],
        "canned": [(pytest.approx(100.0), 0.0), (pytest.approx(25.0), pytest.approx(75.0))],
    }
    assert shares.get_ylim() == (0.0, 100.0)


def test_plot_report_without_traffic_draws_cost_per_request(tmp_path: Path) -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)])
    path = tmp_path / "per-request.png"

    fig = plot_report(report, path)

    assert path.read_bytes()[:8] == PNG_MAGIC
    cost, _ = fig.axes
    assert [p.get_height() for p in cost.patches] == pytest.approx([0.006, 0.00021])
    assert cost.get_ylabel() == "cost per request"


def test_plot_report_saves_by_suffix(tmp_path: Path) -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)], traffic_per_day=100)
    path = tmp_path / "report.svg"

    plot_report(report, path)

    assert b"<svg" in path.read_bytes()[:1000]


def chains() -> tuple[Ledger, Ledger]:
    """Two documents each: the strong model reads them, or a summariser reads them first."""
    lazy, chained = Ledger(), Ledger()
    for i in range(2):
        lazy.record(
            Entry(f"l{i}", "generate", "answered", cost=Decimal("0.07"), usage=Usage(20_000, 900))
        )
        chained.record(
            Entry(f"c{i}", "summarise", "passed", cost=Decimal("0.005"), usage=Usage(20_000, 500))
        )
        chained.record(
            Entry(f"c{i}", "generate", "answered", cost=Decimal("0.015"), usage=Usage(600, 900))
        )
    return lazy, chained


def tick_labels(axis: Any) -> list[str]:
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_money_axis_reads_in_dollars_without_scientific_notation() -> None:
    lazy, chained = chains()
    report = Report.build([("lazy", lazy), ("chained", chained)])

    cost, _ = plot_report(report).axes

    # $0.07 against $0.02 a document: a linear axis from $0, ticks in dollars and cents.
    assert cost.get_yscale() == "linear"
    assert cost.get_ylim()[0] == 0
    labels = tick_labels(cost.yaxis)
    assert labels[:3] == ["$0", "$0.01", "$0.02"]
    assert all(label.startswith("$") and "e" not in label for label in labels)
    assert [t.get_text() for t in cost.texts] == ["$0.07", "$0.02\n-71.4%"]


def test_money_axis_on_a_log_scale_labels_dollars_not_powers_of_ten() -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)], traffic_per_day=10_000)

    cost, _ = plot_report(report).axes

    # $1,800 against $63 a month: 28 times, so a log scale, labelled 1-2-5 in dollars.
    assert cost.get_yscale() == "log"
    labels = tick_labels(cost.yaxis)
    assert {"$50", "$100", "$200", "$500", "$1,000"} <= set(labels)
    assert not [label for label in labels if "10^" in label or "times" in label]
    assert [t.get_text() for t in cost.yaxis.get_minorticklabels() if t.get_text()] == []
    assert cost.get_title() == "Cost by variant (log scale)"


def test_one_answering_stage_shows_where_the_money_goes_instead_of_deflection() -> None:
    lazy, chained = chains()
    report = Report.build([("lazy", lazy), ("chained", chained)], traffic_per_day=1_000)

    _, shares = plot_report(report).axes

    # Both variants are answered by generate alone: a deflection panel would be 100% generate.
    assert shares.get_title() == "Where the money goes: cost by stage"
    assert bars(shares) == {
        "summarise": [(0.0, 0.0), (0.0, pytest.approx(25.0))],
        "generate": [(0.0, pytest.approx(100.0)), (pytest.approx(25.0), pytest.approx(75.0))],
    }
    assert tick_labels(shares.yaxis)[-1] == "100%"


def test_plot_report_still_shows_deflection_when_stages_share_the_answers() -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)])

    _, shares = plot_report(report).axes

    assert shares.get_title() == "Deflection: which stage answered"


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    single, pipeline = ledgers()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed

    with pytest.raises(ConfigError, match=r"pip install 'chainkit\[plots\]'"):
        plot_report(Report.build([("single-llm", single), ("pipeline", pipeline)]))
