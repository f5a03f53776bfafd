#!/usr/bin/env bash
# `make test`: every test on one lab, brought up once (and taken down after, unless it was
# up before or DRBOOK_KEEP_LAB=1), in two phases:
#   1. two pytest-xdist workers (--dist loadfile: a module's tests build on each other, so a
#      module stays on one worker) for every test not marked `serial`, the slowest modules
#      first (tests/conftest.py SLOW_FIRST);
#   2. alone, the tests marked `serial`: they kill, stop or inject faults into a shared lab
#      service (Azurite, an sshd, the ARM emulator) or write a lab machine's disk, which
#      test_e2e_continuous and test_e2e_rpo_alert (app02) and test_e2e_crash (app01) replicate
#      in phase 1.
# DRBOOK_TEST_WORKERS=1 runs everything in one pytest session instead.
# DRBOOK_LAB_PREFECT_DB=postgresql runs the lab's Prefect server on PostgreSQL (`make
# test-postgres`); the lab is then left as it was found: down, or up on its earlier database.
# Exit: 0 when both phases pass, else the first failing phase's pytest code (3: no lab).
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf 'test: [%ss] %s\n' "$SECONDS" "$*" >&2; }
PY=.venv/bin/python
WORKERS=${DRBOOK_TEST_WORKERS:-2}
DB=${DRBOOK_LAB_PREFECT_DB:-sqlite}

was=$(.venv/bin/drbook-lab status --json 2>/dev/null \
      | $PY -c 'import json, sys; s = json.load(sys.stdin); print(int(s["up"]), s["prefect"]["database"])' 2>/dev/null) \
  || was="0 sqlite"
read -r was_up was_db <<< "$was"
say "bringing the lab up (once, for every test; Prefect on $DB)"
.venv/bin/drbook-lab up --prefect-db "$DB" >/dev/null || { say "the lab did not come up (see above)"; exit 3; }
finish() {
  [ -n "${DRBOOK_KEEP_LAB:-}" ] && return
  if [ "$was_up" = 0 ]; then
    say "taking the lab down"
    .venv/bin/drbook-lab down >/dev/null
  elif [ "$was_db" != "$DB" ]; then
    say "putting the lab's Prefect server back on $was_db"
    .venv/bin/drbook-lab up --prefect-db "$was_db" >/dev/null
  fi
}
trap finish EXIT

if [ "$WORKERS" -le 1 ]; then
  say "running every test (pytest)"
  $PY -m pytest "$@"
  exit $?
fi
say "phase 1: $WORKERS workers (pytest -n $WORKERS --dist loadfile -m 'not serial'; slowest modules first)"
$PY -m pytest -n "$WORKERS" --dist loadfile --no-loadscope-reorder -m "not serial" "$@"
one=$?
say "phase 2: the serial tests, alone (pytest -m serial)"
$PY -m pytest -m serial "$@"
two=$?
say "phase 1 exit $one, phase 2 exit $two"
if [ "$one" -ne 0 ]; then exit "$one"; fi
exit "$two"
