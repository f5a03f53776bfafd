"""WinRmShell (pywinrm, NTLM over verified HTTPS) against the lab's WS-Management responder,
and the agent push to a Windows machine through it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import winrm
from winrm.exceptions import InvalidCredentialsError, WSManFaultError

from drbook import mobility
from drbook.adapters.winrm import PREAMBLE, PUT_CHUNK, WinRmShell
from drbook.config import DiskConfig, MachineConfig
from drbook.errors import AuthenticationError, ConnectError, HostKeyError, PreflightError, RemoteExecError
from drbook.templating import render
from lab.ca import ensure_certs
from lab.paths import REPO_ROOT
from lab.procs import port_in_use
from lab.winrm import Answer, WinRmResponder

USER = "Administrator"
PASSWORD = "Lab-Pa55word!"


def _declared_version(data: bytes) -> str:
    """The agent's `AGENT_VERSION = "..."` line, read with a regex of this test (not agent_version_of)."""
    (found,) = re.findall(rb'^AGENT_VERSION = "([^"\n]+)"$', data, re.MULTILINE)
    return found.decode()


def _sha256sum(path: Path) -> str:
    """The coreutils tool's answer: a checksum computed outside Python and outside drbook."""
    out = subprocess.run(["sha256sum", "--", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return ensure_certs(tmp_path_factory.mktemp("winrm-certs"))


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("winrm-secret") / "password"
    path.write_text(PASSWORD)
    path.chmod(0o600)
    return path


@pytest.fixture
def responder(certs, tmp_path: Path) -> Iterator[WinRmResponder]:
    r = WinRmResponder(
        cert=certs.server_cert, key=certs.server_key, user=USER, password=PASSWORD, record=tmp_path / "record.jsonl"
    ).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def win(responder: WinRmResponder, certs, password_file: Path) -> MachineConfig:
    return MachineConfig(
        name="win01",
        os="windows",
        address="127.0.0.1",
        port=responder.port,
        user=USER,
        password=f"file:{password_file}",
        ca_bundle=certs.ca_cert,
        disks=[DiskConfig(name="disk0", path=r"\\.\PhysicalDrive0")],
    )


# -- commands ------------------------------------------------------------------------------


def test_run_powershell_records_the_script_and_returns_output(win: MachineConfig, responder: WinRmResponder):
    responder.windows.add_rule(r"Get-Service drbook", Answer(stdout=b"Running\r\n", stderr=b"", exit_code=0))
    with WinRmShell(win) as shell:
        result = shell.run("Get-Service drbook | Select -Expand Status")
        other = shell.run("Write-Output 'anything else'")
    assert (result.exit_status, result.stdout) == (0, "Running\r\n")
    assert other.exit_status == 0 and other.stdout == ""  # the responder executes nothing
    recorded = responder.windows.recorded
    assert [r.script for r in recorded] == [
        PREAMBLE + "Get-Service drbook | Select -Expand Status",
        PREAMBLE + "Write-Output 'anything else'",
    ]
    assert all(r.user == USER and r.command_line.startswith("powershell.exe -NoProfile") for r in recorded)
    assert responder.handshakes == 1  # one NTLM handshake: the connection stays authenticated
    assert responder.open_shells == 0  # every shell was deleted


def test_exit_code_and_clixml_stderr(win: MachineConfig, responder: WinRmResponder):
    clixml = (
        b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        b'<S S="Error">Cannot find path C:\\nope_x000D__x000A_</S></Objs>'
    )
    responder.windows.add_rule(r"Get-Item", Answer(stderr=clixml, exit_code=1))
    with WinRmShell(win) as shell:
        result = shell.run("Get-Item C:\\nope")
    assert result.exit_status == 1 and result.stderr == "Cannot find path C:\\nope"


def test_long_output_spans_several_receives(win: MachineConfig, responder: WinRmResponder):
    big = os.urandom(100_000).hex().encode()  # 200 KB: more than one Receive answer
    responder.windows.add_rule(r"Get-Content big", Answer(stdout=big))
    with WinRmShell(win) as shell:
        assert shell.run("Get-Content big.txt").stdout.encode() == big


def test_stdin_reaches_the_command(win: MachineConfig, responder: WinRmResponder):
    with WinRmShell(win) as shell:
        shell.run("$input | Out-Null", stdin=b"x" * 250_000)
    assert responder.windows.recorded[-1].stdin_bytes == 250_000


def test_put_file_chunks_stay_under_the_envelope_limit_and_arrive_intact(
    win: MachineConfig, responder: WinRmResponder, tmp_path: Path
):
    data = os.urandom(3 * PUT_CHUNK + 777)  # four Sends; the responder refuses envelopes > 150 KB
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    with WinRmShell(win) as shell:
        shell.put_file(str(local), r"C:\Program Files\drbook\blob.bin")
    assert responder.windows.file(r"C:\Program Files\drbook\blob.bin") == data
    (receive,) = responder.windows.scripts("receive")
    assert "$path = 'C:\\Program Files\\drbook\\blob.bin'" in receive
    # a path with a space and a quote reaches the receiver quoted, and the file lands under it
    with WinRmShell(win) as shell:
        shell.put_file(str(local), r"C:\dr book\it's.bin")
    assert responder.windows.file(r"C:\dr book\it's.bin") == data
    assert "    $path = 'C:\\dr book\\it''s.bin'\n" in responder.windows.scripts("receive")[-1]


def test_open_process_is_not_supported(win: MachineConfig):
    with pytest.raises(RemoteExecError, match="streaming is not supported over WinRM yet"):
        WinRmShell(win).open_process("agent.py scan")


def test_a_command_line_over_cmd_limit_is_refused_before_sending(win: MachineConfig, responder: WinRmResponder):
    with pytest.raises(RemoteExecError, match="over cmd.exe's 8191"):
        WinRmShell(win).run("Write-Output '" + "x" * 4000 + "'")
    assert responder.windows.recorded == []


def test_record_file_is_jsonl_without_the_password(win: MachineConfig, responder: WinRmResponder, tmp_path: Path):
    with WinRmShell(win) as shell:
        shell.run("Write-Output one")
        shell.run("Write-Output two")
    text = (tmp_path / "record.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["script"] for line in lines] == [PREAMBLE + "Write-Output one", PREAMBLE + "Write-Output two"]
    assert PASSWORD not in text


# -- errors at the boundary ----------------------------------------------------------------


def test_wrong_password_is_a_clear_authentication_error(win: MachineConfig, tmp_path: Path, responder: WinRmResponder):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    with pytest.raises(AuthenticationError) as err:
        WinRmShell(win.model_copy(update={"password": f"file:{wrong}"})).run("Write-Output hi")
    assert str(err.value) == f"win01 (https://127.0.0.1:{responder.port}/wsman): the WinRM listener rejected the credentials of 'Administrator'"
    assert "not-the-password" not in str(err.value)
    assert not mobility.is_transient(err.value)
    assert responder.windows.recorded == []


def test_ntlm_is_really_checked(responder: WinRmResponder, certs):
    """Unknown user and a client that omits the channel binding are refused (pyspnego acceptor)."""
    for user, cbt in (("Guest", True), (USER, False)):
        session = winrm.Session(
            responder.url, auth=(user, PASSWORD), transport="ntlm", server_cert_validation="validate",
            ca_trust_path=str(certs.ca_cert), send_cbt=cbt,
        )
        with pytest.raises(InvalidCredentialsError):
            session.run_cmd("whoami")
    assert responder.windows.recorded == []


def test_untrusted_certificate_is_refused(win: MachineConfig, tmp_path: Path):
    other_ca = ensure_certs(tmp_path / "other").ca_cert
    with pytest.raises(HostKeyError, match="not trusted by .*other/ca.pem; refusing to connect"):
        WinRmShell(win.model_copy(update={"ca_bundle": other_ca})).run("Write-Output hi")


def test_nothing_listening_is_a_retryable_connect_error(win: MachineConfig, responder: WinRmResponder):
    port = responder.port
    responder.stop()
    assert not port_in_use("127.0.0.1", port)
    with pytest.raises(ConnectError) as err:
        WinRmShell(win).run("Write-Output hi")
    assert mobility.is_transient(err.value)


def test_unknown_shell_is_a_wsman_fault(responder: WinRmResponder, certs):
    protocol = winrm.Protocol(
        responder.url, transport="ntlm", username=USER, password=PASSWORD,
        server_cert_validation="validate", ca_trust_path=str(certs.ca_cert),
    )
    with pytest.raises(WSManFaultError) as err:
        protocol.run_command("00000000-0000-0000-0000-000000000000", "whoami")
    assert err.value.wsman_fault_code == 2150858843 and "shell was not found" in err.value.reason


# -- pushing the agent to Windows ----------------------------------------------------------


def test_push_agent_to_windows_installs_verifies_and_is_then_unchanged(
    win: MachineConfig, responder: WinRmResponder, tmp_path: Path
):
    agent = tmp_path / "agent.py"
    data = mobility.DEFAULT_AGENT.read_bytes()
    agent.write_bytes(data)
    # Expected values computed here: the version by this test's regex, the hash by hashlib and
    # by coreutils' sha256sum (never drbook's agent_version_of).
    version, sha = _declared_version(data), hashlib.sha256(data).hexdigest()
    assert _sha256sum(agent) == sha
    staged = f"C:\\Program Files\\drbook\\.agent.py.{sha[:16]}.staged"
    host = responder.windows
    with WinRmShell(win) as shell:
        first = mobility.push_agent(shell, win, agent_path=agent)
        assert (first.action, first.version, first.sha256) == ("installed", version, sha)
        assert [r.kind for r in host.recorded] == ["preflight", "status", "receive", "install", "agent-version", "status"]
        (receive,) = host.scripts("receive")
        assert f"    $path = '{staged}'\n" in receive  # uploaded to the staging file
        (install,) = host.scripts("install")
        # The install script as sent: the client's preamble, then the script, whose key lines are
        # written out here (not rendered by drbook's templates).
        assert install.startswith(PREAMBLE)
        lines = install[len(PREAMBLE):].splitlines()
        assert lines[0] == f"# drbook:install version={version} sha256={sha}"
        for line in (
            "$dir = 'C:\\Program Files\\drbook'",
            f"$staged = '{staged}'",
            f"$expected = '{sha}'",
            f"$version = '{version}'",
        ):
            assert line in lines, line
        # What the install left on the machine, read back from its file store.
        assert host.file(r"C:\Program Files\drbook\agent.py") == agent.read_bytes() == data
        assert hashlib.sha256(host.file(r"C:\Program Files\drbook\agent.py")).hexdigest() == sha
        assert host.file(r"C:\Program Files\drbook\VERSION") == f"{version}\n".encode()
        assert host.file(r"C:\Program Files\drbook\SHA256") == f"{sha}\n".encode()
        assert host.file(staged) is None  # moved, not copied
        (version_query,) = host.scripts("agent-version")
        assert "& 'python' 'C:\\Program Files\\drbook\\agent.py' --version" in version_query

        recorded = len(host.recorded)
        second = mobility.push_agent(shell, win, agent_path=agent)
        assert second.action == "unchanged"
        assert [r.kind for r in host.recorded[recorded:]] == ["preflight", "status", "agent-version", "status"]

        agent.write_text(agent.read_text().replace(f'AGENT_VERSION = "{version}"', 'AGENT_VERSION = "42.0.0-win"', 1))
        newer = agent.read_bytes()
        newer_sha = hashlib.sha256(newer).hexdigest()
        assert newer_sha != sha and _sha256sum(agent) == newer_sha
        third = mobility.push_agent(shell, win, agent_path=agent)
        assert (third.action, third.version, third.previous_version) == ("upgraded", "42.0.0-win", version)
        assert third.sha256 == newer_sha
        assert mobility.installed_version(shell, win) == "42.0.0-win"
    assert host.file(r"C:\Program Files\drbook\agent.py") == newer
    assert host.file(r"C:\Program Files\drbook\VERSION") == b"42.0.0-win\n"
    assert host.file(r"C:\Program Files\drbook\SHA256") == f"{newer_sha}\n".encode()
    assert f"$expected = '{newer_sha}'" in host.scripts("install")[-1].splitlines()


def test_windows_install_failure_is_an_error(win: MachineConfig, responder: WinRmResponder, tmp_path: Path):
    responder.windows.add_rule(r"drbook:install", Answer(stderr=b"Access to the path is denied.\r\n", exit_code=1))
    with WinRmShell(win) as shell, pytest.raises(RemoteExecError, match="install script failed .*Access to the path is denied"):
        mobility.push_agent(shell, win)
    assert "agent-version" not in [r.kind for r in responder.windows.recorded]


def test_windows_without_python_fails_preflight(win: MachineConfig, responder: WinRmResponder):
    responder.windows.python_version = None
    with WinRmShell(win) as shell, pytest.raises(PreflightError) as err:
        mobility.push_agent(shell, win)
    assert str(err.value) == "win01: python not found on the machine; the agent needs Python >= 3.6"
    assert [r.kind for r in responder.windows.recorded] == ["preflight"]


# -- the command-line entry ----------------------------------------------------------------


def test_module_entry_serves_until_terminated(certs, password_file: Path, tmp_path: Path, win: MachineConfig):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = tmp_path / "cli.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.winrm", "--host", "127.0.0.1", "--port", str(port), "--cert", str(certs.server_cert),
         "--key", str(certs.server_key), "--record", str(record), "--user", USER, "--password-file", str(password_file)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_in_use("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        with WinRmShell(win.model_copy(update={"port": port})) as shell:
            assert shell.run("Write-Output cli").exit_status == 0
        assert json.loads(record.read_text().splitlines()[0])["script"] == PREAMBLE + "Write-Output cli"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_receiver_script_names_its_kind_and_quotes_the_path():
    script = render("receive.ps1.j2", path="C:\\dr book\\it's.bin")
    assert script.splitlines()[0] == "# drbook:receive"
    assert "    $path = 'C:\\dr book\\it''s.bin'\n" in script
    assert "it's" not in script
