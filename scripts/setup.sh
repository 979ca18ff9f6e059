#!/usr/bin/env bash
# Prepare a fresh Debian machine for agentfactory, idempotently:
#   Python deps (Poetry, in-project venv), a Docker Engine, the offline base image, the runtime image.
# Each step skips what already exists, so a re-run takes a few seconds.
# Options (environment):
#   AGENTFACTORY_BASE_IMAGE    use this base image instead of building one with debootstrap
#   AGENTFACTORY_RUNTIME_IMAGE tag of the agent runtime image (default agentfactory-runtime:latest)
#   AGENTFACTORY_WITH_RUNSC=1  also install gVisor and register it as the Docker runtime "runsc"
#   AGENTFACTORY_WITH_TEST_TOOLS=1  also install what the test suite uses (promtool/prometheus, postgresql)
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
if [ ! -x .venv/bin/python ] || [ poetry.lock -nt .venv/.installed ]; then
  log "poetry install"
  poetry install -q --no-interaction
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
if [ "${AGENTFACTORY_WITH_RUNSC:-0}" = 1 ] && ! "$DOCKER_BIN" info --format '{{json .Runtimes}}' | grep -q runsc; then
  apt_install runsc
  python3 - <<'PY'
import json, pathlib
p = pathlib.Path("/etc/docker/daemon.json")
cfg = json.loads(p.read_text()) if p.exists() and p.read_text().strip() else {}
cfg.setdefault("runtimes", {})["runsc"] = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
p.parent.mkdir(parents=True, exist_ok=True)
p.write_text(json.dumps(cfg, indent=2))
PY
  log "registered runsc; reloading dockerd"
  kill -HUP "$(pgrep -x dockerd | head -1)"
  for _ in $(seq 1 40); do "$DOCKER_BIN" info --format '{{json .Runtimes}}' | grep -q runsc && break; sleep 0.25; done
fi

# --- test tools -------------------------------------------------------------------------------
if [ "${AGENTFACTORY_WITH_TEST_TOOLS:-0}" = 1 ]; then
  apt_install prometheus
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
  DOCKER_BUILDKIT=0 "$DOCKER_BIN" build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "io.agentfactory.inputs=$runtime_hash" -t "$RUNTIME_IMAGE" runtime_image >/dev/null
fi
log "ready: Docker Engine up, images $BASE_IMAGE and $RUNTIME_IMAGE present"
