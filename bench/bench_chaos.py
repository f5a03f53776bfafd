"""The chaos suite's long run: replication cycles struck by random faults, then drills under
ARM faults, on the lab. The short seeded version is tests/chaos/test_chaos.py.

    .venv/bin/python bench/bench_chaos.py [--cycles 100] [--seed 20261203] [--drills 6] [--failovers 4]
                                          [--machine app02]

Needs the lab up (`drbook-lab up`) and nothing else using it: the run kills Azurite, the
machine's sshd, the agent, the Prefect worker and the process server's cycles.

Cycles: `--cycles` replication cycles of one machine while the workload writer writes;
every other cycle is struck by a fault from the seeded plan (tests/chaos/faults.py: all
five kinds, every phase), the next one must make a point. Every point is checked once
when it appears (block by block against its manifest; byte for byte against the workload
log at its freeze instant) and every acknowledged point must still exist at the end.
Goal (issue 14): 0 torn points, 0 byte mismatches, 0 lost acknowledged points.

Drills and failovers: `--drills` unattended drills (scheduled-drill) and `--failovers`
approved failovers of the machine, each under a random ARM fault: a 429 with Retry-After,
a 500, a provisioning failure on a random operation, or the ARM emulator SIGKILLed at a
random moment and started again. Each completes or rolls back: a drill leaves nothing
tagged with its run and no resource group; a failover either succeeded (the item failed
over; the bench then undoes it through the product's rollback) or rolled back (the item
still protected, nothing of its run left); no point is lost. Every fault is proven to have
fired (its injected answer was given; the emulator's pid changed).
Goals: 0 leaked resources, 0 inconsistent outcomes, 0 points lost.

Prints one result line; writes bench/results/chaos.json (figures in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import lab_control as bench_lab, write_result  # noqa: E402

# What an ARM fault can hit during a drill or failover, and how.
ARM_OPERATIONS = ("Microsoft.Compute/disks/write", "Microsoft.Network/networkInterfaces/write",
                  "Microsoft.Compute/virtualMachines/write", "Microsoft.Resources/subscriptions/resourceGroups/write")  # ARM's operation names
ARM_FAULTS = ("throttle", "server_error", "fail_provisioning", "arm-kill")
FIELD = {"throttle": "throttle", "server_error": "serverError", "fail_provisioning": "failProvisioning"}


def arm_fault_plan(rng: random.Random, n: int) -> list[str]:
    """`n` ARM fault kinds: every kind once per round, each round shuffled."""
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(ARM_FAULTS, len(ARM_FAULTS))
    return out[:n]


def _arm_fault(arm, lab_control, rng: random.Random, kind: str, operations: tuple[str, ...]):  # noqa: ANN001, ANN202
    """Inject an ARM fault of `kind` (on one of `operations`); returns its label and a function
    that ends it and says whether it fired (an injected answer was given: its counter ran
    down; a kill: the emulator's pid changed)."""
    from tests.chaos.faults import ArmKill

    if kind == "arm-kill":
        killer = ArmKill(lab_control, round(rng.uniform(1.0, 12.0), 1)).start()
        return f"ARM emulator SIGKILLed +{killer.delay_s}s", killer.evidence
    operation = rng.choice(operations)
    if kind == "fail_provisioning":
        operation = "Microsoft.Compute/virtualMachines/write"  # only a VM provisions
    arm.inject_fault(operation, **({"throttle": 1, "retry_after": 1} if kind == "throttle" else {kind: 1}))

    def evidence() -> tuple[bool, str]:
        left = arm.faults().get(operation.lower(), {}).get(FIELD[kind])
        arm.clear_faults()
        return left == 0, f"{kind} on {operation}: {'answered' if left == 0 else 'never asked for'}"

    return f"{kind} on {operation}", evidence


def _drill_under_fault(site_path: str, machine: str, arm, lab_control, rng: random.Random, kind: str) -> dict:  # noqa: ANN001
    from drbook.adapters.azure import AzureClients
    from drbook.failover.build import resources_of_run
    from drbook.flows.drill import scheduled_drill_flow
    from drbook.models import DrillRecord
    from drbook.site import open_site
    from drbook.vault import DRILLS_PREFIX

    site = open_site(site_path)
    before = {d.drill_id for d in site.vault.list(DRILLS_PREFIX, DrillRecord)}
    label, ended = _arm_fault(arm, lab_control, rng, kind, ARM_OPERATIONS)
    error = None
    try:
        scheduled_drill_flow([machine], site_path=site_path)
    except Exception as exc:  # the drill may fail under the fault; what matters is what it left
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        fired, evidence = ended()
    drills = [d for d in site.vault.list(DRILLS_PREFIX, DrillRecord) if d.drill_id not in before]
    sdk = AzureClients(site.cfg.azure)
    leaked: list[str] = []
    for d in drills:
        run_id = d.report.get("flow_run_id", "")
        leaked += [r.id for r in resources_of_run(site.azure, run_id)] if run_id else []
        if sdk.resource.resource_groups.check_existence(d.resource_group):
            leaked.append(f"resource group {d.resource_group}")
    return {"fault": label, "fired": fired, "evidence": evidence, "completed": error is None, "error": error,
            "outcome": [d.status for d in drills], "leaked": leaked}


def _failover_under_fault(site_path: str, machine: str, arm, lab_control, rng: random.Random, kind: str) -> dict:  # noqa: ANN001
    """An approved failover under a fault: it completes (then the bench undoes it through the
    product's own rollback: the item back to protected, the run's resources swept) or it rolls
    back; either way, after it, nothing tagged with its run is left."""
    from drbook.approvals import answer
    from drbook.failover import outcome
    from drbook.failover.build import resources_of_run, sweep_run
    from drbook.flows.failover import failover_flow
    from drbook.models import FailoverRecord, ItemState
    from drbook.site import open_site
    from drbook.vault import failover_key
    from tests.lab_site import run_in_thread, wait_for_paused_run

    site = open_site(site_path)
    points_before = {p.id for p in site.engine.points.points(machine)}
    thread, out = run_in_thread(failover_flow, [machine], point="latest-processed", approval_timeout=120,
                                site_path=site_path)
    run_id = wait_for_paused_run([machine], site_path)
    # a failover builds in the site's resource group, which prepare-azure made: no group write
    label, ended = _arm_fault(arm, lab_control, rng, kind, ARM_OPERATIONS[:3])
    try:
        answer(run_id, approve=True, approver="bench-chaos", comment="chaos")
        thread.join(600)
    finally:
        fired, evidence = ended()
    status = site.vault.get(failover_key(run_id), FailoverRecord).status
    state = site.vault.item(machine).state
    # what the outcome must be: succeeded and failed over, or rolled back (or failed before
    # building anything) and still protected
    consistent = (status == "succeeded" and state == ItemState.FAILED_OVER) or \
                 (status in ("rolled-back", "failed") and state == ItemState.PROTECTED)
    left = resources_of_run(site.azure, run_id)
    leaked = [] if status == "succeeded" else [r.id for r in left]
    if status == "succeeded":
        outcome.roll_back(site.vault, machine, run_id)  # undo it for the next round
        sweep_run(site.azure, run_id)
        leaked += [f"after the bench's undo: {r.id}" for r in resources_of_run(site.azure, run_id)]
    lost = sorted(points_before - {p.id for p in site.engine.points.points(machine)})
    error = out.get("error")
    return {"fault": label, "fired": fired, "evidence": evidence, "completed": error is None,
            "error": error and f"{type(error).__name__}: {str(error)[:200]}", "outcome": [status, str(state)],
            "consistent": consistent, "leaked": leaked, "points_lost": lost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--drills", type=int, default=6)
    ap.add_argument("--failovers", type=int, default=4)
    ap.add_argument("--machine", default="app02")
    args = ap.parse_args()

    lab_control = bench_lab()
    from lab.arm.control import ArmLabControl

    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.flows.replication import enable_replication_flow
    from tests.chaos.faults import Chaos, plan
    from tests.conftest import make_site
    from tests.dispatcher_deployment import lab_schedules_paused
    from tests.lab_site import start_writer

    lab = lab_control.status()
    if not lab["up"]:
        raise SystemExit("the lab is not up: run `drbook-lab up`")
    work = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    site_path = make_site(lab, work)
    t_start = time.monotonic()
    with lab_schedules_paused():
        prepare_azure_flow(site_path=site_path)
        enable_replication_flow([args.machine], site_path=site_path)
        writer = start_writer(lab, args.machine, work, rate=2, seed=args.seed % 1000, seconds=24 * 3600)
        chaos = Chaos(site_path, args.machine, lab_control, writer).start()
        outcomes = []
        try:
            time.sleep(1)
            for i, fault in enumerate(plan(args.seed, args.cycles // 2)):
                outcome = chaos.strike(fault)
                outcomes.append(outcome)
                chaos.clean_cycle()
                chaos.check()
                print(f"{i + 1:3d} {fault.label():40s} fired={outcome.fired} "
                      f"{outcome.cycle_error or ('point ' + str(outcome.point_id))}"[:160], file=sys.stderr, flush=True)
            chaos.check()
        finally:
            writer.stop()
        cycles_s = time.monotonic() - t_start
        arm = ArmLabControl(lab["arm"]["base_url"], lab["ca_bundle"])
        rng = random.Random(args.seed)
        drills = []
        kinds = arm_fault_plan(rng, args.drills + args.failovers)
        for i in range(args.drills):
            drills.append(_drill_under_fault(site_path, args.machine, arm, lab_control, rng, kinds.pop(0)))
            print(f"drill {i + 1}: {drills[-1]['fault']}: fired={drills[-1]['fired']} "
                  f"completed={drills[-1]['completed']} leaked={len(drills[-1]['leaked'])}", file=sys.stderr, flush=True)
        failovers = []
        for i in range(args.failovers):
            failovers.append(_failover_under_fault(site_path, args.machine, arm, lab_control, rng, kinds.pop(0)))
            f = failovers[-1]
            print(f"failover {i + 1}: {f['fault']}: fired={f['fired']} outcome={f['outcome']} "
                  f"leaked={len(f['leaked'])} points lost={len(f['points_lost'])}", file=sys.stderr, flush=True)
    t = chaos.tally
    result = {
        "seed": args.seed, "machine": args.machine, **t.as_dict(),
        "not_fired": [o.fault.label() + ": " + o.evidence for o in outcomes if not o.fired],
        "struck_cycles_that_still_made_a_point": sum(1 for o in outcomes if o.point_id),
        "cycles_seconds": round(cycles_s, 1),
        "drills": drills, "drills_completed": sum(d["completed"] for d in drills),
        "drill_leaks": sum(len(d["leaked"]) for d in drills),
        "failovers": failovers, "failovers_completed": sum(f["completed"] for f in failovers),
        "failover_leaks": sum(len(f["leaked"]) for f in failovers),
        "failovers_inconsistent": sum(not f["consistent"] for f in failovers),
        "failover_points_lost": sum(len(f["points_lost"]) for f in failovers),
        "arm_faults_not_fired": [x["fault"] + ": " + x["evidence"] for x in drills + failovers if not x["fired"]],
    }
    write_result("chaos", result)
    print(f"chaos (seed {args.seed}): {t.cycles} cycles, {sum(t.faults.values())} faults {dict(t.faults)} "
          f"({sum(t.fired.values())} fired), {t.points_checked} points checked: {len(t.torn)} torn, "
          f"{len(t.mismatches)} mismatches, {len(t.lost)} lost; {len(drills)} drills under ARM faults: "
          f"{result['drills_completed']} completed, {result['drill_leaks']} leaked resources; {len(failovers)} failovers under "
          f"ARM faults: {result['failovers_completed']} completed, the rest rolled back, {result['failover_leaks']} "
          f"leaked, {result['failovers_inconsistent']} inconsistent, {result['failover_points_lost']} points lost; "
          f"{len(result['arm_faults_not_fired'])} ARM faults never asked for; {cycles_s:.0f}s of cycles")
    ok = not (t.torn or t.mismatches or t.lost or result["drill_leaks"] or result["not_fired"]
              or result["failover_leaks"] or result["failovers_inconsistent"] or result["failover_points_lost"]
              or result["arm_faults_not_fired"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
