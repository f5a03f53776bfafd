"""Which process server this process is, and how a process server's worker is started.

A process server is a Prefect worker of drbook's pool started with DRBOOK_PROCESS_SERVER set
to its name (`drbook process-server start NAME` does both). Every flow run it starts inherits
that environment, so a cycle knows whose spool, settings and source address to use."""

from __future__ import annotations

import os
import sys

from drbook.config import ProcessServerConfig, SiteConfig
from drbook.deploy import POOL, POOL_TYPE
from drbook.errors import ConfigError

ENV = "DRBOOK_PROCESS_SERVER"
STAGES_QUEUE = "default"


def current_name() -> str | None:
    return os.environ.get(ENV) or None


def current_process_server(cfg: SiteConfig) -> ProcessServerConfig:
    """The process server this process runs on: the one DRBOOK_PROCESS_SERVER names, else the
    site's first. A name the site does not list (a worker serving several sites) runs with the
    first one's settings: the knobs are the site's, the name only says who ran it."""
    name = current_name()
    return next((ps for ps in cfg.process_servers if ps.name == name), cfg.process_servers[0])


def process_server(cfg: SiteConfig, name: str) -> ProcessServerConfig:
    for ps in cfg.process_servers:
        if ps.name == name:
            return ps
    raise ConfigError(f"no process server named {name!r} in site {cfg.site!r}; "
                      f"known: {', '.join(ps.name for ps in cfg.process_servers)}")


def worker_name(ps: ProcessServerConfig) -> str:
    return f"drbook-{ps.name}"


def worker_queues(ps: ProcessServerConfig) -> list[str]:
    """Its own queue (its machines' scheduled cycles), then `default` when it runs the stages."""
    return [ps.queue] + ([STAGES_QUEUE] if ps.runs_stages and ps.queue != STAGES_QUEUE else [])


def worker_argv(ps: ProcessServerConfig, *, healthcheck: bool = True, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", POOL_TYPE,
            "--name", worker_name(ps)]
    for queue in worker_queues(ps):
        argv += ["--work-queue", queue]
    return argv + (["--with-healthcheck"] if healthcheck else [])


# Its heartbeat is one of the two signs of life drbook.scaleout.queues reads: every 10 s, not
# Prefect's 30, so a takeover threshold of a minute sees several.
HEARTBEAT_S = "10"


def worker_env(ps: ProcessServerConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the worker (and so every run it starts) needs besides DRBOOK_SITE and PREFECT_API_URL;
    a heartbeat interval already set in `environ` is kept."""
    env = {ENV: ps.name}
    if "PREFECT_WORKER_HEARTBEAT_SECONDS" not in (os.environ if environ is None else environ):
        env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = HEARTBEAT_S
    return env
