"""A bad site config is refused when it is loaded: a ConfigError (exit code 2) naming the
file, the field and the reason, and never a secret's value.

The corpus (tests/corpus/config/) holds one small YAML file per bad config, its first line
a comment saying what is wrong; cases.yaml says which field drbook must name and a fragment
of its answer. A case file replaces whole top-level sections of base.yaml; a `raw-` case is
the whole file, as is. `$DIR` is the test's directory, where `files` writes what they name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drbook.adapters.ssh import SshShell
from drbook.config import MachineConfig, load_site
from drbook.errors import AuthenticationError, ConfigError, HostKeyError, SecretError
from drbook.site import Site
from tests.site_corpus import (CORPUS, FAKE_SECRETS, KEY_16, KEY_24, SECRET, base_bytes, site_bytes, site_file,
                               write_files)

CASES: dict[str, dict[str, str]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The files base.yaml and the cases name (tests/site_corpus.py)."""
    return write_files(tmp_path)


def _refusal(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_site(path)
    return err.value


def _no_secret_in(message: str) -> None:
    for secret in FAKE_SECRETS:
        assert secret not in message


# -- the corpus -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_site_config_is_refused_at_load_naming_file_and_field(case: str, files: Path):
    want = CASES[case]
    path = site_file(files, site_bytes(case, files))
    err = _refusal(path)
    message = str(err)
    assert err.exit_code == 2
    assert message.startswith(f"{path}: "), message
    assert want["field"] in message, message
    assert want["expect"] in message, message
    _no_secret_in(message)
    no_chain = err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert no_chain, "no library traceback: it may quote the file"


def test_the_corpus_is_complete_and_says_what_each_case_is():
    names = {p.name for p in CORPUS.glob("*.yaml")} - {"base.yaml", "cases.yaml"}
    assert names == set(CASES)
    assert len(names) >= 30
    for name in names:
        assert (CORPUS / name).read_bytes().startswith(b"# "), f"{name}: the first line says what is wrong"


def test_the_base_config_is_valid(files: Path):
    cfg = load_site(site_file(files, base_bytes(files)))
    assert [m.name for m in cfg.machines] == ["app01"] and cfg.policy().retention_hours == 24


def test_yaml_merge_keys_may_override_what_they_merge(files: Path):
    merged = b"policies:\n- &fast {name: fast, rpo_threshold_minutes: 5}\n- <<: *fast\n  name: default\n"
    path = site_file(files, base_bytes(files).replace(b"policies:\n- name: default\n", merged))
    assert [(p.name, p.rpo_threshold_minutes) for p in load_site(path).policies] == [("fast", 5), ("default", 5)]


# -- the file itself ----------------------------------------------------------------------------


def test_a_directory_or_a_missing_file_is_refused_naming_it(tmp_path: Path):
    assert str(_refusal(tmp_path)) == f"{tmp_path}: is a directory, not a YAML file"
    assert str(_refusal(tmp_path / "nope.yaml")) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_the_cli_exits_2_naming_file_and_field(files: Path):
    path = site_file(files, site_bytes("secret-file-open.yaml", files))
    env = {**os.environ, "PREFECT_HOME": str(files / "prefect")}
    out = subprocess.run([sys.executable, "-m", "drbook.cli", "items", "--site", str(path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert str(path) in out.stderr and "azure.storage_key" in out.stderr and "chmod 600" in out.stderr
    _no_secret_in(out.stdout + out.stderr)


# -- secrets resolved when used (env:) ----------------------------------------------------------


@pytest.mark.parametrize(("value", "expect"), [(KEY_16, "32 bytes"), (KEY_24, "32 bytes"), (SECRET, "not hex")])
def test_an_env_encryption_key_is_checked_when_first_used(value: str, expect: str, files: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CORPUS_ENCRYPTION_KEY", value)
    path = site_file(files, base_bytes(files).replace(
        f"file:{files}/encryption-key".encode(), b"env:CORPUS_ENCRYPTION_KEY"))
    site = Site(cfg=load_site(path), path=path)  # env: references are resolved lazily
    with pytest.raises(SecretError) as err:
        site.encryption_key
    message = str(err.value)
    assert message.startswith(f"{path}: azure.encryption_key: ") and expect in message and err.value.exit_code == 2
    _no_secret_in(message)
    monkeypatch.setenv("CORPUS_ENCRYPTION_KEY", "ab" * 32)
    assert Site(cfg=site.cfg, path=path).encryption_key == b"\xab" * 32


# -- SSH: known_hosts and keys at the first connection ------------------------------------------


def _machine(files: Path, **update: object) -> MachineConfig:
    # Port 1 on a loopback address: the checks refuse before anything connects.
    return MachineConfig(**{"name": "app01", "address": "127.0.0.1", "port": 1, "key_file": files / "id_ed25519",
                            "known_hosts": files / "known_hosts", **update})


@pytest.mark.parametrize("content", [
    b"127.0.0.1 ssh-ed25519 AAAA!!!notbase64\n",  # paramiko: InvalidHostKey
    b"127.0.0.1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\n",  # paramiko: ValueError from the key's numbers
    b"\xff\xfe binary junk\n",  # UnicodeDecodeError
])
def test_a_malformed_known_hosts_is_a_host_key_error_naming_the_file(content: bytes, files: Path):
    bad = files / "bad_known_hosts"
    bad.write_bytes(content)
    with pytest.raises(HostKeyError) as err:
        SshShell(_machine(files, known_hosts=bad)).run("true")
    assert f"known_hosts {bad} is malformed" in str(err.value) and not err.value.retryable


def test_an_ssh_key_open_to_others_is_refused_as_ssh_does(files: Path):
    with pytest.raises(AuthenticationError) as err:
        SshShell(_machine(files, key_file=files / "open-key")).run("true")
    assert "mode 0644" in str(err.value) and f"chmod 600 {files / 'open-key'}" in str(err.value)


def test_docs_reliability_lists_every_case_of_the_corpus():
    """docs/reliability.md's table stays true to the corpus: every case is in it."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    cases = sorted(p.stem for p in (Path(__file__).parent / "corpus" / "config").glob("*.yaml")
                   if p.name not in {"cases.yaml", "base.yaml"})
    assert [c for c in cases if c not in docs] == []
