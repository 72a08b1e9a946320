#!/usr/bin/env bash
# Build the image and run the three-hospital compose demo for real, as CI does: 2 rounds over mutual TLS,
# then check that the final model and history exist, that all three hospitals took part in every
# round, that fed-audit verifies the run's audit chain and a hospital's receipts, and tear everything down (containers, volumes, networks, the Docker daemon this script started).
#
#   sudo deploy/compose-demo-check.sh          (from the repository root; PYTHON=... picks the host Python)
#   sudo deploy/compose-demo-check.sh --prepare   (only what needs no daemon: packages, base, wheelhouse;
#                                                  CI runs this while the tests run)
#
# On a machine without an image registry it builds what the demo needs locally, caching it in
# $MEDFED_DOCKER_CACHE (default /var/cache/medfed-docker) for the next run: a Debian bookworm base made
# with debootstrap and `docker import` (passed as BASE_IMAGE) and a wheelhouse built on the host
# (passed through deploy/wheels with PIP_ARGS="--no-index --find-links /wheels"). It exits 0 with a
# line starting "SKIPPED:" only when no Docker engine can be started here, saying why.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MEDFED_DOCKER_CACHE:-/var/cache/medfed-docker}
PYTHON=${PYTHON:-python3}
PROJECT=medfedci
IMAGE=medfed:ci
BASE=medfed-base:bookworm
RUN_DIR=$(mktemp -d /tmp/medfed-docker.XXXXXX)
STARTED_DAEMON=""
FORWARD_POLICY=""
PREPARE_ONLY=0
[ "${1:-}" = "--prepare" ] && PREPARE_ONLY=1

log() { echo "[compose-demo] $(date +%H:%M:%S) $*"; }
skip() { echo "SKIPPED: $*"; exit 0; }

cleanup() {
    set +e
    if [ -n "${DOCKER_HOST:-}" ] && [ -f "$ROOT/deploy/docker-compose.yml" ]; then
        docker-compose -p "$PROJECT" -f "$ROOT/deploy/docker-compose.yml" down -v --remove-orphans >/dev/null 2>&1
        docker image prune -f >/dev/null 2>&1  # earlier builds' layers: keep the cache from growing
    fi
    if [ -n "$STARTED_DAEMON" ] && [ -f "$RUN_DIR/dockerd.pid" ]; then
        kill "$(cat "$RUN_DIR/dockerd.pid")" 2>/dev/null
        for _ in $(seq 1 50); do [ -f "$RUN_DIR/dockerd.pid" ] || break; sleep 0.2; done
    fi
    # dockerd sets the FORWARD policy to DROP and leaves it so; put back what was there.
    [ -n "$FORWARD_POLICY" ] && iptables -P FORWARD "$FORWARD_POLICY" 2>/dev/null
    find "$ROOT/deploy/wheels" -name '*.whl' -delete 2>/dev/null
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT

# --- an engine -----------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "not root: cannot install or start a Docker engine here"
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io, containerd, runc, docker-compose, debootstrap (Debian packages)"
    command -v apt-get >/dev/null || skip "no dockerd and no apt-get to install one"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io containerd runc docker-compose iptables debootstrap >"$RUN_DIR/apt.log" 2>&1); then
        tail -5 "$RUN_DIR/apt.log"
        skip "the Docker engine packages could not be installed"
    fi
fi
mkdir -p "$CACHE"

# --- a base image, without a registry ------------------------------------------------------------
if [ ! -f "$CACHE/base-bookworm.tar.gz" ]; then
    log "building a Debian bookworm base with debootstrap (about 4 minutes, cached)"
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$CACHE/rootfs" \
        http://deb.debian.org/debian >"$RUN_DIR/debootstrap.log" 2>&1 || { tail -5 "$RUN_DIR/debootstrap.log"; exit 1; }
    tar -C "$CACHE/rootfs" -czf "$CACHE/base-bookworm.tar.gz.tmp" . && mv "$CACHE/base-bookworm.tar.gz.tmp" "$CACHE/base-bookworm.tar.gz"
    rm -rf "$CACHE/rootfs"
fi

# --- a wheelhouse, built on the host -------------------------------------------------------------
"$PYTHON" -c "import tomllib; print('\n'.join(tomllib.load(open('$ROOT/pyproject.toml', 'rb'))['project']['dependencies']))" \
    >"$RUN_DIR/requirements.txt"
KEY=$(sha256sum "$RUN_DIR/requirements.txt" | cut -c1-16)
WHEELS="$CACHE/wheels-$KEY"
if [ ! -f "$WHEELS/.complete" ]; then
    log "building the wheelhouse (CPU-only torch from the host's wheels, the rest from the index)"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # Prefer a CPU-only torch wheel the host provides (pip's find-links), as a user would take PyTorch's CPU index.
    TORCH=$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
    "$PYTHON" -m pip wheel -q -w "$WHEELS" ${TORCH:+"$TORCH"} -r "$RUN_DIR/requirements.txt" "setuptools>=77" wheel \
        2> >(grep -v "^WARNING: Location" >&2)
    touch "$WHEELS/.complete"
fi

if [ "$PREPARE_ONLY" = 1 ]; then
    log "prepared: engine packages, base image tarball and wheelhouse in $CACHE"
    exit 0
fi

FORWARD_POLICY=$(iptables -S FORWARD 2>/dev/null | awk '/^-P FORWARD/ {print $3}' || true)
mkdir -p "$CACHE/docker"
log "starting dockerd (data in $CACHE/docker)"
dockerd --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" -H "unix://$RUN_DIR/docker.sock" \
    --pidfile "$RUN_DIR/dockerd.pid" >"$RUN_DIR/dockerd.log" 2>&1 &
STARTED_DAEMON=1
export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
if ! docker info >/dev/null 2>&1; then
    tail -5 "$RUN_DIR/dockerd.log"
    skip "dockerd did not start"
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    log "importing the base image"
    docker import -c 'CMD ["/bin/bash"]' "$CACHE/base-bookworm.tar.gz" "$BASE" >/dev/null
fi
cp "$WHEELS"/*.whl "$ROOT/deploy/wheels/"

# --- the image and the demo ----------------------------------------------------------------------
log "building $IMAGE"
docker build -q -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" --build-arg BASE_IMAGE="$BASE" \
    --build-arg PIP_ARGS="--no-index --find-links /wheels" "$ROOT" >/dev/null
find "$ROOT/deploy/wheels" -name '*.whl' -delete

export MEDFED_IMAGE=$IMAGE MEDFED_ROUNDS=2
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/docker-compose.yml")
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "docker-compose up: certs, data, server, hospital-a, hospital-b, hospital-c (2 rounds)"
"${COMPOSE[@]}" up -d
SERVER=$("${COMPOSE[@]}" ps -q server)
# The coordinator's dashboard, published on this machine's loopback over HTTPS: it must answer the
# token, and only the token, while the run goes on.
"$PYTHON" - <<'EOF'
import json, ssl, time, urllib.error, urllib.request
url, token = "https://127.0.0.1:8080/api/status", "compose-demo-token-change-me"
context = ssl._create_unverified_context()  # the demo CA lives in a volume; only the answer is checked here
deadline = time.monotonic() + 180
while True:
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        status = json.load(urllib.request.urlopen(request, timeout=5, context=context))
        break
    except (OSError, ValueError) as exc:
        assert time.monotonic() < deadline, f"the dashboard did not answer within 180 s: {exc}"
        time.sleep(0.5)
assert status["format"] == "medfed-status/1", status
try:
    urllib.request.urlopen(url, timeout=5, context=context)
    raise AssertionError("the dashboard answered without its token")
except urllib.error.HTTPError as exc:
    assert exc.code == 401, exc.code
print(f"[compose-demo] the dashboard answers over HTTPS with its token: phase {status['phase']}, "
      f"{len(status['hospitals'])} hospital(s) so far")
EOF
CODE=$(timeout 600 docker wait "$SERVER" || echo timeout)
"${COMPOSE[@]}" logs --no-color server hospital-a hospital-b hospital-c >"$RUN_DIR/compose.log" 2>&1 || true
if [ "$CODE" != 0 ]; then
    tail -40 "$RUN_DIR/compose.log"
    echo "FAILED: the coordinator exited with $CODE"
    exit 1
fi
for h in hospital-a hospital-b hospital-c; do
    HCODE=$(timeout 120 docker wait "$("${COMPOSE[@]}" ps -q "$h")" || echo timeout)
    [ "$HCODE" = 0 ] || { tail -40 "$RUN_DIR/compose.log"; echo "FAILED: $h exited with $HCODE"; exit 1; }
done
docker cp "$SERVER:/results" "$RUN_DIR/results"
docker cp "$SERVER:/pki/server/ca.crt" "$RUN_DIR/ca.crt"
docker cp "$("${COMPOSE[@]}" ps -q hospital-b):/state" "$RUN_DIR/state-hospital-b"
"$PYTHON" - "$RUN_DIR/results" <<'EOF'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
for name in ("model.safetensors", "model.json", "history.jsonl", "report.md"):
    assert (results / name).is_file(), f"{name} missing from the results volume"
history = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
assert len(history) == 2, f"expected 2 rounds, history has {len(history)}"
for record in history:
    assert sorted(record["clients"]) == ["hospital_a", "hospital_b", "hospital_c"], record["clients"]
print(f"[compose-demo] 2 rounds, all three hospitals in each; final test accuracy {history[-1]['accuracy']:.3f}")
EOF
# The run's signed audit chain verifies against the demo's CA, and a hospital's receipts are borne out by it.
"$PYTHON" -m medfed.tools.audit.cli verify "$RUN_DIR/results" --ca "$RUN_DIR/ca.crt" \
    || { echo "FAILED: fed-audit verify did not verify the demo's run"; exit 1; }
"$PYTHON" -m medfed.tools.audit.cli receipt "$RUN_DIR"/state-hospital-b/receipts-*.jsonl --run "$RUN_DIR/results" \
    --ca "$RUN_DIR/ca.crt" || { echo "FAILED: hospital_b's receipts are not borne out by the chain"; exit 1; }
grep -q "policy /etc/medfed/policy.toml: every task is checked" "$RUN_DIR/compose.log" \
    || { echo "FAILED: the hospitals did not run under deploy/hospital-policy.toml"; exit 1; }
if [ -n "${MEDFED_SECURE_AGGREGATION:-}" ]; then
    [ "$(grep -c "securely aggregated with 2 other hospital(s)" "$RUN_DIR/compose.log")" = 6 ] \
        || { echo "FAILED: MEDFED_SECURE_AGGREGATION is set, but not every round was securely aggregated"; exit 1; }
    log "every round was securely aggregated (MEDFED_SECURE_AGGREGATION)"
fi
log "passed; tearing down"
