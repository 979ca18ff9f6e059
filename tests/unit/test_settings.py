"""Settings refuse configurations that would weaken the sandbox."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentfactory.settings import Settings


@pytest.mark.parametrize("network", ["host", "bridge", "default", "none", "container:abc"])
def test_agent_network_must_be_an_isolated_user_defined_network(network: str) -> None:
    with pytest.raises(ValidationError, match="isolated"):
        Settings(agent_network=network)


def test_the_default_agent_network_is_accepted() -> None:
    assert Settings().agent_network == "agentfactory-agents"
