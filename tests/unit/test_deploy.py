"""The compose demo, checked offline: its structure, what each container may see, and that every command
in it is a valid invocation of our CLIs. (deploy/compose-demo-check.sh runs it for real in CI.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from medfed.client.app import build_parser as client_parser
from medfed.server.app import build_parser as server_parser
from medfed.tools.certs import build_parser as certs_parser
from medfed.tools.partition import build_parser as partition_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
PARSERS: dict[str, Callable[[], Any]] = {
    "fed-server": server_parser,
    "fed-client": client_parser,
    "fed-certs": certs_parser,
    "fed-partition": partition_parser,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def defaults(text: str) -> str:
    """Compose's ${VAR:-default} with its default; the shell's $${VAR} (escaped for compose) left as $VAR."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", text).replace("$$", "$")


def invocations(service: dict[str, Any], **overrides: str) -> list[list[str]]:
    """Every fed-* command a service runs, with shell variables filled in as the script would (the
    compose file's defaults, or ``overrides``)."""
    command = service["command"]
    env = {k: defaults(str(v)) for k, v in (service.get("environment") or {}).items()} | overrides
    if command[:2] != ["sh", "-ec"]:
        return [[defaults(str(a)) for a in command]]
    script = defaults(command[2]).replace("\\\n", " ")
    found = []
    for line in script.splitlines():
        for part in re.split(r"&&|;|\bdo\b|\bthen\b", line):
            words = shlex.split(part.strip().removeprefix("exec "))
            if words and words[0].startswith("fed-"):
                loop = ["hospital_a", "hospital_b", "hospital_c"] if "$h" in part else [""]
                for h in loop:
                    found.append([w.replace("$h", h) for w in words])

    def fill(word: str) -> str:
        word = re.sub(r"\$\{(\w+):\+([^}]*)\}", lambda m: m.group(2) if env.get(m.group(1)) else "", word)
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), word)

    filled = [[fill(w) for w in c] for c in found]
    return [[w for w in c if w] for c in filled]  # an optional flag left empty is no word at all


def test_every_command_is_a_valid_invocation_of_our_clis(compose: dict[str, Any]) -> None:
    checked = []
    for name, service in compose["services"].items():
        for argv in invocations(service):
            assert argv[0] in PARSERS, f"{name}: unknown command {argv[0]}"
            try:
                PARSERS[argv[0]]().parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{name}: {shlex.join(argv)} is not a valid {argv[0]} invocation")
            checked.append(argv[0] if argv[0] != "fed-certs" else f"fed-certs {argv[1]}")

    assert sorted(set(checked)) == [
        "fed-certs client", "fed-certs init", "fed-certs server", "fed-client", "fed-partition", "fed-server",
    ]  # fmt: skip
    assert checked.count("fed-client") == 3 and checked.count("fed-certs client") == 3


def test_each_hospital_sees_only_its_own_key_and_data(compose: dict[str, Any]) -> None:
    for h in HOSPITALS:
        service = compose["services"][f"hospital-{h[-1]}"]
        volumes = [v.split(":")[0] for v in service["volumes"]]
        argv = invocations(service)[0]

        assert volumes == [f"pki-hospital-{h[-1]}", f"data-hospital-{h[-1]}", "./hospital-policy.toml",
                           f"state-hospital-{h[-1]}"]  # fmt: skip
        assert service["volumes"][2].endswith(":ro") and argv[argv.index("--policy") + 1] == "/etc/medfed/policy.toml"
        assert service["volumes"][1].endswith(":ro") and argv[argv.index("--state-dir") + 1] == "/state"
        assert argv[argv.index("--data") + 1] == f"/{h}"
        assert argv[argv.index("--tls-key") + 1] == f"/pki/{h}/{h}.key"
        assert "--insecure" not in argv
    ca_users = [n for n, s in compose["services"].items() if any(v.startswith("ca:") for v in s.get("volumes", []))]
    assert ca_users == ["certs"]


def test_the_coordinator_runs_mutual_tls_with_a_health_check(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    argv = invocations(server)[0]

    assert {"--tls-cert", "--tls-key", "--tls-ca", "--tls-crl"} <= set(argv) and "--insecure" not in argv
    assert server["healthcheck"]["test"][:2] == ["CMD", "fed-health"]
    assert argv[argv.index("--health-address") + 1] == server["healthcheck"]["test"][2]
    assert any(v.startswith("results:") for v in server["volumes"])
    for h in HOSPITALS:
        assert compose["services"][f"hospital-{h[-1]}"]["depends_on"]["server"]["condition"] == "service_healthy"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed here")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr


def test_the_kubernetes_coordinator_runs_a_valid_fed_server_with_mutual_tls() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "coordinator.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]

    server_parser().parse_args(args[1:])  # exits (fails the test) on an invalid invocation
    assert args[0] == "fed-server" and "--insecure" not in args
    assert {"--tls-cert", "--tls-key", "--tls-ca", "--tls-crl"} <= set(args)
    assert container["readinessProbe"]["exec"]["command"] == ["fed-health", args[args.index("--health-address") + 1]]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert kinds["Service"]["spec"]["ports"][0]["port"] == int(args[args.index("--address") + 1].split(":")[1])
    secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"]
    assert secret == "medfed-coordinator-tls"


def test_the_hospital_policy_and_the_systemd_unit_are_what_fed_client_accepts() -> None:
    from medfed.client.policy import load_policy

    policy = load_policy(DEPLOY / "hospital-policy.toml")
    assert policy.allowed_coordinators == ["server"]  # the compose demo's hospitals dial server:8443
    unit = (DEPLOY / "medfed-hospital.service").read_text()
    start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S)
    assert start is not None
    argv = shlex.split(start.group(1).replace("\\\n", " "))
    assert argv[0].endswith("fed-client") and "--stay" in argv and "--policy" in argv
    client_parser().parse_args(argv[1:])  # exits (fails the test) on an invalid invocation


def test_the_grafana_dashboard_plots_only_metrics_the_coordinator_exports() -> None:
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from medfed.server.history import RoundRecord, TestResult
    from medfed.server.live.metrics import metrics_registry, render
    from medfed.server.live.monitor import Monitor

    monitor = Monitor()
    monitor.round_done(RoundRecord(1, [], 1, 1.0, 0, 0, None, None, {}, [], test=TestResult(1, 0.5, 0.5, {}, 1, [[1]])))
    monitor.refused("x", "join", "INVALID_ARGUMENT", "bad")
    exported = {
        s.name for f in text_string_to_metric_families(render(metrics_registry(monitor)).decode()) for s in f.samples
    }
    exported |= {"medfed_privacy_epsilon"}  # only under differential privacy
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = {
        m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"\b(?:medfed|process)_\w+", t["expr"])
    }
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_compose_demo_turns_secure_aggregation_on_from_the_environment(compose: dict[str, Any]) -> None:
    plain = invocations(compose["services"]["server"])[0]
    secure = invocations(compose["services"]["server"], MEDFED_SECURE_AGGREGATION="1")[0]
    assert "--secure-aggregation" not in plain and secure == [*plain, "--secure-aggregation"]
    server_parser().parse_args(secure[1:])
