"""The docker backend's black-box tests, run unchanged against the swarm backend (issue 18's
acceptance: "the black-box suite that passes on the docker backend passes on the swarm backend").

Each test below is the docker suite's own function, imported: pytest collects it here too, where
`server` and `shell_server` are a control plane with `AGENTFACTORY_BACKEND=swarm` on the private
single-node swarm (tests/support/swarm_engine.py), so the same assertions hold over the service API.
What they cover: launch and logs, the live stream, the stream's replay and resume, paging and the
seal of 200,000 lines, TTL expiry within 2 s, cancel (twice, and of a process ignoring SIGTERM),
extending a TTL, idempotency, OOM, exit codes with the last stderr line, and secrets masked across
the 64 KiB cut. The swarm's own module (test_swarm.py) covers the rest: the hardening probe from
inside a task, restart recovery, orphans, placement. The departures, and why, are in docs/swarm.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_capture import (
    big,  # noqa: F401 - the fixture those tests use, here over the swarm
    test_live_stream_gets_lines_as_they_are_printed,
    test_paging_returns_every_line_once_in_order_and_the_seal_matches,
    test_secrets_are_masked_and_never_returned,
    test_stream_replays_everything_then_end_and_resumes_exactly,
)
from tests.integration.test_lifecycle import (
    test_cancel_twice_and_a_process_ignoring_sigterm,
    test_extend_ttl_keeps_an_agent_alive,
    test_memory_hog_is_oom_killed,
    test_same_idempotency_key_in_parallel_creates_one_agent,
    test_the_agents_exit_code_and_last_stderr_line_are_its_end,
    test_ttl_expiry_is_enforced_within_two_seconds,
)
from tests.integration.test_secrets import test_a_secret_across_the_64k_cut_and_a_pem_over_lines_are_masked
from tests.integration.test_walking_skeleton import (
    test_bad_input_creates_no_container,
    test_echo_agent_succeeds_within_10s,
)
from tests.support.agents import write_catalog
from tests.support.server import ServerProcess
from tests.support.swarm_engine import PrivateSwarm, swarm_env

pytestmark = pytest.mark.docker

BLACK_BOX = [  # what runs here (pytest collects each imported test in this module)
    test_echo_agent_succeeds_within_10s,
    test_bad_input_creates_no_container,
    test_ttl_expiry_is_enforced_within_two_seconds,
    test_cancel_twice_and_a_process_ignoring_sigterm,
    test_extend_ttl_keeps_an_agent_alive,
    test_memory_hog_is_oom_killed,
    test_same_idempotency_key_in_parallel_creates_one_agent,
    test_the_agents_exit_code_and_last_stderr_line_are_its_end,
    test_paging_returns_every_line_once_in_order_and_the_seal_matches,
    test_stream_replays_everything_then_end_and_resumes_exactly,
    test_live_stream_gets_lines_as_they_are_printed,
    test_secrets_are_masked_and_never_returned,
    test_a_secret_across_the_64k_cut_and_a_pem_over_lines_are_masked,
]


@pytest.fixture(scope="module")
def shell_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, swarm: PrivateSwarm
) -> Iterator[ServerProcess]:
    """The docker suite's `shell_server` (the default catalog and limits, plus the `sh` model), its
    agents on the swarm."""
    work = tmp_path_factory.mktemp("swarm-blackbox")
    catalog = write_catalog(work / "catalog.json", upstream)
    srv = ServerProcess(work, catalog=catalog, env=swarm_env(swarm)).start()
    try:
        yield srv
    finally:
        srv.stop()
        for service in swarm.services(srv.instance):
            swarm.cli("service", "rm", service, check=False)


@pytest.fixture(scope="module")
def server(shell_server: ServerProcess) -> ServerProcess:
    """The docker suite's `server` (the default catalog): the same swarm control plane."""
    return shell_server
