"""What a first-time operator runs into, with real processes: typos get one line at once, a coordinator
behind a load balancer may restart, and a revoked hospital is dropped at once. (Exported folders mapped
onto the federation's classes: test_federation.py; going on with fewer hospitals by --resume:
test_resilience.py.)"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.common.data.partition import partition_to_folders
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, start_server, synthetic_dataset, wait_for_log
from tests.tcp_proxy import TcpProxy


def one_error_line(result: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr
    return lines[0]


def make_pki(pki_dir: Path, hospitals: list[str]) -> None:
    for command in (
        ["init"],
        ["server", "--host", "127.0.0.1,localhost"],
        *(["client", "--name", h] for h in hospitals),
    ):
        result = run_cli("medfed.tools.certs", command[0], "--dir", str(pki_dir), *command[1:])
        assert result.returncode == 0, result.stderr


def tls_server_args(pki_dir: Path) -> list[str]:
    return ["--tls-cert", str(pki_dir / "server.crt"), "--tls-key", str(pki_dir / "server.key"),
            "--tls-ca", str(pki_dir / "ca.crt"), "--tls-crl", str(pki_dir / "crl.pem")]  # fmt: skip


def tls_client_args(pki_dir: Path, name: str) -> list[str]:
    return ["--tls-cert", str(pki_dir / f"{name}.crt"), "--tls-key", str(pki_dir / f"{name}.key"),
            "--tls-ca", str(pki_dir / "ca.crt")]  # fmt: skip


def start_client(procs: ProcessGroup, name: str, data: Path, port: int, *args: str, label: str | None = None) -> None:
    procs.start(label or name, "medfed.client", "--data", str(data), "--server", f"127.0.0.1:{port}", "--threads",
                "1", "--max-wait", "60", *args)  # fmt: skip


@pytest.mark.parametrize(
    ("server", "hint"),
    [
        ("nosuchhost.invalid:8443", "the host name nosuchhost.invalid does not resolve"),
        ("https://127.0.0.1:0", "has a scheme (https://): give HOST:PORT without it, e.g. 127.0.0.1:0"),
    ],
)
def test_a_coordinator_address_that_is_a_typo_is_refused_at_once(tmp_path: Path, server: str, hint: str) -> None:
    # --max-wait 600 and a 60 s limit on the command: refused at once, not retried until --max-wait
    result = run_cli("medfed.client", "--data", str(tmp_path), "--server", server, "--insecure", "--max-wait", "600",
                     timeout=60)  # fmt: skip

    assert result.returncode == 2 and hint in one_error_line(result, "fed-client")


def test_usage_errors_and_config_typos_are_one_line_with_the_setting_meant(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('adress = "0.0.0.0:8443"\n')

    flag = run_cli("medfed.server", "--adress", "0.0.0.0:8443", "--insecure")
    toml = run_cli("medfed.server", "--config", str(config), "--insecure")

    assert flag.returncode == toml.returncode == 2
    assert "unrecognized arguments: --adress 0.0.0.0:8443 (did you mean --address?)" in one_error_line(
        flag, "fed-server"
    )
    assert "unknown setting 'adress' in the config file (did you mean address?)" in one_error_line(toml, "fed-server")


def test_fed_client_help_does_not_load_pytorch() -> None:
    code = (
        "import sys\nfrom medfed.client.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)

    assert "examples:" in result.stdout and result.stdout.strip().endswith("torch not loaded"), result.stderr


def test_a_hospital_waits_out_a_coordinator_restarting_behind_a_load_balancer(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    """Over mutual TLS (the plaintext probe's side of this is in test_tls.py)."""
    partition_to_folders(synthetic_dataset(num_classes=2, size=8), tmp_path / "data", clients=1, scheme="iid")
    pki_dir = tmp_path / "pki"
    make_pki(pki_dir, ["hospital_a"])
    with TcpProxy() as proxy:
        start_client(procs, "hospital_a", tmp_path / "data" / "hospital_a", proxy.port, "--no-progress",
                     *tls_client_args(pki_dir, "hospital_a"))  # fmt: skip
        wait_for_log(procs, "hospital_a", "accepted the connection and closed it")  # and it goes on retrying
        wait_for_log(procs, "hospital_a", "retrying in")
        port = start_server(procs, tmp_path, "--rounds", "1", "--min-clients", "1", "--local-epochs", "0",
                            "--out", str(tmp_path / "run"), *tls_server_args(pki_dir))  # fmt: skip
        proxy.forward_to(port)
        codes = procs.wait_all(timeout=120)

    assert codes == {"hospital_a": 0, "server": 0}, procs.log("hospital_a")
    assert proxy.closed_connections >= 1 and "proxy or load balancer" in procs.log("hospital_a")


def test_a_revoked_hospital_is_dropped_at_once_and_the_round_goes_on_without_it(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    partition_to_folders(synthetic_dataset(num_classes=2, size=8), tmp_path / "data", clients=2, scheme="iid")
    pki_dir, out = tmp_path / "pki", tmp_path / "run"
    make_pki(pki_dir, ["hospital_a", "hospital_b"])
    # Long timeouts: the run ends within the wait below only if nothing waits them out.
    port = start_server(procs, tmp_path, *tls_server_args(pki_dir), "--rounds", "2", "--min-clients", "2",
                        "--min-fit", "1", "--heartbeat-timeout", "600", "--round-timeout", "600",
                        "--out", str(out))  # fmt: skip
    start_client(procs, "hospital_b", tmp_path / "data" / "hospital_b", port, "--no-progress",
                 *tls_client_args(pki_dir, "hospital_b"))  # fmt: skip
    wait_for_log(procs, "server", "hospital_b joined")
    procs.procs["hospital_b"].send_signal(signal.SIGSTOP)  # chosen for round 1, and it will not report
    start_client(procs, "hospital_a", tmp_path / "data" / "hospital_a", port, "--no-progress",
                 *tls_client_args(pki_dir, "hospital_a"))  # fmt: skip
    wait_for_log(procs, "hospital_a", "round 1/")

    revoked = run_cli("medfed.tools.certs", "revoke", "--dir", str(pki_dir), "--name", "hospital_b")
    assert revoked.returncode == 0, revoked.stderr
    wait_for_log(procs, "server", "hospital_b: the certificate of 'hospital_b'", timeout=30)
    codes = {name: procs.procs[name].wait(timeout=120) for name in ("server", "hospital_a")}
    procs.procs["hospital_b"].send_signal(signal.SIGCONT)  # for the clean-up to stop it

    assert codes == {"server": 0, "hospital_a": 0}, procs.log("server")
    assert "its session is closed and round 1 goes on without it" in procs.log("server")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [(r["clients"], r["missing"]) for r in history] == [(["hospital_a"], [])] * 2
    assert history[1]["bytes_down"] == history[1]["bytes_up"]  # round 2's model went to hospital_a only
