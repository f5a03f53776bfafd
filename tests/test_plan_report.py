"""The recovery-plan run report (drbook.plans.report): charts, HTML, markdown and artifacts,
from records built by hand. No lab, no Prefect server."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pytest

from drbook.models import RecoveryPoint
from drbook.plans import report
from drbook.plans.record import PlanMachineResult, PlanRunRecord, StepRecord

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
NOW = T0 + dt.timedelta(minutes=20)
SVG = "{http://www.w3.org/2000/svg}"
XSS = "<script>alert(1)</script>"
ANSWER = "done by alice@example.com: DNS now points at Azure"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def point(item: str, seconds: float, pid: str = "") -> RecoveryPoint:
    return RecoveryPoint(id=pid or f"{item}-{seconds:g}", item=item, time=at(seconds), consistency="crash")


def stopped_run() -> PlanRunRecord:
    """Group db ran; in group web the optional web02 failed, then a critical post script failed
    and stopped the plan: group app never ran."""
    steps = [
        StepRecord(group="db", phase="pre", kind="manual", label="manual: Change the DNS record",
                   started=at(0), finished=at(240), status="succeeded", output=ANSWER),
        StepRecord(group="db", phase="recover", kind="recover", label="recover db01", machine="db01",
                   started=at(240), finished=at(360), status="succeeded"),
        StepRecord(group="db", phase="post", kind="script", label="script check_db.sh.j2 on db01", machine="db01",
                   started=at(360), finished=at(380), status="succeeded", output=XSS),
        StepRecord(group="web", phase="pre", kind="wait", label="wait 30 s", started=at(380), finished=at(410),
                   status="succeeded"),
        StepRecord(group="web", phase="recover", kind="recover", label="recover web01", machine="web01",
                   started=at(410), finished=at(530), status="succeeded"),
        StepRecord(group="web", phase="recover", kind="recover", label="recover web02", machine="web02",
                   critical=False, started=at(410), finished=at(470), status="failed", error="VM did not start"),
        StepRecord(group="web", phase="post", kind="script", label="script repoint.sh.j2 on web01", machine="web01",
                   started=at(530), finished=at(545), status="failed", output="exit 3", error="exit status 3"),
    ]
    machines = [
        PlanMachineResult(machine="db01", group="db", status="succeeded", started=at(240), finished=at(360),
                          point_id="p-db01", point_time=at(-600), consistency="app", rpo_seconds=600,
                          rto_seconds=118.5, bytes_verified=3 * 2**20, verified=True, vm_name="vm-db01",
                          ip="10.1.0.4", script_output=XSS),
        PlanMachineResult(machine="web01", group="web", status="succeeded", started=at(410), finished=at(530),
                          point_id="p-web01", point_time=at(-90), consistency="crash", rpo_seconds=90,
                          rto_seconds=119, bytes_verified=2**21, verified=True, vm_name="vm-web01", ip="10.1.0.5"),
        PlanMachineResult(machine="web02", group="web", critical=False, status="failed", started=at(410),
                          finished=at(470), point_id="p-web02", point_time=at(-120), consistency="crash",
                          rpo_seconds=120, error="VM did not start"),
        PlanMachineResult(machine="app01", group="app", status="not-run"),
    ]
    return PlanRunRecord(run_id="0b5e-run", plan="shop", direction="failover", status="stopped",
                         why="script repoint.sh.j2 on web01 failed (critical)", started=T0, finished=at(550),
                         steps=steps, machines=machines, report_path="/reports/shop-0b5e-run.html")


def points() -> dict[str, list[RecoveryPoint]]:
    """db01: a point every hour; web01: one point before the 3-day window only; web02, app01: none."""
    return {"db01": [point("db01", -3600 * h) for h in range(0, 80)], "web01": [point("web01", -4 * 86400)]}


@pytest.fixture(scope="module")
def record() -> PlanRunRecord:
    return stopped_run()


@pytest.fixture(scope="module")
def page(record: PlanRunRecord) -> str:
    return report.render_html(record, points=points(), now=NOW)


def svg_root(svg: str) -> ET.Element:
    assert svg.startswith("<svg"), svg[:80]  # no XML prolog: ready to inline
    return ET.fromstring(svg)


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def with_id(root: ET.Element, prefix: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("id", "").startswith(prefix)]


# --- the timeline ---

def test_timeline_has_one_bar_and_one_label_per_step(record: PlanRunRecord) -> None:
    root = svg_root(report.timeline_svg(record, now=NOW))
    bars = with_id(root, "timeline-step-")
    assert sorted(b.get("id") for b in bars) == sorted(f"timeline-step-{i}" for i in range(len(record.steps)))
    assert all(len(list(b.iter(f"{SVG}path"))) == 1 for b in bars)
    labels = texts(root)
    for step in record.steps:
        assert step.label in labels
    assert {"db", "web", "app (not run)"} <= set(labels)  # groups labelled, the one never reached too
    assert any(t.startswith("seconds since the run started") for t in labels)


def test_timeline_legend_shows_the_manual_wait_and_failures(record: PlanRunRecord) -> None:
    root = svg_root(report.timeline_svg(record, now=NOW))
    labels = texts(root)
    assert {"manual action (waiting for a person)", "recover machine", "script", "wait", "failed"} <= set(labels)
    assert "not done" not in labels and "still running" not in labels  # only the marks the run has
    manual = next(b for b in with_id(root, "timeline-step-") if b.get("id") == "timeline-step-0")
    assert "url(#timeline-" in ET.tostring(manual, encoding="unicode")  # hatched: a pattern fill
    assert "60.0 s failed" in labels  # web02's bar: its duration and status


def test_timeline_running_step_reaches_now() -> None:
    label = "manual: Set $HOME and $PATH <b>"  # dollars would be mathtext, <b> markup: both shown as typed
    run = PlanRunRecord(run_id="r", plan="p", direction="test-failover", started=T0, steps=[
        StepRecord(group="g", phase="pre", kind="manual", label=label, started=at(100))])
    root = svg_root(report.timeline_svg(run, now=at(400)))
    labels = texts(root)
    assert "5 min 00 s running" in labels and "still running" in labels and label in labels
    assert len(with_id(root, "timeline-step-")) == 1


def test_timeline_of_a_run_with_no_steps() -> None:
    run = PlanRunRecord(run_id="r", plan="p", direction="failover", status="rejected", started=T0, finished=T0,
                        machines=[PlanMachineResult(machine="m1", group="g1")])
    labels = texts(svg_root(report.timeline_svg(run, now=T0)))
    assert "no steps recorded" in labels and "g1 (not run)" in labels


# --- RPO over time ---

def test_rpo_series_is_the_exact_sawtooth() -> None:
    pts = [point("m", 50 * 60), point("m", -10 * 60), point("m", 20 * 60), point("m", 20 * 60, "dup"),
           point("m", 90 * 60)]  # unordered, a duplicate time, one after the window
    assert report.rpo_series(pts, T0, at(3600)) == [
        (T0, 600.0), (at(1200), 1800.0), (at(1200), 0.0), (at(3000), 1800.0), (at(3000), 0.0), (at(3600), 600.0)]


def test_rpo_series_edges() -> None:
    until = at(3600)
    # no point in the window: rises from the last earlier one
    assert report.rpo_series([point("m", -600), point("m", -7200)], T0, until) == [(T0, 600.0), (until, 4200.0)]
    # no point at all, or only after the window: nothing to draw
    assert report.rpo_series([], T0, until) == []
    assert report.rpo_series([point("m", 4000)], T0, until) == []
    # the first point ever inside the window: undefined before it
    assert report.rpo_series([point("m", 600)], T0, until) == [(at(600), 0.0), (until, 3000.0)]
    # points on both edges
    assert report.rpo_series([point("m", 0), point("m", 3600)], T0, until) == [
        (T0, 0.0), (until, 3600.0), (until, 0.0)]
    # naive times are UTC
    assert report.rpo_series([point("m", -60)], T0.replace(tzinfo=None), until) == [(T0, 60.0), (until, 3660.0)]
    with pytest.raises(ValueError):
        report.rpo_series([], until, T0)


def test_downsample_keeps_peaks_and_drops() -> None:
    xs = np.repeat(np.arange(1, 5001, dtype=float), 2)  # a drop at every second
    ys = np.tile([1.0, 0.0], 5000)
    ys[7001] = 0.0
    ys[7000] = 50.0  # one late point: the worst RPO must stay
    dx, dy = report.downsample(xs, ys, 100)
    assert len(dx) <= 202 and np.all(np.diff(dx) >= 0)
    assert dy.max() == 50.0 and dy.min() == 0.0 and dx[0] == xs[0] and dx[-1] == xs[-1]
    short = (np.array([0.0, 1.0]), np.array([5.0, 0.0]))
    assert report.downsample(*short, 100) == short


def test_rpo_chart_a_line_per_machine_and_the_missing_ones_noted() -> None:
    root = svg_root(report.rpo_svg({"db01": [point("db01", -30), point("db01", 300)], "web01": [point("web01", -900)],
                                    "app01": []}, since=T0, until=at(600)))
    assert sorted(e.get("id") for e in with_id(root, "rpo-line-")) == ["rpo-line-0", "rpo-line-1"]
    labels = texts(root)
    assert {"db01", "web01 (no point in the window)", "app01 (no points)", "RPO (minutes)"} <= set(labels)
    small = svg_root(report.rpo_svg({"db01": [point("db01", 0), point("db01", 60)]}, since=T0, until=at(100)))
    assert "RPO (seconds)" in texts(small)


# --- HTML ---

class Page(HTMLParser):
    """The page's tables as rows of cell texts, and its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: Counter[str] = Counter()
        self.ids: Counter[str] = Counter()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.ids.update(v for k, v in attrs if k == "id" and v)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parsed(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def test_html_has_both_charts_inline_and_valid_ids(page: str) -> None:
    p = parsed(page)
    assert p.tags["svg"] == 2 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert p.tags["script"] == 0 and p.tags["link"] == 0  # self-contained, nothing runs
    assert "timeline-step-6" in p.ids and "rpo-line-0" in p.ids
    assert [i for i, n in p.ids.items() if n > 1] == []  # two inline SVGs, no id shared


def test_html_machine_rows(page: str) -> None:
    rows = parsed(page).rows
    assert ["db", "db01", "critical", "succeeded", "p-db01", "2026-05-01 11:50:00 UTC", "app", "10 min 00 s",
            "118.5 s", "3.0", "yes", "vm-db01", "10.1.0.4", ""] in rows
    assert ["web", "web02", "optional", "failed", "p-web02", "2026-05-01 11:58:00 UTC", "crash", "2 min 00 s", "",
            "0.0", "NO", "", "", "VM did not start"] in rows
    assert ["app", "app01", "critical", "not-run", "", "", "", "", "", "0.0", "NO", "", "", ""] in rows


def test_html_status_why_summary_and_steps(page: str) -> None:
    rows = parsed(page).rows
    assert "run 0b5e-run: <span class=\"bad\">stopped</span>" in page
    assert "Why: script repoint.sh.j2 on web01 failed (critical)" in page
    assert "4 machines: 2 succeeded, 1 failed, 1 not run · NOT ALL VERIFIED: 2 of 4 machines verified" in page
    assert ["db", "pre", "manual: Change the DNS record", "", "+0.0 s", "4 min 00 s", "succeeded", ANSWER] in rows
    assert ["web", "post", "script repoint.sh.j2 on web01", "web01", "+8 min 50 s", "15.0 s", "failed",
            "exit 3exit status 3"] in rows
    assert [r[2] for r in rows if len(r) == 8][1:] == [s.label for s in stopped_run().steps]  # pre, recover, post


def test_html_escapes_script_output(page: str) -> None:
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2  # the step's output and db01's script output
    assert "<h3>db01</h3>\n<pre>&lt;script&gt;" in page


def test_write_html_makes_its_folder(tmp_path, record: PlanRunRecord) -> None:
    out = report.write_html(tmp_path / "a" / "b" / "report.html", record, points={}, now=NOW)
    html = out.read_text()
    assert out == tmp_path / "a" / "b" / "report.html"
    assert "web02 (no points)" in html and "app01 (no points)" in html  # every machine of the plan in the chart


# --- markdown and the artifacts ---

def test_markdown_tables(record: PlanRunRecord) -> None:
    md = report.markdown(record).splitlines()
    assert md[0] == "# drbook plan shop: failover · stopped"
    assert ("| db | db01 | critical | succeeded | p-db01 | 2026-05-01 11:50:00 UTC | app | 10 min 00 s | 118.5 s | 3.0 "
            "| yes | vm-db01 | 10.1.0.4 |  |") in md
    assert "| app | app01 | critical | not-run |  |  |  |  |  | 0.0 | NO |  |  |  |" in md
    assert f"| db | pre | manual: Change the DNS record |  | +0.0 s | 4 min 00 s | succeeded | {ANSWER} |" in md
    assert ("| db | post | script check_db.sh.j2 on db01 | db01 | +6 min 00 s | 20.0 s | succeeded "
            "| &lt;script&gt;alert(1)&lt;/script&gt; |") in md
    assert ("| web | post | script repoint.sh.j2 on web01 | web01 | +8 min 50 s | 15.0 s | failed "
            "| exit 3<br>error: exit status 3 |") in md
    assert "The timeline and RPO-over-time charts are in `/reports/shop-0b5e-run.html`." in md
    assert len([line for line in md if line.startswith("| ") and "| not-run |" in line]) == 1


def test_table_rows(record: PlanRunRecord) -> None:
    rows = report.table_rows(record)
    assert [r["machine"] for r in rows] == ["db01", "web01", "web02", "app01"]
    assert rows[2] == {"group": "web", "machine": "web02", "critical": False, "status": "failed", "point": "p-web02",
                       "point_time": "2026-05-01 11:58:00 UTC", "consistency": "crash", "rpo_s": 120.0, "rto_s": None,
                       "mib_verified": 0.0, "verified": "NO", "vm": "", "ip": "", "error": "VM did not start"}
    json.dumps(rows)  # a table artifact is JSON


def test_publish_artifacts(monkeypatch, record: PlanRunRecord) -> None:
    from prefect import artifacts

    made: list[tuple[str, object, str]] = []
    monkeypatch.setattr(artifacts, "create_markdown_artifact",
                        lambda markdown, key, description: made.append(("markdown", markdown, key)))
    monkeypatch.setattr(artifacts, "create_table_artifact",
                        lambda table, key, description: made.append(("table", table, key)))
    report.publish_artifacts(record, key="Plan_Shop 0B5E-run")
    assert made == [("markdown", report.markdown(record), "plan-shop-0b5e-run"),
                    ("table", report.table_rows(record), "plan-shop-0b5e-run-machines")]


def test_a_failovers_sources_step_comes_first_on_the_timeline_with_its_own_legend():
    run = stopped_run()
    sources = StepRecord(group="sources", phase="pre", kind="sources", label="stop applications, last cycle, shut down; points",
                         started=T0, finished=at(20), status="succeeded")
    run = run.model_copy(update={"steps": [sources, *run.steps]})
    svg = report.timeline_svg(run, now=NOW)
    ET.fromstring(svg)
    assert "sources (stop, last cycle, shut down) and points" in svg
    assert svg.index("stop applications, last cycle") < svg.index("recover db01")
