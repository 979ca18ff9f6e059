"""A server that cannot enforce the egress policy refuses network tools, and only them (SPEC §14)."""

from __future__ import annotations

from tests.api.conftest import Api


def test_network_tools_are_refused_with_e_catalog_and_nothing_is_stored(api: Api) -> None:
    api.backend.egress_refused = "iptables is not installed on this host"
    refused = api.client.post(
        "/agents", json={"model": "echo", "prompt": "hi", "tools": ["python", "browser_server"]}, headers=api.admin
    )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "E_CATALOG"
    assert error["message"] == (
        "tool(s) browser_server need a network, and this server cannot hold agents with a network to the "
        "public internet: iptables is not installed on this host"
    )
    assert error["details"] == [
        {"field": "tools", "refused": ["browser_server"], "reason": "iptables is not installed on this host"}
    ]
    assert api.client.get("/agents", headers=api.admin).json()["items"] == []
    plain = api.client.post("/agents", json={"model": "echo", "prompt": "hi", "tools": ["python"]}, headers=api.admin)
    assert plain.status_code == 201, plain.text


def test_network_tools_run_once_the_policy_holds(api: Api) -> None:
    r = api.client.post(
        "/agents",
        json={"model": "echo", "prompt": "hi", "tools": ["browser_server"], "env": {"FAKE_RUN_UNTIL_STOPPED": "1"}},
        headers=api.admin,
    )
    assert r.status_code == 201, r.text
    (container,) = api.backend.containers.values()
    assert container.spec.network == "agentfactory-agents"
    assert container.spec.dns == ("8.8.8.8", "1.1.1.1")


def test_each_reaper_pass_rechecks_egress_while_a_network_agent_runs(api: Api) -> None:
    reaper = api.client.app.state.reaper  # type: ignore[attr-defined]
    plain = {"model": "echo", "prompt": "hi", "env": {"FAKE_RUN_UNTIL_STOPPED": "1"}}
    assert api.client.post("/agents", json=plain, headers=api.admin).status_code == 201
    checks = api.backend.network_checks
    api.client.portal.call(reaper.run_once)  # type: ignore[union-attr]
    assert api.backend.network_checks == checks  # no network agent: nothing to check
    networked = {**plain, "tools": ["browser_server"]}
    assert api.client.post("/agents", json=networked, headers=api.admin).status_code == 201
    checks = api.backend.network_checks
    api.client.portal.call(reaper.run_once)  # type: ignore[union-attr]
    assert api.backend.network_checks == checks + 1
    api.backend.egress_refused = "the rules were flushed and cannot be put back"
    api.client.portal.call(reaper.run_once)  # type: ignore[union-attr]  # logged, and the pass completes
    assert api.backend.network_checks == checks + 2
