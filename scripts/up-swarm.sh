#!/usr/bin/env bash
# `make up-swarm`: `make up` with the swarm backend (docs/swarm.md). Set-up, then a single-node swarm
# on this machine's engine (DOCKER_HOST's, if set) when it is not in one yet, then the control plane.
#
# The swarm backend needs two daemon-wide settings on every node (the service API has no per-service
# ones): "no-new-privileges": true and "bridge": "none". The server checks them at start-up from inside
# a probe task and refuses to start without them, saying which. With AGENTFACTORY_CONFIGURE_DAEMON=1
# this script writes them into /etc/docker/daemon.json and restarts dockerd first (the local engine
# only; it stops the containers that run on it unless live-restore is on).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${AGENTFACTORY_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh

if [ "${AGENTFACTORY_CONFIGURE_DAEMON:-0}" = 1 ]; then
  python3 - <<'PY'
import json, pathlib
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.update({"no-new-privileges": True, "bridge": "none"})
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(config, indent=2) + "\n")
print(f"[up-swarm] {path}: no-new-privileges on, default bridge off")
PY
  systemctl restart docker 2>/dev/null || service docker restart
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
fi

state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$state" != "active" ]; then
  echo "[up-swarm] initialising a single-node swarm (docker swarm init)" >&2
  docker swarm init --advertise-addr "${AGENTFACTORY_SWARM_ADVERTISE_ADDR:-127.0.0.1}" >&2
fi
echo "[up-swarm] add worker nodes: docker swarm join-token worker (docs/swarm.md)" >&2
export AGENTFACTORY_BACKEND=swarm AGENTFACTORY_SKIP_SETUP=1
exec bash scripts/up.sh
