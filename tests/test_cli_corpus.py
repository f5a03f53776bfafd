"""Bad command-line input is refused by the real `drbook` process: the documented exit code,
one line on stderr naming what is wrong, no traceback, no secret of the site echoed, and no
service asked first (every case runs with no lab: the Prefect API is a closed port).

The corpus (tests/corpus/cli/) holds one small YAML file per case, its first line a comment
saying what is wrong: `argv`, `exit`, `expect` (a fragment of the stderr line), and optionally
`env` (added to a clean environment), `site` (a case of tests/corpus/config/ to use as the
site config instead of the valid base) and `stdout` (a fragment of stdout, which is otherwise
empty). In argv, env and expect, `$DIR` is the test's directory (tests/site_corpus.py writes
the site's files there) and `$SITE` the case's site config.

Every case is a process of its own: tests/cli_corpus_driver.py imports drbook's CLI once and
forks a child per case, all at once (a fresh interpreter per case took 15-25 s of the unit
tests' one-minute budget); the few that reach for Prefect pay its import. Two cases are also
run as a real `python -m drbook.cli`, and must come out the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.site_corpus import FAKE_SECRETS, SECRET, base_bytes, site_bytes, site_file, write_files

CORPUS = Path(__file__).parent / "corpus" / "cli"
CASES: dict[str, dict] = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CORPUS.glob("*.yaml"))}

# Seconds. A refusal takes about 0.5 s of CPU, a case that imports Prefect about 3.5 s; all at
# once on two busy cores, the slowest answered in 19 s. Beyond this, it hangs.
TIMEOUT = 60
# Nothing listens on port 1 either: a case that reaches for Prefect without saying so (no
# PREFECT_API_URL of its own) is told about 127.0.0.1:1, and its `expect` does not match.
CLOSED_API = "http://127.0.0.1:1/api"
SECRET_FILES = ("storage-key", "encryption-key", "id_ed25519")  # what base.yaml's secrets are


@dataclass(frozen=True)
class Outcome:
    code: int | None
    stdout: str
    stderr: str


def _fill(text: str, directory: Path, site: Path) -> str:
    return text.replace("$SITE", str(site)).replace("$DIR", str(directory))


def _site_of(name: str, directory: Path) -> Path:
    return directory / "sites" / f"{name}.yaml" if "site" in CASES[name] else directory / "site.yaml"


def _env(directory: Path, extra: dict[str, str]) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(directory / "home"), "PREFECT_HOME": str(directory / "prefect"),
            "PREFECT_API_URL": CLOSED_API, "PREFECT_LOGGING_LEVEL": "WARNING", "CORPUS_VCENTER_PASSWORD": SECRET,
            **extra}


def _case(name: str, directory: Path) -> dict:
    case = CASES[name]
    site = _site_of(name, directory)
    return {"argv": [_fill(a, directory, site) for a in case["argv"]],
            "env": _env(directory, {k: _fill(str(v), directory, site) for k, v in (case.get("env") or {}).items()}),
            "cwd": str(directory), "timeout": TIMEOUT}


def _subprocess(case: dict) -> Outcome:
    """The case as a real `python -m drbook.cli`, as a person runs it."""
    proc = subprocess.run([sys.executable, "-m", "drbook.cli", *case["argv"]], capture_output=True, text=True,
                          env=case["env"], cwd=case["cwd"], timeout=TIMEOUT)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_files(tmp_path_factory.mktemp("cli-corpus"))
    site_file(directory, base_bytes(directory))
    (directory / "sites").mkdir()
    for name, case in CASES.items():
        if "site" in case:
            site_file(directory / "sites", site_bytes(case["site"], directory), f"{name}.yaml")
    (directory / "home").mkdir()
    return directory


@pytest.fixture(scope="module")
def outcomes(corpus_dir: Path) -> dict[str, Outcome]:
    """Every case at once, each a child process of the driver."""
    names = sorted(CASES)
    driver = subprocess.run([sys.executable, "-m", "tests.cli_corpus_driver"],
                            input=json.dumps([_case(n, corpus_dir) for n in names]), capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=TIMEOUT + 30)
    assert driver.returncode == 0, driver.stderr
    return {n: Outcome(**o) for n, o in zip(names, json.loads(driver.stdout))}


@pytest.mark.parametrize("name", ["no-args", "site-invalid-field"])
def test_a_forked_case_comes_out_as_a_real_drbook_process(name: str, outcomes: dict[str, Outcome], corpus_dir: Path):
    assert _subprocess(_case(name, corpus_dir)) == outcomes[name]


def _secrets(directory: Path) -> list[str]:
    return [*FAKE_SECRETS, *((directory / f).read_text().strip() for f in SECRET_FILES)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_with_its_exit_code(name: str, outcomes: dict[str, Outcome], corpus_dir: Path):
    case, out = CASES[name], outcomes[name]
    assert out.code is not None, f"no answer in {TIMEOUT} s: {out.stderr[-500:]}"
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip() and out.stderr.endswith("\n"), out.stderr
    assert "Traceback" not in out.stderr
    assert out.code == case["exit"], out.stderr
    expect = _fill(case["expect"], corpus_dir, _site_of(name, corpus_dir))
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
    if "stdout" in case:
        assert case["stdout"] in out.stdout
    else:
        assert out.stdout == ""
    for secret in _secrets(corpus_dir):
        assert secret not in out.stdout + out.stderr


def test_the_corpus_covers_every_command_and_says_what_each_case_is():
    from drbook.cli import app

    assert len(CASES) >= 25
    for name in CASES:
        text = (CORPUS / f"{name}.yaml").read_text()
        assert text.startswith("# "), f"{name}: the first line says what is wrong"
        assert set(CASES[name]) <= {"argv", "env", "site", "exit", "expect", "stdout"}, name
    commands = {c.name for c in app.registered_commands}
    assert commands - {case["argv"][0] for case in CASES.values() if case["argv"]} == set()


def test_each_local_flow_is_its_deployments_entrypoint():
    """--local imports a stage's flow by name only to run it: the names are the deployments'."""
    from drbook.cli import DEPLOYMENTS, FLOWS

    deployments = yaml.safe_load((Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text())
    entrypoints = {d["name"]: d["entrypoint"] for d in deployments["deployments"]}
    assert set(FLOWS) == set(DEPLOYMENTS)
    assert {c: entrypoints[d.split("/")[1]] for c, d in DEPLOYMENTS.items()} == FLOWS


def test_docs_reliability_lists_every_case_of_the_corpus():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = docs.split("## Command-line arguments", 1)[1].split("\n## ", 1)[0]
    assert [name for name in CASES if name not in section] == []
