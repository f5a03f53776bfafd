"""Run one replication cycle in a process of its own that SIGKILLs itself at a phase: a
process server that loses power exactly there (used by tests/test_e2e_crash.py).

    python -m tests.crash_cycle SITE_YAML ITEM PHASE
"""

from __future__ import annotations

import os
import signal
import sys

from drbook.replication.engine import ReplicationEngine
from drbook.site import open_site


def main(site_path: str, item: str, phase: str) -> None:
    site = open_site(site_path)

    def fault(at: str) -> None:
        if at == phase:
            os.kill(os.getpid(), signal.SIGKILL)

    engine = ReplicationEngine(site.cfg, site.vault, site.blob_service, site.shell_for, site.encryption_key, fault=fault)
    engine.run_cycle(item)
    sys.exit(3)  # the phase never came: the test fails on this exit code


if __name__ == "__main__":
    main(*sys.argv[1:4])
