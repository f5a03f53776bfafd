"""The chaos suite's fault scheduler, injectors and checker, on the lab.

A seeded plan says, cycle by cycle, which fault strikes a replication cycle of one item
while the workload writer writes to its disks:

    process-server  the process running the cycle is SIGKILLed at a phase (PHASES)
    agent           the agent on the source is SIGKILLed while the source is frozen
    ssh             the machine's sshd and every session it forked are SIGKILLed mid-cycle
    azurite         Azurite is stopped at a phase of the cycle, then started again
    worker          the Prefect worker and the cycle run it started are SIGKILLed

Every injector proves its fault fired (an exit by SIGKILL, pids killed, a service that
was running and then was not). After every fault a clean cycle must make a point, and
the checker holds each point that exists to the independent truth: it verifies block by
block against its manifest (torn?) and its bytes equal the workload log replayed to the
point's freeze instant (mismatch?); a point a cycle acknowledged must still exist (lost?).

Used by tests/chaos/test_chaos.py (one fault of each kind, a fixed seed) and by
bench/bench_chaos.py (100 cycles, figures in docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from drbook.errors import DRError, LeaseHeldError
from drbook.replication.engine import PHASES
from tests.lab_site import point_problems

KINDS = ("process-server", "agent", "ssh", "azurite", "worker")
# Azurite stopped at these phases: the cycle has blob work left to do after each.
AZURITE_PHASES = ("after-segment-upload", "after-commit-marker", "mid-apply", "after-apply", "after-snapshot")
LEASE_WAIT_S = 60  # a SIGKILLed holder's lease expires within 15 s; a cycle under load takes more


@dataclass(frozen=True)
class Fault:
    kind: str
    phase: str | None = None  # process-server, azurite
    delay_s: float = 0.0  # agent, ssh: after the source froze; worker: after the run started

    def label(self) -> str:
        return self.kind + (f"@{self.phase}" if self.phase else "") + (f"+{self.delay_s:.2f}s" if self.delay_s else "")


def plan(seed: int, cycles: int, kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    """`cycles` faults from `seed`: every kind once per round (each round shuffled), so a
    short plan covers every kind and a long one covers every phase many times."""
    rng = random.Random(seed)
    out: list[Fault] = []
    while len(out) < cycles:
        for kind in rng.sample(kinds, len(kinds)):
            if kind == "process-server":
                out.append(Fault(kind, phase=rng.choice(PHASES)))
            elif kind == "azurite":
                out.append(Fault(kind, phase=rng.choice(AZURITE_PHASES)))
            elif kind in ("agent", "ssh"):
                out.append(Fault(kind, delay_s=round(rng.uniform(0.0, 0.05), 3)))
            else:
                out.append(Fault(kind, delay_s=round(rng.uniform(0.5, 3.0), 2)))
    return out[:cycles]


@dataclass
class Outcome:
    fault: Fault
    fired: bool
    evidence: str
    cycle_error: str | None = None
    point_id: str | None = None  # when the struck cycle still made a point


@dataclass
class Tally:
    """What the run found: faults by kind, cycles, points checked, and the three zeros."""

    faults: Counter = field(default_factory=Counter)
    fired: Counter = field(default_factory=Counter)
    cycles: int = 0
    points_checked: int = 0
    torn: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"faults": dict(self.faults), "fired": dict(self.fired), "cycles": self.cycles,
                "points_checked": self.points_checked, "torn": len(self.torn), "mismatches": len(self.mismatches),
                "lost": len(self.lost), "torn_points": self.torn, "mismatched_points": self.mismatches,
                "lost_points": self.lost}


# -- processes on this host (the lab's machines are local sshd's) ----------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pids: list[int]) -> list[int]:
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


# -- the injectors ----------------------------------------------------------------------------

@dataclass
class Chaos:
    """One item of a site of its own on the lab, with the workload writer running."""

    site_path: str
    item: str
    lab_control: object  # lab.control.Lab
    writer: object  # tests.lab_site.Writer
    tally: Tally = field(default_factory=Tally)

    @property
    def site(self):
        from drbook.site import open_site

        return open_site(self.site_path)

    def strike(self, fault: Fault) -> Outcome:
        self.tally.faults[fault.kind] += 1
        outcome = getattr(self, "_" + fault.kind.replace("-", "_"))(fault)
        if outcome.fired:
            self.tally.fired[fault.kind] += 1
        self.tally.cycles += 1
        if outcome.point_id:
            self.tally.acknowledged.add(outcome.point_id)
        return outcome

    def clean_cycle(self) -> str:
        """The next cycle after a fault: it must make a point (waiting out a dead holder's lease)."""
        deadline = time.monotonic() + LEASE_WAIT_S
        while True:
            try:
                point = self.site.engine.run_cycle(self.item)
                break
            except LeaseHeldError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.tally.cycles += 1
        self.tally.acknowledged.add(point.id)
        return point.id

    def _process_server(self, fault: Fault) -> Outcome:
        proc = subprocess.run([sys.executable, "-m", "tests.crash_cycle", self.site_path, self.item, fault.phase],
                              timeout=180, capture_output=True)
        fired = proc.returncode == -signal.SIGKILL
        return Outcome(fault, fired, f"the cycle's process exited {proc.returncode} (SIGKILL is -9)")

    def _when_frozen(self, fault: Fault, act) -> threading.Thread:  # noqa: ANN001 - act() -> str
        """Run `act` once the source is frozen (the writer acknowledged the pause), + delay."""
        result: dict = {}

        def run() -> None:
            deadline = time.monotonic() + 30
            while not (self.writer.control / "pause.ack").exists():
                if time.monotonic() > deadline:
                    result["evidence"] = "the source never froze"
                    return
                time.sleep(0.001)
            time.sleep(fault.delay_s)
            result["evidence"] = act()

        thread = threading.Thread(target=run, daemon=True)
        thread.result = result  # type: ignore[attr-defined]
        thread.start()
        return thread

    def _cycle_struck(self, fault: Fault, thread: threading.Thread, fired) -> Outcome:  # noqa: ANN001
        error, point_id = None, None
        try:
            point_id = self.site.engine.run_cycle(self.item).id
        except DRError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            thread.join(35)
        evidence = thread.result.get("evidence", "the injector did not run")  # type: ignore[attr-defined]
        return Outcome(fault, fired(evidence), evidence, cycle_error=error, point_id=point_id)

    def _agent(self, fault: Fault) -> Outcome:
        sshd = self.lab_control.managed(f"sshd-{self.item}")

        def act() -> str:
            agents = [p for p in descendants(sshd.pid()) if "agent.py" in _cmdline(p) and " scan" in _cmdline(p)]
            return f"killed agent pids {_kill(agents)}"

        thread = self._when_frozen(fault, act)
        return self._cycle_struck(fault, thread, lambda ev: ev.startswith("killed agent pids [") and ev != "killed agent pids []")

    def _ssh(self, fault: Fault) -> Outcome:
        sshd = self.lab_control.managed(f"sshd-{self.item}")

        def act() -> str:
            pid = sshd.pid()
            killed = _kill(descendants(pid)) + _kill([pid])
            return f"killed sshd {pid} and its sessions: {len(killed)} processes"

        thread = self._when_frozen(fault, act)
        try:
            return self._cycle_struck(fault, thread, lambda ev: ev.startswith("killed sshd"))
        finally:
            self.lab_control.up()

    def _azurite(self, fault: Fault) -> Outcome:
        from drbook.adapters.blobstore import blob_service
        from drbook.replication.engine import ReplicationEngine
        from drbook.vault import Vault

        azurite = self.lab_control.managed("azurite")
        seen: dict = {}

        def hook(at: str) -> None:
            if at == fault.phase and not seen:
                seen["was_running"] = azurite.running()
                azurite.stop()
                seen["stopped"] = not azurite.running()

        site = self.site
        impatient = blob_service(site.cfg, retry_total=0)  # clients that give up at once on a dead Azurite
        vault = Vault(impatient.get_container_client(site.cfg.azure.containers.vault))
        engine = ReplicationEngine(site.cfg, vault, impatient, site.shell_for, site.encryption_key, fault=hook)
        error, point_id = None, None
        try:
            point_id = engine.run_cycle(self.item).id
        except DRError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self.lab_control.up()
        fired = bool(seen.get("was_running") and seen.get("stopped"))
        return Outcome(fault, fired, f"Azurite at {fault.phase}: {seen or 'the phase never came'}", error, point_id)

    def _worker(self, fault: Fault) -> Outcome:
        from prefect import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.deployments import run_deployment
        from prefect.states import Crashed

        worker = self.lab_control.managed("worker")
        run = run_deployment("replicate-cycle/replicate", timeout=0, as_subflow=False,
                             parameters={"machines": [self.item], "site_path": self.site_path},
                             tags=["drbook", "chaos"])
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while (state := client.read_flow_run(run.id).state) is None or state.type != StateType.RUNNING:
                if (state and state.is_final()) or time.monotonic() > deadline:
                    return Outcome(fault, False, f"the cycle run never ran on the worker ({state and state.name})")
                time.sleep(0.2)
            time.sleep(fault.delay_s)
            pid = worker.pid()
            killed = _kill(descendants(pid) + [pid]) if pid else []
            state = client.read_flow_run(run.id).state
            if state is not None and not state.is_final():
                # Nothing reports a run whose worker host died (Prefect marks it only when a
                # heartbeat lapses): the operator's view says so, as the dispatcher's grace does.
                client.set_flow_run_state(run.id, Crashed(message="chaos: its worker was SIGKILLed"), force=True)
        self.lab_control.up()  # the lab starts its worker again, as a process server's supervisor would
        point_id = None
        if state is not None and state.type == StateType.COMPLETED:
            point_id = self.site.vault.item(self.item).last_point_id
        return Outcome(fault, bool(killed), f"killed the worker {pid} and its runs: {len(killed)} processes; "
                                            f"the cycle run was {state and state.name}", None, point_id)

    # -- the checker ------------------------------------------------------------------------

    def start(self) -> "Chaos":
        """Points made before the writer ran have no freeze instant in its log: left out."""
        self.tally.checked |= {p.id for p in self.site.engine.points.points(self.item)}
        return self

    def check(self) -> None:
        """Every point not checked yet: whole (its blocks match its manifest) and equal to the log at its freeze."""
        from lab.workload import paused_seq

        # A dead writer still answers a pause ("no writer running") with its last seq: the
        # comparison would hold trivially. It must be alive for every check.
        assert self.writer.proc.poll() is None, "the workload writer died: the byte comparisons would prove nothing"
        site = self.site
        existing = {p.id: p for p in site.engine.points.points(self.item)}
        for pid in sorted(self.tally.acknowledged - set(existing)):
            if pid not in self.tally.lost:
                self.tally.lost.append(pid)
        for pid, point in existing.items():
            if pid in self.tally.checked:
                continue
            self.tally.checked.add(pid)
            self.tally.points_checked += 1
            seq = next((s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None), None)
            if seq is None:
                self.tally.mismatches.append(f"{pid}: no freeze instant in its evidence")
                continue
            torn, mismatched = point_problems(site, self.item, point, lambda disk, seq=seq: self.writer.expected(disk, seq))
            self.tally.torn += torn
            self.tally.mismatches += mismatched


# -- the ARM emulator killed while a drill or failover runs (bench/bench_chaos.py) -------------

@dataclass
class ArmKill:
    """SIGKILL the ARM emulator `delay_s` into an operation, then start it again (its state is
    on disk, as Azure's is: a restart loses nothing that was answered). `evidence()` says
    whether it fired: the pid that was killed and the one that serves after."""

    lab_control: object  # lab.control.Lab
    delay_s: float
    result: dict = field(default_factory=dict)

    def start(self) -> "ArmKill":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        time.sleep(self.delay_s)
        arm = self.lab_control.managed("arm")
        pid = arm.pid()
        self.result["killed"] = _kill([pid]) if pid else []
        down_at = time.monotonic()
        self.lab_control.up()
        self.result["down_s"] = round(time.monotonic() - down_at, 1)
        self.result["new_pid"] = arm.pid()

    def evidence(self) -> tuple[bool, str]:
        self._thread.join(120)
        killed, new = self.result.get("killed"), self.result.get("new_pid")
        fired = bool(killed) and new is not None and new not in killed
        return fired, f"ARM emulator pid {killed} SIGKILLed {self.delay_s}s in, back as {new} after {self.result.get('down_s')}s"
