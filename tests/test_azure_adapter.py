"""The Azure seam: azure-core's exceptions become drbook's in one table, and the in-memory
double offers exactly the interface the real adapter does. No service needed."""

from __future__ import annotations

import inspect
import json

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from drbook.adapters.azure import AzureRecoverySite, map_azure_errors
from drbook.adapters.recovery_site import RecoverySite
from drbook.errors import AzureError, AzureTransientError, CommandFailed, NotFoundError, ResourceNotFound
from tests.fake_azure import FakeRecoverySite


class _Response:
    """Just enough of an HTTP response for azure-core to read an ARM error body from."""

    def __init__(self, status: int, code: str = "", message: str = "", reason: str = "") -> None:
        self.status_code = status
        self.reason = reason
        self.headers: dict[str, str] = {}
        self.content_type = "application/json"
        self._body = json.dumps({"error": {"code": code, "message": message}}) if code else ""

    def text(self, encoding: str | None = None) -> str:
        return self._body

    def body(self) -> bytes:
        return self._body.encode()


def _translated(exc: BaseException) -> BaseException:
    with pytest.raises(Exception) as raised:
        with map_azure_errors("create VM app01-vm"):
            raise exc
    return raised.value


@pytest.mark.parametrize(("exc", "expected", "retryable", "text"), [
    (ResourceNotFoundError(response=_Response(404, "ResourceGroupNotFound", "no group")), ResourceNotFound, False,
     "create VM app01-vm: not found (ResourceGroupNotFound)"),
    (ResourceExistsError(response=_Response(409, "Conflict", "exists")), AzureError, False,
     "create VM app01-vm: Conflict exists"),
    (ResourceExistsError(response=_Response(409, "OperationNotAllowed", "disk is attached to VM x")), AzureError, False,
     "create VM app01-vm: OperationNotAllowed disk is attached to VM x"),
    (ClientAuthenticationError(response=_Response(401, "InvalidAuthenticationToken", "bad token")), AzureError, False,
     "create VM app01-vm: authentication to Azure failed"),
    (HttpResponseError(response=_Response(429, "TooManyRequests", "slow down")), AzureTransientError, True,
     "create VM app01-vm: TooManyRequests slow down"),
    (HttpResponseError(response=_Response(500, reason="Internal Server Error")), AzureTransientError, True,
     "create VM app01-vm: 500 Internal Server Error"),
    (HttpResponseError(response=_Response(503, "ServerBusy", "busy")), AzureTransientError, True,
     "create VM app01-vm: ServerBusy busy"),
    (HttpResponseError(response=_Response(409, "OperationNotAllowed", "disk is attached")), AzureError, False,
     "create VM app01-vm: OperationNotAllowed disk is attached"),
    (HttpResponseError(response=_Response(200, "OperationPreempted", "preempted")), AzureTransientError, True,
     "create VM app01-vm: OperationPreempted preempted"),
    (HttpResponseError(response=_Response(400, "InvalidParameter", "bad size")), AzureError, False,
     "create VM app01-vm: InvalidParameter bad size"),
    (ServiceRequestError("connection refused"), AzureTransientError, True,
     "create VM app01-vm: Azure did not answer (ServiceRequestError)"),
    (ServiceResponseError("read timed out"), AzureTransientError, True,
     "create VM app01-vm: Azure did not answer (ServiceResponseError)"),
])
def test_azure_core_errors_become_drbooks(exc, expected, retryable, text):
    err = _translated(exc)
    assert type(err) is expected
    assert err.retryable is retryable
    assert str(err) == text
    assert err.__cause__ is None and err.__suppress_context__, "the SDK's exception is not chained"


def test_an_arm_404_is_not_the_vaults_not_found():
    err = _translated(ResourceNotFoundError(response=_Response(404, "ResourceNotFound", "gone")))
    assert isinstance(err, ResourceNotFound) and isinstance(err, AzureError)
    assert not isinstance(err, NotFoundError)


def test_drbook_errors_and_foreign_exceptions_pass_through():
    ours = CommandFailed("x", exit_status=1)
    assert _translated(ours) is ours
    other = ValueError("a bug")
    assert _translated(other) is other


def _methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_the_adapter_and_the_double_offer_exactly_the_interface():
    wanted = _methods(RecoverySite)
    assert wanted, "the Protocol declares methods"
    for cls in (AzureRecoverySite, FakeRecoverySite):
        offered = _methods(cls)
        for name, signature in wanted.items():
            assert name in offered, f"{cls.__name__} lacks {name}"
            assert list(offered[name].parameters) == list(signature.parameters), f"{cls.__name__}.{name}"
    assert set(_methods(AzureRecoverySite)) == set(wanted), "the adapter offers nothing beyond the interface"
