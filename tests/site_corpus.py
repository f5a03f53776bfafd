"""The site configs of the bad-input corpus (tests/corpus/config/): the valid base, the bad
cases, and the files they name, written into a test's directory (`$DIR` in the YAML).

Used by tests/test_config_validation.py (each bad config) and tests/test_cli_corpus.py (the
commands, with the base site and some of the bad ones).
"""

from __future__ import annotations

from pathlib import Path

import yaml

CORPUS = Path(__file__).parent / "corpus" / "config"

# Recognizable fake secrets: the cases put them in secret fields and secret files.
SECRET = "hunter2-FAKE-SECRET-9f3b"
KEY_16 = "deadbeef" * 4
KEY_24 = "deadbeef" * 6
FAKE_SECRETS = (SECRET, "deadbeef")


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def write_files(directory: Path) -> Path:
    """The files base.yaml and the cases name: good ones private to their owner, bad ones not."""
    _write(directory / "id_ed25519", "a private key\n", 0o600)
    _write(directory / "known_hosts", "", 0o644)
    _write(directory / "encryption-key", "ab" * 32 + "\n", 0o600)
    _write(directory / "storage-key", "a storage key\n", 0o600)
    _write(directory / "open-key", "a private key\n", 0o644)
    _write(directory / "open-secret", SECRET + "\n", 0o644)
    _write(directory / "key-16", KEY_16 + "\n", 0o600)
    _write(directory / "key-24", KEY_24 + "\n", 0o600)
    _write(directory / "key-not-hex", SECRET.ljust(64, "x") + "\n", 0o600)
    return directory


def _with_dir(text: bytes, directory: Path) -> bytes:
    return text.replace(b"$DIR", str(directory).encode())


def base_bytes(directory: Path) -> bytes:
    return _with_dir((CORPUS / "base.yaml").read_bytes(), directory)


def site_bytes(case: str, directory: Path) -> bytes:
    """The site config a case stands for."""
    text = _with_dir((CORPUS / case).read_bytes(), directory)
    if case.startswith("raw-"):
        return text
    base = yaml.safe_load(base_bytes(directory))
    return yaml.safe_dump({**base, **yaml.safe_load(text)}, sort_keys=False).encode()


def site_file(directory: Path, content: bytes, name: str = "site.yaml") -> Path:
    path = directory / name
    path.write_bytes(content)
    return path
