"""A TokenCredential that hands out one static bearer token: what the lab's ARM emulator needs.

The emulator only checks that a bearer token is present, as azure-core requires HTTPS for one.
"""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo


class StaticTokenCredential:
    def __init__(self, token: str = "drbook-lab-token", lifetime: int = 3600) -> None:
        self._token = token
        self._lifetime = lifetime

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + self._lifetime)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, int(time.time()) + self._lifetime)

    def close(self) -> None:
        return None

    def __enter__(self) -> "StaticTokenCredential":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
