"""Secret references: a config names where a secret lives, never the secret itself.

    env:NAME        an environment variable
    file:PATH       a file readable only by its owner (the lab writes these)
    prefect:NAME    a Prefect Secret block

Loading a site config (drbook.config.load_site) checks `file:` references: the file exists
and is private to its owner, as ssh requires of a private key. `env:` and `prefect:`
references are resolved only when a secret is used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, get_args

from pydantic import AfterValidator, SecretStr
from pydantic.fields import FieldInfo

from drbook.errors import SecretError

_SCHEMES = ("env", "file", "prefect")


def _check_ref(value: str) -> str:
    scheme, sep, name = value.partition(":")
    if not sep or scheme not in _SCHEMES or not name:
        # Never echo the value: it may be a secret pasted where a reference belongs.
        raise ValueError(
            "must be a secret reference 'env:NAME', 'file:PATH' or 'prefect:BLOCK' "
            "(inline secrets are refused)"
        )
    return value


_REF_CHECK = AfterValidator(_check_ref)
SecretRef = Annotated[str, _REF_CHECK]


def is_secret_field(info: FieldInfo) -> bool:
    """Whether a model field holds a SecretRef (`SecretRef` or `SecretRef | None`)."""
    return _REF_CHECK in info.metadata or SecretRef in get_args(info.annotation)


def private_file_problem(path: Path) -> str | None:
    """Why a file cannot hold a secret (missing, not a file, open to others); None if it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(mode):
        return f"{path} is not a file"
    if mode & 0o077:
        return (f"{path} is open to group or others (mode {stat.S_IMODE(mode):04o}); a secret must be private "
                f"to its owner, as ssh requires of a key: chmod 600 {path}")
    return None


def secret_file_problem(ref: str) -> str | None:
    """private_file_problem of a `file:` reference's file; None for other schemes (resolved when used)."""
    scheme, _, name = ref.partition(":")
    return private_file_problem(Path(name)) if scheme == "file" else None


def resolve_secret(ref: str) -> SecretStr:
    """Return the secret a reference points at; errors name the reference, never the value."""
    scheme, _, name = ref.partition(":")
    if scheme == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"secret {ref!r}: environment variable {name} is not set")
        return SecretStr(value)
    if scheme == "file":
        try:
            return SecretStr(Path(name).read_text().strip())
        except OSError as exc:
            raise SecretError(f"secret {ref!r}: cannot read the file ({exc.strerror})") from None
    if scheme == "prefect":
        from prefect.blocks.system import Secret

        try:
            return SecretStr(str(Secret.load(name).get()))
        except Exception as exc:  # Prefect raises ValueError or httpx errors here
            raise SecretError(f"secret {ref!r}: Prefect Secret block not loadable ({type(exc).__name__})") from None
    raise SecretError(f"secret {ref!r}: unknown scheme {scheme!r}")
