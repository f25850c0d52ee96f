"""The HTML report: figures to the cent, unknown costs never $0, text never markup, every ledger."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainkit import Budget, Entry, Ledger, PostgresLedger, Report, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.errors import ConfigError
from chainkit.finops.html import CSP, AnomalyLike, ForecastLike, html_report

NOW = datetime(2026, 11, 4, 12, tzinfo=UTC)
SCRIPT_TENANT = "<script>alert(1)</script>"
JAPANESE = "日本 🚚"


# -- a small DOM from the stdlib parser -------------------------------------------------------

VOID = {"meta", "br", "img", "input", "link", "hr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                wanted = child.tag == tag and all(
                    child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
                )
                if wanted:
                    found.append(child)
                found += child.all(tag, **attrs)
        return found

    def one(self, tag: str, **attrs: str) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def table(self) -> list[list[str]]:
        return [[cell.text for cell in row.children if isinstance(cell, Node)]
                for row in self.all("tr")]  # fmt: skip


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


# -- forecasts and anomalies as another module would give them -------------------------------


@dataclass(frozen=True)
class Forecast:
    observed: tuple[tuple[date, Decimal], ...]
    band: tuple[tuple[date, Decimal, Decimal, Decimal], ...]
    level: float


@dataclass(frozen=True)
class Anomaly:
    when: date | datetime
    scope: tuple[str, ...]
    kind: str
    observed: Decimal
    expected: Decimal
    score: float


# -- the ledger every test reads --------------------------------------------------------------


def _at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def fill(ledger: Ledger) -> None:
    """Four days (the third without entries); one cost unknown, with a bound; a budget at 90%."""
    ledger.add_budget(Budget(Decimal("0.02"), period="month", tag=("tenant", "acme")))
    rows = [
        ("r1", "generate", "big", Decimal("0.0120"), None, "acme", "A", _at(1)),
        ("r2", "canned", None, Decimal(0), None, SCRIPT_TENANT, "B", _at(1, 11)),
        ("r3", "generate", "small", Decimal("0.0015"), None, JAPANESE, "B", _at(2)),
        ("r4", "generate", "small", None, Decimal("0.0050"), "acme", "B", _at(4)),
        ("r5", "generate", "small", Decimal("0.0010"), None, "acme", "B", _at(4, 11)),
    ]
    for rid, stage, model, cost, bound, tenant, variant, when in rows:
        tags = {"tenant": tenant, "variant": variant}
        # As a pipeline does: the most the call can cost is held first, then settled.
        hold = ledger.reserve(cost or bound, tags, stage=stage, model=model, entry_id=rid)
        ledger.record(
            Entry(
                id=rid,
                request_id=rid,
                stage=stage,
                outcome="answered",
                cost=cost,
                bound=bound,
                model=model,
                usage=Usage(100, 20) if model else None,
                avoided_cost=Decimal("0.0120") if stage == "canned" else Decimal(0),
                tags=tags,
                time=when,
            ),
            hold=hold,
        )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "memory":
        made: Ledger = Ledger(clock=lambda: NOW)
    elif request.param == "sqlite":
        made = SQLiteLedger(tmp_path / "l.db", clock=lambda: NOW)
    else:
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema")
        made = PostgresLedger(dsn, schema=schema, clock=lambda: NOW)
    with made:
        fill(made)
        yield made


def figure(dom: Node, uid: str) -> Node:
    return dom.one("figure", id=uid)


def rows_of(fig: Node) -> list[list[str]]:
    return fig.one("table").table()[1:]


# -- figures ------------------------------------------------------------------------------------


def test_figures_to_the_cent_on_every_ledger(ledger: Ledger) -> None:
    dom = parse(html_report(ledger, generated=NOW))
    stages = {r[0]: r for r in rows_of(figure(dom, "chart-stage"))}
    # generate: known $0.0145 (0.0120 + 0.0015 + 0.0010), one cost unknown: the sum is unknown.
    assert stages["generate"][5] == "unknown" and stages["generate"][6] == "1"
    assert stages["canned"][5] == "$0.00"
    bars = figure(dom, "chart-stage").one("svg").text
    assert "$0.0145 to $0.0195 (1 unknown)" in bars  # known part, then up to the bound
    models = {r[0]: r[5] for r in rows_of(figure(dom, "chart-model"))}
    assert models == {"big": "$0.012", "small": "unknown", "(no model)": "$0.00"}
    tenants = {r[0]: r[5] for r in rows_of(figure(dom, "chart-tag-0"))}
    assert tenants == {"acme": "unknown", SCRIPT_TENANT: "$0.00", JAPANESE: "$0.0015"}
    tenant_svg = figure(dom, "chart-tag-0").one("svg").text
    assert "$0.013 to $0.018 (1 unknown)" in tenant_svg
    assert "$0.0015 · 100.0%" in tenant_svg  # the share of known spend
    saved = rows_of(figure(dom, "chart-savings"))
    assert saved == [["canned", "1", "$0.012", "$0.00"]]


def test_spend_per_day_fills_gaps_and_never_shows_unknown_as_zero(ledger: Ledger) -> None:
    dom = parse(html_report(ledger, generated=NOW))
    days = rows_of(figure(dom, "chart-spend"))
    assert [r[:3] for r in days] == [
        ["2026-11-01", "$0.012", "$0.012"],
        ["2026-11-02", "$0.0015", "$0.0015"],
        ["2026-11-03", "$0.00", "$0.00"],
        ["2026-11-04", "unknown", "$0.006"],
    ]
    svg = figure(dom, "chart-spend").one("svg")
    solid = [r for r in svg.all("rect", fill="#2f6db5")]
    hatched = [r for r in svg.all("rect") if r.attrs.get("fill", "").startswith("url(#")]
    assert len(solid) == 3  # Nov 1, 2 and the known $0.0010 of Nov 4; Nov 3 spent nothing
    assert len(hatched) == 1 and "2026-11-04: $0.001 to $0.006 (1 unknown)" in hatched[0].text
    # The hatched part sits on the known part: it ends where the solid bar of that day starts.
    nov4 = solid[-1]
    assert float(hatched[0].attrs["y"]) + float(hatched[0].attrs["height"]) == pytest.approx(
        float(nov4.attrs["y"]), abs=0.02
    )
    kpis = dom.one("section", **{"aria-label": "Summary"}).text
    assert "at least $0.0145" in kpis and "spend at most $0.0195" in kpis


def test_budgets_states_thresholds_and_crossings(ledger: Ledger) -> None:
    dom = parse(html_report(ledger, generated=NOW))
    section = dom.one("section", id="budgets")
    card = section.one("div", **{"class": "budget"})
    # acme spent $0.0120 + $0.0050 (unknown, at its bound) + $0.0010 of $0.02 this month.
    assert "$0.018 spent of $0.02 (90.0%)" in card.text
    assert len(card.all("line", **{"class": "threshold"})) == 3
    crossings = section.one("table").table()[1:]
    assert [r[2] for r in crossings] == ["50.0%", "80.0%"]
    assert [r[3] for r in crossings] == ["$0.012", "$0.017"]  # spent when each was crossed
    assert len(crossings) == len(ledger.events())
    assert "0 of 1 at limit" in dom.one("section", **{"aria-label": "Summary"}).text


def test_variants_match_the_report(ledger: Ledger) -> None:
    report = Report.from_ledger(ledger, tag="variant")
    dom = parse(html_report(ledger, report=report, generated=NOW))
    rows = figure(dom, "chart-variants").one("table").table()[1:]
    assert [r[0] for r in rows] == ["A", "B"]
    assert rows[0][2] == "$0.012" and rows[0][3] == "$0.012"
    assert rows[1][2] == "unknown"  # r4's unknown cost makes B's total unknown, not smaller
    bars = figure(dom, "chart-variants").one("svg").text
    assert "unknown · 1 call of unknown cost" in bars


def test_forecast_band_and_anomalies_plug_in(ledger: Ledger) -> None:
    band = tuple(
        (
            date(2026, 11, 5) + timedelta(days=k),
            Decimal("0.002"),
            Decimal("0.004"),
            Decimal("0.007") + k * Decimal("0.001"),
        )
        for k in range(3)
    )
    forecast = Forecast(((date(2026, 11, 1), Decimal("0.012")),), band, 0.8)
    spike = Anomaly(date(2026, 11, 1), ("tenant", "acme"), "spike", Decimal("0.012"),
                    Decimal("0.002"), 5.5)  # fmt: skip
    elsewhere = Anomaly(datetime(2026, 10, 1, 3, tzinfo=UTC), ("stage", "generate"), "drop",
                        Decimal(0), Decimal("0.5"), 2.0)  # fmt: skip
    assert isinstance(forecast, ForecastLike) and isinstance(spike, AnomalyLike)
    dom = parse(html_report(ledger, forecast=forecast, anomalies=[elsewhere, spike]))
    fig = figure(dom, "chart-spend")
    days = rows_of(fig)
    assert [r[0] for r in days][-3:] == ["2026-11-05", "2026-11-06", "2026-11-07"]
    assert days[-1][3:] == ["$0.002", "$0.004", "$0.009"]
    # Days still to come have no spend yet: a dash, never "$0.00".
    assert [r[1:3] for r in days[-3:]] == [["\u2014", "\u2014"]] * 3
    polygon = fig.one("polygon", **{"class": "band"})
    assert len(polygon.attrs["points"].split()) == 2 * len(band)
    assert "80% interval" in fig.text and "$0.012 (sum of the daily middles)" in fig.text
    # The spike is marked over Nov 1, the first of 7 days; the October one only in the table.
    marks = fig.all("g", **{"class": "anomaly"})
    assert len(marks) == 1
    slot = (1000 - 74 - 16) / 7
    assert float(marks[0].one("circle").attrs["cx"]) == pytest.approx(74 + slot / 2, abs=0.01)
    assert "tenant acme: spike, $0.012 vs $0.002 expected" in marks[0].text
    table = dom.one("section", id="anomalies").one("table").table()[1:]
    assert [r[:3] for r in table] == [
        ["2026-11-01", "tenant = acme", "spike"],
        ["2026-10-01T03:00:00+00:00", "stage = generate", "drop"],
    ]


def test_hourly_for_a_short_ledger() -> None:
    ledger = Ledger()
    for hour, cost in ((9, "0.5"), (12, "0.25")):
        ledger.record(Entry(request_id=f"r{hour}", stage="generate", outcome="answered",
                            cost=Decimal(cost), time=_at(3, hour)))  # fmt: skip
    dom = parse(html_report(ledger))
    rows = rows_of(figure(dom, "chart-spend"))
    assert [r[0] for r in rows] == [f"2026-11-03 {h:02d}:00" for h in range(9, 13)]
    assert [r[1] for r in rows] == ["$0.50", "$0.00", "$0.00", "$0.25"]
    assert "Spend per hour" in figure(dom, "chart-spend").text


def test_empty_ledger() -> None:
    dom = parse(html_report(Ledger()))
    assert "No entries." in dom.one("section", id="spend").text
    assert "No budgets are defined" in dom.one("section", id="budgets").text
    assert dom.all("figure", id="chart-stage")  # an empty chart, not an error
    assert "No stage avoided a model call." in figure(dom, "chart-savings").text


# -- text is text -------------------------------------------------------------------------------


def _script_and_style(dom: Node) -> tuple[str, str]:
    return dom.one("script").text, dom.one("style").text


def test_user_text_is_escaped_and_the_page_allows_only_its_own_script(ledger: Ledger) -> None:
    page = html_report(ledger, title="Costs <b>& more</b>", generated=NOW)
    dom = parse(page)
    script, style = _script_and_style(dom)  # one <script>: the tenant's is text
    assert SCRIPT_TENANT in dom.text and JAPANESE in dom.text
    assert "<script>alert" not in page
    csp = dom.one("meta", **{"http-equiv": "Content-Security-Policy"}).attrs["content"]
    assert csp == CSP

    def sha(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{sha(script)}'" in csp and f"style-src 'sha256-{sha(style)}'" in csp
    assert "default-src 'none'" in csp
    assert not re.search(r"\s(style|on\w+)=", page)  # no inline style or handler for CSP to block
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)  # nothing to fetch
    assert dom.one("head").one("title").text == "Costs <b>& more</b>"


def test_lone_surrogates_and_controls_become_replacement_characters() -> None:
    ledger = Ledger()
    ledger.record(Entry(request_id="r", stage="s", outcome="answered", cost=Decimal(1),
                        time=_at(1)))  # fmt: skip
    report = Report.build([("v\ud800x\x07", ledger)])
    odd = Anomaly(date(2026, 11, 1), ("tenant", "\udfff"), "spike\x1b", Decimal(1), Decimal(0), 1.0)
    page = html_report(ledger, report=report, anomalies=[odd], title="t\ud83d")
    page.encode("utf-8")  # a lone surrogate would make this raise
    dom = parse(page)
    assert "v\ufffdx\ufffd" in dom.text and "tenant = \ufffd" in dom.text
    assert "spike\ufffd" in dom.text and dom.one("head").one("title").text == "t\ufffd"


tag_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(tag_values, min_size=1, max_size=4, unique=True))
def test_any_tag_value_comes_back_as_text(values: list[str]) -> None:
    ledger = Ledger()
    for i, value in enumerate(values):
        ledger.record(Entry(request_id=f"r{i}", stage="generate", outcome="answered",
                            cost=Decimal(i + 1), tags={"team": value}, time=_at(1)))  # fmt: skip
    dom = parse(html_report(ledger, tags=["team"]))
    assert len(dom.all("script")) == 1
    rows = rows_of(figure(dom, "chart-tag-0"))
    expected = {
        re.sub(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", v).replace(
            "\r\n", "\n"
        ): f"${i + 1}.00"
        for i, v in enumerate(values)
    }

    def plain(text: str) -> str:  # HTML turns CR and CRLF into LF when it reads text
        return text.replace("\r\n", "\n").replace("\r", "\n")

    assert {plain(r[0]): r[5] for r in rows} == {plain(k): v for k, v in expected.items()}


# -- refusals -----------------------------------------------------------------------------------


def test_refuses_what_is_not_a_forecast_an_anomaly_or_tag_keys() -> None:
    ledger = Ledger()
    with pytest.raises(ConfigError, match="forecast must have observed, band and level"):
        html_report(ledger, forecast=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="each anomaly must have when, scope"):
        html_report(ledger, anomalies=[{"when": date(2026, 1, 1)}])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"use \('tenant',\)"):
        html_report(ledger, tags="tenant")


# -- the command line ---------------------------------------------------------------------------


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "run.db"
    with SQLiteLedger(path, clock=lambda: NOW) as ledger:
        fill(ledger)
    return path


def test_cli_writes_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _saved(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--format", "html", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"Wrote {out} (") and said.endswith(" bytes, html).\n")
    dom = parse(out.read_text(encoding="utf-8"))
    assert {r[0] for r in rows_of(figure(dom, "chart-tag-0"))} == {"acme", SCRIPT_TENANT, JAPANESE}
    assert str(path) in dom.one("header").text


def test_cli_html_to_stdout_and_by_other_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved(tmp_path)
    assert main(["report", str(path), "--format", "html", "--by-tag", "variant"]) == 0
    dom = parse(capsys.readouterr().out)
    assert {r[0] for r in rows_of(figure(dom, "chart-tag-0"))} == {"A", "B"}
    assert not dom.all("figure", id="chart-tag-1")


def test_cli_out_for_other_formats_and_a_bad_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved(tmp_path)
    out = tmp_path / "r.json"
    assert main(["report", str(path), "--format", "json", "--out", str(out)]) == 0
    assert '"name": "A"' in out.read_text()
    capsys.readouterr()
    missing = tmp_path / "no" / "such" / "r.html"
    assert main(["report", str(path), "--format", "html", "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "nothing was written there" in err


def test_many_tenants_chart_the_dearest_and_the_rest_as_one_bar() -> None:
    ledger = Ledger()
    for i in range(30):
        ledger.record(Entry(request_id=f"r{i}", stage="generate", outcome="answered",
                            cost=Decimal(i + 1) / 100, tags={"tenant": f"t{i:02d}"},
                            time=_at(1)))  # fmt: skip
    ledger.record(Entry(request_id="u", stage="generate", outcome="answered", cost=None,
                        bound=Decimal("0.05"), tags={"tenant": "t00"}, time=_at(1)))  # fmt: skip
    fig = figure(parse(html_report(ledger)), "chart-tag-0")
    labels = [t.text for t in fig.one("svg").all("text") if t.attrs.get("class") == "label"]
    assert len(labels) == 12 and labels[0].startswith("t29") and labels[10].startswith("t19")
    assert labels[11].startswith("19 others")
    assert len(fig.one("svg").all("rect", fill="#9aa4b2")) == 1  # the others' bar is grey
    # t00..t18 cost $0.01 + ... + $0.19 = $1.90 known, one unknown up to $0.05 more.
    assert "$1.90 to $1.95 (1 unknown)" in fig.one("svg").text
    assert len(rows_of(fig)) == 30 and "the chart shows the 11 dearest" in fig.text


def test_unknown_costs_without_a_bound() -> None:
    ledger = Ledger()
    for day in (1, 2, 3):
        ledger.record(Entry(request_id=f"r{day}", stage="generate", outcome="answered",
                            cost=None if day == 2 else Decimal("0.25"), model="m",
                            time=_at(day)))  # fmt: skip
    dom = parse(html_report(ledger))
    svg = figure(dom, "chart-spend").one("svg")
    assert [t.text for t in svg.all("text") if t.attrs.get("class") == "unknown"] == [
        "?2026-11-02: cost unknown, no bound"
    ]
    assert "at least $0.50 (1 unknown, no bound)" in figure(dom, "chart-model").one("svg").text
    kpis = dom.one("section", **{"aria-label": "Summary"}).text
    assert "Spendat least $0.50" in kpis and "Unknown cost1 callno bound" in kpis


def test_a_lone_surrogate_stored_by_sql_reads_as_a_replacement_character(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "bad.db"
    with SQLiteLedger(path) as ledger:
        for i, tenant in enumerate(["acme", "x"]):
            ledger.record(
                Entry(
                    request_id=f"r{i}",
                    stage="generate",
                    outcome="answered",
                    cost=Decimal(1),
                    tags={"tenant": tenant},
                    time=datetime(2026, 10, 1, tzinfo=UTC),
                )
            )
    with sqlite3.connect(path) as db:  # as another program could: chainkit refuses to write it
        db.execute(
            """UPDATE entries SET tags = '{"tenant": "\\ud800<x>"}' WHERE tags LIKE '%"x"%'"""
        )
    with SQLiteLedger(path, read_only=True) as ledger:
        # Was a UnicodeEncodeError from deep in the ledger: the page is made, the value repaired.
        assert {e.tags["tenant"] for e in ledger.iter_entries()} == {"acme", "\ufffd<x>"}
        page = html_report(ledger)
    page.encode("utf-8")  # no lone surrogate reaches the page
