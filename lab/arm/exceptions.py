"""Errors the emulator answers with: ARM's own error code, HTTP status and message.

The body is always ``{"error": {"code", "message"[, "target"]}}`` so azure-core maps a 404
to ``ResourceNotFoundError``, a 409 to ``ResourceExistsError`` and the rest to
``HttpResponseError``, each carrying ``.error.code``.
"""

from __future__ import annotations

from typing import Any


class ArmError(Exception):
    status = 400
    code = "BadRequest"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 target: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.target = target
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}

    def as_dict(self) -> dict[str, Any]:
        """The error as stored in an operation record (status kept for Location polling)."""
        return {**self.body()["error"], "status": self.status}


class BadRequest(ArmError):
    status = 400
    code = "BadRequest"


class InvalidParameter(ArmError):
    status = 400
    code = "InvalidParameter"


class NotFound(ArmError):
    status = 404
    code = "ResourceNotFound"


class Conflict(ArmError):
    status = 409
    code = "Conflict"


class OperationNotAllowed(ArmError):
    status = 409
    code = "OperationNotAllowed"


class Unauthorized(ArmError):
    status = 401
    code = "AuthenticationFailed"


def resource_not_found(type_: str, name: str, rg: str) -> NotFound:
    return NotFound(f"The Resource '{type_}/{name}' under resource group '{rg}' was not found. "
                    "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
                    code="ResourceNotFound")


def resource_group_not_found(rg: str) -> NotFound:
    return NotFound(f"Resource group '{rg}' could not be found.", code="ResourceGroupNotFound")


def subscription_not_found(sub: str) -> NotFound:
    return NotFound(f"The subscription '{sub}' could not be found.", code="SubscriptionNotFound")


def error_from_dict(data: dict[str, Any]) -> ArmError:
    return ArmError(data.get("message", ""), code=data.get("code", "InternalServerError"),
                    status=int(data.get("status", 500)), target=data.get("target"))
