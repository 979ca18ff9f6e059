# The agentfactory control plane. Build it with `make image` (bash scripts/build_image.sh), which first
# fills ./wheelhouse on the host with the wheels poetry.lock pins (the server and postgres extras
# included); nothing is fetched during `docker build` (PIP_NO_INDEX=1), so it builds with no registry and
# no network. A plain `docker build .` without ./wheelhouse fails at its first step and says so.
#
#   default base   agentfactory-base:bookworm (the offline debootstrap image of scripts/setup.sh; Debian's
#                  python3 3.11, no pip: pip runs from its own wheel in the wheelhouse)
#   elsewhere      --build-arg BASE_IMAGE=python:3.12-slim (with a wheelhouse built by Python 3.12, or
#                  --build-arg PIP_NO_INDEX=0 to let pip fetch what the wheelhouse lacks)
#
# Run it next to the Docker Engine it launches agents on (see docker-compose.yml):
#   docker run -d -p 127.0.0.1:8000:8000 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /run/agentfactory/gateway:/run/agentfactory/gateway \
#     -v agentfactory-data:/var/lib/agentfactory \
#     -e AGENTFACTORY_ADMIN_KEY=... agentfactory:latest
# The process runs as the unprivileged user `agentfactory` (uid/gid 10000). It reaches the Docker socket
# through a supplementary group: `--group-add` with the socket's GID on the host, which differs from
# host to host, so it is given at run time and never baked into the image. Agents are sibling
# containers started by the host's engine, so the gateway socket directory is a host path mounted at
# the same path inside this container, owned by uid 10000 (`install -d -o 10000 -g 10000 <dir>`).

ARG BASE_IMAGE=agentfactory-base:bookworm

# --- wheels: the locked dependencies, then the project's own wheel, installed into a venv -----------------
FROM ${BASE_IMAGE} AS wheels
ARG PIP_NO_INDEX=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
# `make image` fills ./wheelhouse first; a plain `docker build .` without it stops here, saying so. (The
# glob lets this COPY succeed with no wheelhouse at all: LICENSE always matches.)
COPY LICENSE wheelhous[e] /wheelhouse/
RUN test -f /wheelhouse/.inputs || { \
      echo 'error: ./wheelhouse is empty. Build this image with `make image` (scripts/build_image.sh), which'; \
      echo '       fills ./wheelhouse with the locked wheels first, then runs docker build.'; \
      exit 1; } >&2
# Debian's python3 has neither pip nor ensurepip: pip then runs from its own wheel (pip supports being
# run from a zip). The venv is created without pip, so no installer ends up in the image.
RUN set -eu; \
    if python3 -m pip --version >/dev/null 2>&1; then echo 'exec python3 -m pip "$@"'; \
    else echo "exec python3 $(ls /wheelhouse/pip-*.whl | tail -n 1)/pip \"\$@\""; fi >/usr/local/bin/pip-run; \
    chmod +x /usr/local/bin/pip-run; \
    python3 -m venv --without-pip /opt/agentfactory; \
    pip-run --python /opt/agentfactory/bin/python install --no-deps --find-links /wheelhouse \
        -r /wheelhouse/runtime.txt
# The project last, so that a code change rebuilds only this layer.
COPY pyproject.toml poetry.lock README.md LICENSE /src/
COPY agentfactory/ /src/agentfactory/
RUN set -eu; \
    pip-run wheel --no-deps --find-links /wheelhouse --wheel-dir /wheels /src; \
    pip-run --python /opt/agentfactory/bin/python install --no-deps "$(ls /wheels/agentfactory-*.whl)[server,postgres]"; \
    pip-run --python /opt/agentfactory/bin/python check; \
    /opt/agentfactory/bin/python -c "import agentfactory.server, agentfactory.cli"

# --- runtime: the venv on the same base, an unprivileged user, no build tools --------------------------
FROM ${BASE_IMAGE} AS runtime
RUN set -eu; \
    groupadd --system --gid 10000 agentfactory; \
    useradd --system --uid 10000 --gid 10000 --no-create-home --home-dir /var/lib/agentfactory \
        --shell /usr/sbin/nologin agentfactory; \
    install -d -o 10000 -g 10000 -m 0750 /var/lib/agentfactory; \
    install -d -o 10000 -g 10000 -m 0755 /run/agentfactory /run/agentfactory/gateway
COPY --from=wheels /opt/agentfactory /opt/agentfactory
COPY catalog.json /etc/agentfactory/catalog.json
ENV PATH=/opt/agentfactory/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTFACTORY_HOST=0.0.0.0 \
    AGENTFACTORY_PORT=8000 \
    AGENTFACTORY_CATALOG=/etc/agentfactory/catalog.json \
    AGENTFACTORY_DATABASE_URL=sqlite:////var/lib/agentfactory/agentfactory.db \
    AGENTFACTORY_GATEWAY_SOCKET_DIR=/run/agentfactory/gateway
# Numeric, so that orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10000:10000
WORKDIR /var/lib/agentfactory
EXPOSE 8000
# The base has no curl: ask /health with the venv's Python.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AGENTFACTORY_PORT', '8000'), timeout=4)"]
CMD ["agentfactory", "serve"]
# Last, so that their values never invalidate the cached layers above (the classic builder's --label does).
ARG VERSION=dev
ARG INPUTS_HASH=""
LABEL org.opencontainers.image.title="agentfactory" \
      org.opencontainers.image.description="Control plane for short-lived, sandboxed, containerized AI agents" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      io.agentfactory.inputs="${INPUTS_HASH}"
