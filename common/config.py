"""Configuration plumbing shared by the commands: TOML files, flag overrides and readable errors.

Each command's settings are one pydantic model, validated once at start-up. Values come from an
optional TOML file, then from flags, which win. A bad value stops the command with a single line that
names the flag (``--rounds``), never a traceback.
"""

from __future__ import annotations

import difflib
import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError, model_validator
from typing_extensions import Self

from medfed.common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

M = TypeVar("M", bound=BaseModel)


def parse_address(value: str) -> tuple[str, int]:
    """'host:port', '[v6addr]:port' or ':port' into (host, port)."""
    if "://" in value:  # a URL pasted from a browser or a proxy's settings
        scheme, _, rest = value.partition("://")
        raise ValueError(f"{value!r} has a scheme ({scheme}://): give HOST:PORT without it, e.g. {rest.rstrip('/')}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{value!r} has no host (use 0.0.0.0:{port} to listen on every interface)")
    return host, port


def is_loopback(host: str) -> bool:
    """Only this machine can reach an address on ``host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(value: str) -> str:
    parse_address(value)
    return value


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return {key.replace("-", "_"): value for key, value in raw.items()}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(error: dict[str, Any], fields: Iterable[str]) -> str:
    field = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field:  # a check across settings: its message names the flags itself
        return message
    flag = f"--{field.replace('_', '-')}"
    if error["type"] == "extra_forbidden":  # only a config file can name a setting no flag has
        key = field.replace("_", "-")
        return f"unknown setting {key!r} in the config file" + did_you_mean(key, (f.replace("_", "-") for f in fields))
    if error["type"] == "missing":
        return f"{flag} is required"
    if "input" in error and not isinstance(error["input"], dict):
        return f"{flag}: {message} (got {error['input']!r})"
    return f"{flag}: {message}"


def format_validation_error(exc: ValidationError, fields: Iterable[str] = ()) -> str:
    names = list(fields)
    return "; ".join(_describe(dict(e), names) for e in exc.errors())


def build_config(model: type[M], file_values: dict[str, Any], flag_values: dict[str, Any]) -> M:
    """Flags override the file; the merged settings are validated once."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if k != "config"}}
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model.model_fields)) from None


def field_default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].default


class TlsFiles(BaseModel):
    """The TLS settings both commands share: all three files, or --insecure, never both."""

    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def tls_paths(self) -> tuple[Path, Path, Path]:
        """(certificate, key, CA); only when ``tls`` holds."""
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            raise ConfigError("--tls-cert, --tls-key and --tls-ca are required")
        return self.tls_cert, self.tls_key, self.tls_ca

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> Self:
        given = [self.tls_cert, self.tls_key, self.tls_ca]
        if any(given) and not all(given):
            raise ValueError("--tls-cert, --tls-key and --tls-ca go together")
        if self.tls and self.insecure:
            raise ValueError("--insecure contradicts the --tls-* flags; choose one")
        return self
