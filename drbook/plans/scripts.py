"""A plan's script as it is sent (pure): Azure's run command answers with the script's
output but not its exit status, so the script is wrapped to print it last, and the run reads
it back. No status line in the output: the script did not run to its end, a failure."""

from __future__ import annotations

import re

from pydantic import BaseModel

MARK = "drbook-exit-status="
_STATUS = re.compile(rf"^{MARK}(-?\d+)\s*$", re.M)
_HEREDOC = "DRBOOK_PLAN_SCRIPT_END"


def wrap(script: str, os: str) -> str:
    """The script to hand to run command, printing its exit status last."""
    if os == "windows":
        body = script.replace("'@", "' @")  # a here-string ends at '@ at a line start
        return f"$s = @'\n{body}\n'@\n$f = Join-Path $env:TEMP 'drbook-plan-step.ps1'\n" \
               f"Set-Content -Path $f -Value $s\n& powershell -NoProfile -File $f\nWrite-Output \"{MARK}$LASTEXITCODE\"\n"
    if _HEREDOC in script:
        raise ValueError(f"a plan script may not contain the line {_HEREDOC}")
    return (f"f=$(mktemp)\ncat > \"$f\" <<'{_HEREDOC}'\n{script.rstrip()}\n{_HEREDOC}\n"
            f"sh \"$f\"; s=$?; rm -f \"$f\"; echo \"{MARK}$s\"\n")


class ScriptResult(BaseModel):
    exit_status: int | None  # None: no status line (it did not run to its end)
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def problem(self) -> str:
        if self.exit_status is None:
            return "no exit status in the run command's output: the script did not run to its end"
        return f"exit status {self.exit_status}"


# Linux run command's answer: "Enable succeeded: \n[stdout]\n<out>\n[stderr]\n<err>".
_SECTIONS = re.compile(r"\A\s*Enable \w+:\s*\n\[stdout\]\n(?P<out>.*?)\n?\[stderr\]\n?(?P<err>.*)\Z", re.S)


def read_result(output: str) -> ScriptResult:
    found = _STATUS.findall(output)
    text = _STATUS.sub("", output)
    if m := _SECTIONS.match(text):
        out, err = m["out"].strip(), m["err"].strip()
        text = f"{out}\n{err}" if out and err else out or err
    return ScriptResult(exit_status=int(found[-1]) if found else None, output=text.strip())
