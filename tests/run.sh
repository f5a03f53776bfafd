#!/usr/bin/env bash
# `make test`: every test, in two phases on one lab.
#   1. two pytest-xdist workers: the unit tests and the lab tests that share the lab safely
#      (a module stays on one worker; modules whose workload writers use one machine share a
#      group: tests/conftest.py).
#   2. alone: the tests marked `serial`, which kill, stop or inject faults into a shared lab
#      service (Azurite, an sshd, the ARM emulator).
# The lab comes up once for both (and goes down after, unless it was up before or
# DRBOOK_KEEP_LAB=1). Exit: 0 when both phases pass, else the first failing phase's pytest code.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf 'test: %s\n' "$*" >&2; }
PY=.venv/bin/python
WORKERS=${DRBOOK_TEST_WORKERS:-2}

was_up=0
.venv/bin/drbook-lab status --json 2>/dev/null | $PY -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["up"] else 1)' && was_up=1
say "bringing the lab up (once, for both phases)"
.venv/bin/drbook-lab up >/dev/null || { say "the lab did not come up (see above)"; exit 3; }
finish() {
  if [ "$was_up" = 0 ] && [ -z "${DRBOOK_KEEP_LAB:-}" ]; then
    say "taking the lab down"
    .venv/bin/drbook-lab down >/dev/null
  fi
}
trap finish EXIT

say "phase 1: $WORKERS workers (pytest -n $WORKERS --dist loadgroup -m 'not serial')"
$PY -m pytest -n "$WORKERS" --dist loadgroup -m "not serial" "$@"
one=$?
say "phase 2: the serial tests, alone (pytest -m serial)"
$PY -m pytest -m serial "$@"
two=$?
if [ "$one" -ne 0 ]; then exit "$one"; fi
exit "$two"
