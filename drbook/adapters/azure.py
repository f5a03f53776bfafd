"""Azure Resource Manager clients from the site config, and the table that turns
azure-core's exceptions into drbook's (flows never see azure.core.exceptions)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from drbook.config import AzureConfig
from drbook.errors import AzureError, AzureTransientError, NotFoundError
from drbook.adapters.blobstore import azure_credential


@dataclass
class AzureClients:
    """The four management clients, built lazily, all pointed at one ARM endpoint."""

    cfg: AzureConfig

    def _kwargs(self) -> dict:
        kw: dict = {"base_url": self.cfg.arm_base_url, "credential_scopes": [self.cfg.arm_base_url.rstrip("/") + "/.default"]}
        if self.cfg.ca_bundle:
            kw["connection_verify"] = str(self.cfg.ca_bundle)
        # Retries are ours (Prefect task policies), so one failed call is seen once.
        kw["retry_total"] = 2
        kw["polling_interval"] = 0.2
        return kw

    @cached_property
    def credential(self) -> TokenCredential:
        return azure_credential(self.cfg)

    @cached_property
    def resource(self):
        from azure.mgmt.resource.resources import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def network(self):
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def compute(self):
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def storage(self):
        from azure.mgmt.storage import StorageManagementClient

        return StorageManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())


def _code(exc: HttpResponseError) -> str:
    err = getattr(exc, "error", None)
    return (getattr(err, "code", None) or "") if err else ""


@contextlib.contextmanager
def map_azure_errors(what: str) -> Iterator[None]:
    """Translate azure-core exceptions at the boundary; `what` says what we were doing."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{what}: not found ({_code(exc) or 'ResourceNotFound'})") from None
    except ResourceExistsError as exc:
        raise AzureError(f"{what}: already exists ({_code(exc) or 'Conflict'})") from None
    except ClientAuthenticationError:
        raise AzureError(f"{what}: authentication to Azure failed") from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise AzureTransientError(f"{what}: Azure did not answer ({type(exc).__name__})") from None
    except HttpResponseError as exc:
        status = exc.status_code or 0
        code = _code(exc)
        message = getattr(getattr(exc, "error", None), "message", None) or exc.reason or ""
        text = f"{what}: {code or status} {message}".strip()
        if status == 429 or status >= 500 or code in {"OperationPreempted", "RetryableError", "InternalServerError"}:
            raise AzureTransientError(text) from None
        raise AzureError(text) from None
