"""The errors a user can cause, in one light module.

Each command turns these into a one-line ``<prog>: error: ...``; keeping them free of heavy imports
lets a command such as fed-certs report them without loading PyTorch.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


class DataError(ValueError):
    """A data folder or source that cannot be used; the message names the file and the problem."""


class DeviceError(ValueError):
    """A --device that does not exist on this machine."""


class PartitionError(ValueError):
    """A partition that cannot be made with these settings."""


class PkiError(ValueError):
    """A certificate, key or CRL that cannot be used; the message says which and why."""


class UnknownModelError(ValueError):
    """A model name the registry does not know."""


class UnusableModel(ValueError):
    """A model whose outputs are not finite numbers (NaN or infinite) on the data it was tried on."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, DataError, DeviceError, PartitionError, PkiError, UnknownModelError, UnusableModel,
)  # fmt: skip
