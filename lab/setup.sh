#!/usr/bin/env bash
# Idempotent set-up of everything drbook and its lab need on a fresh Debian machine.
# Each step says what it does and skips itself when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: [%ss] %s\n' "$SECONDS" "$*" >&2; }

# `setup.sh --postgres` (`make setup-postgres`, run by `make test-postgres`): only PostgreSQL's
# server binaries, for the lab's Prefect server on PostgreSQL (`drbook-lab up --prefect-db
# postgresql`). The lab starts its own cluster with them (lab/postgres.py), never the system
# service that Debian's package may create and start.
if [ "${1:-}" = "--postgres" ]; then
  if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && getent passwd postgres >/dev/null; then
    say "PostgreSQL present ($(ls /usr/lib/postgresql | sort -n | tail -1))"
  else
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    say "installing Debian's PostgreSQL server (postgresql) for the lab's Prefect on PostgreSQL"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  exit 0
fi

# 1. Debian packages: sshd for the source machines, Go + govmomi source for vcsim, rsync
#    for the replication benchmark's peer, chromium for the browser tests (Playwright
#    drives Debian's build: its own browser download cannot work here).
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || need+=(golang-github-vmware-govmomi-dev)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  say "Debian packages present (openssh-server, golang-go, govmomi source, rsync, node, chromium)"
fi

# 2. The Python virtual environment with drbook and its dev dependencies.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.drbook-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ lab/pyproject.toml -nt "$stamp" ]; then
  say "installing drbook (editable) and its dependencies into .venv (pip)"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # The build backend's warnings (editable install, package-dir mapping) go to a log; a failure shows it.
  # --no-compile: Python compiles a module when it is first imported, and most of these
  # packages' modules never are (a fresh install took 93 s compiling everything, 53 s without).
  .venv/bin/pip install -q --no-compile -e ".[dev]" > .venv/pip-install.log 2>&1 || { cat .venv/pip-install.log; exit 1; }
  say "installing the lab (lab/, its own package: drbook-lab) into .venv (pip, editable)"
  .venv/bin/pip install -q --no-compile --no-deps -e lab >> .venv/pip-install.log 2>&1 || { cat .venv/pip-install.log; exit 1; }
  .venv/bin/python -c "import drbook, drbook.flows, drbook.tasks, lab.control, prefect, pyVmomi, azure.mgmt.compute"
  touch "$stamp"
else
  say ".venv up to date"
fi

# 3. Azurite (npm, pinned by lab/package-lock.json).
lockstamp=lab/node_modules/.drbook-installed
if [ ! -f "$lockstamp" ] || [ lab/package-lock.json -nt "$lockstamp" ]; then
  say "installing Azurite (npm ci in lab/)"
  (cd lab && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$lockstamp"
else
  say "Azurite installed"
fi

# 4. vcsim, built from Debian's govmomi source in GOPATH mode.
.venv/bin/python -c "from lab.control import Lab; Lab().build_vcsim()"
say "vcsim built"
