from pathlib import Path

import pytest

from medfed.client.config import ClientConfig
from medfed.common.config import build_config, load_toml, parse_address
from medfed.common.errors import ConfigError
from medfed.server.config import ServerConfig
from medfed.server.strategy.registry import build_strategy, warnings


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
        ({"bogus": 1}, "unknown setting 'bogus' in the config file"),
        ({"strategy": "fedsgd"}, "--strategy"),
        ({"server_momentum": 0.5}, "--server-momentum is a setting of --strategy fedavgm, not fedavg"),
        ({"strategy": "median", "prox_mu": 0.1}, "--prox-mu is a setting of --strategy fedprox, not median"),
        ({"strategy": "fedavgm", "server_tau": 0.1}, "--server-tau is a setting of --strategy fedadam or fedyogi"),
        (
            {"strategy": "fedadam", "dp_central": True, "dp_clip": 1.0, "dp_noise_multiplier": 1.0},
            "--dp-central is its own strategy",
        ),
        ({"strategy": "scaffold", "update_encoding": "int8"}, "--strategy scaffold cannot use --update-encoding int8"),
        (
            {"strategy": "scaffold", "dp_local": True, "dp_clip": 1.0, "dp_noise_multiplier": 1.0},
            "--strategy scaffold cannot be combined with --dp-local",
        ),
        ({"strategy": "scaffold", "norm_bound": 5.0}, "--norm-bound cannot stand in front of --strategy scaffold"),
        ({"strategy": "fedbn", "server_lr": 0.5}, "--server-lr is a setting of --strategy fedavgm or"),
        (
            {"address": "https://127.0.0.1:0"},
            "has a scheme (https://): give HOST:PORT without it, e.g. 127.0.0.1:0",
        ),
    ],
)
def test_bad_server_values_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(ServerConfig, {}, values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_mistyped_setting_in_the_config_file_gets_the_close_match(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('adress = "0.0.0.0:8443"\nmin-client = 3\n')

    with pytest.raises(ConfigError) as err:
        build_config(ServerConfig, load_toml(path), {})

    assert str(err.value) == (
        "unknown setting 'adress' in the config file (did you mean address?); "
        "unknown setting 'min-client' in the config file (did you mean min-clients?)"
    )


def test_a_class_map_reads_folder_class_pairs() -> None:
    cfg = build_config(
        ClientConfig, {}, {"data": "x", "server": "h:1", "class_map": "NORMAL=normal, PNEUMONIA=pneumonia"}
    )

    assert cfg.class_map == {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
    with pytest.raises(ConfigError, match="--class-map: give FOLDER=CLASS pairs"):
        build_config(ClientConfig, {}, {"data": "x", "server": "h:1", "class_map": "NORMAL:normal"})
    with pytest.raises(ConfigError, match="needs both a folder and a class name"):
        build_config(ClientConfig, {}, {"data": "x", "server": "h:1", "class_map": "NORMAL="})


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


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dp_central": True, "dp_clip": 0, "dp_noise_multiplier": 1}, "--dp-clip: Input should be greater than 0"),
        ({"dp_central": True, "dp_clip": 1, "dp_noise_multiplier": -0.5}, "--dp-noise-multiplier: Input should be"),
        ({"dp_central": True, "dp_clip": 1, "dp_noise_multiplier": 1, "dp_delta": 1.0}, "--dp-delta: Input should"),
        ({"dp_central": True, "dp_clip": 1, "dp_noise_multiplier": 1, "dp_delta": 0}, "--dp-delta: Input should"),
        ({"dp_central": True}, "--dp-central needs --dp-clip and --dp-noise-multiplier"),
        ({"dp_clip": 1.0}, "--dp-clip needs --dp-central or --dp-local"),
        ({"dp_noise_multiplier": 0.0}, "--dp-noise-multiplier needs --dp-central or --dp-local"),
        ({"dp_central": True, "dp_local": True, "dp_clip": 1, "dp_noise_multiplier": 1}, "choose one of"),
        ({"dp_local": True, "dp_clip": 1, "dp_noise_multiplier": 1, "dp_target_epsilon": 3}, "fed-client has the flag"),
        ({"dp_adaptive_clip": True}, "--dp-adaptive-clip needs --dp-central"),
        ({"dp_central": True, "dp_clip": 1, "dp_noise_multiplier": 1, "dp_target_epsilon": 0}, "--dp-target-epsilon"),
    ],
)
def test_bad_server_privacy_settings_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(ServerConfig, {}, values)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dp_clip": 0.0, "dp_noise_multiplier": 1.0}, "--dp-clip: Input should be greater than 0"),
        ({"dp_clip": -2.0, "dp_noise_multiplier": 1.0}, "--dp-clip"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": -1.0}, "--dp-noise-multiplier"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": float("nan")}, "--dp-noise-multiplier"),
        ({"dp_delta": 1.5}, "--dp-delta"),
        ({"dp_delta": 0.0}, "--dp-delta"),
        ({"dp_clip": 1.0}, "--dp-clip and --dp-noise-multiplier go together"),
        ({"dp_sgd": True}, "--dp-sgd needs --dp-clip"),
        ({"dp_target_epsilon": -1.0}, "--dp-target-epsilon"),
    ],
)
def test_bad_client_privacy_settings_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(ClientConfig, {}, {"data": "x", "server": "h:1", **values})
    assert message in str(err.value)


def test_client_privacy_flags_make_the_hospitals_own_settings() -> None:
    cfg = build_config(
        ClientConfig, {}, {"data": "x", "server": "h:1", "dp_clip": 1.0, "dp_noise_multiplier": 1.1, "dp_sgd": True}
    )

    assert cfg.own_dp is not None
    assert (cfg.own_dp.mechanism, cfg.own_dp.clip, cfg.own_dp.noise_multiplier) == ("dp_sgd", 1.0, 1.1)


def test_a_strategy_and_its_settings_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('strategy = "fedyogi"\nserver_lr = 0.03\nserver_beta2 = 0.9\n')

    cfg = build_config(ServerConfig, load_toml(path), {})

    strategy = build_strategy(cfg)
    assert strategy.describe() == {"name": "fedyogi", "server_lr": 0.03, "server_beta1": 0.9, "server_beta2": 0.9,
                                   "server_tau": 0.001}  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "described"),
    [
        ('strategy = "scaffold"\nserver-lr = 0.5\n', {"name": "scaffold", "server_lr": 0.5, "local_optimizer": "sgd"}),
        ('strategy = "fedbn"\n', {"name": "fedbn"}),
    ],
)
def test_scaffold_and_fedbn_come_from_the_config_file(tmp_path: Path, toml: str, described: dict[str, object]) -> None:
    path = tmp_path / "server.toml"
    path.write_text(toml)

    strategy = build_strategy(build_config(ServerConfig, load_toml(path), {}))

    assert described.items() <= strategy.describe().items()


@pytest.mark.parametrize(
    ("values", "warned"),
    [
        ({"strategy": "scaffold"}, "scaffold's hospitals train with plain SGD"),
        ({"strategy": "krum", "min_clients": 3}, "tolerates --krum-f 1 poisoned hospitals only with at least 5"),
        ({"strategy": "trimmed-mean", "min_clients": 3}, "trims nothing from 3 updates"),
    ],
)
def test_a_strategy_that_promises_less_with_these_settings_says_so(values: dict[str, object], warned: str) -> None:
    assert any(warned in w for w in warnings(build_config(ServerConfig, {}, values)))
    assert not warnings(build_config(ServerConfig, {}, {**values, "strategy": "fedavg"}))
