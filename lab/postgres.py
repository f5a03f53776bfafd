"""A PostgreSQL cluster the lab runs for Prefect (`drbook-lab up --prefect-db postgresql`), and
that bench/bench_prefect_db.py runs on a port of its own.

Debian's server binaries (`/usr/lib/postgresql/<major>/bin`), started directly, never the
system service: data under `<root>/data`, TCP on 127.0.0.1 only, no Unix socket. initdb and
postgres refuse to run as root: as root they run as the `postgres` system user (setpriv execs,
so the pid file holds the postmaster's own pid), which must own the data directory and be
able to reach it.

Authentication is SCRAM with passwords, not trust: the machine is shared with other
engineers' sessions, and under trust any local process could write this Prefect database.
The superuser's password (set at initdb) and the `prefect` role's live in the lab's secrets
directory; the role's password is set from its SCRAM verifier, made here, so the password
itself never reaches the server (nor its log). Clients find the `prefect` password in a pgpass
file (PGPASSFILE, read by asyncpg), so it is in no URL, argv or environment.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable

from lab.errors import LabError
from lab.procs import Managed, port_in_use, wait_for_port

HOST = "127.0.0.1"
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
ROLE = "prefect"
DATABASE = "prefect"
PG_ROOT = Path("/usr/lib/postgresql")

Say = Callable[[str], None]
# (secret name) -> the path of a private file holding a random value, made once.
SecretFile = Callable[[str], Path]


def bin_dir() -> Path:
    """The newest installed PostgreSQL major version's server binaries."""
    majors = sorted(int(d.name) for d in PG_ROOT.glob("*") if d.name.isdigit() and (d / "bin" / "postgres").exists())
    if not majors:
        raise LabError(f"PostgreSQL is not installed (no {PG_ROOT}/<version>/bin/postgres): "
                       "run `make setup-postgres` (Debian package postgresql)")
    return PG_ROOT / str(majors[-1]) / "bin"


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677); ALTER ROLE
    accepts it in place of the password."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


class PostgresCluster:
    """A cluster of its own under `root` on 127.0.0.1:`port`, with role and database `prefect`."""

    def __init__(self, root: Path, port: int, run_dir: Path, secret_file: SecretFile, *, name: str = "postgres",
                 say: Say = lambda _m: None, max_connections: int = 100) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.secret_file = secret_file
        self.say = say
        self.max_connections = max_connections
        # SIGINT is PostgreSQL's fast shutdown, to the postmaster alone: it ends its own children
        # (SIGTERM to the whole group would be a smart shutdown racing its children's own exits).
        self.managed = Managed(name, run_dir, stop_signal=signal.SIGINT, whole_group=False)

    # -- what clients use ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy's URL for Prefect; no password: asyncpg reads it from `pgpass_file`."""
        return f"postgresql+asyncpg://{ROLE}@{HOST}:{self.port}/{DATABASE}"

    @property
    def password_file(self) -> Path:
        return self.secret_file(f"{self.managed.name}-{ROLE}-password")

    @property
    def pgpass_file(self) -> Path:
        """host:port:database:user:password, private (asyncpg and libpq ignore a readable one)."""
        password = self.password_file.read_text().strip()
        path = self.password_file.with_name(f"{self.managed.name}-{ROLE}.pgpass")
        line = f"{HOST}:{self.port}:{DATABASE}:{ROLE}:{password}\n"
        if not path.exists() or path.read_text() != line:
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(line)
        return path

    def client_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.pgpass_file)}

    # -- start / stop --------------------------------------------------------------------
    def running(self) -> bool:
        return self.managed.running()

    def start(self, started: list[Managed] | None = None, timeout: float = 60.0) -> None:
        """Idempotent: initdb once, start the server when it is not running, then make sure role
        and database exist with the password of the secrets directory."""
        m = self.managed
        if not m.running():
            binaries = bin_dir()
            self._initdb(binaries)
            self._write_hba()
            if m.pid_file.exists():  # it died: give the kernel a moment to release its port
                deadline = time.monotonic() + 5
                while port_in_use(HOST, self.port) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if port_in_use(HOST, self.port):
                raise LabError(f"{m.name}: port {HOST}:{self.port} is already in use by a process the lab did not start")
            argv = self._as_owner([
                str(binaries / "postgres"), "-D", str(self.data),
                "-c", f"listen_addresses={HOST}", "-c", f"port={self.port}",
                "-c", "unix_socket_directories=",  # TCP only: a socket path would depend on the lab dir's length
                "-c", f"max_connections={self.max_connections}",
                "-c", "log_min_messages=warning",
            ])
            self.say(f"starting {m.name} (PostgreSQL {binaries.parent.name}) on {HOST}:{self.port}")
            m.start(argv, cwd=self.root)
            if started is not None:
                started.append(m)
            wait_for_port(m, HOST, self.port, timeout)
        asyncio.run(self._ensure_role_and_database(timeout))

    def stop(self) -> bool:
        return self.managed.stop(timeout=30)

    # -- setup ----------------------------------------------------------------------------
    def _owner(self) -> pwd.struct_passwd | None:
        """The system user the server runs as when we are root; None: as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise LabError(f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} system user to run it as: "
                           "run `make setup-postgres` (Debian's package postgresql creates it)") from None

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._owner() is None:
            return argv
        return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--", *argv]

    def _initdb(self, binaries: Path) -> None:
        version = self.data / "PG_VERSION"
        if version.exists():
            if version.read_text().strip() != binaries.parent.name:
                raise LabError(f"{self.data} holds a PostgreSQL {version.read_text().strip()} cluster, the installed "
                               f"server is {binaries.parent.name}: remove {self.root} to make a new one")
            return
        owner = self._owner()
        if self.data.exists():
            shutil.rmtree(self.data)  # an earlier initdb of ours that did not finish
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(mode=0o700)
        pwfile = self.root / "initdb-password"
        pwfile.touch(mode=0o600)
        try:
            pwfile.write_text(self._superuser_password() + "\n")
            if owner is not None:
                self._reachable_by(owner, self.root)
                os.chown(self.data, owner.pw_uid, owner.pw_gid)
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            self.say(f"creating a PostgreSQL {binaries.parent.name} cluster in {self.data} (initdb)")
            proc = subprocess.run(self._as_owner([
                str(binaries / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-instructions",
            ]), capture_output=True, text=True, cwd=self.root)
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise LabError(f"initdb failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")

    def _reachable_by(self, owner: pwd.struct_passwd, path: Path) -> None:
        """Every directory above the data directory must let the system user through (x for
        others): a 0700 parent (a home, a pytest tmp dir) gets o+x, never read."""
        for parent in reversed(path.resolve().parents):
            self._traversable(owner, parent)
        self._traversable(owner, path.resolve())

    def _traversable(self, owner: pwd.struct_passwd, d: Path) -> None:
        st = d.stat()
        if st.st_uid == owner.pw_uid or st.st_mode & stat.S_IXOTH:
            return
        if st.st_gid == owner.pw_gid and st.st_mode & stat.S_IXGRP:
            return
        self.say(f"letting {SYSTEM_USER} through {d} (chmod o+x) to reach the PostgreSQL data")
        d.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

    def _write_hba(self) -> None:
        """Password (SCRAM) connections over TCP from this host only; no other entry."""
        hba = self.data / "pg_hba.conf"
        text = ("# written by lab/postgres.py: SCRAM passwords, TCP from 127.0.0.1 only (no Unix socket)\n"
                f"host all all {HOST}/32 scram-sha-256\n")
        if hba.read_text() != text:
            hba.write_text(text)

    def _superuser_password(self) -> str:
        return self.secret_file(f"{self.managed.name}-superuser-password").read_text().strip()

    async def _ensure_role_and_database(self, timeout: float) -> None:
        import asyncpg

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(host=HOST, port=self.port, user=SUPERUSER, database="postgres",
                                             password=self._superuser_password(), timeout=5)
                break
            except (asyncpg.CannotConnectNowError, OSError, asyncio.TimeoutError) as exc:  # starting up
                if time.monotonic() > deadline:
                    raise LabError(f"{self.managed.name} on {HOST}:{self.port} did not accept connections within "
                                   f"{timeout:.0f}s ({type(exc).__name__}); log: {self.managed.log_file}") from None
                await asyncio.sleep(0.2)
            except asyncpg.InvalidPasswordError:
                raise LabError(f"{self.managed.name}: the superuser password in the secrets directory does not open "
                               f"the cluster in {self.data} (made with another one): remove {self.root} to start "
                               "over") from None
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE):
                await conn.execute(f"CREATE ROLE {ROLE} LOGIN")
            verifier = scram_verifier(self.password_file.read_text().strip())
            # Utility statements take no parameters: quoted by the server (format %L).
            await conn.execute(await conn.fetchval("SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                                                   ROLE, verifier))
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                self.say(f"creating database {DATABASE} (owner {ROLE})")
                await conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        finally:
            await conn.close()
