#!/usr/bin/env bash
# Prepare a fresh Debian machine for agentfactory, idempotently:
#   Python deps (Poetry, in-project venv), a Docker Engine, the offline base image, the runtime image.
# Each step skips what already exists, so a re-run takes a few seconds.
# Options (environment):
#   AGENTFACTORY_BASE_IMAGE    use this base image instead of building one with debootstrap
#   AGENTFACTORY_RUNTIME_IMAGE tag of the agent runtime image (default agentfactory-runtime:latest)
#   AGENTFACTORY_WITH_RUNSC=1  also install gVisor and register it as the Docker runtime "runsc"
#   AGENTFACTORY_WITH_TEST_TOOLS=1  also install what the test suite uses (promtool, Node and clients/typescript's
#                              npm packages, postgresql and haproxy for the replicas' tests,
#                              chromium and chromium-driver for the dashboard's browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -q >/dev/null; APT_UPDATED=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# --- Python dependencies --------------------------------------------------------------------
if ! command -v poetry >/dev/null 2>&1; then
  log "installing poetry"
  python3 -m pip install -q poetry
fi
export POETRY_VIRTUALENVS_IN_PROJECT=true
# The server lives in extras (pyproject.toml): a development checkout gets them all.
if [ ! -x .venv/bin/python ] || [ poetry.lock -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  log "poetry install --all-extras"
  poetry install -q --no-interaction --all-extras
  touch .venv/.installed
fi

# --- Docker Engine ----------------------------------------------------------------------------
DOCKER_BIN=/usr/bin/docker
docker_ok() { timeout 10 "$DOCKER_BIN" version >/dev/null 2>&1; }
if [ -n "${DOCKER_HOST:-}" ] && docker_ok; then
  log "using the Docker Engine at $DOCKER_HOST"
elif ! docker_ok; then
  apt_install docker.io
  if ! docker_ok; then
    # After an abrupt stop dockerd refuses to start while its stale pid file exists.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid
    fi
    pgrep -x dockerd >/dev/null || {
      log "starting dockerd (log: /var/log/dockerd.log)"
      nohup dockerd >/var/log/dockerd.log 2>&1 &
    }
    for _ in $(seq 1 60); do docker_ok && break; sleep 0.5; done
    docker_ok || { log "dockerd did not answer within 30 s; see /var/log/dockerd.log"; exit 1; }
  fi
fi

# --- optional gVisor --------------------------------------------------------------------------
# Two registrations of runsc: "runsc" has no network stack at all (--network=none), for agents
# without a network tool; "runsc-net" keeps gVisor's own netstack, for agents on the isolated
# bridge. Both may connect to host Unix sockets mounted into the sandbox (--host-uds=open: the
# model gateway's socket is the only one mounted). Not --oci-seccomp: in Debian bookworm's runsc it
# breaks thread creation (clone3 gets EPERM, not the profile's ENOSYS, so glibc never falls back);
# the sentry itself always runs under gVisor's own seccomp filter. Idempotent: rewrites daemon.json
# and reloads dockerd only when the engine's runtimes differ from these.
RUNSC_WANT='{"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]},
 "runsc-net": {"path": "/usr/bin/runsc", "runtimeArgs": ["--host-uds=open"]}}'
runsc_registered() {
  "$DOCKER_BIN" info --format '{{json .Runtimes}}' 2>/dev/null | RUNSC_WANT="$RUNSC_WANT" python3 -c '
import json, os, sys
have, want = json.load(sys.stdin), json.loads(os.environ["RUNSC_WANT"])
sys.exit(0 if all(have.get(k) == v for k, v in want.items()) else 1)'
}
if [ "${AGENTFACTORY_WITH_RUNSC:-0}" = 1 ]; then
  apt_install runsc
  dockerd_pid=$(pgrep -x dockerd | head -1 || true)
  if [ -n "$dockerd_pid" ]; then
    # daemon.json is what survives a dockerd restart; the live engine is checked on its own below.
    RUNSC_WANT="$RUNSC_WANT" python3 - <<'PY'
import json, os, pathlib, sys
p = pathlib.Path("/etc/docker/daemon.json")
text = p.read_text() if p.exists() else ""
cfg = json.loads(text) if text.strip() else {}
want = json.loads(os.environ["RUNSC_WANT"])
if any(cfg.get("runtimes", {}).get(k) != v for k, v in want.items()):
    cfg.setdefault("runtimes", {}).update(want)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cfg, indent=2) + "\n")
    print("[setup] registered runtimes runsc and runsc-net in /etc/docker/daemon.json", file=sys.stderr)
PY
  fi
  if ! runsc_registered; then
    if [ -z "$dockerd_pid" ]; then
      log "no local dockerd to reload: add these runtimes to the engine's daemon.json yourself: $RUNSC_WANT"
      exit 1
    fi
    log "reloading dockerd (SIGHUP) to pick up the runsc runtimes"
    kill -HUP "$dockerd_pid"
    for _ in $(seq 1 40); do runsc_registered && break; sleep 0.25; done
    runsc_registered || { log "dockerd did not pick up the runsc runtimes within 10 s; see its log"; exit 1; }
  fi
fi

# --- test tools -------------------------------------------------------------------------------
if [ "${AGENTFACTORY_WITH_TEST_TOOLS:-0}" = 1 ]; then
  # promtool (the Grafana dashboard's and the alert rules' checks), Node for the TypeScript client's check.
  apt_install prometheus postgresql haproxy
  # The dashboard's browser tests (tests/ui/test_browser.py): Debian's Chromium and its WebDriver.
  apt_install chromium chromium-driver
  # This machine kind may ship Node with its own npm (NodeSource's nodejs, which conflicts with
  # Debian's npm package): install Debian's only for what is missing.
  command -v node >/dev/null 2>&1 || apt_install nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
  if [ ! -d clients/typescript/node_modules ] || [ clients/typescript/package-lock.json -nt clients/typescript/node_modules/.package-lock.json ]; then
    log "npm ci (clients/typescript: openapi-typescript, typescript)"
    npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error >/dev/null
  fi
fi
# `make up-ha` (scripts/up_ha.sh): PostgreSQL and HAProxy from Debian, no registry.
if [ "${AGENTFACTORY_WITH_HA:-0}" = 1 ]; then
  apt_install postgresql haproxy
fi

# --- images -----------------------------------------------------------------------------------
BASE_IMAGE="${AGENTFACTORY_BASE_IMAGE:-agentfactory-base:bookworm}"
RUNTIME_IMAGE="${AGENTFACTORY_RUNTIME_IMAGE:-agentfactory-runtime:latest}"
if ! "$DOCKER_BIN" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  if [ -n "${AGENTFACTORY_BASE_IMAGE:-}" ]; then
    log "pulling $BASE_IMAGE"; "$DOCKER_BIN" pull "$BASE_IMAGE"
  else
    apt_install debootstrap
    log "building $BASE_IMAGE offline with debootstrap (about 30 s)"
    rootfs=$(mktemp -d /tmp/af-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" >/tmp/af-debootstrap.log 2>&1 \
      || { log "debootstrap failed; see /tmp/af-debootstrap.log"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER_BIN" import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
fi
# Rebuild the runtime image only when its inputs changed (the label carries their hash).
runtime_hash=$(cat runtime_image/Dockerfile runtime_image/*.py | sha256sum | cut -c1-16)-$(echo "$BASE_IMAGE" | sha256sum | cut -c1-8)
current=$("$DOCKER_BIN" image inspect -f '{{ index .Config.Labels "io.agentfactory.inputs" }}' "$RUNTIME_IMAGE" 2>/dev/null || true)
if [ "$current" != "$runtime_hash" ]; then
  log "building $RUNTIME_IMAGE"
  DOCKER_BUILDKIT=0 "$DOCKER_BIN" build -q --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "io.agentfactory.inputs=$runtime_hash" -t "$RUNTIME_IMAGE" runtime_image >/dev/null
fi
if [ "${AGENTFACTORY_WITH_RUNSC:-0}" = 1 ]; then
  # A thread as well as a process: a broken seccomp set-up shows as "can't start new thread".
  smoke='import threading; t = threading.Thread(target=print, args=("ok",)); t.start(); t.join()'
  out=$("$DOCKER_BIN" run --rm --runtime=runsc --network=none --entrypoint python3 "$RUNTIME_IMAGE" -c "$smoke" 2>&1) \
    || { log "the runtime image does not run under runsc: $out"; exit 1; }
  # Network-tool agents need gVisor's netstack. Older runsc releases (Debian bookworm's 20221219
  # among them) mistake every network namespace for the host's on kernels that show
  # /proc/sys/net/core/rmem_default in each one, and refuse to start: such agents then fail to
  # launch (never fall back to runc); agents without a network tool are unaffected.
  if ! out=$("$DOCKER_BIN" run --rm --runtime=runsc-net --network=bridge --entrypoint python3 "$RUNTIME_IMAGE" -c "$smoke" 2>&1); then
    why=$(printf '%s\n' "$out" | grep -m1 'Error response' | sed 's/.*starting container: //')
    log "warning: runsc-net cannot start here ($(runsc --version 2>/dev/null | head -1)): ${why:-$out}"
    log "warning: with runsc selected, agents given a network tool will fail to launch (reason launch_failed)"
  fi
  log "gVisor ready: runtime runsc runs $RUNTIME_IMAGE"
fi
log "ready: Docker Engine up, images $BASE_IMAGE and $RUNTIME_IMAGE present"
