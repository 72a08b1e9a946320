"""Code shared by the coordinator and the hospital nodes: wire format, data, models, configuration."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medfed")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
