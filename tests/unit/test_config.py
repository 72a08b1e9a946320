from pathlib import Path

import pytest

from medfed.client.config import ClientConfig
from medfed.common.config import build_config, load_toml, parse_address
from medfed.common.errors import ConfigError
from medfed.server.config import ServerConfig


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('rounds = 7\nmin-clients = 3\nmodel = "resnet18"\n')

    cfg = build_config(ServerConfig, load_toml(path), {"rounds": 2})

    assert (cfg.rounds, cfg.min_clients, cfg.model) == (2, 3, "resnet18")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rounds": 0}, "--rounds: Input should be greater than or equal to 1 (got 0)"),
        ({"round_timeout": -1}, "--round-timeout"),
        ({"model": "vgg"}, "--model"),
        ({"address": "nohost"}, "--address"),
        ({"address": "[::1]:65536"}, "port 65536 is outside 0..65535"),
        ({"clients_per_round": 5, "min_clients": 3}, "cannot exceed --min-clients"),
        ({"bogus": 1}, "--bogus: unknown setting"),
    ],
)
def test_bad_server_values_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(ServerConfig, {}, values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_client_requires_data_and_server() -> None:
    with pytest.raises(ConfigError, match="--data is required; --server is required"):
        build_config(ClientConfig, {}, {})
    with pytest.raises(ConfigError, match="--device"):
        build_config(ClientConfig, {}, {"data": "x", "server": "h:1", "device": "tpu"})


def test_broken_config_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_addresses_parse_with_ipv6_and_wildcards() -> None:
    assert parse_address("[::1]:8443") == ("::1", 8443)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    with pytest.raises(ValueError):
        parse_address(":8443")
