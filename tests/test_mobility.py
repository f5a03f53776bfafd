"""Pushing the agent to real lab sshd machines; registering it in a vault on a real Azurite."""

from __future__ import annotations

import shlex
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
from drbook.templating import ps_quote
from drbook.vault import Vault

AGENT = mobility.DEFAULT_AGENT


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
    old = mobility.agent_version_of(AGENT)
    text = text.replace(f'AGENT_VERSION = "{old}"', f'AGENT_VERSION = "{version}"', 1)
    if reported is not None:
        text = text.replace(
            "sys.stdout.write(AGENT_VERSION + \"\\n\")", f"sys.stdout.write({reported!r} + \"\\n\")", 1
        )
        assert reported in text
    path = tmp_path / f"agent-{version}.py"
    path.write_text(text)
    return path


def _snapshot(vault: Vault) -> dict[str, bytes]:
    return {k: vault.container.download_blob(k).readall() for k in vault.keys("")}


# -- the real agent answers what push relies on --------------------------------------------


def test_real_agent_answers_version_and_self_check(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        result = mobility.push_agent(sh, fresh)
        assert result.action == "installed" and result.version == mobility.agent_version_of(AGENT)
        agent = shlex.quote(mobility.agent_path(fresh))
        check = sh.run(f"python3 {agent} self-check --disk {shlex.quote(fresh.disks[0].path)}")
    assert check.exit_status == 0 and '"readable": true' in check.stdout


# -- push ----------------------------------------------------------------------------------


def test_push_installs_then_is_unchanged_then_upgrades(fresh: MachineConfig, tmp_path: Path):
    agent_dir = Path(fresh.agent_dir)
    with SshShell(fresh) as sh:
        first = mobility.push_agent(sh, fresh)
        assert (first.action, first.previous_version) == ("installed", None)
        # The real agent may be edited while tests run: compare with what push_agent read.
        assert mobility.file_sha256(agent_dir / "agent.py") == first.sha256
        assert (agent_dir / "VERSION").read_text() == first.version + "\n"
        assert (agent_dir / "SHA256").read_text() == first.sha256 + "\n"
        assert (agent_dir / "agent.py").stat().st_mode & 0o777 == 0o755
        assert not list(agent_dir.glob(".*staged"))
        installed_at = (agent_dir / "agent.py").stat().st_mtime_ns

        second = mobility.push_agent(sh, fresh)
        assert second.action == "unchanged" and second.sha256 == first.sha256
        assert (agent_dir / "agent.py").stat().st_mtime_ns == installed_at  # nothing uploaded

        newer = _agent_variant(tmp_path, "99.0.0-test")
        third = mobility.push_agent(sh, fresh, agent_path=newer)
        assert (third.action, third.version, third.previous_version) == ("upgraded", "99.0.0-test", first.version)
        assert (agent_dir / "agent.py").read_bytes() == newer.read_bytes()
        assert mobility.installed_version(sh, fresh) == "99.0.0-test"
        assert sh.run(f"python3 {shlex.quote(str(agent_dir / 'agent.py'))} --version").stdout.strip() == "99.0.0-test"


def test_tampered_agent_is_reinstalled(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        mobility.push_agent(sh, fresh)
        with open(Path(fresh.agent_dir) / "agent.py", "a") as f:
            f.write("# changed on the machine\n")
        again = mobility.push_agent(sh, fresh)
    assert again.action == "upgraded"
    assert mobility.file_sha256(Path(fresh.agent_dir) / "agent.py") == again.sha256


def test_force_reinstalls_the_same_agent(fresh: MachineConfig):
    with SshShell(fresh) as sh:
        mobility.push_agent(sh, fresh)
        assert mobility.push_agent(sh, fresh, force=True).action == "upgraded"


def test_agent_dir_with_spaces_and_quotes(linux: MachineConfig, tmp_path: Path):
    odd = linux.model_copy(update={"agent_dir": str(tmp_path / "it's a dir" / "dr $book")})
    with SshShell(odd) as sh:
        assert mobility.push_agent(sh, odd).action == "installed"
    assert (tmp_path / "it's a dir" / "dr $book" / "agent.py").exists()


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
        sha = mobility.file_sha256(AGENT)
        bogus = tmp_path / "bogus.py"
        bogus.write_text("print('not the agent')\n")
        staged = mobility.staging_path(fresh, sha)
        sh.put_file(str(bogus), staged)
        result = mobility.run_script(sh, fresh, mobility.render_install_script(fresh, "1.2.3", sha))
    assert result.exit_status == 4 and "expected " + sha in result.stderr
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
    assert (stored.agent_version, stored.agent_sha256) == (mobility.agent_version_of(installed), mobility.file_sha256(installed))
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


def test_render_install_script_linux_and_windows(fresh: MachineConfig):
    sha = "c" * 64
    sh = mobility.render_install_script(fresh, "1.2.3", sha)
    assert sh.startswith(f"# drbook:install version=1.2.3 sha256={sha}\n")
    assert f"dir={shlex.quote(fresh.agent_dir)}" in sh and "sha256sum" in sh
    win = MachineConfig(name="win01", os="windows", address="127.0.0.1", port=5986, user="Administrator")
    ps = mobility.render_install_script(win, "1.2.3", sha)
    assert "$dir = 'C:\\Program Files\\drbook'" in ps
    assert f"$staged = 'C:\\Program Files\\drbook\\.agent.py.{sha[:16]}.staged'" in ps
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


def _paths_in(kind: str, machine: MachineConfig) -> list[str]:
    """The machine's paths a script of this kind carries."""
    return {
        "preflight": [mobility.python_command(machine), machine.disks[0].path, mobility.agent_dir(machine)],
        "status": [mobility.agent_dir(machine)],
        "agent-version": [mobility.python_command(machine), mobility.agent_path(machine)],
        "install": [mobility.agent_dir(machine), mobility.staging_path(machine, SHA)],
    }[kind]


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
    quote = ps_quote if machine.os == "windows" else shlex.quote
    for path in _paths_in(kind, machine):
        assert quote(path) in script, (path, script)
        assert path not in script, f"{path!r} reached the script unquoted"
