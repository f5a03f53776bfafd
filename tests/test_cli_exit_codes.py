"""The exit-code contract of every drbook command (README, "Exit codes"): one line on stderr,
the documented code. Typer bundles its own click, so these go through the real run_cli."""

from __future__ import annotations

import io

import pytest
import typer
from rich.console import Console

from drbook.cli import app, run_cli
from drbook.errors import LeaseHeldError, VerificationError


def _run(command: typer.Typer, args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    try:
        run_cli(command, Console(file=err, width=300), args=args)
    except SystemExit as exc:
        return exc.code, err.getvalue()
    return 0, err.getvalue()


def _toy() -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    def exit_with(code: int) -> None:
        raise typer.Exit(code)

    @toy.command()
    def fail(kind: str) -> None:
        if kind == "verify":
            raise VerificationError("disk app01/disk0 differs at block 7")
        if kind == "lease":
            raise LeaseHeldError("item app01 is held by a running cycle")
        if kind == "abort":
            raise typer.Abort()
        raise ValueError(kind)

    @toy.command()
    def ok() -> None:
        pass

    return toy


@pytest.mark.parametrize("code", [0, 1, 7])
def test_a_commands_typer_exit_code_is_the_process_exit_code(code):
    assert _run(_toy(), ["exit-with", str(code)])[0] == code


def test_success_exits_0():
    assert _run(_toy(), ["ok"]) == (0, "")


@pytest.mark.parametrize("kind, code, text", [
    ("verify", 7, "error: disk app01/disk0 differs at block 7"),
    ("lease", 6, "error: item app01 is held by a running cycle"),
])
def test_a_drbook_error_is_one_line_and_its_exit_code(kind, code, text):
    rc, err = _run(_toy(), ["fail", kind])
    assert rc == code and err.strip() == text


def test_an_unexpected_exception_is_one_line_and_exit_1(monkeypatch):
    monkeypatch.delenv("DRBOOK_DEBUG", raising=False)
    rc, err = _run(_toy(), ["fail", "boom"])
    assert rc == 1 and err.strip() == "error: unexpected ValueError: boom (DRBOOK_DEBUG=1 shows the traceback)"


def test_ctrl_c_exits_130():
    assert _run(_toy(), ["fail", "abort"])[0] == 130


@pytest.mark.parametrize("args, says", [
    (["verify"], "Missing argument 'machine'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["verify", "app01", "--bogus"], "No such option: --bogus"),
    (["protect"], "Missing argument"),
])
def test_usage_errors_exit_2_with_one_line(args, says):
    rc, err = _run(app, args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0] and "Traceback" not in err


def test_no_arguments_prints_the_help_and_exits_2_with_one_line(capsys):
    rc, err = _run(app, [])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: Missing command (see: ")
    assert "Usage" in capsys.readouterr().out


def test_an_unreachable_prefect_a_caller_chose_itself_is_named_not_the_unset_setting():
    """`drbook-lab up` talks to the lab's server with no PREFECT_API_URL set: the line names
    the server the request went to."""
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    toy = typer.Typer()

    @toy.command()
    def ask() -> None:
        raise httpx.ConnectError("refused", request=httpx.Request("GET", "http://127.0.0.1:14200/api/health"))

    @toy.command()
    def other() -> None:
        pass

    with temporary_settings(updates={PREFECT_API_URL: None}):
        code, err = _run(toy, ["ask"])
    assert code == 1
    assert "cannot reach the Prefect API at http://127.0.0.1:14200/api: ConnectError: refused" in err, err
