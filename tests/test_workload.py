"""The lab's workload writer: its log replays to the disks' exact bytes, and pause/resume
through the control directory quiesces it (the lab's crash-consistency hook)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from lab import workload


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.workload", *args], capture_output=True, text=True, timeout=timeout)


RUN_S = 4.0  # the writer's run: long enough for two pauses after a slow start


def test_replay_equals_disks_after_a_run_with_pauses(tmp_path: Path):
    d0, d1 = tmp_path / "d0.img", tmp_path / "d1.img"
    d0.write_bytes(bytes(4 * 1024 * 1024))
    d1.write_bytes(b"\x5a" * (2 * 1024 * 1024))
    init0, init1 = d0.read_bytes(), d1.read_bytes()
    log, ctl = tmp_path / "w.jsonl", tmp_path / "ctl"
    writer = subprocess.Popen([sys.executable, "-m", "lab.workload", "run", "--disk", f"d0={d0}", "--disk", f"d1={d1}",
                               "--log", str(log), "--control", str(ctl), "--rate", "8", "--seconds", str(RUN_S),
                               "--seed", "11"])
    try:
        # started (not a fixed sleep: a loaded machine starts Python slowly), then a few writes
        deadline = time.monotonic() + 20
        while not (ctl / workload.RUNNING).exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        time.sleep(0.4)
        marks = []
        for _ in range(2):
            out = _cli("pause", "--control", str(ctl))
            assert out.returncode == 0, out.stderr
            seq = workload.paused_seq(out.stdout)
            assert seq is not None and seq > 0
            # While paused the disks hold exactly the writes up to seq.
            frozen0 = d0.read_bytes()
            time.sleep(0.15)
            assert d0.read_bytes() == frozen0
            assert workload.replay(log, "d0", init0, seq) == frozen0
            assert workload.replay(log, "d1", init1, seq) == d1.read_bytes()
            marks.append(seq)
            assert _cli("resume", "--control", str(ctl)).stdout.strip() == "resumed"
            time.sleep(0.3)
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    entries = workload.read_log(log)
    last = entries[-1]
    assert last["event"] == "stop"
    assert workload.replay(log, "d0", init0, last["seq"]) == d0.read_bytes()
    assert workload.replay(log, "d1", init1, last["seq"]) == d1.read_bytes()
    events = [e for e in entries if "event" in e]
    assert [e["event"] for e in events] == ["start", "pause", "resume", "pause", "resume", "stop"]
    assert [e["seq"] for e in events if e["event"] == "pause"] == marks
    writes = [e for e in entries if "event" not in e]
    assert [w["seq"] for w in writes] == list(range(1, last["seq"] + 1))
    assert {w["disk"] for w in writes} == {"d0", "d1"}
    assert all(w["offset"] % 4096 == 0 and 4096 <= w["length"] <= 256 * 1024 and w["length"] % 4096 == 0 for w in writes)
    for w in writes[:5]:
        assert hashlib.sha256(workload.data_for(11, w["seq"], w["length"])).hexdigest() == w["sha256"]
    # Pauses really stopped the writes: nothing was written between a pause line and its resume.
    pause_at = [e["time"] for e in events if e["event"] == "pause"]
    resume_at = [e["time"] for e in events if e["event"] == "resume"]
    for a, b in zip(pause_at, resume_at):
        assert not [w for w in writes if a < w["time"] < b]
    # The rate was kept: about 8 MB a second while not paused (a loaded machine falls behind,
    # never ahead), and the run lasted what it was asked to.
    paused = sum(b - a for a, b in zip(pause_at, resume_at))
    active = last["time"] - events[0]["time"] - paused
    volume = sum(w["length"] for w in writes)
    assert RUN_S - 0.5 <= last["time"] - events[0]["time"] <= RUN_S + 10
    assert 0.5 * 8e6 * active <= volume <= 8e6 * active * 1.3 + 256 * 1024, (volume, active)


def test_pause_without_a_writer_and_a_pause_that_times_out(tmp_path: Path):
    ctl = tmp_path / "ctl"
    out = _cli("pause", "--control", str(ctl))
    assert out.returncode == 0 and out.stdout.strip() == "paused seq=0 (no writer running)"
    assert _cli("resume", "--control", str(ctl)).returncode == 0
    # A live process that claims to be the writer but never acks: the pause hook fails.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (ctl / workload.RUNNING).write_text(str(sleeper.pid))
        out = _cli("pause", "--control", str(ctl), "--timeout", "0.3")
        assert out.returncode == 1 and "did not pause" in out.stderr
        assert not (ctl / workload.REQUEST).exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_replay_detects_a_log_that_does_not_regenerate(tmp_path: Path):
    log = tmp_path / "w.jsonl"
    log.write_text('{"event":"start","seed":1,"time":0}\n'
                   '{"seq":1,"time":0,"disk":"d0","offset":0,"length":4096,"sha256":"00"}\n')
    try:
        workload.replay(log, "d0", bytes(8192), 1)
    except ValueError as exc:
        assert "does not regenerate" in str(exc)
    else:
        raise AssertionError("a bad log replayed")
