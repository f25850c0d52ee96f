"""The HTML report in a real browser: headless Chromium (Debian's) opens it, logs no error,
fetches nothing, runs its script, and draws every chart (rendered elements and non-blank regions).

Under CI (``CHAINKIT_REQUIRE_BROWSER=1``, set by ``.ci/run`` after ``scripts/chromium``) these
tests must run; elsewhere they skip when Chromium is missing and cannot be installed. Set
``CHAINKIT_SCREENSHOT=path.png`` to keep the report's screenshot.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from chainkit import Budget, Entry, Ledger, SQLiteLedger, Usage
from chainkit.cli import main
from chainkit.finops.html import CSP, html_report
from tests.finops.browser import render
from tests.finops.test_html import JAPANESE, SCRIPT_TENANT, Anomaly, Forecast, parse

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 18, tzinfo=UTC)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium: $CHAINKIT_CHROMIUM, else what scripts/chromium finds or installs."""
    path = os.environ.get("CHAINKIT_CHROMIUM")
    if path:
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"CHAINKIT_CHROMIUM={path} is not an executable: run scripts/chromium")
        return path
    if os.environ.get("CHAINKIT_REQUIRE_BROWSER"):
        pytest.fail(
            "CHAINKIT_REQUIRE_BROWSER is set but CHAINKIT_CHROMIUM is not: run scripts/chromium"
        )
    try:
        found = subprocess.run(
            [str(ROOT / "scripts" / "chromium")], capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Chromium: scripts/chromium could not run ({exc})")
    if found.returncode != 0:
        pytest.skip(f"no Chromium: scripts/chromium failed: {found.stderr.strip()[-300:]}")
    return found.stdout.strip()


def three_weeks(ledger: Ledger) -> None:
    """Three weeks of a support bot: two variants, three tenants, a spike, an unknown cost."""
    rng = random.Random(11)
    ledger.add_budget(Budget(Decimal("3"), period="month", tag=("tenant", "acme")))
    ledger.add_budget(Budget(Decimal("8"), period="month"))
    tenants = ["acme", "globex", SCRIPT_TENANT, JAPANESE]
    n = 0
    for d in range(21):
        day = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=d)
        for i in range(30 + d + (40 if d == 14 else 0)):
            n += 1
            when = day + timedelta(seconds=rng.randrange(86_400))
            tags = {"tenant": rng.choices(tenants, [5, 3, 1, 1])[0],
                    "variant": "single-llm" if i % 3 == 0 else "well-architected"}  # fmt: skip
            rid = f"r{n}"
            if tags["variant"] == "single-llm":
                cost = Decimal("0.0072") + Decimal(rng.randrange(100)) / 10_000
                ledger.record(Entry(rid, "generate", "answered", cost=cost, tags=tags, time=when,
                                    model="claude-sonnet-4", usage=Usage(900, 300)))  # fmt: skip
                continue
            ledger.record(Entry(rid, "intent_scan", "passed", cost=Decimal(0), tags=tags,
                                time=when))  # fmt: skip
            r = rng.random()
            if r < 0.5:
                stage = "canned" if r < 0.3 else "precomputed"
                ledger.record(Entry(rid, stage, "answered", cost=Decimal(0), tags=tags, time=when,
                                    avoided_cost=Decimal("0.008")))  # fmt: skip
            else:
                unknown = n % 97 == 0
                ledger.record(Entry(rid, "generate", "answered", model="nova-micro",
                                    cost=None if unknown else Decimal("0.000075"),
                                    bound=Decimal("0.001") if unknown else None,
                                    usage=Usage(900, 300), tags=tags, time=when))  # fmt: skip


def extras(ledger: Ledger) -> tuple[Forecast, list[Anomaly]]:
    days = ledger.by_day()
    last = max(days)
    band = tuple(
        (
            last + timedelta(days=k),
            Decimal("0.30") + Decimal(k) / 100,
            Decimal("0.42") + Decimal(k) / 80,
            Decimal("0.55") + Decimal(k) / 50,
        )
        for k in range(1, 10)
    )
    observed = tuple((d, t.cost or Decimal(0)) for d, t in sorted(days.items()))
    spike = days[date(2026, 11, 15)]
    anomaly = Anomaly(date(2026, 11, 15), ("total",), "spike", spike.cost or Decimal(0),
                      Decimal("0.38"), 4.1)  # fmt: skip
    return Forecast(observed, band, 0.8), [anomaly]


MEASURE = """JSON.stringify((function(){
  function box(el){var r=el.getBoundingClientRect();
    return {x:r.left+scrollX, y:r.top+scrollY, w:r.width, h:r.height};}
  var svgs=Array.prototype.slice.call(document.querySelectorAll("svg.chart-svg"));
  return {
    ready: document.documentElement.getAttribute("data-ready"),
    title: document.title,
    scripts: document.querySelectorAll("script").length,
    text: document.body.textContent,
    charts: svgs.map(function(s){var b=box(s); b.id=s.getAttribute("data-chart"); return b;}),
    drawn: {
      bars: Array.prototype.filter.call(document.querySelectorAll("rect.bar"),
        function(r){var b=r.getBoundingClientRect(); return b.width>0 && b.height>0;}).length,
      band: document.querySelectorAll("polygon.band").length,
      anomalies: document.querySelectorAll("g.anomaly").length,
      thresholds: document.querySelectorAll("line.threshold").length
    }
  };
})())"""

# Sort the spend table by its first column twice (ascending, then descending).
SORT = """JSON.stringify((function(){
  var th=document.querySelector("#chart-spend thead th");
  th.click(); var up=document.querySelector("#chart-spend tbody tr").cells[0].textContent;
  th.click(); var down=document.querySelector("#chart-spend tbody tr").cells[0].textContent;
  return {up: up, down: down, sort: th.getAttribute("aria-sort")};
})())"""


def non_blank(png: bytes, box: dict[str, Any]) -> tuple[float, int]:
    """The share of a region's pixels that differ from its most common colour, and its colours."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    region = image.crop((int(box["x"]), int(box["y"]),
                         int(box["x"] + box["w"]), int(box["y"] + box["h"])))  # fmt: skip
    counts = region.getcolors(maxcolors=1 << 20) or []
    total = sum(c for c, _ in counts)
    background = max(c for c, _ in counts)
    return (total - background) / total, len(counts)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with Ledger(clock=lambda: NOW) as ledger:
        three_weeks(ledger)
        forecast, anomalies = extras(ledger)
        text = html_report(ledger, forecast=forecast, anomalies=anomalies, source="three weeks",
                           generated=NOW)  # fmt: skip
    path = tmp_path / "report.html"
    path.write_text(text, encoding="utf-8")
    yield path, text


def test_the_report_renders_in_chromium(
    chromium: str, page: tuple[Path, str], tmp_path: Path
) -> None:
    path, text = page
    shown = render(chromium, path, tmp_path / "profile", MEASURE, then=SORT)
    keep = os.environ.get("CHAINKIT_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shown.png)
    assert shown.errors == []
    assert shown.requests == [path.resolve().as_uri()]  # nothing else fetched
    facts = shown.facts
    assert facts["ready"] == "1"  # the page's script ran (CSP allowed it by its hash)
    assert facts["scripts"] == 1 and facts["title"] == "chainkit cost report"
    assert SCRIPT_TENANT in facts["text"] and JAPANESE in facts["text"]
    # Every chart and bar in the file is drawn with a size.
    dom = parse(text)
    charts = [n for n in dom.all("svg") if n.attrs.get("class", "").startswith("chart-svg")]
    assert len(facts["charts"]) == len(charts) == 8  # spend, stage, model, tenant, savings,
    assert all(c["w"] > 100 and c["h"] > 20 for c in facts["charts"])  # variants, 2 budgets
    bars = [n for n in dom.all("rect") if n.attrs.get("class") == "bar"]
    assert facts["drawn"]["bars"] == len(bars) > 30
    assert facts["drawn"] == {**facts["drawn"], "band": 1, "anomalies": 1, "thresholds": 6}
    # The screenshot shows them: each chart's region is far from blank.
    image = Image.open(io.BytesIO(shown.png))
    assert image.size == (shown.width, shown.height)
    regions = {c["id"]: non_blank(shown.png, c) for c in facts["charts"]}
    for chart, (inked, colours) in regions.items():
        assert inked > 0.02 and colours >= 3, (chart, inked, colours)
    assert regions["spend"][0] > 0.1  # three weeks of bars and a band
    # The sort script works: by day ascending, then descending (the last forecast day first).
    assert facts["then"] == {"up": "2026-11-01", "down": "2026-11-30", "sort": "descending"}


def test_the_harness_sees_errors_and_fetches(chromium: str, tmp_path: Path) -> None:
    """A script and an image the report's CSP forbids are refused, and the refusals caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        f'<!doctype html><html><head><meta http-equiv="Content-Security-Policy" '
        f'content="{CSP}"></head><body><svg class="chart-svg"></svg>'
        '<img src="http://192.0.2.1/pixel.png" alt="">'
        "<script>console.error('boom')</script></body></html>",
        encoding="utf-8",
    )
    shown = render(chromium, bad, tmp_path / "profile", MEASURE)
    assert any("Executing inline script violates" in e for e in shown.errors), shown.errors
    assert any("img-src data:" in e for e in shown.errors), shown.errors
    assert "http://192.0.2.1/pixel.png" in shown.requests  # tried, refused, and seen
    assert shown.facts["ready"] is None and shown.facts["charts"][0]["w"] > 0
    blank = non_blank(shown.png, {"x": 0, "y": 0, "w": 400, "h": 300})
    assert blank[0] < 0.001  # an empty page is blank: the check above can fail


def test_cli_report_renders(chromium: str, tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with SQLiteLedger(db, clock=lambda: NOW) as ledger:
        three_weeks(ledger)
    out = tmp_path / "report.html"
    assert main(["report", str(db), "--format", "html", "--out", str(out)]) == 0
    shown = render(chromium, out, tmp_path / "profile", MEASURE)
    assert shown.errors == [] and shown.requests == [out.resolve().as_uri()]
    assert shown.facts["ready"] == "1" and len(shown.facts["charts"]) == 8
    assert all(non_blank(shown.png, c)[0] > 0.02 for c in shown.facts["charts"])
