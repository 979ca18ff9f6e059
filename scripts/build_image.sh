#!/usr/bin/env bash
# Build the control-plane image (default agentfactory:latest) with no registry and no network inside
# `docker build`, idempotently:
#   1. ./wheelhouse: the wheels poetry.lock pins for the runtime, the server and postgres extras included
#      (hash-checked), plus pip and poetry-core,
#      fetched on the host by pip (from its cache or PyPI); skipped while poetry.lock is unchanged.
#   2. `docker build` of ./Dockerfile on the base image; skipped while the image's
#      io.agentfactory.inputs label matches the hash of everything the build reads.
# Options (environment):
#   AGENTFACTORY_IMAGE       tag to build (default agentfactory:latest)
#   AGENTFACTORY_BASE_IMAGE  base image (default agentfactory-base:bookworm, made by scripts/setup.sh)
#   PYTHON                   host interpreter that fills the wheelhouse; its X.Y must match the base
#                            image's python3 (default .venv/bin/python)
# Flags: --wheelhouse-only (fill ./wheelhouse and stop, e.g. in CI before docker/build-push-action),
#        --force (rebuild the image even when nothing changed; `rm -rf wheelhouse` refills that).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[build_image] %s\n' "$*" >&2; }
IMAGE="${AGENTFACTORY_IMAGE:-agentfactory:latest}"
BASE_IMAGE="${AGENTFACTORY_BASE_IMAGE:-agentfactory-base:bookworm}"
PYTHON="${PYTHON:-.venv/bin/python}"
WHEELHOUSE_ONLY=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --wheelhouse-only) WHEELHOUSE_ONLY=1 ;;
    --force) FORCE=1 ;;
    *) log "unknown argument: $arg"; exit 2 ;;
  esac
done

# --- 1. wheelhouse ------------------------------------------------------------------------------
py_version=$("$PYTHON" -c 'import platform, sys; print("%d.%d-%s" % (*sys.version_info[:2], platform.machine()))')
wheel_inputs="$(cat poetry.lock scripts/lock_requirements.py | sha256sum | cut -c1-16)-py$py_version"
if [ "$(cat wheelhouse/.inputs 2>/dev/null || true)" != "$wheel_inputs" ]; then
  log "filling wheelhouse/ for Python $py_version from poetry.lock"
  rm -rf wheelhouse.tmp
  trap 'rm -rf wheelhouse.tmp' EXIT
  mkdir -p wheelhouse.tmp
  "$PYTHON" scripts/lock_requirements.py poetry.lock >wheelhouse.tmp/requirements.txt
  # The same pins without hashes for the image: wheels built here from an sdist have no locked hash.
  "$PYTHON" scripts/lock_requirements.py --no-hashes poetry.lock >wheelhouse.tmp/runtime.txt
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --require-hashes \
    --wheel-dir wheelhouse.tmp -r wheelhouse.tmp/requirements.txt
  # pip runs from its own wheel inside bases that lack it (the host's pip version); poetry-core builds
  # the project's wheel (pyproject.toml's build-system).
  pip_version=$("$PYTHON" -m pip --version | cut -d' ' -f2)
  "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary :all: \
    --dest wheelhouse.tmp "pip==$pip_version" "poetry-core>=2.0"
  echo "$wheel_inputs" >wheelhouse.tmp/.inputs
  rm -rf wheelhouse
  mv wheelhouse.tmp wheelhouse
  trap - EXIT
fi
[ "$WHEELHOUSE_ONLY" = 1 ] && { log "wheelhouse/ ready ($(ls wheelhouse/*.whl | wc -l) wheels)"; exit 0; }

# --- 2. image -----------------------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE is missing: run scripts/setup.sh (make setup) first, or set AGENTFACTORY_BASE_IMAGE"
  exit 1
fi
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
image_inputs=$(
  {
    echo "$base_id"
    cat Dockerfile .dockerignore wheelhouse/.inputs pyproject.toml README.md LICENSE catalog.json
    find agentfactory -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 cat
  } | sha256sum | cut -c1-16
)
current=$(docker image inspect -f '{{ index .Config.Labels "io.agentfactory.inputs" }}' "$IMAGE" 2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$current" = "$image_inputs" ]; then
  log "$IMAGE is up to date"
  exit 0
fi
base_python=$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
  -c 'import platform, sys; print("%d.%d-%s" % (*sys.version_info[:2], platform.machine()))')
if [ "$base_python" != "$py_version" ]; then
  log "$BASE_IMAGE has Python $base_python but the wheelhouse is for $py_version: set PYTHON to a matching interpreter"
  exit 1
fi
log "building $IMAGE on $BASE_IMAGE"
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -q --network none --force-rm \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "INPUTS_HASH=$image_inputs" \
  --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)" \
  -t "$IMAGE" . >/dev/null
# The image this tag named before is now dangling: remove it (kept if a container still uses it).
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
log "built $IMAGE"
