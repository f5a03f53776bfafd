"""200 concurrent flow runs against the Prefect server on SQLite and on PostgreSQL: run start
latency and failures ("database is locked" is a known SQLite failure under load).

    .venv/bin/python bench/bench_prefect_db.py [--runs 200] [--procs 4] [--tasks 3] [--logs 10]
        [--task-seconds 0.2] [--databases sqlite,postgresql] [--port 14300] [--pg-port 15433]
        [--pool-size N] [--max-overflow N] [--json] [--keep]

Never the lab's services: for each database in turn, a Prefect server of the bench's own
(`prefect server start` on 127.0.0.1:--port, a temporary PREFECT_HOME; for PostgreSQL a cluster
of its own on --pg-port, lab/postgres.py with another data directory), so it runs while the lab
is up. Both servers get the same settings (Prefect's defaults) but their database, plus
PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true: Prefect 3.8 answers a request that met SQLite's
"database is locked" with a 503 the client retries (2, 4, 8 ... s), and by default does not log
it, so without this setting a lock is seen only as latency. --pool-size and --max-overflow set
the servers' SQLAlchemy connection pool (Prefect's defaults: 5 and 10, a 30 s wait for a
connection, then a 500).

The load: --runs flow runs started at once, spread over --procs processes (each an asyncio loop
with a Prefect client per run, as if each run were a process of its own; the processes import
Prefect and open their clients first, then all start on one signal). Each run talks to the API
as a small drbook run does: the flow (upsert) and its run (Pending), Running, then --tasks task
runs one after another (created Pending, Running, --task-seconds of work, --logs log lines,
Completed), --logs flow log lines, Completed. Task runs go through the REST API: the same rows
the server's task-run recorder writes from a Prefect 3 engine's events, but synchronous, so a
write that fails is seen by its run. First, 10 s after the server answers, a warm-up of 5
runs one after another.

Measured per run: start latency (from the run's first request to its Running state accepted)
and its whole duration; per batch: the wall time (first request to last Completed), failed
runs (an exception or a state not accepted: type and message), the client's retries of 5xx/429
answers (Prefect's client retries up to 5 times), the "database is locked" lines in the
server's log during the batch, and the CPU seconds of the Prefect server and of PostgreSQL.

Prints a table (or the JSON with --json); writes bench/results/prefect_db-<time>.json and
prefect_db.json. Exit 0, 1 when a run failed, 2 when a port is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HOST = "127.0.0.1"
WARMUP_RUNS = 5
SETTLE_S = 10  # after the server answers: its services' first loops (start-up writes) are over
LOCKED = "database is locked"


# -- one process's share of the load ------------------------------------------------------------

# Answers Prefect's client retries (up to PREFECT_CLIENT_MAX_RETRIES times, 2, 4, 8 ... s apart).
RETRIED_CODES = {408, 429, 502, 503}


class _Answers:
    """The load's HTTP requests and their answers of 400 or more, by status (httpx hooks: they
    see each attempt, so the retried ones too). A request without an answer timed out (the
    client gives up after PREFECT_API_REQUEST_TIMEOUT, 60 s, and retries it)."""

    def __init__(self) -> None:
        self.requests = 0
        self.answers = 0
        self.by_status: dict[int, int] = {}
        self.example: dict[int, str] = {}  # a request that got it

    async def on_request(self, _request) -> None:
        self.requests += 1

    async def on_response(self, response) -> None:
        self.answers += 1
        if response.status_code >= 400:
            self.by_status[response.status_code] = self.by_status.get(response.status_code, 0) + 1
            self.example.setdefault(response.status_code, f"{response.request.method} {response.request.url.path}")

    def summary(self) -> dict:
        return {"requests": self.requests, "unanswered": self.requests - self.answers, "by_status": self.by_status,
                "example": self.example}


async def _one_run(api_url: str, flow, task, i: int, tasks: int, logs: int, task_seconds: float,
                   go: asyncio.Event, answers: _Answers) -> dict:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Pending, Running

    out: dict = {"run": i, "start_s": None, "total_s": None, "error": None, "calls": {}}

    async def call(kind: str, coro):
        t = time.perf_counter()
        try:
            return await coro
        finally:
            out["calls"].setdefault(kind, []).append(round(time.perf_counter() - t, 4))

    def accepted(result, what: str) -> None:
        if result.status.value != "ACCEPT":
            raise RuntimeError(f"{what}: {result.status.value} ({result.details})")

    def lines(flow_run_id, task_run_id, n: int, what: str) -> list[dict]:
        now = datetime.now(timezone.utc).isoformat()
        return [{"name": "bench", "level": 20, "message": f"{what} step {k}: a line as a drbook run logs it",
                 "timestamp": now, "flow_run_id": str(flow_run_id),
                 "task_run_id": str(task_run_id) if task_run_id else None} for k in range(n)]

    async with PrefectClient(api_url, httpx_settings={"event_hooks": {"request": [answers.on_request],
                                                                        "response": [answers.on_response]}}) as client:
        await go.wait()
        t0 = time.perf_counter()
        try:
            run = await call("create flow run", client.create_flow_run(flow, name=f"bench-{i}", state=Pending(),
                                                                       tags=["bench-prefect-db"]))
            accepted(await call("set flow state", client.set_flow_run_state(run.id, Running())), "flow Running")
            out["start_s"] = round(time.perf_counter() - t0, 4)
            for k in range(tasks):
                tr = await call("create task run", client.create_task_run(task, run.id, dynamic_key=str(k),
                                                                          state=Pending()))
                accepted(await call("set task state", client.set_task_run_state(tr.id, Running())), "task Running")
                await asyncio.sleep(task_seconds)
                await call("create logs", client.create_logs(lines(run.id, tr.id, logs, f"task {k}")))
                accepted(await call("set task state", client.set_task_run_state(tr.id, Completed())), "task Completed")
            await call("create logs", client.create_logs(lines(run.id, None, logs, "flow")))
            accepted(await call("set flow state", client.set_flow_run_state(run.id, Completed())), "flow Completed")
            final = await call("read flow run", client.read_flow_run(run.id))
            if final.state is None or final.state.type != StateType.COMPLETED:
                raise RuntimeError(f"the run ended {final.state and final.state.type}")
        except Exception as exc:  # every failure is the measurement: kept, named, counted
            out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        out["total_s"] = round(time.perf_counter() - t0, 4)
        out["ended_at"] = time.time()
        out["began_at"] = out["ended_at"] - out["total_s"]
    return out


async def _child_main(api_url: str, first: int, count: int, tasks: int, logs: int, task_seconds: float,
                      one_by_one: bool) -> dict:
    from prefect import flow as flow_decorator, task as task_decorator

    @flow_decorator(name="bench-prefect-db")
    def bench_flow() -> None:
        """Never called: its runs are made through the API."""

    @task_decorator(name="bench-step")
    def bench_task() -> None:
        """Never called."""

    go, answers = asyncio.Event(), _Answers()
    if one_by_one:  # the warm-up
        go.set()
        print("ready", flush=True)
        sys.stdin.readline()
        done = [await _one_run(api_url, bench_flow, bench_task, first + i, tasks, logs, task_seconds, go, answers)
                for i in range(count)]
        return {"runs": done, "http": answers.summary()}
    runs = [asyncio.create_task(_one_run(api_url, bench_flow, bench_task, first + i, tasks, logs, task_seconds, go,
                                         answers)) for i in range(count)]
    await asyncio.sleep(0.5)  # every client opened
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent's signal: all processes start at once
    go.set()
    return {"runs": await asyncio.gather(*runs), "http": answers.summary()}


def child(args: argparse.Namespace) -> int:
    result = asyncio.run(_child_main(args.api_url, args.first, args.count, args.tasks, args.logs, args.task_seconds,
                                     args.one_by_one))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


# -- the servers -----------------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """CPU of a process and all below it: each live process's own and its reaped children's."""
    from lab.procs import descendants

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def _start_prefect(work: Path, database: str, args: argparse.Namespace, pg, say):
    from lab.procs import Managed, port_in_use, wait_for_port

    home = work / f"prefect-{database}"
    home.mkdir()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(args.port),
        "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
        "PREFECT_API_URL": "",
        "PREFECT_API_DATABASE_CONNECTION_URL": (pg.url if database == "postgresql"
                                                else f"sqlite+aiosqlite:///{home / 'prefect.db'}"),
    }
    if database == "postgresql":
        env.update(pg.client_env())
    if args.pool_size is not None:
        env["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"] = str(args.pool_size)
    if args.max_overflow is not None:
        env["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"] = str(args.max_overflow)
    port = args.port
    m = Managed(f"bench-prefect-{database}", work / "run")
    if port_in_use(HOST, port):
        raise RuntimeError(f"port {HOST}:{port} is in use")
    say(f"starting a Prefect server on {database} at {HOST}:{port}")
    m.start([sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)], env=env, cwd=home)
    wait_for_port(m, HOST, port, 120)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return m
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on {database} did not become healthy; log: {m.log_file}") from None
            time.sleep(0.2)


def _batch(api_url: str, args: argparse.Namespace, first: int, runs: int, procs: int, *,
           one_by_one: bool = False) -> tuple[list[dict], dict]:
    """`runs` runs in `procs` processes, started on one signal (or, `one_by_one`, one after
    another); every run's result, and the clients' HTTP requests (how many, how many
    unanswered, answers of 400 or more by status)."""
    share = [runs // procs + (1 if k < runs % procs else 0) for k in range(procs)]
    children, start = [], first
    for count in share:
        argv = [sys.executable, __file__, "--child", "--api-url", api_url, "--first", str(start), "--count", str(count),
                "--tasks", str(args.tasks), "--logs", str(args.logs), "--task-seconds", str(args.task_seconds)]
        argv += ["--one-by-one"] if one_by_one else []
        children.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env={**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING"}))
        start += count
    for c in children:
        if c.stdout.readline().strip() != "ready":
            raise RuntimeError("a load process did not start (see its output above)")
    for c in children:
        c.stdin.write("go\n")
        c.stdin.flush()
    results: list[dict] = []
    http: dict = {"requests": 0, "unanswered": 0, "by_status": {}, "example": {}}
    for c in children:
        out, _ = c.communicate()
        if c.returncode != 0:
            raise RuntimeError(f"a load process exited {c.returncode}")
        doc = json.loads(out.strip().splitlines()[-1])
        results += doc["runs"]
        http["requests"] += doc["http"]["requests"]
        http["unanswered"] += doc["http"]["unanswered"]
        for code, n in doc["http"]["by_status"].items():
            http["by_status"][code] = http["by_status"].get(code, 0) + n
            http["example"].setdefault(code, doc["http"]["example"][code])
    return results, http


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3)

    return {"n": len(values), "median": round(statistics.median(values), 3), "p95": pct(0.95),
            "max": round(values[-1], 3), "mean": round(statistics.fmean(values), 3)}


def measure(database: str, work: Path, args: argparse.Namespace, say) -> dict:
    from lab.postgres import PostgresCluster

    pg = None
    if database == "postgresql":
        secrets_dir = work / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)

        def secret_file(name: str) -> Path:
            path = secrets_dir / name
            if not path.exists():
                path.touch(mode=0o600)
                path.write_text(secrets.token_urlsafe(24))
            return path

        pg = PostgresCluster(work / "postgres", args.pg_port, work / "run", secret_file, name="bench-postgres", say=say)
        pg.start()
    server = None
    try:
        server = _start_prefect(work, database, args, pg, say)
        api_url = f"http://{HOST}:{args.port}/api"
        time.sleep(SETTLE_S)
        say(f"warm-up: {WARMUP_RUNS} runs one after another")
        warm, _ = _batch(api_url, args, 0, WARMUP_RUNS, 1, one_by_one=True)
        if any(r["error"] for r in warm):
            raise RuntimeError(f"the warm-up failed: {next(r['error'] for r in warm if r['error'])}")
        log_offset = server.log_file.stat().st_size
        cpu0 = (_cpu_seconds(server.pid()), _cpu_seconds(pg.managed.pid()) if pg else 0.0)
        load_before = os.getloadavg()
        say(f"{args.runs} runs at once in {args.procs} processes")
        runs, http = _batch(api_url, args, WARMUP_RUNS, args.runs, args.procs)
        cpu1 = (_cpu_seconds(server.pid()), _cpu_seconds(pg.managed.pid()) if pg else 0.0)
        with open(server.log_file, "rb") as f:
            f.seek(log_offset)
            log = f.read().decode(errors="replace")
    finally:
        if server is not None:
            server.stop(timeout=30)
        if pg is not None:
            pg.stop()
    ok = [r for r in runs if not r["error"]]
    errors: dict[str, int] = {}
    for r in runs:
        if r["error"]:
            key = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", r["error"])[:160]
            errors[key] = errors.get(key, 0) + 1
    calls: dict[str, list[float]] = {}
    for r in runs:
        for kind, durations in r["calls"].items():
            calls.setdefault(kind, []).extend(durations)
    return {
        "database": database,
        "load_avg_before_after": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
        "runs": len(runs),
        "failed": len(runs) - len(ok),
        "errors": errors,
        "start_latency_s": _stats([r["start_s"] for r in runs if r["start_s"] is not None]),
        "run_duration_s": _stats([r["total_s"] for r in ok]),
        "wall_s": round(max(r["ended_at"] for r in runs) - min(r["began_at"] for r in runs), 2),
        "http": http,
        "retryable_answers": sum(n for code, n in http["by_status"].items() if int(code) in RETRIED_CODES),
        "database_locked": _locked_answers(log),
        "server_log_errors": sum(1 for line in log.splitlines() if "| ERROR" in line),
        "server_exceptions": _exceptions(log),
        "cpu_s": {"prefect_server": round(cpu1[0] - cpu0[0], 1), "postgres": round(cpu1[1] - cpu0[1], 1)},
        "api_calls_s": {kind: _stats(v) for kind, v in sorted(calls.items())},
    }


def _locked_answers(log: str) -> int:
    """Requests the server answered 503 because SQLite's database was locked: each is logged as
    one "Encountered retryable exception in request" with its traceback (which names the lock
    several times)."""
    marker = "Encountered retryable exception in request"
    return sum(1 for record in log.split(marker)[1:] if LOCKED in record.split("| ERROR", 1)[0])


def _exceptions(log: str) -> dict[str, int]:
    """The exceptions the server's tracebacks end with (`module.Error: message`), by their first
    120 characters: what a 500 or 503 was."""
    found: dict[str, int] = {}
    for line in log.splitlines():
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*: ", line):
            key = line[:120]
            found[key] = found.get(key, 0) + 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1])[:8])


def _table(results: list[dict], args: argparse.Namespace) -> str:
    rows = [("", *(r["database"] for r in results))]

    def add(label: str, fn) -> None:
        rows.append((label, *(fn(r) for r in results)))

    add("runs (failed)", lambda r: f"{r['runs']} ({r['failed']})")
    add("start latency median / p95 / max s", lambda r: "{median} / {p95} / {max}".format(**r["start_latency_s"])
        if r["start_latency_s"] else "-")
    add("run duration median / max s", lambda r: "{median} / {max}".format(**r["run_duration_s"]) if r["run_duration_s"] else "-")
    add("wall time s", lambda r: r["wall_s"])
    add("load average before / after", lambda r: f"{r['load_avg_before_after'][0][0]} / {r['load_avg_before_after'][1][0]}")
    add("HTTP requests (unanswered: timed out)", lambda r: f"{r['http']['requests']} ({r['http']['unanswered']})")
    add("answers the client retries (503 ...)", lambda r: r["retryable_answers"])
    add("503s for 'database is locked'", lambda r: r["database_locked"])
    add("ERROR lines in server log", lambda r: r["server_log_errors"])
    add("CPU s: Prefect server / PostgreSQL", lambda r: f"{r['cpu_s']['prefect_server']} / {r['cpu_s']['postgres']}")
    for kind in sorted({k for r in results for k in r["api_calls_s"]}):
        add(f"  {kind}: median / p95 / max s",
            lambda r, k=kind: "{median} / {p95} / {max}".format(**r["api_calls_s"][k]) if k in r["api_calls_s"] else "-")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{args.runs} runs at once ({args.procs} processes), {args.tasks} tasks of {args.task_seconds} s and "
             f"{args.logs} log lines each"]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in results:
        for error, n in r["errors"].items():
            lines.append(f"{r['database']}: {n} x {error}")
        for exc, n in r["server_exceptions"].items():
            lines.append(f"{r['database']} server log: {n} x {exc}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--procs", type=int, default=4, help="load processes the runs are spread over")
    ap.add_argument("--tasks", type=int, default=3, help="task runs per flow run")
    ap.add_argument("--logs", type=int, default=10, help="log lines per task run and per flow run")
    ap.add_argument("--task-seconds", type=float, default=0.2, help="each task's work (a sleep)")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--port", type=int, default=14300, help="the bench's Prefect server (one database at a time)")
    ap.add_argument("--pg-port", type=int, default=15433, help="the bench's PostgreSQL")
    ap.add_argument("--pool-size", type=int, help="the servers' SQLAlchemy pool size (default: Prefect's, 5)")
    ap.add_argument("--max-overflow", type=int, help="the servers' SQLAlchemy pool overflow (default: Prefect's, 10)")
    ap.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (servers' logs and data)")
    # a load process (internal)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--api-url", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--one-by-one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from bench_scan import write_result

    from lab.procs import port_in_use

    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if unknown := set(databases) - {"sqlite", "postgresql"}:
        ap.error(f"unknown databases: {', '.join(sorted(unknown))}")
    for port in (args.port, args.pg_port):
        if port_in_use(HOST, port):
            print(f"port {HOST}:{port} is in use: choose another with --port / --pg-port", file=sys.stderr)
            return 2

    def say(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-prefect-db-"))
    try:
        results = [measure(db, work, args, say) for db in databases]
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"benchmark": "prefect_db", "runs": args.runs, "procs": args.procs, "tasks": args.tasks, "logs": args.logs,
           "task_seconds": args.task_seconds, "pool_size": args.pool_size, "max_overflow": args.max_overflow, "load_avg_after": os.getloadavg(), "results": results}
    out = write_result("prefect_db", doc)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(_table(results, args))
        print(f"  written to {out}")
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
