"""What a cycle's read may honestly be called, from the agent's evidence. Pure.

    crash         the read was of one instant: every crash hook (the lab's pause, fsfreeze)
                  succeeded, the read ended before the thaw began, the freeze was not
                  released early, and (in a group) every member was frozen at the barrier
    app           all of that, and the application quiesce hooks succeeded too
    inconsistent  anything else: no crash hooks, a hook failed, the freeze broke
"""

from __future__ import annotations

from typing import Literal

Want = Literal["crash", "app"]


def hooks_for(machine, want: Want) -> dict[str, list[dict[str, str]]]:  # noqa: ANN001 - MachineConfig
    """The agent's freeze/thaw hook lists: app quiesce first, then the crash freeze; thaw
    in the reverse order."""
    freeze = [{"cmd": c, "kind": "crash"} for c in machine.crash_hooks]
    thaw = [{"cmd": c, "kind": "crash"} for c in machine.crash_thaw_hooks]
    if want == "app":
        freeze = [{"cmd": c, "kind": "app"} for c in machine.quiesce_hooks] + freeze
        thaw = thaw + [{"cmd": c, "kind": "app"} for c in machine.thaw_hooks]
    return {"freeze": freeze, "thaw": thaw}


def _line(phase: str, r: dict) -> str:
    out = " | ".join(x for x in ((r.get("out") or "").strip(), (r.get("err") or "").strip()) if x)
    rc = r.get("rc")
    return f"{phase} {r.get('kind') or 'hook'} `{r.get('cmd')}` rc={'timeout/failed' if rc is None else rc}" + (f": {out}" if out else "")


def judge(trailer: dict, want: Want, *, barrier: str | None = None) -> tuple[str, list[str]]:
    """(consistency, evidence lines). `barrier` is None outside a group, else "ok" or why
    the group's barrier did not hold."""
    freeze = trailer.get("freeze") or []
    crash = [r for r in freeze if r.get("kind") == "crash"]
    app = [r for r in freeze if r.get("kind") == "app"]
    evidence = [_line("freeze", r) for r in freeze] + [_line("thaw", r) for r in trailer.get("thaw") or []]
    problems = []
    if not crash:
        problems.append("no crash-consistency hook is configured, so the read was not of one instant")
    elif not all(r.get("rc") == 0 for r in crash):
        problems.append("a crash-consistency hook failed")
    if trailer.get("thawed_early"):
        problems.append("the freeze was released early (it outlived max_freeze)")
    read_ended, thaw_started = trailer.get("read_ended"), trailer.get("thaw_started")
    if read_ended is None or thaw_started is None or thaw_started < read_ended:
        problems.append("the thaw did not come after the end of the read")
    if not trailer.get("ok"):
        problems.append(f"the agent reported a failure: {trailer.get('error')}")
    if barrier is not None and barrier != "ok":
        problems.append(f"the group barrier did not hold: {barrier}")
    if barrier == "ok":
        evidence.append("group barrier: every member was frozen before any was read")
    if read_ended is not None and trailer.get("frozen_at") is not None and thaw_started is not None:
        evidence.append(
            f"frozen_at={trailer['frozen_at']:.6f} read_ended={read_ended:.6f} thaw_started={thaw_started:.6f} (agent clock)"
        )
    if problems:
        return "inconsistent", evidence + [f"inconsistent: {p}" for p in problems]
    if want == "app":
        if not app:
            return "crash", evidence + ["crash: app consistency wanted but the machine has no quiesce hooks"]
        if not all(r.get("rc") == 0 for r in app):
            return "crash", evidence + ["crash: an app quiesce hook failed"]
        return "app", evidence
    return "crash", evidence
