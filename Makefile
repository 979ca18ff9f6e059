# The two commands of the README are `make up` and `make test`; .ci/run uses the same targets.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: up up-ha up-swarm setup test test-pg test-pg-full test-no-engine lint fmt bench load image typescript openapi clean

up:            ## deps, Docker Engine, images, then the control plane on 127.0.0.1:8000 (SQLite)
	bash scripts/up.sh

up-ha:         ## PostgreSQL + 3 replicas + HAProxy on 127.0.0.1:8000, all from Debian (docs/ha.md)
	bash scripts/up_ha.sh

up-swarm:      ## `make up` with the swarm backend: a single-node swarm of this engine when it has none (docs/swarm.md)
	bash scripts/up-swarm.sh

setup:         ## deps, Docker Engine, images, gVisor (runsc) and the test tools; idempotent
	AGENTFACTORY_WITH_TEST_TOOLS=1 AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh

test: setup    ## the whole test suite against the real engine (SQLite), then its database-bound core on PostgreSQL
	$(VENV)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pg

# The database-bound tests again with every server on PostgreSQL (a cluster the run starts from
# Debian's binaries), chosen to add ~5 min (7 on a loaded machine), not the ~45 of the whole suite
# (`make test-pg-full`): every test that reaches a database without the engine (the in-process API tests: every route, the
# controller, adoption and fencing, the events outbox, selectors; the outbox and log pump's stores;
# the model gateway's token accounting), and the served paths where PostgreSQL behaves apart (row
# locks, NOTIFY, types): capture resumed after a kill -9, TTLs, idempotency under a race,
# quotas/rate/revocation, webhooks pending at a kill -9, MCP's wait, a database error's log, and
# schemathesis (it found a PostgreSQL-only 500), files in and out (there in the database blob store,
# PostgreSQL's default; ~1 min). The replicas' acceptance tests
# (tests/integration/test_replicas.py) run on PostgreSQL always, in `test`.
PG_TESTS := tests/api tests/unit/test_event_outbox.py tests/unit/test_logpump.py tests/unit/test_store_usage.py \
	tests/unit/test_warm_pool.py tests/integration/test_files.py \
	tests/integration/test_gateway.py tests/integration/test_gateway_limits.py \
	tests/integration/test_tenancy.py tests/integration/test_schemathesis.py \
	tests/integration/test_lifecycle.py::test_restart_resumes_capture_without_loss_or_repeat \
	tests/integration/test_lifecycle.py::test_ttl_expiry_is_enforced_within_two_seconds \
	tests/integration/test_lifecycle.py::test_same_idempotency_key_in_parallel_creates_one_agent \
	tests/integration/test_webhooks.py::test_deliveries_pending_at_a_kill_9_are_all_delivered_after_the_restart_and_events_resume \
	tests/integration/test_mcp.py::test_launch_echo_then_wait_returns_succeeded_and_the_output \
	tests/integration/test_walking_skeleton.py::test_echo_agent_succeeds_within_10s \
	tests/integration/test_secrets.py::test_a_database_error_during_create_logs_neither_secret_nor_prompt
test-pg: setup ## the database-bound tests on PostgreSQL only
	AGENTFACTORY_TEST_DATABASE=postgres $(VENV)/pytest -q -p no:cacheprovider $(PG_TESTS) $(PG_PYTEST_ARGS)

# Issue 17's "the whole suite passes on PostgreSQL": every test, every server on PostgreSQL (~45 min
# on 2 loaded cores; not in CI, which runs the core above). Tests that read the SQLite file skip.
test-pg-full: setup ## the whole test suite on PostgreSQL
	AGENTFACTORY_TEST_DATABASE=postgres $(VENV)/pytest -q -p no:cacheprovider $(PG_PYTEST_ARGS)

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
