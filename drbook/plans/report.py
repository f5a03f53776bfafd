"""The recovery-plan run report, drawn from its PlanRunRecord: an HTML file (templates/
plan_report.html.j2) with two charts drawn by matplotlib as inline SVG (the run's timeline and
the machines' RPO over the last days), and the same tables as Prefect artifacts (markdown and
table).

The charts use matplotlib.figure.Figure directly, never pyplot: no global figure manager to
leak figures into, no GUI backend; the SVG settings are set around each savefig only."""

from __future__ import annotations

import datetime as dt
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.textpath import TextToPath
from markupsafe import Markup

from drbook.models import RecoveryPoint, utcnow
from drbook.plans.record import PlanMachineResult, PlanRunRecord, StepRecord
from drbook.templating import environment as templates

UTC = dt.timezone.utc
MIB = 2**20

KIND_COLOURS = {"sources": "#8e6bb0", "recover": "#4a6fa5", "script": "#5b9a4f", "manual": "#e3a33b", "wait": "#9aa3ad"}
KIND_LABELS = {"sources": "sources (stop, last cycle, shut down) and points", "recover": "recover machine", "script": "script", "manual": "manual action (waiting for a person)",
               "wait": "wait"}
BAD = "#b00020"
STATUS_MARKS = {"failed": ("X", "failed"), "not-done": ("D", "not done"), "running": (">", "still running")}
PHASES = {"pre": 0, "recover": 1, "post": 2}
LABEL_CHARS = 48  # a timeline row's label; the steps table has the whole of it
# Per machine in the RPO chart, about one per two pixel columns (see downsample): for 100 machines
# with a point every 5 minutes for 3 days, the page is 1.9 MB instead of 4.2.
RPO_BUCKETS = 350
_TEXT = TextToPath()


# --- small formatting helpers, shared by the HTML, the markdown and the table artifact ---

def _aware(t: dt.datetime) -> dt.datetime:
    """Naive times in the vault are UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _when(t: dt.datetime | None) -> str:
    return _aware(t).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


def duration(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _plain(text: str) -> str:
    """Text for matplotlib, shown as is: a `$` would start mathtext."""
    return text.replace("$", r"\$")


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _step_end(step: StepRecord, record: PlanRunRecord, now: dt.datetime) -> dt.datetime:
    return _aware(step.finished or record.finished or now)


def ordered_steps(record: PlanRunRecord) -> list[StepRecord]:
    """Group by group (in the order the run reached them), then pre, recover, post."""
    groups = _group_order(record)
    return sorted(record.steps, key=lambda s: (groups.index(s.group), PHASES[s.phase]))


def _group_order(record: PlanRunRecord) -> list[str]:
    """The groups in the order the run met them (steps), then those it never reached (machines)."""
    names = [s.group for s in record.steps] + [m.group for m in record.machines]
    return list(dict.fromkeys(names))


def _id_prefixed(svg: str, prefix: str) -> str:
    """Every id of one SVG prefixed, so two inline SVGs of one page never share an id (matplotlib
    numbers them per figure: both charts would have axes_1, patch_1, ...). Only inside tags:
    text content has its `<` escaped, so every `<...>` is a tag."""
    def tag(m: re.Match[str]) -> str:
        return (m.group(0).replace(' id="', f' id="{prefix}')
                .replace('href="#', f'href="#{prefix}').replace("url(#", f"url(#{prefix}"))
    return re.sub(r"<[^>]+>", tag, svg)


def _svg(fig: Figure, *, salt: str) -> str:
    """The figure as inline SVG: no XML prolog nor doctype, text kept as text, ids stable."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return _id_prefixed(text[text.index("<svg"):], f"{salt}-")


# --- the timeline ---

def _timeline_rows(record: PlanRunRecord) -> list[tuple[str, StepRecord | None]]:
    """A header row per group (step None), then its steps; a group the run never reached: its
    header only, marked not run."""
    steps = ordered_steps(record)
    rows: list[tuple[str, StepRecord | None]] = []
    for group in _group_order(record):
        mine = [s for s in steps if s.group == group]
        rows.append((f"{group}" if mine else f"{group} (not run)", None))
        rows += [(_short(s.label, LABEL_CHARS), s) for s in mine]
    return rows


def _text_width_in(labels: Sequence[str], *, size: float, bold: bool = False) -> float:
    """The widest label's width in inches (the longest few by characters measured: measuring is
    far cheaper than matplotlib's constrained layout, which draws the figure twice)."""
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    longest = sorted(labels, key=len, reverse=True)[:8]
    return max((_TEXT.get_text_width_height_descent(t, prop, ismath=False)[0] for t in longest), default=0.0) / 72


def _figure(width: float, height: float, *, left: float, right: float, top: float,
            bottom: float) -> tuple[Figure, Axes]:
    """A figure with one axes, its margins in inches."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height)
    return fig, ax


def timeline_svg(record: PlanRunRecord, *, now: dt.datetime | None = None) -> str:
    """A Gantt chart of the run: a bar per step from its start to its end (a running step: to
    the run's end, or now), coloured by kind, groups in bands; x in seconds since the run began.
    Each bar is the SVG group `timeline-step-<i>`, i the step's index in ordered_steps."""
    now = _aware(now or utcnow())
    start = _aware(record.started)
    rows = _timeline_rows(record)
    x_max = max([(_step_end(s, record, now) - start).total_seconds() for _, s in rows if s is not None] + [1.0])
    min_width = x_max * 0.004  # an instant step (a skipped one) still shows as a sliver
    kinds = {s.kind for _, s in rows if s is not None}
    marks = {s.status for _, s in rows if s is not None and s.status in STATUS_MARKS}
    handles = _timeline_legend(kinds, marks)
    legend_rows = math.ceil(len(handles) / 4)

    labels = [_plain(label) for label, _ in rows]
    left = 0.3 + max(_text_width_in([t for t, (_, s) in zip(labels, rows) if s is not None], size=8),
                     _text_width_in([t for t, (_, s) in zip(labels, rows) if s is None], size=8, bold=True))
    top, bottom = 0.2 + 0.25 * legend_rows, 0.6
    fig, ax = _figure(10, top + bottom + 0.27 * max(len(rows), 2), left=left, right=0.3, top=top, bottom=bottom)
    bands = steps = 0
    for y, (_, step) in enumerate(rows):
        if step is None:
            bands += 1
            if bands % 2 == 0:
                ax.axhspan(y - 0.5, _group_end(rows, y) + 0.5, color="#f3f4f8", zorder=0)
            if y:
                ax.axhline(y - 0.5, color="#99a", linewidth=0.8, zorder=1)
            continue
        offset = (_aware(step.started) - start).total_seconds()
        took = (_step_end(step, record, now) - _aware(step.started)).total_seconds()
        width = max(took, min_width)
        _bar(ax, y, offset, width, step, index=steps)
        steps += 1
        if step.status in STATUS_MARKS:
            ax.plot([offset + width], [y], marker=STATUS_MARKS[step.status][0], color=BAD, markersize=7, zorder=4)
        note = duration(took) if step.status == "succeeded" else f"{duration(took)} {step.status.replace('-', ' ')}"
        ax.text(offset + width + x_max * 0.012, y, note, va="center", fontsize=7, color="#445")

    # Row labels as plain texts left of the axes: a tick per row (200 rows) costs three times more.
    at_left = ax.get_yaxis_transform()
    for y, (label, (_, step)) in enumerate(zip(labels, rows)):
        ax.text(-0.01, y, label, transform=at_left, ha="right", va="center", fontsize=8,
                fontweight="bold" if step is None else "normal")
    ax.set_yticks([])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_xlim(0, x_max * 1.15)  # room for the notes after the last bars
    ax.set_xlabel(f"seconds since the run started ({_when(record.started)})")
    ax.grid(axis="x", color="#dde", linewidth=0.6)
    ax.set_axisbelow(True)
    if not record.steps:
        ax.text(0.5, 0.5, "no steps recorded", transform=ax.transAxes, ha="center", color="#667")
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1), ncols=min(len(handles), 4),
                   fontsize=8, frameon=False)
    return _svg(fig, salt="timeline")


def _group_end(rows: list[tuple[str, StepRecord | None]], header: int) -> int:
    """The last row of the group whose header row is `header`."""
    end = header
    while end + 1 < len(rows) and rows[end + 1][1] is not None:
        end += 1
    return end


def _bar(ax: Axes, y: int, offset: float, width: float, step: StepRecord, *, index: int) -> None:
    failed = step.status in ("failed", "not-done")
    ax.add_patch(Rectangle((offset, y - 0.31), width, 0.62, facecolor=KIND_COLOURS[step.kind],
                           hatch="///" if step.kind == "manual" else None,
                           alpha=0.4 if step.status == "skipped" else 1.0,
                           edgecolor=BAD if failed else "#334", linewidth=1.6 if failed else 0.5,
                           gid=f"step-{index}", zorder=3))


def _timeline_legend(kinds: set[str], marks: set[str]) -> list[Artist]:
    handles: list[Artist] = [Patch(facecolor=KIND_COLOURS[k], edgecolor="#334", linewidth=0.5,
                                   hatch="///" if k == "manual" else None, label=KIND_LABELS[k])
                             for k in KIND_COLOURS if k in kinds]
    handles += [Line2D([], [], linestyle="", marker=STATUS_MARKS[s][0], color=BAD, label=STATUS_MARKS[s][1])
                for s in STATUS_MARKS if s in marks]
    return handles


# --- RPO over time ---

def rpo_series(points: Sequence[RecoveryPoint], since: dt.datetime,
               until: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """The vertices of a machine's RPO (seconds) over [since, until]: at t, t minus the time of
    its newest point at or before t. A sawtooth: it rises, and drops to 0 at each point. Before
    the machine's first point its RPO is undefined, so the series starts there; no point at or
    before `until`: no series."""
    since, until = _aware(since), _aware(until)
    if since > until:
        raise ValueError(f"since {since} is after until {until}")
    times = sorted({_aware(p.time) for p in points if _aware(p.time) <= until})
    earlier = [t for t in times if t <= since]
    last = earlier[-1] if earlier else None
    series: list[tuple[dt.datetime, float]] = []
    if last is not None:
        series.append((since, (since - last).total_seconds()))
    for t in times[len(earlier):]:
        if last is not None:
            series.append((t, (t - last).total_seconds()))
        series.append((t, 0.0))
        last = t
    if last is not None and series[-1][0] < until:
        series.append((until, (until - last).total_seconds()))
    return series


def downsample(xs: np.ndarray, ys: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most 2 * buckets + 2 vertices of a line (xs ascending): in each of `buckets` equal
    spans of x, its highest vertex and its lowest, in x order, and the first and last. The peaks
    (the worst RPO) and the drops stay; a chart some 700 pixels wide shows no more."""
    if len(xs) <= 2 * buckets + 2:
        return xs, ys
    span = float(xs[-1] - xs[0]) or 1.0
    bucket = np.minimum(((xs - xs[0]) / span * buckets).astype(np.int64), buckets - 1)
    highest = np.lexsort((-ys, bucket))  # by bucket, highest first
    lowest = np.lexsort((ys, bucket))
    firsts = np.flatnonzero(np.r_[True, np.diff(bucket[highest]) != 0])  # the first of each bucket
    keep = np.unique(np.r_[0, len(xs) - 1, highest[firsts], lowest[firsts]])
    return xs[keep], ys[keep]


def rpo_svg(points: dict[str, list[RecoveryPoint]], *, since: dt.datetime, until: dt.datetime,
            run: tuple[dt.datetime, dt.datetime] | None = None) -> str:
    """A line per machine: its RPO over [since, until] (rpo_series), in minutes, or in seconds when
    every value is under 2 minutes. A machine with no point in the window rises from its last
    earlier one; one with no point at all is in the legend only. `run`: the plan run, shaded.
    Each line is the SVG group `rpo-line-<i>`, i the machine's index in `points`."""
    since, until = _aware(since), _aware(until)
    lines = {name: _xy(rpo_series(pts, since, until), since) for name, pts in points.items()}
    peak = max((float(ys.max()) for _, ys in lines.values() if len(ys)), default=0.0)
    unit, scale = ("seconds", 1.0) if peak < 120 else ("minutes", 60.0)
    day0 = mdates.date2num(since)

    ncols = 4
    legend_rows = math.ceil((len(lines) + (run is not None)) / ncols)
    bottom = 0.75 + 0.18 * legend_rows
    fig, ax = _figure(10, 3.6 + bottom, left=0.8, right=0.3, top=0.2, bottom=bottom)
    colours = matplotlib.colormaps["tab20"].colors
    for i, (name, (xs, ys)) in enumerate(lines.items()):
        if not len(xs):
            ax.plot([], [], color="#99a", linestyle=":", label=_plain(f"{name} (no points)"))
            continue
        note = "" if (ys == 0).any() else " (no point in the window)"
        xs, ys = downsample(xs, ys, RPO_BUCKETS)
        ax.plot(day0 + xs / 86400, ys / scale, color=colours[i % len(colours)], linewidth=1.0,
                label=_plain(name + note), gid=f"line-{i}")
    if run is not None:
        begin, end = mdates.date2num(_aware(run[0])), mdates.date2num(_aware(run[1]))
        ax.axvspan(begin, end, color="#f6d7a7", alpha=0.6, zorder=0, label="this plan run")
        ax.axvline(begin, color="#c98a2e", linewidth=1, linestyle="--", zorder=0)  # a short run's span is a hairline
    ax.set_xlim(day0, mdates.date2num(until))
    ax.set_ylim(bottom=0, top=max(peak / scale * 1.05, 1.0))
    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"RPO ({unit})")
    ax.grid(color="#dde", linewidth=0.6)
    if lines or run is not None:
        fig.legend(loc="upper center", bbox_to_anchor=(0.5, (0.18 * legend_rows + 0.1) / fig.get_figheight()),
                   ncols=ncols, fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no machines", transform=ax.transAxes, ha="center", color="#667")
    return _svg(fig, salt="rpo")


def _xy(series: list[tuple[dt.datetime, float]], since: dt.datetime) -> tuple[np.ndarray, np.ndarray]:
    """A series as arrays: seconds since `since`, RPO seconds."""
    xs = np.fromiter(((t - since).total_seconds() for t, _ in series), float, len(series))
    ys = np.fromiter((v for _, v in series), float, len(series))
    return xs, ys


# --- tables ---

def summary(record: PlanRunRecord) -> dict:
    counts = {s: sum(m.status == s for m in record.machines) for s in ("succeeded", "failed", "not-run")}
    verified = sum(m.verified for m in record.machines)
    return {
        **{k.replace("-", "_"): v for k, v in counts.items()},
        "machines": len(record.machines),
        "verified": verified,
        "all_verified": bool(record.machines) and verified == len(record.machines),
    }


def summary_line(record: PlanRunRecord) -> str:
    s = summary(record)
    disks = ("all disks verified byte for byte against their recovery points" if s["all_verified"]
             else f"NOT ALL VERIFIED: {s['verified']} of {s['machines']} machines verified byte for byte")
    return (f"{s['machines']} machines: {s['succeeded']} succeeded, {s['failed']} failed, "
            f"{s['not_run']} not run · {disks}")


def machine_row(m: PlanMachineResult) -> dict[str, str]:
    """A machine as the HTML and the markdown show it."""
    return {
        "group": m.group, "machine": m.machine, "role": "critical" if m.critical else "optional",
        "status": m.status, "point": m.point_id, "point_time": _when(m.point_time), "consistency": m.consistency,
        "rpo": duration(m.rpo_seconds), "rto": duration(m.rto_seconds),
        "mib": f"{m.bytes_verified / MIB:.1f}", "verified": "yes" if m.verified else "NO",
        "vm": m.vm_name, "ip": m.ip, "error": m.error,
    }


def step_row(step: StepRecord, record: PlanRunRecord, now: dt.datetime) -> dict[str, str]:
    start = _aware(record.started)
    took = (_step_end(step, record, now) - _aware(step.started)).total_seconds()
    return {
        "group": step.group, "phase": step.phase, "kind": step.kind, "step": step.label, "machine": step.machine or "",
        "start": "+" + duration((_aware(step.started) - start).total_seconds()),
        "duration": duration(took) + ("" if step.finished or record.finished else " so far"),
        "status": step.status, "output": step.output.rstrip(), "error": step.error,
    }


def table_rows(record: PlanRunRecord) -> list[dict]:
    """Per machine, for a Prefect table artifact (plain JSON values)."""
    return [
        {
            "group": m.group, "machine": m.machine, "critical": m.critical, "status": m.status,
            "point": m.point_id, "point_time": _when(m.point_time), "consistency": m.consistency,
            "rpo_s": None if m.rpo_seconds is None else round(m.rpo_seconds, 1),
            "rto_s": None if m.rto_seconds is None else round(m.rto_seconds, 1),
            "mib_verified": round(m.bytes_verified / MIB, 1), "verified": "yes" if m.verified else "NO",
            "vm": m.vm_name, "ip": m.ip, "error": m.error,
        }
        for m in record.machines
    ]


# --- HTML ---

def render_html(record: PlanRunRecord, *, points: dict[str, list[RecoveryPoint]], now: dt.datetime | None = None,
                rpo_days: float = 3) -> str:
    """The report: the run's status and why, the timeline, the machines, the steps, the scripts'
    output and the RPO of the plan's machines over the last `rpo_days` (until `now`)."""
    now = _aware(now or utcnow())
    since = now - dt.timedelta(days=rpo_days)
    mine = {m.machine: points.get(m.machine, []) for m in record.machines}
    run_end = _aware(record.finished or now)
    # Marked safe only here: SVG that this module drew, whose texts matplotlib escaped.
    timeline = Markup(timeline_svg(record, now=now))
    rpo = Markup(rpo_svg(mine, since=since, until=now, run=(_aware(record.started), run_end)))
    return templates().get_template("plan_report.html.j2").render(
        record=record, summary=summary(record), summary_line=summary_line(record),
        started=_when(record.started), finished=_when(record.finished) or "not yet",
        machines=[machine_row(m) for m in record.machines],
        steps=[step_row(s, record, now) for s in ordered_steps(record)],
        scripts={m.machine: m.script_output.rstrip() for m in record.machines if m.script_output.strip()},
        timeline_svg=timeline, rpo_svg=rpo, rpo_since=_when(since), rpo_until=_when(now), rpo_days=rpo_days,
        generated=_when(now),
    )


def write_html(path: Path, record: PlanRunRecord, *, points: dict[str, list[RecoveryPoint]],
               now: dt.datetime | None = None, rpo_days: float = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(record, points=points, now=now, rpo_days=rpo_days), encoding="utf-8")
    return path


# --- Prefect artifacts ---

def _cell(text: str) -> str:
    """A markdown table cell: no raw HTML (but <br> for line breaks), no column break."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _fence(text: str) -> str:
    """A code block whose fence is longer than any run of backticks in the text."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}\n{text}\n{fence}"


def markdown(record: PlanRunRecord, *, now: dt.datetime | None = None) -> str:
    now = _aware(now or utcnow())
    lines = [
        f"# drbook plan {record.plan}: {record.direction} · {record.status}",
        "",
        f"Run `{record.run_id}` · started {_when(record.started)} · finished {_when(record.finished) or 'not yet'}"
        + (f" · resource group `{record.resource_group}`" if record.resource_group else ""),
        "",
    ]
    if record.why:
        lines += [f"**Why:** {_cell(record.why)}", ""]
    lines += [f"**{_cell(summary_line(record))}**", "",
              "| group | machine | role | status | point | point time | consistency | RPO | RTO | MiB verified "
              "| verified | VM | IP | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(v) for v in machine_row(m).values()) + " |" for m in record.machines]
    lines += ["", "## Steps", "",
              "| group | phase | step | machine | start | duration | status | output / answer |",
              "|---|---|---|---|---|---|---|---|"]
    for s in ordered_steps(record):
        r = step_row(s, record, now)
        out = "\n".join(x for x in (r["output"], f"error: {r['error']}" if r["error"] else "") if x)
        cells = (r["group"], r["phase"], r["step"], r["machine"], r["start"], r["duration"], r["status"], out)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    for m in record.machines:
        if m.script_output.strip():
            lines += ["", f"## Script output on {m.machine}", "", _fence(m.script_output.rstrip())]
    where = f"`{record.report_path}`" if record.report_path else "the HTML report"
    lines += ["", f"The timeline and RPO-over-time charts are in {where}."]
    return "\n".join(lines) + "\n"


def artifact_key(key: str) -> str:
    """Prefect's artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "plan-run"


def publish_artifacts(record: PlanRunRecord, *, key: str) -> None:
    """The markdown report (key) and the machines table (key-machines) of the current flow run."""
    from prefect import artifacts  # here: the report renders without Prefect loaded

    k = artifact_key(key)
    artifacts.create_markdown_artifact(markdown(record), key=k,
                                       description=f"plan {record.plan} {record.direction} report")
    artifacts.create_table_artifact(table_rows(record), key=f"{k}-machines",
                                    description=f"plan {record.plan} {record.direction}: each machine")
