"""Secret references: a config names where a secret lives, never the secret itself.

    env:NAME        an environment variable
    file:PATH       a file readable only by its owner (the lab writes these)
    prefect:NAME    a Prefect Secret block
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, SecretStr

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


SecretRef = Annotated[str, AfterValidator(_check_ref)]


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
