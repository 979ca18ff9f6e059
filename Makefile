# The two commands of the README are `make up` and `make test`; .ci/run uses the same targets.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: up up-ha setup test test-pg test-no-engine lint fmt bench load image typescript openapi clean

up:            ## deps, Docker Engine, images, then the control plane on 127.0.0.1:8000 (SQLite)
	bash scripts/up.sh

up-ha:         ## PostgreSQL + 3 replicas + HAProxy on 127.0.0.1:8000, all from Debian (docs/ha.md)
	bash scripts/up_ha.sh

setup:         ## deps, Docker Engine, images, gVisor (runsc) and the test tools; idempotent
	AGENTFACTORY_WITH_TEST_TOOLS=1 AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh

test: setup    ## the whole test suite against the real engine (SQLite), then its database-bound part on PostgreSQL
	$(VENV)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pg

# The tests whose servers use the database, again with every server on PostgreSQL (a cluster the run
# starts from Debian's binaries). Left out: what does not depend on the database (the container's
# hardening, runtime and egress, the image, the engine adapter, the gateway harness), and the
# replicas' and engine-restart tests, which run once in `test` (the former on PostgreSQL always).
PG_TESTS := tests/api tests/integration tests/cli/test_commands.py tests/cli/test_e2e.py \
	--ignore=tests/integration/test_replicas.py --ignore=tests/integration/test_engine_restart.py \
	--ignore=tests/integration/test_image.py --ignore=tests/integration/test_docker_network.py \
	--ignore=tests/integration/test_gateway.py --ignore=tests/integration/test_runtime_docker.py \
	--ignore=tests/integration/test_hardening.py --ignore=tests/integration/test_agent_runtime.py \
	--ignore=tests/integration/test_egress.py
test-pg: setup ## the database-bound tests on PostgreSQL only
	AGENTFACTORY_TEST_DATABASE=postgres $(VENV)/pytest -q -p no:cacheprovider $(PG_TESTS) $(PG_PYTEST_ARGS)

test-no-engine: setup  ## the tests that need no Docker Engine, run with the engine out of reach
	DOCKER_HOST=unix:///nonexistent/docker.sock $(VENV)/pytest -q -p no:cacheprovider -m "not docker"

lint: setup    ## ruff, mypy and the package graph's contracts (import-linter)
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

fmt:
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

image: setup   ## the control-plane image agentfactory:latest, built with no registry (scripts/build_image.sh)
	bash scripts/build_image.sh

openapi:       ## the OpenAPI document, without starting the server: openapi.json
	$(VENV)/python scripts/openapi.py > openapi.json

typescript: setup  ## the TypeScript client: generate its types from the OpenAPI document and type-check it (tsc)
	$(VENV)/pytest -q -p no:cacheprovider tests/clients/test_typescript.py

bench:         ## agentfactory vs docker run, one table (bench/README.md); about 17 minutes
	bash scripts/setup.sh
	$(VENV)/python bench/run_all.py $(BENCH_ARGS)

load:          ## locust, 120 users x 60 s, loopback only; fails on any 5xx
	bash scripts/setup.sh
	$(VENV)/python bench/load.py $(LOAD_ARGS)

clean:         ## remove local state (database, run files); containers are removed by the server
	rm -rf .run
