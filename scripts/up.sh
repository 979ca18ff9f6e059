#!/usr/bin/env bash
# Run the control plane on this machine: set-up (deps, Docker Engine, images), then the server on
# SQLite in the foreground. The bootstrap admin key is AGENTFACTORY_ADMIN_KEY, or one generated
# once into .run/admin_key.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${AGENTFACTORY_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
mkdir -p .run
if [ -z "${AGENTFACTORY_ADMIN_KEY:-}" ]; then
  [ -s .run/admin_key ] || .venv/bin/python -c 'import secrets; print("af_admin_" + secrets.token_urlsafe(24))' > .run/admin_key
  AGENTFACTORY_ADMIN_KEY=$(cat .run/admin_key)
  export AGENTFACTORY_ADMIN_KEY
fi
export AGENTFACTORY_DATABASE_URL="${AGENTFACTORY_DATABASE_URL:-sqlite:///$(pwd)/.run/agentfactory.db}"
echo "[up] admin key: $AGENTFACTORY_ADMIN_KEY  (also in .run/admin_key)" >&2
echo "[up] serving on http://${AGENTFACTORY_HOST:-127.0.0.1}:${AGENTFACTORY_PORT:-8000}" >&2
exec .venv/bin/agentfactory serve
