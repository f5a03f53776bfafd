"""Every error drbook raises, in one tree.

    DRError                         root; `retryable` says whether trying again may help
    ├── ConfigError                 a site config or plan is invalid (names file and field)
    ├── PreflightError              a check before a stage failed; nothing was touched
    ├── StateTransitionError        the vault's state machine refused a move
    ├── VaultError
    │   ├── ConflictError           an ETag condition failed (someone else wrote first)   [retryable]
    │   ├── LeaseHeldError          an exclusive operation holds the item's lease
    │   └── NotFoundError           no such document
    ├── ProviderError               an outside system failed
    │   ├── VSphereError
    │   ├── AzureError              ARM refused or failed a call
    │   │   ├── ResourceNotFound    no such resource (group) in Azure; the vault's is NotFoundError
    │   │   └── AzureTransientError throttling, 5xx, timeouts                          [retryable]
    │   ├── BlobStoreError
    │   └── RemoteExecError         SSH / WinRM
    │       ├── HostKeyError        the host key is unknown or differs (never retried)
    │       ├── AuthenticationError wrong key or password (never retried)
    │       ├── ConnectError        refused, unreachable, timed out                    [retryable]
    │       ├── CommandTimeout      a remote command did not end in time               [retryable]
    │       └── CommandFailed       a remote command exited non-zero
    ├── ReplicationError
    │   ├── ResyncRequired          the map does not match the disk (new / resized / lost map)
    │   └── ProtocolError           the agent's stream is malformed or truncated      [retryable]
    ├── VerificationError           a disk's bytes differ from its recovery point's manifest
    ├── ApprovalRejected            a human said no, or nobody answered in time
    ├── SecretError                 a secret reference cannot be resolved
    ├── DeployError                 a deployment was not registered on the Prefect server
    ├── InvalidParameters           a command or a deployment refused its parameters
    ├── DeploymentNotFound          no such deployment on the Prefect server
    └── RunError                    a deployment run did not complete (`run` says which)
        ├── RunFailed               it failed with an error that is not drbook's
        ├── RunCrashed              its process or the worker died
        ├── RunCancelled            someone cancelled it
        └── ResultUnavailable       it completed; its result cannot be read here

Library exceptions are translated only at the adapter boundary (drbook/adapters/*), so
flows and tasks never see pyVmomi, paramiko or azure-core exceptions.
"""

from __future__ import annotations


class DRError(Exception):
    """Root of drbook's errors. `retryable` tells a task's retry policy whether to try again."""

    retryable: bool = False
    exit_code: int = 1

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class ConfigError(DRError):
    exit_code = 2


class PreflightError(DRError):
    exit_code = 4


class StateTransitionError(DRError):
    exit_code = 5


class VaultError(DRError):
    pass


class ConflictError(VaultError):
    retryable = True


class LeaseHeldError(VaultError):
    exit_code = 6


class NotFoundError(VaultError):
    pass


class ProviderError(DRError):
    pass


class VSphereError(ProviderError):
    pass


class AzureError(ProviderError):
    pass


class ResourceNotFound(AzureError):
    pass


class AzureTransientError(AzureError):
    retryable = True


class BlobStoreError(ProviderError):
    pass


class RemoteExecError(ProviderError):
    pass


class HostKeyError(RemoteExecError):
    retryable = False


class AuthenticationError(RemoteExecError):
    retryable = False


class ConnectError(RemoteExecError):
    retryable = True


class CommandTimeout(RemoteExecError):
    retryable = True


class CommandFailed(RemoteExecError):
    def __init__(self, message: str, *, exit_status: int, stderr: str = "") -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.stderr = stderr


class ReplicationError(DRError):
    pass


class ResyncRequired(ReplicationError):
    pass


class ProtocolError(ReplicationError):
    retryable = True


class VerificationError(DRError):
    exit_code = 7


class ApprovalRejected(DRError):
    exit_code = 8


class SecretError(DRError):
    exit_code = 2


class DeployError(DRError):
    exit_code = 9


class InvalidParameters(DRError):
    exit_code = 2


class DeploymentNotFound(DRError):
    exit_code = 2


class RunError(DRError):
    """A run that did not complete. `run` says which (a drbook.runs.RunRef: id, name, UI URL)."""

    def __init__(self, message: str, *, run: object | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.run = run
        if exit_code is not None:
            self.exit_code = exit_code


class RunFailed(RunError):
    exit_code = 10


class RunCrashed(RunError):
    exit_code = 11


class RunCancelled(RunError):
    exit_code = 12


class ResultUnavailable(RunError):
    exit_code = 13


def is_retryable(exc: BaseException) -> bool:
    """For Prefect's `retry_condition_fn`: retry only what may succeed next time."""
    return isinstance(exc, DRError) and exc.retryable


class PlanStopped(DRError):
    """A recovery plan stopped: a critical machine or action failed, or a manual action was
    answered not done. What ran before stays as its state machine says; nothing after ran."""

    exit_code = 14
