"""Pushing the agent to real lab sshd machines; registering it in a vault on a real Azurite."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
from tests.blob_fixtures import azurite, azurite_blob  # noqa: F401  (fixtures)
from tests.test_ssh import SshLab, ssh_lab  # noqa: F401  (fixture)

from drbook import mobility
from drbook.adapters.shell import shell_for
from drbook.adapters.ssh import SshShell
from drbook.config import DiskConfig, MachineConfig
from drbook.errors import (
    AuthenticationError,
    CommandFailed,
    CommandTimeout,
    ConnectError,
    ConfigError,
    HostKeyError,
    PreflightError,
    RemoteExecError,
    VerificationError,
)
from drbook.models import ItemState, ProtectedItem
from drbook.vault import Vault

AGENT = mobility.DEFAULT_AGENT


# -- expected values, computed here rather than by drbook's own helpers ---------------------


def _sha256(path: Path | str) -> str:
    """hashlib over the file's bytes as read here."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sha256sum(path: Path | str) -> str:
    """The coreutils tool's answer, a second opinion independent of Python."""
    out = subprocess.run(["sha256sum", "--", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def _declared_version(data: bytes) -> str:
    """The agent's `AGENT_VERSION = "..."` line, read with a regex of this test (not agent_version_of)."""
    (found,) = re.findall(rb'^AGENT_VERSION = "([^"\n]+)"$', data, re.MULTILINE)
    return found.decode()


def _assert_installed(agent_dir: Path, data: bytes) -> None:
    """What a finished install leaves on the machine, read back from its filesystem: agent.py
    holding exactly `data`, mode 0755, VERSION and SHA256 recording that file, no staged copy."""
    agent = agent_dir / "agent.py"
    assert agent.read_bytes() == data
    assert _sha256(agent) == hashlib.sha256(data).hexdigest() == _sha256sum(agent)
    assert agent.stat().st_mode & 0o777 == 0o755
    assert (agent_dir / "VERSION").read_text() == _declared_version(data) + "\n"
    assert (agent_dir / "SHA256").read_text() == hashlib.sha256(data).hexdigest() + "\n"
    assert not list(agent_dir.glob(".*staged"))


@pytest.fixture(scope="module")
def linux(ssh_lab: SshLab) -> MachineConfig:
    return ssh_lab.machine("db01")


@pytest.fixture(scope="module")
def nopython(ssh_lab: SshLab) -> MachineConfig:
    return ssh_lab.machine("minimal01", python=False)


@pytest.fixture
def fresh(linux: MachineConfig, tmp_path: Path) -> MachineConfig:
    """The same machine with an agent_dir of its own (so tests do not see each other's installs)."""
    return linux.model_copy(update={"agent_dir": str(tmp_path / "opt" / "drbook")})


@pytest.fixture
def vault(azurite_blob) -> Vault:
    v = Vault(azurite_blob.get_container_client(f"vault-{uuid.uuid4().hex[:12]}"), actor="tester")
    v.ensure()
    return v


def _agent_variant(tmp_path: Path, version: str, *, reported: str | None = None) -> Path:
    """A copy of the real agent declaring another version (optionally answering `--version` with
    something else, which a verified push must catch)."""
    text = AGENT.read_text()
    old = _declared_version(text.encode())
    text = text.replace(f'AGENT_VERSION = "{old}"', f'AGENT_VERSION = "{version}"', 1)
    if reported is not None:
        text = text.replace(
            "sys.stdout.write(AGENT_VERSION + \"\\n\")", f"sys.stdout.write({reported!r} + \"\\n\")", 1
        )
        assert reported in text
    path = tmp_path / f"agent-{version}.py"
    path.write_text(text)
    assert _declared_version(path.read_bytes()) == version
    return path


def _snapshot(vault: Vault) -> dict[str, bytes]:
    return {k: vault.container.download_blob(k).readall() for k in vault.keys("")}


# -- the real agent answers what push relies on --------------------------------------------


def test_real_agent_answers_version_and_self_check(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        result = mobility.push_agent(sh, fresh)
        assert result.action == "installed" and result.version == _declared_version(AGENT.read_bytes())
        agent = shlex.quote(str(Path(fresh.agent_dir) / "agent.py"))
        answer = sh.run(f"python3 {agent} --version")
        check = sh.run(f"python3 {agent} self-check --disk {shlex.quote(fresh.disks[0].path)}")
    assert answer.exit_status == 0 and answer.stdout == result.version + "\n"
    assert check.exit_status == 0 and '"readable": true' in check.stdout


# -- push ----------------------------------------------------------------------------------


def test_push_installs_then_is_unchanged_then_upgrades(fresh: MachineConfig, tmp_path: Path):
    agent_dir = Path(fresh.agent_dir)
    with SshShell(fresh) as sh:
        first = mobility.push_agent(sh, fresh)
        assert (first.action, first.previous_version) == ("installed", None)
        # The real agent may be edited while tests run: compare with what was installed, whose
        # hash and version are computed here, and which must be what push_agent reported.
        installed = (agent_dir / "agent.py").read_bytes()
        assert first.sha256 == hashlib.sha256(installed).hexdigest()
        assert first.version == _declared_version(installed)
        _assert_installed(agent_dir, installed)
        installed_at = (agent_dir / "agent.py").stat().st_mtime_ns

        second = mobility.push_agent(sh, fresh)
        assert second.action == "unchanged" and second.sha256 == first.sha256
        assert (agent_dir / "agent.py").stat().st_mtime_ns == installed_at  # nothing uploaded

        newer = _agent_variant(tmp_path, "99.0.0-test")
        third = mobility.push_agent(sh, fresh, agent_path=newer)
        assert (third.action, third.version, third.previous_version) == ("upgraded", "99.0.0-test", first.version)
        assert third.sha256 == _sha256(newer)
        _assert_installed(agent_dir, newer.read_bytes())
        assert mobility.installed_version(sh, fresh) == "99.0.0-test"
        assert sh.run(f"python3 {shlex.quote(str(agent_dir / 'agent.py'))} --version").stdout.strip() == "99.0.0-test"


def test_tampered_agent_is_reinstalled(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        mobility.push_agent(sh, fresh)
        with open(Path(fresh.agent_dir) / "agent.py", "a") as f:
            f.write("# changed on the machine\n")
        again = mobility.push_agent(sh, fresh)
    assert again.action == "upgraded"
    installed = (Path(fresh.agent_dir) / "agent.py").read_bytes()
    assert b"# changed on the machine" not in installed
    assert again.sha256 == hashlib.sha256(installed).hexdigest()
    _assert_installed(Path(fresh.agent_dir), installed)


def test_force_reinstalls_the_same_agent(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        mobility.push_agent(sh, fresh)
        assert mobility.push_agent(sh, fresh, force=True).action == "upgraded"


def test_agent_dir_with_spaces_and_quotes(linux: MachineConfig, tmp_path: Path):
    odd = linux.model_copy(update={"agent_dir": str(tmp_path / "it's a dir" / "dr $book")})
    with SshShell(odd) as sh:
        result = mobility.push_agent(sh, odd)
    assert result.action == "installed"
    target = tmp_path / "it's a dir" / "dr $book"
    assert (target / "agent.py").exists()
    installed = (target / "agent.py").read_bytes()
    assert result.sha256 == hashlib.sha256(installed).hexdigest()
    _assert_installed(target, installed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it's a dir"]  # nothing landed beside it


def test_machine_without_python_fails_preflight_and_nothing_is_installed(nopython: MachineConfig):
    with SshShell(nopython) as sh:
        assert sh.run("command -v python3 || echo none").stdout.strip() == "none"
        with pytest.raises(PreflightError) as err:
            mobility.push_agent(sh, nopython)
    assert str(err.value) == "minimal01: python3 not found on the machine; the agent needs Python >= 3.6"
    assert not mobility.is_transient(err.value)
    assert list(Path(nopython.agent_dir).iterdir()) == []


def test_preflight_reports_missing_disk(fresh: MachineConfig):
    broken = fresh.model_copy(update={"disks": [*fresh.disks, DiskConfig(name="disk9", path="/nonexistent/disk9.img")]})
    with SshShell(broken) as sh:
        report = mobility.inspect(sh, broken)
        assert report.python and report.free_kb and report.free_kb > mobility.MIN_FREE_KB
        assert [d.readable for d in report.disks] == [True, False]
        with pytest.raises(PreflightError, match=r"disk disk9 \(/nonexistent/disk9.img\) does not exist"):
            mobility.preflight(sh, broken)


def test_install_script_refuses_a_staged_file_with_another_hash(fresh: MachineConfig, tmp_path: Path):
    with SshShell(fresh) as sh:
        mobility.push_agent(sh, fresh)
        before = (Path(fresh.agent_dir) / "agent.py").read_bytes()
        sha = _sha256(AGENT)
        bogus = tmp_path / "bogus.py"
        bogus.write_text("print('not the agent')\n")
        bogus_sha = hashlib.sha256(b"print('not the agent')\n").hexdigest()
        staged = str(Path(fresh.agent_dir) / f".agent.py.{sha[:16]}.staged")  # where the script looks
        sh.put_file(str(bogus), staged)
        result = mobility.run_script(sh, fresh, mobility.render_install_script(fresh, "1.2.3", sha))
    assert result.exit_status == 4 and "expected " + sha in result.stderr
    assert f"has sha256 {bogus_sha}, expected {sha}" in result.stderr
    assert not Path(staged).exists()
    assert (Path(fresh.agent_dir) / "agent.py").read_bytes() == before


def test_agent_answering_another_version_fails_verification_and_vault_is_unchanged(
    fresh: MachineConfig, tmp_path: Path, vault: Vault
):
    liar = _agent_variant(tmp_path, "5.0.0", reported="4.0.0")
    before = _snapshot(vault)
    with SshShell(fresh) as sh, pytest.raises(VerificationError, match="reports version '4.0.0', but '5.0.0' was pushed"):
        _push_and_register(sh, vault, fresh, agent_path=liar)
    assert _snapshot(vault) == before


def _push_and_register(shell, vault: Vault, machine: MachineConfig, **kwargs) -> ProtectedItem:
    """What the push flow does: register only what push_agent returned (a verified install)."""
    result = mobility.push_agent(shell, machine, **kwargs)
    return mobility.register(vault, machine, result)


# -- vault ---------------------------------------------------------------------------------


def test_register_creates_the_item_unprotected_and_audits(fresh: MachineConfig, vault: Vault):
    with SshShell(fresh) as sh:
        item = _push_and_register(sh, vault, fresh)
    stored = vault.item("db01")
    assert stored.state == ItemState.UNPROTECTED and item.state == ItemState.UNPROTECTED
    installed = Path(fresh.agent_dir) / "agent.py"
    assert (stored.agent_version, stored.agent_sha256) == (_declared_version(installed.read_bytes()), _sha256(installed))
    assert (item.agent_version, item.agent_sha256) == (stored.agent_version, stored.agent_sha256)
    audit = vault.audit_log("db01")
    assert [a.action for a in audit] == ["agent-registered"] and audit[0].detail["push"] == "installed"


def test_register_updates_an_existing_item_without_touching_its_state(fresh: MachineConfig, vault: Vault):
    vault.save_item(ProtectedItem(name="db01", machine="db01"))
    vault.update("items/db01.json", ProtectedItem, lambda i: i.model_copy(update={"state": ItemState.PROTECTED}))
    result = mobility.PushResult(machine="db01", action="upgraded", version="9.9.9", sha256="ab" * 32, seconds=1.0)
    mobility.register(vault, fresh, result)
    stored = vault.item("db01")
    assert stored.state == ItemState.PROTECTED and stored.agent_version == "9.9.9"


def test_failed_pushes_leave_the_vault_unchanged(
    nopython: MachineConfig, fresh: MachineConfig, vault: Vault, tmp_path: Path, ssh_lab: SshLab
):
    before = _snapshot(vault)
    with SshShell(nopython) as sh, pytest.raises(PreflightError):
        _push_and_register(sh, vault, nopython)
    wrong_key = tmp_path / "known_hosts"
    wrong_key.write_text("")
    with SshShell(fresh.model_copy(update={"known_hosts": wrong_key})) as sh, pytest.raises(HostKeyError):
        _push_and_register(sh, vault, fresh)
    # An agent dir that cannot be created (a file is in the way): the install step fails.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    blocked = fresh.model_copy(update={"agent_dir": str(blocker / "drbook")})
    with SshShell(blocked) as sh, pytest.raises(CommandFailed, match="creating"):
        _push_and_register(sh, vault, blocked)
    assert _snapshot(vault) == before


# -- pure decisions ------------------------------------------------------------------------


def test_decide_action():
    none = mobility.InstalledAgent(present=False)
    same = mobility.InstalledAgent(present=True, version="1.0", sha256_recorded="a" * 64, sha256_actual="a" * 64)
    edited = same.model_copy(update={"sha256_actual": "b" * 64})
    older = same.model_copy(update={"version": "0.9"})
    assert mobility.decide_action(none, "1.0", "a" * 64) == "installed"
    assert mobility.decide_action(same, "1.0", "a" * 64) == "unchanged"
    assert mobility.decide_action(same, "1.0", "a" * 64, force=True) == "upgraded"
    assert mobility.decide_action(edited, "1.0", "a" * 64) == "upgraded"
    assert mobility.decide_action(older, "1.0", "a" * 64) == "upgraded"


def test_preflight_problems_decide_on_version_and_space(fresh: MachineConfig):
    def report(**kw) -> mobility.PreflightReport:
        base = dict(machine="db01", os="linux", python="3.11.2", python_command="python3", disks=[], free_kb=10**6, free_path="/opt")
        return mobility.PreflightReport(**{**base, **kw})

    assert mobility.preflight_problems(report(), fresh) == []
    assert mobility.preflight_problems(report(python="3.6.0"), fresh) == []
    assert mobility.preflight_problems(report(python="3.5.9"), fresh) == ["db01: python3 is Python 3.5.9; the agent needs Python >= 3.6"]
    assert mobility.preflight_problems(report(python="2.7.18"), fresh)[0].endswith("needs Python >= 3.6")
    assert "did not report its version" in mobility.preflight_problems(report(python="broken"), fresh)[0]
    assert mobility.preflight_problems(report(free_kb=100), fresh) == [
        f"db01: only 100 KiB free in /opt; the agent needs at least {mobility.MIN_FREE_KB} KiB"
    ]


def test_is_transient_only_for_connection_trouble_and_timeouts():
    assert mobility.is_transient(ConnectError("refused"))
    assert mobility.is_transient(CommandTimeout("slow"))
    assert mobility.is_transient(TimeoutError())
    for never in (
        HostKeyError("x"), AuthenticationError("x"), PreflightError("x"), VerificationError("x"),
        CommandFailed("x", exit_status=1), RemoteExecError("x"), ConfigError("x"), ValueError("x"),
    ):
        assert not mobility.is_transient(never), never


def test_render_install_script_linux_and_windows():
    sha = "c" * 64
    lin = MachineConfig(name="lin01", address="127.0.0.1")  # the default agent_dir
    sh = mobility.render_install_script(lin, "1.2.3", sha)
    assert sh.startswith("# drbook:install version=1.2.3 sha256=" + "c" * 64 + "\n")
    lines = sh.splitlines()
    assert "dir=/opt/drbook" in lines and "sha256sum" in sh
    assert "staged=/opt/drbook/.agent.py.cccccccccccccccc.staged" in lines
    assert "expected=" + "c" * 64 in lines and "version=1.2.3" in lines
    odd = mobility.render_install_script(ODD_LINUX, "1.2.3", sha).splitlines()
    assert """dir='/srv/dr book/it'"'"'s'""" in odd
    assert """staged='/srv/dr book/it'"'"'s/.agent.py.cccccccccccccccc.staged'""" in odd
    win = MachineConfig(name="win01", os="windows", address="127.0.0.1", port=5986, user="Administrator")
    ps = mobility.render_install_script(win, "1.2.3", sha)
    assert ps.startswith("# drbook:install version=1.2.3 sha256=" + "c" * 64 + "\n")
    assert "$dir = 'C:\\Program Files\\drbook'" in ps
    assert "$staged = 'C:\\Program Files\\drbook\\.agent.py.cccccccccccccccc.staged'" in ps
    assert "$expected = '" + "c" * 64 + "'" in ps.splitlines() and "$version = '1.2.3'" in ps.splitlines()
    assert "Get-FileHash -Algorithm SHA256" in ps and "[System.IO.File]::Replace" in ps
    odd = win.model_copy(update={"agent_dir": "C:\\it's\\drbook"})
    assert "$dir = 'C:\\it''s\\drbook'" in mobility.render_install_script(odd, "1", sha)


def test_shell_for_picks_the_adapter_by_os():
    from drbook.adapters.winrm import WinRmShell

    assert isinstance(shell_for(MachineConfig(name="l", address="127.0.0.1")), SshShell)
    windows = MachineConfig(name="w", os="windows", address="127.0.0.1")
    shell = shell_for(windows)
    assert isinstance(shell, WinRmShell) and shell.endpoint == "https://127.0.0.1:5986/wsman"


# Paths with a space and a quote: each must reach the script quoted, never raw.
ODD_LINUX = MachineConfig(
    name="odd01", address="127.0.0.1", agent_dir="/srv/dr book/it's", python="/opt/py 3/it's/python3",
    disks=[DiskConfig(name="disk0", path="/dev/disk by/it's")],
)
ODD_WINDOWS = MachineConfig(
    name="odd02", os="windows", address="127.0.0.1", agent_dir="C:\\dr book\\it's", python="C:\\Py 3\\it's\\python.exe",
    disks=[DiskConfig(name="disk0", path="D:\\images\\it's disk.vhd")],
)
SHA = "c" * 64

# The machines' paths, and the literal each must reach the scripts as, written out by hand:
# POSIX sh single quotes with a ' as '"'"'; PowerShell single quotes with a ' doubled.
# (test_expected_literals_mean_the_paths proves each literal means its path.)
EXPECTED = {
    "linux": {
        "python": ("/opt/py 3/it's/python3", """'/opt/py 3/it'"'"'s/python3'"""),
        "disk": ("/dev/disk by/it's", """'/dev/disk by/it'"'"'s'"""),
        "dir": ("/srv/dr book/it's", """'/srv/dr book/it'"'"'s'"""),
        "agent": ("/srv/dr book/it's/agent.py", """'/srv/dr book/it'"'"'s/agent.py'"""),
        "staged": (
            "/srv/dr book/it's/.agent.py.cccccccccccccccc.staged",
            """'/srv/dr book/it'"'"'s/.agent.py.cccccccccccccccc.staged'""",
        ),
    },
    "windows": {
        "python": (r"C:\Py 3\it's\python.exe", r"'C:\Py 3\it''s\python.exe'"),
        "disk": (r"D:\images\it's disk.vhd", r"'D:\images\it''s disk.vhd'"),
        "dir": (r"C:\dr book\it's", r"'C:\dr book\it''s'"),
        "agent": (r"C:\dr book\it's\agent.py", r"'C:\dr book\it''s\agent.py'"),
        "staged": (r"C:\dr book\it's\.agent.py.cccccccccccccccc.staged", r"'C:\dr book\it''s\.agent.py.cccccccccccccccc.staged'"),
    },
}
CARRIES = {  # the paths a script of each kind carries
    "preflight": ["python", "disk", "dir"],
    "status": ["dir"],
    "agent-version": ["python", "agent"],
    "install": ["dir", "staged"],
}


def _sh_value(literal: str) -> str:
    """What a POSIX shell makes of `literal` as a word: /bin/sh itself decides."""
    out = subprocess.run(["sh", "-c", f'v={literal}; printf %s "$v"'], check=True, capture_output=True)
    return out.stdout.decode()


def _ps_value(literal: str) -> str:
    """A PowerShell verbatim string (about_Quoting_Rules): '...' with each ' inside doubled."""
    match = re.fullmatch(r"'((?:[^']|'')*)'", literal)
    assert match, literal
    return match.group(1).replace("''", "'")


def test_expected_literals_mean_the_paths():
    for machine, value in ((ODD_LINUX, _sh_value), (ODD_WINDOWS, _ps_value)):
        expected = EXPECTED[machine.os]
        assert expected["python"][0] == machine.python and expected["disk"][0] == machine.disks[0].path
        assert expected["dir"][0] == machine.agent_dir
        for path, literal in expected.values():
            assert value(literal) == path, (path, literal)


@pytest.mark.parametrize("machine", [ODD_LINUX, ODD_WINDOWS], ids=["linux", "windows"])
@pytest.mark.parametrize(
    "kind, render",
    [
        ("preflight", mobility._preflight_script),
        ("status", mobility._status_script),
        ("agent-version", mobility._version_script),
        ("install", lambda m: mobility.render_install_script(m, "1.2.3", SHA)),
    ],
)
def test_every_script_template_names_its_kind_and_quotes_paths(kind, render, machine: MachineConfig):
    script = render(machine)
    first = script.splitlines()[0]
    assert first.startswith(f"# drbook:{kind} "), first
    if kind != "install":
        assert first == f"# drbook:{kind} machine={machine.name}"
    for name in CARRIES[kind]:
        path, literal = EXPECTED[machine.os][name]
        assert literal in script, (path, script)
        assert path not in script, f"{path!r} reached the script unquoted"
