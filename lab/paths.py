"""Where the lab keeps its state: `.lab/` beside the checkout, or DRBOOK_LAB_DIR."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def lab_dir() -> Path:
    return Path(os.environ.get("DRBOOK_LAB_DIR") or REPO_ROOT / ".lab").resolve()
