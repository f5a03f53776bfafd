"""Run many `drbook` command lines as processes of their own, fast: this driver imports
drbook's CLI once, then forks one child per command line, all at once. Each child is what
`python -m drbook.cli ARGV` is after its imports: its own environment, working directory,
stdout and stderr, and its exit status is the process's (SystemExit's code; a traceback
and 1 for an uncaught exception). Used by tests/test_cli_corpus.py, which also checks two
cases against a real `python -m drbook.cli` to hold the two paths equal.

    python -m tests.cli_corpus_driver < cases.json > outcomes.json
    cases: [{"argv": [...], "env": {...}, "cwd": "...", "timeout": seconds}]
    outcomes: [{"code": int | null, "stdout": "...", "stderr": "..."}]  (null: killed at its timeout)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _child(case: dict, out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        os.chdir(case["cwd"])
        os.environ.clear()
        os.environ.update(case["env"])
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stderr = os.fdopen(2, "w", closefd=False)
        import drbook.cli
        from drbook.cli import main

        # as `python -m drbook.cli` starts it (click names the program from these)
        sys.argv = [drbook.cli.__file__, *case["argv"]]
        sys.modules["__main__"].__package__ = "drbook"

        try:
            main()
            code = 0
        except SystemExit as exc:  # what the interpreter does with it
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def run(cases: list[dict]) -> list[dict]:
    import drbook.cli  # noqa: F401 - imported once, before the forks

    assert drbook.cli.main

    files, pids = [], []
    for case in cases:
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        pid = os.fork()
        if pid == 0:
            _child(case, out.fileno(), err.fileno())
        files.append((out, err))
        pids.append(pid)
    deadline = {pid: time.monotonic() + case.get("timeout", 60) for pid, case in zip(pids, cases)}
    status: dict[int, int | None] = {}
    while len(status) < len(pids):
        for pid in pids:
            if pid in status:
                continue
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status[pid] = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline[pid]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status[pid] = None
        time.sleep(0.01)
    outcomes = []
    for pid, (out, err) in zip(pids, files):
        out.seek(0)
        err.seek(0)
        outcomes.append({"code": status[pid], "stdout": out.read().decode(errors="replace"),
                         "stderr": err.read().decode(errors="replace")})
    return outcomes


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
