"""The dashboard in a real headless Chromium (Debian's `chromium` through `chromedriver`, driven by
Selenium) against the real server and Docker: the acceptance list of issue 23. Screenshots of each
page at desktop and phone widths go to test-artifacts/screenshots (CI keeps them)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest

from tests.support.server import ServerProcess, wait_terminal, wait_until
from tests.ui.conftest import chromium_missing, run_cli, screenshot

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or ""),
]
HEAP_BOUND_BYTES = 96 * 1024 * 1024  # documented in docs/dashboard.md


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver: Any, server: ServerProcess, key: str | None = None) -> None:
    driver.delete_all_cookies()
    driver.get(server.url + "/ui/agents")
    assert "/ui/login" in driver.current_url
    by_css(driver, "#key").send_keys(key or server.admin_key)
    by_css(driver, "form.login button[type=submit]").click()
    wait_until(lambda: driver.current_url.endswith("/ui/agents"), timeout=10, what="the agents list")
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: the page cannot read it
    assert (key or server.admin_key) not in driver.page_source


def live(driver: Any) -> None:
    wait_until(lambda: by_css(driver, "#live-state").get_attribute("data-state") == "on", timeout=10, what="live")


def shown_lines(driver: Any) -> list[tuple[int, str, bool]]:
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#log .ln')).map("
        "r => [Number(r.dataset.seq), r.lastChild.textContent, r.classList.contains('err')])"
    )
    return [(seq, text, err) for seq, text, err in rows]


def test_sign_in_page(browser: Any, ui_server: ServerProcess) -> None:
    browser.delete_all_cookies()
    browser.get(ui_server.url + "/ui/login")
    assert by_css(browser, "label[for=key]").text == "API key"
    screenshot(browser, "sign-in")
    by_css(browser, "#key").send_keys("af_not_a_key")
    by_css(browser, "form.login button[type=submit]").click()
    # the click posts the form; the answer is a new page, not there yet when click() returns
    wait_until(lambda: all_css(browser, "#key-error"), timeout=10, what="the sign-in error")
    assert "unknown API key" in by_css(browser, "#key-error").text


def test_a_cli_agent_appears_live_streams_in_order_and_cancels(browser: Any, ui_server: ServerProcess) -> None:
    sign_in(browser, ui_server)
    live(browser)
    command = 'for i in $(seq 1 40); do echo "line $i"; sleep 0.05; done; sleep 120'
    agent_id = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "--ttl", "1m", "--meta", "ui=yes",
                       command).strip()  # fmt: skip
    returned = time.monotonic()
    row = f'tr[data-agent-id="{agent_id}"]'
    wait_until(lambda: all_css(browser, row), timeout=1.0, interval=0.02, what="the new agent's row, without a reload")
    print(f"agent row shown {1000 * (time.monotonic() - returned):.0f} ms after the CLI returned")
    screenshot(browser, "agents")
    by_css(browser, f"{row} a").click()
    wait_until(lambda: browser.current_url.endswith(f"/ui/agents/{agent_id}"), timeout=5, what="the agent page")

    def numbered() -> list[str]:
        return [t for _, t, err in shown_lines(browser) if not err and t.startswith("line ")]

    wait_until(lambda: len(numbered()) >= 40, timeout=20, what="40 lines, live")
    lines = shown_lines(browser)
    assert [seq for seq, _, _ in lines] == sorted(seq for seq, _, _ in lines)
    assert numbered() == [f"line {i}" for i in range(1, 41)]  # the agent's own lines, in order
    screenshot(browser, "agent-running", scroll_to="#h-log")
    by_css(browser, "#cancel").click()
    wait_until(lambda: by_css(browser, "#status").text == "cancelled", timeout=15, what="cancelled, without a reload")
    wait_until(lambda: by_css(browser, "#seal-sha256").text not in ("", "—"), timeout=10, what="the seal")
    assert by_css(browser, "#actions").get_attribute("hidden") is not None


def test_a_finished_agents_page_shows_the_seal_and_artifacts(browser: Any, ui_server: ServerProcess) -> None:
    sign_in(browser, ui_server)
    agent_id = run_cli(
        ui_server, "run", "--model", "sh", "--tool", "shell", "--artifact", "out/*.txt",
        "printf 'a\\033[31mred\\033[0m\\nb <b>x</b>\\n'; mkdir -p out; printf 'made by the agent' > 'out/r 1.txt'",
    ).strip()  # fmt: skip
    with ui_server.client() as api:
        wait_terminal(api, agent_id)
        result = api.get(f"/agents/{agent_id}/result").json()
        agent = api.get(f"/agents/{agent_id}").json()
    browser.get(ui_server.url + f"/ui/agents/{agent_id}")
    wait_until(lambda: by_css(browser, "#log-state").get_attribute("data-state") == "ended", timeout=10, what="end")
    assert by_css(browser, "#seal-sha256").text == result["seal"]["log_sha256"]
    assert by_css(browser, "#seal-lines").text == str(result["seal"]["log_lines"])
    texts = [t for _, t, _ in shown_lines(browser)]
    assert "ared" in texts and "b <b>x</b>" in texts  # ANSI stripped, HTML shown as text
    assert not all_css(browser, "#log b")
    # The artifact, downloaded the way the page's link does (the session's cookie), matches its sha256.
    (item,) = result["artifacts"]["items"]
    link = by_css(browser, "#artifacts li a")
    assert link.text == item["path"] == "out/r 1.txt" and link.get_attribute("data-sha256") == item["sha256"]
    body = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'})"
        ".then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b))));",
        link.get_attribute("href"),
    )
    assert bytes(body) == b"made by the agent"
    assert hashlib.sha256(bytes(body)).hexdigest() == item["sha256"]
    assert agent["status"] == "succeeded"
    screenshot(browser, "agent-finished")
    failed = run_cli(ui_server, "run", "--model", "down", "anything").strip()
    browser.get(ui_server.url + f"/ui/agents/{failed}")
    wait_until(lambda: by_css(browser, "#status").text == "failed", timeout=30, what="failed")
    wait_until(lambda: any(err for _, _, err in shown_lines(browser)), timeout=10, what="a stderr line")
    errs = [t for _, t, err in shown_lines(browser) if err]
    assert any("down" in t or "unreachable" in t for t in errs), errs  # stderr told apart (marked ERR)
    assert by_css(browser, "#exit-code").text not in ("", "—", "0")
    screenshot(browser, "agent-failed", scroll_to="#h-log")


def test_another_keys_agent_url_shows_not_found(browser: Any, ui_server: ServerProcess) -> None:
    with ui_server.client() as admin:
        other = admin.post("/keys", json={"name": f"b-{uuid.uuid4().hex[:6]}", "models": ["sh"], "tools": ["shell"]})
    mine = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "echo mine").strip()
    sign_in(browser, ui_server, other.json()["key"])
    browser.get(ui_server.url + f"/ui/agents/{mine}")
    assert by_css(browser, "h1").text == "Not found"
    screenshot(browser, "not-found")


def test_a_state_change_without_the_csrf_token_is_refused(browser: Any, ui_server: ServerProcess) -> None:
    agent_id = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "--ttl", "1m", "sleep 100").strip()
    sign_in(browser, ui_server)
    status = browser.execute_script(
        "return fetch(arguments[0], {method: 'DELETE', credentials: 'same-origin'}).then(r => r.status)",
        f"/agents/{agent_id}",
    )
    assert status == 403
    with ui_server.client() as api:  # left to its TTL: a cancel waits for the stop's grace period
        assert api.get(f"/agents/{agent_id}").json()["status"] == "running"


def test_after_sign_out_the_stream_stops_and_pages_redirect(browser: Any, ui_server: ServerProcess) -> None:
    agent_id = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "--ttl", "1m",
                       "while true; do echo tick; sleep 0.2; done").strip()  # fmt: skip
    sign_in(browser, ui_server)
    browser.get(ui_server.url + f"/ui/agents/{agent_id}")
    wait_until(lambda: by_css(browser, "#log-state").get_attribute("data-state") == "live", timeout=10, what="live")
    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(ui_server.url + "/ui/agents")
    by_css(browser, "#sign-out").click()
    wait_until(lambda: "/ui/login" in browser.current_url, timeout=5, what="the sign-in page")
    browser.close()
    browser.switch_to.window(first_tab)
    wait_until(lambda: by_css(browser, "#log-state").get_attribute("data-state") == "stopped", timeout=5,
               what="the stream to stop")  # fmt: skip
    count = len(shown_lines(browser))
    last = browser.execute_script("return document.getElementById('log').dataset.lastSeq")
    time.sleep(0.6)  # the agent prints every 0.2 s: nothing more may arrive
    assert browser.execute_script("return document.getElementById('log').dataset.lastSeq") == last, count
    browser.get(ui_server.url + f"/ui/agents/{agent_id}")
    assert "/ui/login" in browser.current_url  # the agent is left to its TTL


def test_a_200000_line_agent_stays_responsive(browser: Any, ui_server: ServerProcess) -> None:
    line = "line %06g: a build log line of about a hundred characters, like a compiler would print"
    agent_id = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "--ttl", "5m", f"seq -f '{line}' 1 200000")
    agent_id = agent_id.strip()
    with ui_server.client() as api:
        final = wait_terminal(api, agent_id, timeout=120)
    total = final["log_lines"]
    assert total > 200_000  # seq's lines and the runtime's own event lines
    sign_in(browser, ui_server)
    started = time.monotonic()
    browser.get(ui_server.url + f"/ui/agents/{agent_id}")
    wait_until(lambda: by_css(browser, "#log-state").get_attribute("data-state") == "ended", timeout=60, what="end")
    wait_until(lambda: by_css(browser, "#log").get_attribute("data-last-seq") == str(total), timeout=10, what="all")
    loaded = time.monotonic() - started
    # Scroll to the top, then measure the jump to the end until the last line is painted.
    elapsed_ms = browser.execute_async_script(
        """
        const want = arguments[0];
        const done = arguments[arguments.length - 1];
        const log = document.getElementById('log');
        log.scrollTop = 0;
        requestAnimationFrame(() => requestAnimationFrame(() => {
          const t0 = performance.now();
          log.focus();
          log.dispatchEvent(new KeyboardEvent('keydown', {key: 'End', bubbles: true}));
          const check = () => {
            const rows = Array.from(log.querySelectorAll('.ln'));
            if (rows.some(r => r.dataset.seq === want)) done(performance.now() - t0);
            else requestAnimationFrame(check);
          };
          requestAnimationFrame(check);
        }));
        """,
        str(total),
    )
    nodes = browser.execute_script("return document.querySelectorAll('#log .ln').length")
    heap = browser.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0")
    kept = int(by_css(browser, "#log").get_attribute("data-lines"))
    print(f"{total} lines: page live {loaded:.1f} s, scroll to end {elapsed_ms:.0f} ms, {nodes} row nodes, "
          f"{kept} lines kept, JS heap {heap / 2**20:.1f} MiB")  # fmt: skip
    assert elapsed_ms < 1000
    assert nodes < 300  # the DOM is a window, whatever the log's size
    assert kept <= 50_000
    assert 0 < heap < HEAP_BOUND_BYTES
    screenshot(browser, "agent-200k-lines", scroll_to="#h-log")


def test_admin_pages_keys_usage_system(browser: Any, ui_server: ServerProcess) -> None:
    run_cli(ui_server, "run", "--model", "echo", "usage to chart")  # the usage chart has a bar, run alone too
    sign_in(browser, ui_server)
    browser.get(ui_server.url + "/ui/admin/keys")
    name = f"made-in-ui-{uuid.uuid4().hex[:6]}"
    by_css(browser, "#k-name").send_keys(name)
    by_css(browser, "#new-key button[type=submit]").click()
    wait_until(lambda: by_css(browser, "#created-key").text.startswith("af_"), timeout=10, what="the new key")
    new_key = by_css(browser, "#created-key").text
    with ui_server.client(new_key) as api:
        assert api.get("/agents").status_code == 200
    screenshot(browser, "keys")
    browser.refresh()
    assert new_key not in browser.page_source  # shown once
    row = f'tr[data-key-id] button[aria-label="Revoke {name}"]'
    by_css(browser, row).click()
    by_css(browser, row).click()  # the second click confirms
    wait_until(lambda: not all_css(browser, row), timeout=10, what="revoked")
    with ui_server.client(new_key) as api:
        wait_until(lambda: api.get("/agents").status_code == 401, timeout=10, what="the key refused")
    with ui_server.client() as api:  # a key its rate limit refuses: the usage chart's fourth series
        made = api.post("/keys", json={"name": f"limited-{uuid.uuid4().hex[:6]}", "max_requests_per_minute": 1})
    limited = made.json()
    with ui_server.client(limited["key"]) as api:
        refused = sum(api.get("/agents").status_code == 429 for _ in range(4))
    assert refused >= 3
    browser.get(ui_server.url + "/ui/admin/usage?days=1")
    assert all_css(browser, "svg.chart-agents rect")
    section = by_css(browser, f'section.usage[data-key-id="{limited["id"]}"]')
    assert f"{refused} quota rejections (rate {refused})" in section.find_element("css selector", ".totals").text
    bars = section.find_elements("css selector", "svg.chart-rejections rect")
    assert sum(int(b.get_attribute("data-value")) for b in bars) == refused and bars[0].is_displayed()
    assert (
        section.find_element("css selector", "svg.chart-rejections")
        .get_attribute("aria-label")
        .startswith("quota rejections per hour")
    )
    screenshot(browser, "usage")
    screenshot(browser, "usage-rejections", scroll_to=f'section.usage[data-key-id="{limited["id"]}"]')
    browser.get(ui_server.url + "/ui/admin/system")
    assert by_css(browser, "#checks").text
    with ui_server.client() as api:
        slots = api.get("/capacity").json()
        cluster = api.get("/replicas").json()
    assert f"of {slots['max_running']} held" in by_css(browser, "#slots").text  # the cluster's slots (SPEC §10)
    assert len(all_css(browser, "#key-slots tbody tr")) == len(slots["keys"] or [])  # an admin sees every key's
    [this] = cluster["replicas"]  # one replica: it lists itself, with the agents it owns
    row = by_css(browser, f'#replicas tr[data-replica="{this["id"]}"]')
    assert "(this one)" in row.text and row.find_element("css selector", ".agents").text == str(this["agents"])
    assert "1 live" in by_css(browser, "#slots").text
    screenshot(browser, "system")
    screenshot(browser, "system-replicas", scroll_to="#h-replicas")
    browser.set_window_size(390, 844)  # on a phone the replicas' columns stay (the table scrolls sideways)
    assert row.find_element("css selector", ".agents").is_displayed()
    browser.set_window_size(1280, 900)


UNLABELLED = """
return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map(el => el.outerHTML.slice(0, 80));
"""


def test_every_control_is_labelled_and_the_keyboard_reaches_the_log(browser: Any, ui_server: ServerProcess) -> None:
    from selenium.webdriver.common.keys import Keys

    agent_id = run_cli(ui_server, "run", "--model", "sh", "--tool", "shell", "echo labelled").strip()
    sign_in(browser, ui_server)
    for path in ("/ui/agents", f"/ui/agents/{agent_id}", "/ui/admin/keys", "/ui/admin/usage", "/ui/admin/system"):
        browser.get(ui_server.url + path)
        assert browser.execute_script(UNLABELLED) == [], path
    browser.delete_all_cookies()
    browser.get(ui_server.url + "/ui/login")
    assert browser.execute_script(UNLABELLED) == []
    sign_in(browser, ui_server)
    browser.get(ui_server.url + f"/ui/agents/{agent_id}")
    body = by_css(browser, "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"  # the first stop
    for _ in range(40):  # Tab on, through the page, to the log (a focusable scroll region)
        if browser.switch_to.active_element.get_attribute("id") == "log":
            break
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "log"
