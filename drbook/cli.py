"""The `drbook` command line. Each command is a thin door into a flow or into drbook/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from drbook.errors import DRError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Disaster recovery to Azure, as Prefect runbooks.")
lab_app = typer.Typer(no_args_is_help=True, help="The lab: real services on this machine standing in for the outside world.")
app.add_typer(lab_app, name="lab")

console = Console(stderr=True)
out = Console()


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- lab --------------------------------------------------------------------------------
@lab_app.command("up")
def lab_up(spec: Optional[Path] = typer.Option(None, help="lab spec YAML (default: lab/spec.yaml)")) -> None:
    """Start every lab service that is not running (idempotent)."""
    from lab.control import Lab
    from lab.spec import load_spec

    lab = Lab(load_spec(spec) if spec else None)
    status = lab.up()
    _print_lab(status)


@lab_app.command("down")
def lab_down() -> None:
    """Stop the processes the lab started (by their pid files)."""
    from lab.control import Lab

    stopped = Lab().down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@lab_app.command("status")
def lab_status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """What the lab runs and how to reach it."""
    from lab.control import Lab

    status = Lab().status()
    if as_json:
        emit_json(status)
    else:
        _print_lab(status)


@lab_app.command("workload")
def lab_workload(
    machine: str,
    rate: float = typer.Option(5.0, help="MB/s written"),
    seconds: float = typer.Option(10.0, help="how long to write"),
    seed: int = typer.Option(1, help="seed of the written data"),
    background: bool = typer.Option(False, help="start it and return"),
) -> None:
    """Write random blocks to a lab machine's disks, logging every write."""
    from lab.control import Lab
    from lab.workload_control import start_workload

    result = start_workload(Lab(), machine, rate=rate, seconds=seconds, seed=seed, background=background)
    console.print(result)


def _print_lab(status: dict) -> None:
    table = Table(title=f"drbook lab ({status['lab_dir']})")
    table.add_column("service")
    table.add_column("running")
    table.add_column("where")
    where = {
        "azurite": status["azurite"]["blob_endpoint"],
        "arm": status["arm"]["base_url"],
        "vcenter": status["vcenter"]["url"],
        "prefect": status["prefect"]["ui_url"],
    }
    machines = {f"sshd-{m['name']}": f"{m['address']}:22 ({len(m['disks'])} disks)" for m in status["machines"]}
    for name, running in status["services"].items():
        table.add_row(name, "yes" if running else "[red]no[/red]", where.get(name) or machines.get(name, ""))
    out.print(table)


def main() -> None:
    try:
        app()
    except DRError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
