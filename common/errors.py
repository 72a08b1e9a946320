"""The exception root and the errors both roles share, in one light module (no heavy imports, so a
command such as fed-certs reports them without loading PyTorch).

Every exception medfed raises on purpose is a ``MedfedError``. The tree, and where each lives::

    MedfedError
    ├── UserError                     bad input from whoever runs a command: one line, exit 2
    │   ├── ConfigError               a setting (the message names the flag)
    │   ├── DataError                 a data folder or source (the message names the file)
    │   ├── DeviceError               a --device this machine lacks
    │   ├── PartitionError            a partition these settings cannot make
    │   ├── PkiError                  a certificate, key or CRL
    │   ├── UnknownModelError         a model name the registry does not know
    │   └── UnusableModel             a model whose outputs are not finite
    ├── WireFormatError               a peer's header or byte stream that describes no valid model
    │   └── WireTooLarge              more than the limits allow (common/limits.py)
    ├── IncompatibleUpdate            an update not in the model's form (common/compression.py)
    ├── SecureAggregationError        a secure-aggregation value that fails its check (common/secagg/)
    ├── ProvenanceError               an audit record or receipt that is not well-formed (common/provenance/)
    ├── CliError                      a command's failure reported as one line (common/cli.py)
    ├── server: CoordinatorError      a refused call, one status code each (server/errors.py)
    │           AggregationError      updates that cannot be combined (server/strategy/)
    │           ModelHostError        the PyTorch helper failed (server/model_helper/)
    │           FederationAborted     the run stopped before its last round (server/driver.py)
    ├── client: NodeError             why a hospital has to stop (client/protocol.py)
    │           TaskError             a task this hospital cannot carry out (client/trainer.py)
    │           BudgetExhausted       the next round would pass --dp-target-epsilon (client/privacy.py)
    └── tools:  ProcessError          a child process that failed or did not start (tools/local_run.py)
                AuditFileError        a file fed-audit cannot read (tools/audit/verify.py)

``USER_ERRORS`` lists the user errors by kind: what a command turns into ``<prog>: error: ...`` with exit
status 2, and what the model helper's replies name.
"""

from __future__ import annotations


class MedfedError(Exception):
    """The root: anything medfed raises on purpose."""


class UserError(MedfedError, ValueError):
    """Input that cannot be used; the message says which and why."""


class ConfigError(UserError):
    """A setting that cannot be used; the message names it."""


class DataError(UserError):
    """A data folder or source that cannot be used; the message names the file and the problem."""


class DeviceError(UserError):
    """A --device that does not exist on this machine."""


class PartitionError(UserError):
    """A partition that cannot be made with these settings."""


class PkiError(UserError):
    """A certificate, key or CRL that cannot be used; the message says which and why."""


class UnknownModelError(UserError):
    """A model name the registry does not know."""


class UnusableModel(UserError):
    """A model whose outputs are not finite numbers (NaN or infinite) on the data it was tried on."""


class WireFormatError(MedfedError, ValueError):
    """A header or byte stream that does not describe a valid model."""


class ProvenanceError(MedfedError, ValueError):
    """An audit chain record, receipt or kept update that is not well-formed (what a verifier names)."""


class SecureAggregationError(MedfedError, ValueError):
    """A secure-aggregation key, share or setting that fails its check: a signature that does not
    verify, a share that does not open, too few shares to rebuild a secret."""


class WireTooLarge(WireFormatError):
    """More data than allowed (too many tensors, too many bytes): the sender is refused, nothing is kept."""


USER_ERRORS: tuple[type[UserError], ...] = (
    ConfigError, DataError, DeviceError, PartitionError, PkiError, UnknownModelError, UnusableModel,
)  # fmt: skip
