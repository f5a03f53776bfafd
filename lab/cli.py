"""`drbook-lab`: the lab's own command (up, down, status, env, workload, process-server).

The lab is not drbook: it stands in for the outside world. `up` starts what is not
running and writes what a user of a real site writes by hand: a site config
(`.lab/site.yaml`) and an env file (`.lab/drbook.env`) with DRBOOK_SITE and Prefect's own
PREFECT_API_URL. `eval "$(drbook-lab env)"` puts them into a shell; drbook itself only
reads --site / $DRBOOK_SITE and Prefect's settings.

Exit codes: 0 done, 3 the lab could not be brought up (LabError), 2 bad arguments.
"""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from drbook.cli import run_cli

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="drbook's lab: real services on this machine standing in for the outside world.")
console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long
out = Console(width=None if sys.stdout.isatty() else 180)
process_server_app = typer.Typer(no_args_is_help=True, add_completion=False,
                                 help="The lab's process servers (lab/spec.yaml process_servers): `up` starts "
                                      "the first, the others start here.")
app.add_typer(process_server_app, name="process-server")


class PrefectDb(str, Enum):
    sqlite = "sqlite"
    postgresql = "postgresql"


@app.command("up")
def up(spec: Optional[Path] = typer.Option(None, help="lab spec YAML (default: lab/spec.yaml)"),
       prefect_db: PrefectDb = typer.Option(PrefectDb.sqlite, "--prefect-db",
                                            help="the Prefect server's database: SQLite, or the lab's own PostgreSQL; "
                                                 "switching restarts the Prefect server and the process servers")) -> None:
    """Start every lab service that is not running (idempotent); write the site config and env file."""
    from lab.control import Lab
    from lab.spec import load_spec

    lab = Lab(load_spec(spec) if spec else None)
    status = lab.up(prefect_db.value)
    print_status(status)
    console.print(f"site config: {status['site_config']}\nenv file:    {status['env_file']}  "
                  "(use it with: eval \"$(drbook-lab env)\")")


@app.command("down")
def down() -> None:
    """Stop the processes the lab started (by their pid files)."""
    from lab.control import Lab

    stopped = Lab().down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """What the lab runs and how to reach it."""
    from lab.control import Lab

    st = Lab().status()
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2, default=str) + "\n")
    else:
        print_status(st)


@app.command("env")
def env() -> None:
    """Shell lines that point drbook at the lab: eval "$(drbook-lab env)"."""
    from lab.control import Lab

    for key, value in Lab().drbook_env().items():
        sys.stdout.write(f"export {key}={shlex.quote(value)}\n")


@app.command("workload")
def workload(
    machine: str,
    rate: float = typer.Option(5.0, help="MB/s written"),
    seconds: float = typer.Option(10.0, help="how long to write"),
    seed: int = typer.Option(1, help="seed of the written data"),
    background: bool = typer.Option(False, help="start it and return"),
) -> None:
    """Write random blocks to a lab machine's disks, logging every write."""
    from lab.control import Lab
    from lab.workload_control import start_workload

    console.print(start_workload(Lab(), machine, rate=rate, seconds=seconds, seed=seed, background=background))


@process_server_app.command("start")
def process_server_start(name: str) -> None:
    """Start a process server's worker (idempotent); returns once its health port answers."""
    from lab.control import Lab

    st = Lab().start_process_server(name)
    console.print(f"process server {name} running: worker {st['worker_name']}, queue {st['queue']}, "
                  f"address {st['address']}, health {st['health_url']}")


@process_server_app.command("stop")
def process_server_stop(name: str) -> None:
    """Stop a process server's worker gracefully (SIGTERM)."""
    from lab.control import Lab

    stopped = Lab().stop_process_server(name)
    console.print(f"process server {name}: {'stopped' if stopped else 'was not running'}")


@process_server_app.command("kill")
def process_server_kill(name: str) -> None:
    """Its host dies: SIGKILL its worker and every process below it (its flow runs)."""
    from lab.control import Lab

    killed = Lab().kill_process_server(name)
    console.print(f"process server {name}: " + (f"killed {len(killed)} processes ({', '.join(map(str, killed))})"
                                                 if killed else "was not running"))


def print_status(status: dict) -> None:
    table = Table(title=f"drbook lab ({status['lab_dir']})")
    for col in ("service", "running", "where"):
        table.add_column(col)
    where = {
        "azurite": status["azurite"]["blob_endpoint"],
        "arm": status["arm"]["base_url"],
        "vcenter": status["vcenter"]["url"],
        "prefect": f"{status['prefect']['ui_url']} (database: {status['prefect']['database']})",
        "postgres": status["prefect"]["database_url"],
        "winrm": f"https://{status['winrm']['host']}:{status['winrm']['port']}/wsman (a stand-in for Windows)",
        "webhook": f"{status['webhook']['url']} (alert receiver, records to {status['webhook']['record']})",
    }
    machines = {f"sshd-{m['name']}": f"{m['address']}:22 ({len(m['disks'])} disks)" for m in status["machines"]}
    lab_ps = status["worker"]["name"]
    for name, running in status["services"].items():
        if name == "worker":
            ps = next(p for p in status["process_servers"].values() if p["worker_name"] == lab_ps)
            where[name] = f"{lab_ps}, queue {ps['queue']}, from {ps['address']}, health {ps['health_url']}"
        table.add_row(name, "yes" if running else "[red]no[/red]", where.get(name) or machines.get(name, ""))
    for name, ps in status["process_servers"].items():
        if ps["worker_name"] != lab_ps:  # on demand: `drbook-lab process-server start NAME`
            table.add_row(f"worker-{name}", "yes" if ps["running"] else "no (on demand)",
                          f"{ps['worker_name']}, queue {ps['queue']}, from {ps['address']}, health {ps['health_url']}")
    out.print(table)


def main() -> None:
    run_cli(app, console)


if __name__ == "__main__":
    main()
