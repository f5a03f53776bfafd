"""Running the agents of a cycle: start each over its machine's RemoteShell with the scan
request, receive every stream on a thread of its own, release a group's members together at
the barrier, and kill an agent that goes silent (the watchdog)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shlex
import threading
import time
from collections.abc import Callable

from drbook.adapters.shell import RemoteShell
from drbook.config import MachineConfig
from drbook.errors import DRError, ProtocolError, ReplicationError
from drbook.mobility import agent_path
from drbook.models import utcnow
from drbook.replication import protocol as p
from drbook.replication.consistency import Want, hooks_for
from drbook.replication.cycle import CycleSettings
from drbook.replication.staging import ItemRun

log = logging.getLogger("drbook.replication")


def run_agents(runs: list[ItemRun], want: Want, barrier: bool, settings: CycleSettings,
               shell_for: Callable[[MachineConfig], RemoteShell]) -> dt.datetime | None:
    """Run every run's agent to its trailer; with `barrier`, release them together and
    return the instant of the release (the group point's time)."""
    go_time = None
    for run in runs:
        _start_agent(run, want, barrier, settings, shell_for)
        run.last_activity = time.monotonic()
    threads = [threading.Thread(target=_receive, args=(run,), name=f"receive-{run.item.name}", daemon=True)
               for run in runs]
    for t in threads:
        t.start()
    stop_watch = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(runs, stop_watch, settings.idle_timeout), daemon=True,
                                name="agent-watchdog")
    watchdog.start()
    abort = None
    try:
        if barrier:
            go_time, abort = _barrier(runs, settings.barrier_timeout)
        for t in threads:
            t.join()
    finally:
        stop_watch.set()
    if abort is not None:
        raise ReplicationError(abort, retryable=True)
    for run in runs:
        if run.error is not None:
            raise run.error
    return go_time


def cycle_stats(runs: list[ItemRun]) -> dict:
    """Per item: the bytes its agent streamed and what each disk sent (for tests and benchmarks)."""
    return {
        run.item.name: {
            "stream_bytes": run.stream_bytes,
            "disks": {d.disk.name: {"changed": d.changed, "zero": d.zero_blocks, "bytes_sent": d.bytes_sent,
                                    "resync": d.resync, "direct": d.direct} for d in run.disks},
        }
        for run in runs
    }


def barrier_verdict(runs: list[ItemRun]) -> str:
    failed = [r.machine.name for r in runs if not (r.receiver.frozen or {}).get("ok")]
    return "ok" if not failed else f"the freeze hooks of {', '.join(failed)} failed"


def scan_header(run: ItemRun, want: Want, barrier: bool, s: CycleSettings) -> dict:
    """The scan request's header; its maps follow it (protocol.write_request)."""
    return {
        "disks": [d.request_disk() for d in run.disks],
        "block_size": s.block_size,
        "sub_block_size": s.sub_block_size if s.layout.sub_on else 0,
        "sub_hash_len": s.sub_hash_len,
        "sub_rebuild": any(d.sub_rebuild for d in run.disks),
        "hooks": hooks_for(run.machine, want),
        "hook_timeout": s.hook_timeout,
        "max_freeze": s.max_freeze,
        "barrier": barrier,
        # The agent gives up on the barrier later than we do, so our GO or ABORT always reaches it.
        "barrier_timeout": s.barrier_timeout * 2 + 30,
        "read_buffer": s.read_buffer,
        "threads": s.agent_threads,
        "bridge_gap": s.bridge_gap,
    }


def _start_agent(run: ItemRun, want: Want, barrier: bool, settings: CycleSettings,
                 shell_for: Callable[[MachineConfig], RemoteShell]) -> None:
    m = run.machine
    run.shell = shell_for(m)
    # python stays unquoted: a site may set it to a command line (e.g. "sudo -n python3").
    command = f"{m.python} {shlex.quote(agent_path(m))} scan"
    run.proc = run.shell.open_process(command)
    header = scan_header(run, want, barrier, settings)
    try:
        # The maps go a chunk at a time, straight from the old maps (a large disk's are in files).
        p.write_request(run.proc.stdin, header, [d.request_maps() for d in run.disks])
        run.proc.stdin.flush()
        if not barrier:
            run.proc.stdin.close()
    except Exception as exc:  # a pipe or channel that closed: the agent did not start
        raise ProtocolError(f"{m.name}: could not send the scan request ({type(exc).__name__}); "
                            f"agent stderr: {_stderr(run)}") from None


def _stderr(run: ItemRun) -> str:
    with contextlib.suppress(Exception):
        if run.proc is not None:
            run.proc.kill()
            return run.proc.stderr_text().strip()[-2000:] or "(empty)"
    return "(unavailable)"


def _receive(run: ItemRun) -> None:
    """Read frames until the trailer; record (not raise) the error for the caller."""
    try:
        reader = p.FrameReader(run.proc.stdout, layout=run.receiver.layout)
        done = False
        for kind, payload in reader:
            run.last_activity = time.monotonic()
            if run.receiver.handle(kind, payload):
                done = True
                break
        run.stream_bytes = reader.bytes
        run.writer.flush()
        run.direct_writer.flush()
        if not done:
            raise ProtocolError(f"{run.machine.name}: the agent's stream ended without a trailer; "
                                f"agent stderr: {_stderr(run)}")
        run.receiver.check_complete()
        try:
            run.proc.wait(timeout=30)
        except DRError:
            pass
    except BaseException as exc:  # noqa: BLE001 - handed to the coordinating thread
        run.error = exc
    finally:
        run.receiver.frozen_event.set()


def _watch(runs: list[ItemRun], stop: threading.Event, idle_timeout: float) -> None:
    """Kill an agent that sends nothing for idle_timeout (a hung hook or source), so a
    cycle fails instead of hanging; the agent's own watchdog thaws its machine."""
    while not stop.wait(1.0):
        for run in runs:
            if run.error is None and run.receiver.trailer is None and \
                    time.monotonic() - run.last_activity > idle_timeout and run.proc is not None:
                log.error("%s: no data from the agent for %ss; killing it", run.machine.name, idle_timeout)
                with contextlib.suppress(Exception):
                    run.proc.kill()


def _barrier(runs: list[ItemRun], timeout: float) -> tuple[dt.datetime, str | None]:
    """Freeze every member, then let all read at once: the group's one instant."""
    deadline = time.monotonic() + timeout
    for run in runs:
        run.receiver.frozen_event.wait(max(0.0, deadline - time.monotonic()))
    frozen = all(r.receiver.frozen is not None and r.error is None for r in runs)
    signal = p.GO if frozen else p.ABORT
    go_time = utcnow()
    for run in runs:
        with contextlib.suppress(Exception):
            run.proc.stdin.write(signal)
            run.proc.stdin.flush()
            run.proc.stdin.close()
    if frozen:
        return go_time, None
    why = [f"{r.machine.name}: {r.error}" if r.error is not None else f"{r.machine.name}: not frozen within "
           f"{timeout:g}s" for r in runs if r.receiver.frozen is None or r.error is not None]
    return go_time, "group barrier aborted, every member thawed: " + "; ".join(why)
