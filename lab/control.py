"""`drbook-lab up | down | status`: start, stop and describe the lab's real services.

`up` is idempotent: it starts what is not running (and what died) and leaves the rest.
`down` stops only processes the lab started (their pid files), never by name.
If `up` fails part-way, it stops what this call started, so nothing is left half-started.

Prefect's database is SQLite, or the lab's PostgreSQL (lab/postgres.py) with
`up(prefect_db="postgresql")`. `up()` without a choice keeps the database the lab ran last
(a caller restarting what died must not switch it); the CLI's `up` chooses SQLite unless told.
Switching restarts the Prefect server and the process servers, and registers the deployments
on the new database; going back to SQLite stops the lab's PostgreSQL (nothing else uses it;
its data stays for the next switch).

Process servers (spec `process_servers`): the first is the lab's worker, started by `up`; the
others start and stop on demand (`start_process_server`, `stop_process_server`, and
`kill_process_server`, which is its host dying).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Literal, get_args

import yaml

from drbook.config import ProcessServerConfig
from lab.errors import LabError
from lab.ca import LabCerts, ensure_certs
from lab.machines import SshKeys, ensure_client_key, ensure_machine, machine_status
from lab.paths import REPO_ROOT, lab_dir
from lab.postgres import PostgresCluster, bin_dir as postgres_bin_dir
from lab.procs import Managed, port_in_use, wait_for_port
from lab.spec import LabSpec, ProcessServerSpec, load_spec

HOST = "127.0.0.1"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft); not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VCENTER_USER = "administrator@vsphere.local"
WINRM_USER = "drbook"
WORKER_QUERY_SECONDS = 2
PrefectDatabase = Literal["sqlite", "postgresql"]
PREFECT_DATABASES: tuple[str, ...] = get_args(PrefectDatabase)
LAB_RETENTION_S = 86_400  # Prefect keeps a lab's flow runs and events for a day
GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "-mod=mod"}

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


class Lab:
    def __init__(self, spec: LabSpec | None = None, directory: Path | None = None, say: Log = _say) -> None:
        self.spec = spec or load_spec()
        self.dir = directory or lab_dir()
        self.run_dir = self.dir / "run"
        self.say = say
        self.postgres = PostgresCluster(self.dir / "postgres", self.spec.ports.postgres, self.run_dir,
                                        lambda name: self._secret_file(name, lambda: secrets.token_urlsafe(24)), say=say)

    # -- paths and secrets ------------------------------------------------------------
    @property
    def certs(self) -> LabCerts:
        return ensure_certs(self.dir / "ca")

    @property
    def secrets_dir(self) -> Path:
        d = self.dir / "secrets"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        return d

    def _secret_file(self, name: str, make: Callable[[], str]) -> Path:
        path = self.secrets_dir / name
        if not path.exists():
            path.write_text(make())
            path.chmod(0o600)
        return path

    @property
    def vcenter_password_file(self) -> Path:
        return self._secret_file("vcenter-password", lambda: secrets.token_urlsafe(18))

    @property
    def arm_token_file(self) -> Path:
        return self._secret_file("arm-token", lambda: secrets.token_urlsafe(24))

    @property
    def encryption_key_file(self) -> Path:
        return self._secret_file("encryption-key", lambda: secrets.token_hex(32))

    @property
    def azurite_key_file(self) -> Path:
        return self._secret_file("azurite-key", lambda: AZURITE_KEY)

    def managed(self, name: str) -> Managed:
        if name == self.postgres.managed.name:
            return self.postgres.managed  # stopped its own way (fast shutdown of the postmaster)
        return Managed(name, self.run_dir)

    # -- up / down -----------------------------------------------------------------------
    def up(self, prefect_db: PrefectDatabase | None = None) -> dict:
        """`prefect_db`: the Prefect server's database; None keeps the one the lab ran last."""
        if prefect_db is not None and prefect_db not in PREFECT_DATABASES:
            raise LabError(f"unknown Prefect database {prefect_db!r}: one of {', '.join(PREFECT_DATABASES)}")
        database = prefect_db or self.prefect_database()
        self.dir.mkdir(parents=True, exist_ok=True)
        started: list[Managed] = []
        t0 = time.monotonic()
        try:
            certs = self.certs
            self._preflight(database)
            self._up_azurite(certs, started)
            self._up_arm(certs, started)
            self._up_vcenter(certs, started)
            keys = ensure_client_key(self.dir / "ssh")
            self._up_machines(keys, started)
            if database == "postgresql":
                self.postgres.start(started)
            self._up_prefect(started, database)
            if database != "postgresql" and self.postgres.running():
                self.say("stopping postgres: Prefect is back on SQLite (its data stays)")
                self.postgres.stop()
            self._ensure_work_queues()
            self._up_workers(started)
            self._up_winrm(certs, started)
            self._up_webhook(certs, started)
            self._populate_vcenter(certs)
            status = self.status()
            self._write_site(status)
            self._write_env()
            self._register_deployments()
            self._ensure_alerts()
        except BaseException:
            for m in reversed(started):
                self.say(f"stopping {m.name} (lab up failed)")
                m.stop()
            raise
        self.say(f"up in {time.monotonic() - t0:.1f}s ({len(started)} started, the rest already running)")
        return status

    def down(self) -> list[str]:
        """Every service with a pid file: the process servers first (they talk to Prefect), the
        PostgreSQL under Prefect last."""
        stopped = []

        def order(pid_file: Path) -> tuple[int, str]:
            name = pid_file.stem
            return (0 if name.startswith("worker") else 2 if name == self.postgres.managed.name else 1, name)

        for pid_file in sorted(self.run_dir.glob("*.pid"), key=order):
            m = self.managed(pid_file.stem)
            if m.stop():
                stopped.append(m.name)
        return stopped

    def _preflight(self, database: PrefectDatabase) -> None:
        if database == "postgresql":
            postgres_bin_dir()  # a LabError naming `make setup-postgres` when PostgreSQL is not installed
        missing = []
        if not Path("/usr/sbin/sshd").exists():
            missing.append("openssh-server (Debian)")
        if not (REPO_ROOT / "lab" / "node_modules" / ".bin" / "azurite-blob").exists():
            missing.append("Azurite (npm ci in lab/)")
        if shutil.which("go") is None and not self.vcsim_binary.exists():
            missing.append("golang-go (Debian)")
        if missing:
            raise LabError("the lab needs " + ", ".join(missing) + ": run `make setup`")

    def _start(self, m: Managed, argv: list[str], port: int, started: list[Managed], *, host: str = HOST,
               env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        if m.running():
            return
        if m.pid_file.exists():
            # Our process died (crash): give the kernel a moment to release its port.
            deadline = time.monotonic() + 5
            while port_in_use(host, port) and time.monotonic() < deadline:
                time.sleep(0.05)
        if port_in_use(host, port):
            raise LabError(f"{m.name}: port {host}:{port} is already in use by a process the lab did not start")
        self.say(f"starting {m.name} on {host}:{port}")
        m.start(argv, env=env, cwd=self.dir)
        started.append(m)
        wait_for_port(m, host, port, timeout)

    def _up_azurite(self, certs: LabCerts, started: list[Managed]) -> None:
        data = self.dir / "azurite"
        data.mkdir(exist_ok=True)
        argv = [
            str(REPO_ROOT / "lab" / "node_modules" / ".bin" / "azurite-blob"),
            "--blobHost", HOST, "--blobPort", str(self.spec.ports.azurite),
            "--location", str(data), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
            "--cert", str(certs.server_cert), "--key", str(certs.server_key),
        ]
        self._start(self.managed("azurite"), argv, self.spec.ports.azurite, started)

    def _up_arm(self, certs: LabCerts, started: list[Managed]) -> None:
        argv = [
            sys.executable, "-m", "lab.arm",
            "--host", HOST, "--port", str(self.spec.ports.arm),
            "--cert", str(certs.server_cert), "--key", str(certs.server_key),
            "--state-dir", str(self.dir / "arm"),
            "--subscription-id", self.spec.arm.subscription_id, "--location", self.spec.arm.location,
            "--blob-endpoint", self.blob_endpoint, "--blob-account", AZURITE_ACCOUNT,
            "--blob-key", AZURITE_KEY, "--ca-bundle", str(certs.ca_cert),
        ]
        self._start(self.managed("arm"), argv, self.spec.ports.arm, started)

    @property
    def vcsim_binary(self) -> Path:
        return self.dir / "bin" / "vcsim"

    def build_vcsim(self) -> Path:
        source = REPO_ROOT / "lab" / "vcsim" / "main.go"
        binary = self.vcsim_binary
        if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
            return binary
        self.say("building vcsim from Debian's govmomi source (about 20 s, once)")
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **GO_ENV, "GOCACHE": str(self.dir / "gocache")}
        proc = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=source.parent, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"building vcsim failed:\n{proc.stderr[-2000:]}")
        return binary

    def _up_vcenter(self, certs: LabCerts, started: list[Managed]) -> None:
        m = self.managed("vcenter")
        if m.running():
            return
        binary = self.build_vcsim()
        argv = [
            str(binary), "-listen", f"{HOST}:{self.spec.ports.vcenter}",
            "-cert", str(certs.server_cert), "-key", str(certs.server_key),
            "-username", VCENTER_USER, "-password", str(self.vcenter_password_file),
        ]
        self._start(m, argv, self.spec.ports.vcenter, started)

    @property
    def winrm_password_file(self) -> Path:
        return self._secret_file("winrm-password", lambda: secrets.token_urlsafe(18))

    def _up_winrm(self, certs: LabCerts, started: list[Managed]) -> None:
        """A WS-Management responder standing in for a Windows machine (see lab/winrm/README.md)."""
        argv = [
            sys.executable, "-m", "lab.winrm", "--host", HOST, "--port", str(self.spec.ports.winrm),
            "--cert", str(certs.server_cert), "--key", str(certs.server_key),
            "--record", str(self.dir / "winrm" / "commands.jsonl"),
            "--user", WINRM_USER, "--password-file", str(self.winrm_password_file),
        ]
        (self.dir / "winrm").mkdir(exist_ok=True)
        self._start(self.managed("winrm"), argv, self.spec.ports.winrm, started)

    def _populate_vcenter(self, certs: LabCerts) -> None:
        from lab.vcenter import populate

        created = populate(self.vcenter_url, VCENTER_USER, self.vcenter_password_file.read_text().strip(),
                           str(certs.ca_cert), self.spec)
        if created:
            self.say(f"created VMs in vCenter: {', '.join(created)}")

    def _up_machines(self, keys: SshKeys, started: list[Managed]) -> None:
        for spec in self.spec.machines:
            m = self.managed(f"sshd-{spec.name}")
            was_running = m.running()
            ensure_machine(self.dir, spec, keys)
            if not was_running:
                self.say(f"started sshd for {spec.name} on {spec.address}:22")
                started.append(m)

    @property
    def _database_file(self) -> Path:
        return self.run_dir / "prefect-database"

    def prefect_database(self) -> PrefectDatabase:
        """The database the lab's Prefect server runs (or last ran) on; SQLite for a new lab."""
        try:
            name = self._database_file.read_text().strip()
        except OSError:
            return "sqlite"
        return "postgresql" if name == "postgresql" else "sqlite"

    def _prefect_database_url(self, database: PrefectDatabase) -> str:
        if database == "postgresql":
            return self.postgres.url  # no password in it: the server reads the pgpass file
        return f"sqlite+aiosqlite:///{self.dir / 'prefect' / 'prefect.db'}"

    def _up_prefect(self, started: list[Managed], database: PrefectDatabase) -> None:
        home = self.dir / "prefect"
        home.mkdir(exist_ok=True)
        env = {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": self._prefect_database_url(database),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(self.spec.ports.prefect),
            "PREFECT_UI_API_URL": self.prefect_api_url,
            # A lab that stays up keeps scheduling runs (replication every 30 s, the RPO monitor
            # every minute): without retention its SQLite grows until the server's services hold
            # the write lock past the 60 s busy timeout ("database is locked", 503s). A day is
            # plenty for a lab; Prefect's minimum for flow runs is an hour.
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(LAB_RETENTION_S),
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{LAB_RETENTION_S}S",  # ISO 8601: this setting reads no plain seconds
            # Runs are made ahead of their schedule (Prefect: up to 100, an hour at least). A lab
            # brought up again hours after its `down` found them all late: the worker submitted
            # ~250 at once, each cancelled by the deployment's concurrency limit, and the write
            # storm held SQLite's lock so long that `lab up` took over 8 minutes. A few minutes
            # ahead is enough: the scheduler tops them up every minute.
            "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "10",
            "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT300S",
        }
        # The server runs the alert automations' actions: its HTTPS calls to the lab's webhook
        # receiver must trust the lab CA (httpx reads SSL_CERT_FILE), besides the public roots.
        env["SSL_CERT_FILE"] = str(self._ca_bundle_with_public_roots())
        if database == "postgresql":
            env.update(self.postgres.client_env())
        env.pop("PREFECT_API_URL", None)
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(self.spec.ports.prefect)]
        m = self.managed("prefect")
        # The environment only: argv names whichever interpreter path ran `up` (the same venv).
        # A restarted server was running before this call: a later failure of `up` leaves it running.
        restarted = self._restart_if_changed(m, env)
        self._database_file.write_text(database + "\n")
        self._start(m, argv, self.spec.ports.prefect, [] if restarted else started, env={**env, "PREFECT_API_URL": ""},
                    timeout=90)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.prefect_api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise LabError(f"Prefect server did not become healthy; log: {m.log_file}")

    def _ca_bundle_with_public_roots(self) -> Path:
        """certifi's roots plus the lab CA, rewritten when either changes."""
        import certifi

        bundle = self.dir / "ca" / "bundle-with-public-roots.pem"
        content = Path(certifi.where()).read_bytes() + b"\n" + self.certs.ca_cert.read_bytes()
        if not bundle.exists() or bundle.read_bytes() != content:
            bundle.write_bytes(content)
        return bundle

    def _restart_if_changed(self, m: Managed, config: dict) -> bool:
        """A service started by an older `lab up` with another environment
        (e.g. before the server had to trust the lab CA) is restarted, so `up` is right
        without a `down` first. The config is remembered beside the pid file."""
        stamp = self.run_dir / f"{m.name}.config"
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        try:
            before = stamp.read_text().strip()
        except OSError:
            before = None
        restart = m.running() and before != digest
        if restart:
            self.say(f"restarting {m.name}: its environment changed")
            m.stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest + "\n")
        return restart

    def _up_webhook(self, certs: LabCerts, started: list[Managed]) -> None:
        """The alert webhook receiver (lab/webhook.py): records every POST it gets."""
        argv = [
            sys.executable, "-m", "lab.webhook", "--host", HOST, "--port", str(self.spec.ports.webhook),
            "--cert", str(certs.server_cert), "--key", str(certs.server_key), "--record", str(self.webhook_record),
        ]
        self._start(self.managed("webhook"), argv, self.spec.ports.webhook, started)

    @property
    def webhook_record(self) -> Path:
        return self.dir / "webhook" / "received.jsonl"

    def _ensure_alerts(self) -> None:
        """The RPO alert automations of the lab's site (drbook.alerts); redone on every `up`
        (cheap, idempotent) so a Prefect database that was reset gets them back. A failure is
        reported, not fatal."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from drbook.alerts import ensure_alerts
        from drbook.config import load_site
        from drbook.errors import DRError

        # Prefect reads its settings once, at import: set the server for this call explicitly
        # (without it, a client with no API URL would start a temporary server of its own).
        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api_url}):
            try:
                made = ensure_alerts(load_site(self.dir / "site.yaml"))
            except (DRError, OSError, ValueError) as exc:
                self.say(f"RPO alert automations not created: {exc}")
                return
        self.say(f"RPO alert automations: {', '.join(made) or 'none'}")

    # -- process servers -------------------------------------------------------------------
    def process_server(self, name: str) -> ProcessServerSpec:
        for ps in self.spec.process_servers:
            if ps.name == name:
                return ps
        raise LabError(f"no process server named {name!r} in the lab spec; known: "
                       f"{', '.join(ps.name for ps in self.spec.process_servers)}")

    @property
    def _lab_process_server(self) -> ProcessServerSpec:
        return self.spec.process_servers[0]

    def worker_managed(self, ps: ProcessServerSpec) -> Managed:
        """The first process server's worker keeps the name the lab's worker always had."""
        return self.managed("worker" if ps.name == self._lab_process_server.name else f"worker-{ps.name}")

    @staticmethod
    def _ps_config(ps: ProcessServerSpec) -> ProcessServerConfig:
        return ProcessServerConfig(name=ps.name, address=ps.address, runs_stages=ps.runs_stages)

    def _up_workers(self, started: list[Managed]) -> None:
        """The lab's process server; any other one running is restarted when its environment
        or the Prefect database changed (it would poll a server that no longer has its pool)."""
        self._start_worker(self._lab_process_server, started)
        for ps in self.spec.process_servers[1:]:
            if self.worker_managed(ps).running():
                self._start_worker(ps, started)

    def _start_worker(self, ps: ProcessServerSpec, started: list[Managed]) -> None:
        """A Prefect worker of drbook's process pool, started as drbook starts a process server
        (drbook.scaleout.worker); each run is a process of its own, with the lab's DRBOOK_SITE,
        PREFECT_API_URL and the process server's name."""
        from drbook.scaleout.worker import worker_argv, worker_env

        cfg = self._ps_config(ps)
        env = {
            **self.drbook_env(),
            **worker_env(cfg, environ={}),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Prefect's default is 10 s between polls: a Run click would wait 5 s on average.
            "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS),
            "PREFECT_WORKER_WEBSERVER_HOST": HOST,
            "PREFECT_WORKER_WEBSERVER_PORT": str(ps.health_port),
        }
        argv = worker_argv(cfg)
        m = self.worker_managed(ps)
        # argv[0] is whichever interpreter ran `up` (the same venv): not part of the config.
        restarted = self._restart_if_changed(m, {"env": env, "argv": argv[1:], "prefect_database": self.prefect_database()})
        self._start(m, argv, ps.health_port, [] if restarted else started, env=env, timeout=60)

    def _ensure_work_queues(self) -> None:
        """drbook's pool and every lab process server's work queue, as `drbook deploy` makes them
        (drbook.scaleout.queues). A worker told to poll a queue the pool lacks gets 404 for the
        whole poll: it would not run the `default` queue's runs either."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from drbook.deploy import POOL, ensure_pool
        from drbook.scaleout.queues import ensure_queues

        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api_url}):
            ensure_pool(POOL)
            for change in ensure_queues([self._ps_config(ps) for ps in self.spec.process_servers]):
                self.say(change)

    def start_process_server(self, name: str) -> dict:
        """Start a process server's worker (idempotent) and wait for its health port."""
        ps = self.process_server(name)
        if not self.managed("prefect").running():
            raise LabError(f"process server {name}: the lab's Prefect server is not running (drbook-lab up)")
        self._ensure_work_queues()
        self._start_worker(ps, [])
        return self.process_servers_status()[name]

    def stop_process_server(self, name: str) -> bool:
        """SIGTERM its worker (a graceful stop); False when it was not running."""
        return self.worker_managed(self.process_server(name)).stop()

    def kill_process_server(self, name: str) -> list[int]:
        """Its host dies: SIGKILL its worker and every process below it (its flow runs, each in a
        session of its own, and theirs). Returns the pids killed."""
        return self.worker_managed(self.process_server(name)).kill()

    def process_servers_status(self) -> dict[str, dict]:
        from drbook.scaleout.worker import worker_name

        out = {}
        for ps in self.spec.process_servers:
            cfg = self._ps_config(ps)
            out[ps.name] = {"running": self.worker_managed(ps).running(), "address": ps.address, "queue": cfg.queue,
                            "worker_name": worker_name(cfg), "health_url": f"http://{HOST}:{ps.health_port}/health"}
        return out

    @property
    def _deploy_stamp(self) -> Path:
        """One per database: each holds its own deployments (switching back to a database whose
        deployments predate a code change must register them again)."""
        return self.run_dir / f"deployments-{self.prefect_database()}.json"

    def _register_deployments(self) -> None:
        """`drbook deploy`, as a real site runs it; skipped when neither drbook's code nor the
        site changed and every deployment is still on the server (lab up runs per test session).
        A failure is reported, not fatal: the lab's other services stand on their own, and
        `drbook deploy` (or the deployment tests) show the same error."""
        from drbook.deploy import deploy, existing_deployments, prefect_yaml
        from drbook.errors import DeployError

        site = self.dir / "site.yaml"
        fingerprint = _code_fingerprint(prefect_yaml(), f"{site}|{self.prefect_api_url}")
        try:
            stamp = json.loads(self._deploy_stamp.read_text())
        except (OSError, ValueError):
            stamp = {}
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api_url}):
            try:
                if stamp.get("fingerprint") == fingerprint and set(stamp.get("deployments", [])) <= existing_deployments():
                    return
                t0 = time.monotonic()
                result = deploy(site, say=self.say)
            except DeployError as exc:
                self.say(f"deployments not registered: {exc}")
                return
        self._deploy_stamp.write_text(json.dumps({"fingerprint": fingerprint, "deployments": result.deployments}) + "\n")
        self.say(f"registered {len(result.deployments)} deployments in {time.monotonic() - t0:.1f}s")

    # -- status --------------------------------------------------------------------------
    @property
    def blob_endpoint(self) -> str:
        return f"https://{HOST}:{self.spec.ports.azurite}/{AZURITE_ACCOUNT}"

    @property
    def vcenter_url(self) -> str:
        return f"https://{HOST}:{self.spec.ports.vcenter}/sdk"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.spec.ports.prefect}/api"

    def services(self) -> dict[str, bool]:
        """What `up` runs (the postgres under Prefect when it is Prefect's database); the process
        servers started on demand are not part of it."""
        names = ["azurite", "arm", "vcenter", "prefect", "worker", "winrm", "webhook"] + [f"sshd-{m.name}" for m in self.spec.machines]
        if self.prefect_database() == "postgresql":
            names.insert(names.index("prefect"), self.postgres.managed.name)
        return {n: self.managed(n).running() for n in names}

    def status(self) -> dict:
        certs = self.certs
        keys = ensure_client_key(self.dir / "ssh")
        pw_file = self.vcenter_password_file
        process_servers = self.process_servers_status()
        return {
            "lab_dir": str(self.dir),
            "ca_bundle": str(certs.ca_cert),
            "up": all(self.services().values()),
            "services": self.services(),
            "vcenter": {
                "url": self.vcenter_url,
                "host": HOST,
                "port": self.spec.ports.vcenter,
                "user": VCENTER_USER,
                # a reference, never the value: `drbook-lab status --json` prints this
                "password_ref": f"file:{pw_file}",
            },
            "azurite": {
                "blob_endpoint": self.blob_endpoint,
                "account": AZURITE_ACCOUNT,
                "key": AZURITE_KEY,
                "connection_string": (
                    f"DefaultEndpointsProtocol=https;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                    f"BlobEndpoint={self.blob_endpoint};"
                ),
            },
            "arm": {
                "base_url": f"https://{HOST}:{self.spec.ports.arm}",
                "subscription_id": self.spec.arm.subscription_id,
                "location": self.spec.arm.location,
                "token_ref": f"file:{self.arm_token_file}",
            },
            "prefect": {"api_url": self.prefect_api_url, "ui_url": f"http://{HOST}:{self.spec.ports.prefect}",
                        "database": self.prefect_database(),
                        "database_url": self._prefect_database_url(self.prefect_database())},
            "worker": {"name": process_servers[self._lab_process_server.name]["worker_name"], "pool": "drbook-process-server",
                       "health_url": process_servers[self._lab_process_server.name]["health_url"]},
            "process_servers": process_servers,
            "webhook": {"url": f"https://{HOST}:{self.spec.ports.webhook}/alerts", "record": str(self.webhook_record)},
            "winrm": {
                "host": HOST, "port": self.spec.ports.winrm, "user": WINRM_USER,
                "password_ref": f"file:{self.winrm_password_file}",
                "record": str(self.dir / "winrm" / "commands.jsonl"),
            },
            "site_config": str(self.dir / "site.yaml"),
            "env_file": str(self.env_file),
            "machines": [machine_status(self.dir, m, keys) for m in self.spec.machines],
        }

    @property
    def env_file(self) -> Path:
        return self.dir / "drbook.env"

    def drbook_env(self) -> dict[str, str]:
        """What a user of a real site sets by hand: where the site config is, and Prefect's
        own PREFECT_API_URL. drbook reads nothing of the lab's."""
        return {"DRBOOK_SITE": str(self.dir / "site.yaml"), "PREFECT_API_URL": self.prefect_api_url}

    def _write_env(self) -> None:
        """`.lab/drbook.env`: KEY=value lines, for `set -a; . .lab/drbook.env` or `drbook-lab env`."""
        lines = "".join(f"{k}={shlex.quote(v)}\n" for k, v in self.drbook_env().items())
        tmp = self.env_file.with_suffix(".tmp")
        tmp.write_text("# written by `drbook-lab up`: points drbook at the lab\n" + lines)
        tmp.replace(self.env_file)

    def _write_site(self, status: dict) -> None:
        """The site config drbook uses when pointed at the lab (DRBOOK_SITE or the default)."""
        site = {
            "site": "lab",
            "vcenter": {
                "url": status["vcenter"]["url"],
                "user": status["vcenter"]["user"],
                "password": status["vcenter"]["password_ref"],
                "ca_bundle": status["ca_bundle"],
            },
            "azure": {
                "subscription_id": status["arm"]["subscription_id"],
                "resource_group": "drbook-lab-rg",
                "location": status["arm"]["location"],
                "arm_base_url": status["arm"]["base_url"],
                "storage_account": AZURITE_ACCOUNT,
                # One Azurite account for every site the lab serves (demo, tests): its own group.
                "storage_resource_group": "drbook-lab-storage",
                "blob_endpoint": status["azurite"]["blob_endpoint"],
                "storage_key": f"file:{self.azurite_key_file}",
                "credential": {"kind": "static-token", "token": status["arm"]["token_ref"]},
                "ca_bundle": status["ca_bundle"],
                "encryption_key": f"file:{self.encryption_key_file}",
            },
            "network_mapping": [
                {
                    "source_network": n.name,
                    "target_vnet": "drbook-prod-vnet",
                    "target_subnet": n.name,
                    "address_prefix": n.prefix,
                    "vnet_address_space": "10.10.0.0/16",
                }
                for n in self.spec.networks
            ],
            "machines": [
                {
                    "name": m["name"],
                    "vm_name": m["vm_name"],
                    "os": "linux",
                    "address": m["address"],
                    "port": 22,
                    "user": "root",
                    "key_file": m["key_file"],
                    "known_hosts": m["known_hosts"],
                    "agent_dir": m["agent_dir"],
                    "network": m["network"],
                    "ip": m["ip"],
                    "cpus": m["cpus"],
                    "memory_mb": m["memory_mb"],
                    "disks": [{"name": d["name"], "path": d["path"], "size_bytes": d["size_bytes"]} for d in m["disks"]],
                    "crash_hooks": [f"{sys.executable} -m lab.workload pause --control {self.dir / 'machines' / m['name'] / 'workload'}"],
                    "stop_hooks": [f"{sys.executable} -m lab.workload_control stop --control {self.dir / 'machines' / m['name'] / 'workload'}"],
                    "crash_thaw_hooks": [f"{sys.executable} -m lab.workload resume --control {self.dir / 'machines' / m['name'] / 'workload'}"],
                }
                for m in status["machines"]
            ],
            # The lab's default site has one process server, the lab's worker (ps2, ps3 start on demand).
            "process_servers": [{"name": self._lab_process_server.name, "address": self._lab_process_server.address}],
            # RPO alerts (drbook.alerts) go to the lab's webhook receiver.
            "alerts": {"webhook_url": status["webhook"]["url"]},
            # The lab's recovery plans are the project's plans/ folder (a real site keeps its own).
            "plans_dir": str(REPO_ROOT / "plans"),
            # A crash point a minute (ASR's default is five): `make demo` shows the worker's
            # scheduled replication make a point while it watches. Tests' sites copy this.
            "policies": [{"name": "default", "crash_frequency_minutes": 1, "rpo_threshold_minutes": 5}],
        }
        path = self.dir / "site.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(site, sort_keys=False))
        tmp.replace(path)


def _code_fingerprint(prefect_file: Path, extra: str) -> str:
    """What the registered deployments depend on: prefect.yaml and drbook's code (a flow's
    signature is its deployment's parameter schema)."""
    import drbook

    digest = hashlib.sha256(prefect_file.read_bytes() + extra.encode())
    roots = [Path(drbook.__file__).parent, *(Path(importlib.import_module(f"drbook.{p}").__file__).parent
                                             for p in ("flows", "tasks"))]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()
