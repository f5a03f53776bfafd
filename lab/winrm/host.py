"""The Windows machine behind the responder: it records every command and executes nothing.

Answers come from, in order: the rules a test configured (regex on the command -> canned
stdout/stderr/exit code), then a small emulation of drbook's own scripts, recognised by
their first line `# drbook:<kind>`:

    receive        put_file: decodes the base64 lines sent on stdin into an in-memory file
                   store and answers their SHA-256, as the real receiver script does
    preflight      answers the configured Python version, disk readability and free space
    status         reads agent.py / VERSION / SHA256 back from the file store
    install        checks the staged file's SHA-256 against the script's, then "renames" it
                   to agent.py and records VERSION/SHA256 (exit 3/4 like the script)
    agent-version  answers the AGENT_VERSION line of the agent.py last installed

Anything else gets the default answer (exit 0, no output). So the responder proves the
client's bytes and the rendered scripts' parameters, never that PowerShell runs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CMD_LINE_LIMIT = 8191  # cmd.exe's limit; WinRS runs commands through cmd unless told not to


@dataclass
class Answer:
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0


@dataclass
class Rule:
    pattern: str  # searched in the decoded script (or the raw command line)
    answer: Answer
    times: int | None = None  # None = always


@dataclass
class Recorded:
    time: float
    user: str
    shell_id: str
    command_id: str
    command_line: str
    script: str | None
    kind: str | None
    stdin_bytes: int
    stdin_sha256: str
    exit_code: int
    stdout: str
    stderr: str


def decode_encoded_command(command_line: str) -> str | None:
    """The PowerShell script of `powershell ... -EncodedCommand <base64 of UTF-16LE>`."""
    tokens = command_line.split()
    for i, token in enumerate(tokens[:-1]):
        if token.lower() in ("-encodedcommand", "-enc", "-e", "-ec"):
            try:
                return base64.b64decode(tokens[i + 1], validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def _kind(script: str | None) -> str | None:
    """The `# drbook:<kind>` marker among a script's first lines (after the client's preamble)."""
    for line in (script or "").splitlines()[:5]:
        match = re.match(r"^\s*#\s*drbook:([a-z-]+)", line)
        if match:
            return match.group(1)
    return None


def ps_assignments(script: str) -> dict[str, str]:
    """`$name = 'single-quoted'` assignments of a script, unescaped."""
    return {
        m.group(1).lower(): m.group(2).replace("''", "'")
        for m in re.finditer(r"^\s*\$(\w+)\s*=\s*'((?:[^']|'')*)'\s*$", script, re.MULTILINE)
    }


def _ps_list(script: str, variable: str) -> list[str]:
    """The items of `foreach ($variable in @('a', 'b'))`."""
    match = re.search(r"foreach\s*\(\$" + variable + r"\s+in\s+@\(([^)]*)\)\)", script)
    if not match:
        return []
    return [m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", match.group(1))]


def _key(path: str) -> str:
    return path.replace("/", "\\").lower()  # NTFS paths are case-insensitive


@dataclass
class WindowsHost:
    python_version: str | None = "3.11.9"
    free_kb: int = 50 * 1024 * 1024
    unreadable_disks: set[str] = field(default_factory=set)
    missing_disks: set[str] = field(default_factory=set)
    default: Answer = field(default_factory=Answer)
    rules: list[Rule] = field(default_factory=list)
    record_file: Path | None = None
    recorded: list[Recorded] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # -- the public face for tests -------------------------------------------------------

    def add_rule(self, pattern: str, answer: Answer, times: int | None = None) -> None:
        with self._lock:
            self.rules.append(Rule(pattern, answer, times))

    def scripts(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [r.script or r.command_line for r in self.recorded if kind is None or r.kind == kind]

    def file(self, path: str) -> bytes | None:
        with self._lock:
            return self.files.get(_key(path))

    # -- answering -----------------------------------------------------------------------

    def run(self, user: str, shell_id: str, command_id: str, command_line: str, stdin: bytes) -> Answer:
        script = decode_encoded_command(command_line)
        kind = _kind(script)
        with self._lock:
            answer = self._answer(command_line, script, kind, stdin)
            entry = Recorded(
                time=time.time(), user=user, shell_id=shell_id, command_id=command_id,
                command_line=command_line, script=script, kind=kind, stdin_bytes=len(stdin),
                stdin_sha256=hashlib.sha256(stdin).hexdigest(), exit_code=answer.exit_code,
                stdout=answer.stdout.decode("utf-8", "replace"), stderr=answer.stderr.decode("utf-8", "replace"),
            )
            self.recorded.append(entry)
            if self.record_file is not None:
                with open(self.record_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(entry)) + "\n")
        return answer

    def _answer(self, command_line: str, script: str | None, kind: str | None, stdin: bytes) -> Answer:
        if len(command_line) > CMD_LINE_LIMIT:
            return Answer(stderr=b"The command line is too long.\r\n", exit_code=1)
        text = script if script is not None else command_line
        for rule in self.rules:
            if rule.times == 0 or not re.search(rule.pattern, text):
                continue
            if rule.times is not None:
                rule.times -= 1
            return rule.answer
        handler = getattr(self, f"_on_{(kind or '').replace('-', '_')}", None) if kind else None
        if handler is None or script is None:
            return self.default
        return handler(script, stdin)

    def _on_receive(self, script: str, stdin: bytes) -> Answer:
        path = ps_assignments(script).get("path")
        if not path:
            return Answer(stderr=b"receive: no $path in the script\r\n", exit_code=1)
        data = bytearray()
        for line in stdin.split(b"\r\n"):
            if line.strip():
                try:
                    data += base64.b64decode(line.strip(), validate=True)
                except binascii.Error:
                    return Answer(stderr=b"Exception calling \"FromBase64String\": invalid Base-64 input\r\n", exit_code=1)
        self.files[_key(path)] = bytes(data)
        return Answer(stdout=json.dumps({"sha256": hashlib.sha256(data).hexdigest()}).encode() + b"\r\n")

    def _on_preflight(self, script: str, stdin: bytes) -> Answer:
        lines = [f"python={self.python_version or ''}"]
        for disk in _ps_list(script, "d"):
            if disk in self.missing_disks:
                lines.append(f"disk_missing={disk}")
            elif disk in self.unreadable_disks:
                lines.append(f"disk_unreadable={disk}")
            else:
                lines.append(f"disk_ok={disk}")
        parents = _ps_list(script, "p")
        if parents:
            lines += [f"space_dir={parents[-1]}", f"free_kb={self.free_kb}"]
        return Answer(stdout=("\r\n".join(lines) + "\r\n").encode())

    def _on_status(self, script: str, stdin: bytes) -> Answer:
        d = ps_assignments(script).get("dir", "")
        agent = self.files.get(_key(d + "\\agent.py"))
        if agent is None:
            return Answer(stdout=b"agent=no\r\n")
        lines = ["agent=yes"]
        for name in ("VERSION", "SHA256"):
            content = self.files.get(_key(d + "\\" + name))
            if content is not None:
                lines.append(f"{name.lower()}={content.decode().strip()}")
        lines.append(f"sha256_actual={hashlib.sha256(agent).hexdigest()}")
        return Answer(stdout=("\r\n".join(lines) + "\r\n").encode())

    def _on_install(self, script: str, stdin: bytes) -> Answer:
        v = ps_assignments(script)
        d, staged, expected, version = v.get("dir"), v.get("staged"), v.get("expected"), v.get("version")
        if not (d and staged and expected and version):
            return Answer(stderr=b"install: the script lacks $dir/$staged/$expected/$version\r\n", exit_code=1)
        data = self.files.get(_key(staged))
        if data is None:
            return Answer(stderr=f"drbook: staged agent {staged} is missing; upload it first\r\n".encode(), exit_code=3)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            del self.files[_key(staged)]
            return Answer(
                stderr=f"drbook: staged agent {staged} has sha256 {actual}, expected {expected}; removed it\r\n".encode(),
                exit_code=4,
            )
        self.files[_key(d + "\\agent.py")] = self.files.pop(_key(staged))
        self.files[_key(d + "\\VERSION")] = f"{version}\n".encode()
        self.files[_key(d + "\\SHA256")] = f"{expected}\n".encode()
        return Answer(stdout=f"drbook: installed agent {version} ({expected}) in {d}\r\n".encode())

    def _on_agent_version(self, script: str, stdin: bytes) -> Answer:
        match = re.search(r"^&\s*'((?:[^']|'')*)'\s+'((?:[^']|'')*)'\s+--version", script, re.MULTILINE)
        if not match:
            return Answer(stderr=b"agent-version: no `& 'python' 'agent.py' --version` line\r\n", exit_code=1)
        python, agent = (g.replace("''", "'") for g in match.groups())
        if self.python_version is None:
            return Answer(
                stderr=f"& : The term '{python}' is not recognized as the name of a cmdlet\r\n".encode(), exit_code=1
            )
        content = self.files.get(_key(agent))
        if content is None:
            return Answer(stderr=f"{python}: can't open file '{agent}': [Errno 2] No such file or directory\r\n".encode(), exit_code=2)
        found = re.search(rb"""^AGENT_VERSION\s*=\s*["']([^"']+)["']""", content, re.MULTILINE)
        if not found:
            return Answer(stderr=b"the installed agent.py declares no AGENT_VERSION\r\n", exit_code=1)
        return Answer(stdout=found.group(1) + b"\r\n")
