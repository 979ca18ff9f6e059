# The two commands of the README are `make up` and `make test`; .ci/run uses the same targets.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: up-swarm up setup test test-no-engine lint fmt bench load image typescript openapi clean

up:            ## deps, Docker Engine, images, then the control plane on 127.0.0.1:8000 (SQLite)
	bash scripts/up.sh

up-swarm:      ## `make up` with the swarm backend: a single-node swarm of this engine when it has none (docs/swarm.md)
	bash scripts/up-swarm.sh

setup:         ## deps, Docker Engine, images, gVisor (runsc) and the test tools; idempotent
	AGENTFACTORY_WITH_TEST_TOOLS=1 AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh

test: setup    ## the whole test suite against the real engine
	$(VENV)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

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
