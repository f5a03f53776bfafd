"""The lab's own error: it could not be brought up, or is not up. Outside drbook's tree
(drbook never imports the lab), but a DRError so the CLIs report it the same way."""

from __future__ import annotations

from drbook.errors import DRError


class LabError(DRError):
    exit_code = 3
