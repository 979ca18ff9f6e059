"""`GET /agents?metadata.KEY=VALUE` (repeatable, AND) and `GET /agents/{id}/logs?tail=N` over the FakeBackend."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_agents_api import create, wait_status


def ids(api: Api, query: str, headers: dict[str, str] | None = None) -> list[str]:
    r = api.client.get(f"/agents?{query}", headers=headers or api.admin)
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()["items"]]


def test_metadata_selector_is_an_and_of_text_matches(api: Api) -> None:
    def make(**metadata: Any) -> str:
        r = create(api, metadata=metadata)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    a = make(ci_run="42", job="lint")
    b = make(ci_run=42, job="test")  # a number matches its text
    c = make(ci_run="43", job="lint")
    d = make(flag=True, ratio=1.5, nothing=None, **{"a.b": "dotted", 'q"uote': "x"})
    make()

    assert ids(api, "metadata.ci_run=42") == [b, a]  # newest first
    assert ids(api, "metadata.ci_run=42&metadata.job=lint") == [a]
    assert ids(api, "metadata.job=lint") == [c, a]
    assert ids(api, "metadata.job=lint&metadata.job=test") == []
    assert ids(api, "metadata.flag=true") == [d]
    assert ids(api, "metadata.ratio=1.5") == [d]
    assert ids(api, "metadata.nothing=null") == [] and ids(api, "metadata.nothing=") == []
    assert ids(api, "metadata.a.b=dotted") == [d]  # a key is everything after the first "metadata."
    assert ids(api, "metadata.q%22uote=x") == [d]
    assert ids(api, "metadata.ci_run=4") == []
    assert ids(api, "metadata.missing=42") == []
    assert ids(api, "status=succeeded&metadata.ci_run=42&limit=1") in ([b], [])  # composes with the rest


def test_metadata_selector_sees_only_the_callers_agents_and_pages(api: Api) -> None:
    key = api.key()
    mine = [create(api, headers=key, metadata={"run": "7"}).json()["id"] for _ in range(3)]
    create(api, metadata={"run": "7"})  # the admin's, invisible to `key`
    first = api.client.get("/agents?metadata.run=7&limit=2", headers=key).json()
    assert [a["id"] for a in first["items"]] == mine[::-1][:2] and first["next_cursor"]
    rest = ids(api, f"metadata.run=7&limit=2&cursor={first['next_cursor']}", headers=key)
    assert rest == mine[:1]


@pytest.mark.parametrize("query", ["metadata.=1", f"metadata.{'k' * 65}=1", "metadata.k=" + "v" * 1025])
def test_a_bad_metadata_selector_is_a_422(api: Api, query: str) -> None:
    r = api.client.get(f"/agents?{query}", headers=api.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA"


def test_logs_tail_is_the_last_lines_in_one_page(api: Api) -> None:
    agent = wait_status(api, create(api, env={"FAKE_LINES": "3000"}).json()["id"], {"succeeded"})
    url = f"/agents/{agent['id']}/logs"
    page = api.client.get(url, params={"tail": 5}, headers=api.admin).json()
    assert [line["seq"] for line in page["lines"]] == [2996, 2997, 2998, 2999, 3000]
    assert [line["text"] for line in page["lines"]][-1] == "line 3000"
    assert page["next_cursor"] == "3000" and page["complete"] is True
    whole = api.client.get(url, params={"tail": 5000}, headers=api.admin).json()
    assert [line["seq"] for line in whole["lines"]] == list(range(1, 3001))
    assert api.client.get(url, params={"tail": 5, "stream": "stderr"}, headers=api.admin).json()["lines"] == []
    for bad in ({"tail": 0}, {"tail": 5001}, {"tail": 5, "cursor": 1}):
        r = api.client.get(url, params=bad, headers=api.admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA", bad


def test_logs_tail_of_an_agent_without_output(api: Api) -> None:
    agent = wait_status(api, create(api).json()["id"], {"succeeded"})
    page = api.client.get(f"/agents/{agent['id']}/logs", params={"tail": 5}, headers=api.admin).json()
    assert page == {"lines": [], "next_cursor": "0", "complete": True}
