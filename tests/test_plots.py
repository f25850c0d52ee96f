from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chainkit import Entry, Ledger, Report, Usage
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
    assert cost.get_ylabel() == "USD/request"


def test_plot_report_saves_by_suffix(tmp_path: Path) -> None:
    single, pipeline = ledgers()
    report = Report.build([("single-llm", single), ("pipeline", pipeline)], traffic_per_day=100)
    path = tmp_path / "report.svg"

    plot_report(report, path)

    assert b"<svg" in path.read_bytes()[:1000]
