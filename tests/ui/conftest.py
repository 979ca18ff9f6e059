"""The dashboard's fixtures: a real server whose `sh` model runs the prompt as a shell command, a
signed-in HTTP client, and (for the browser tests) a headless Chromium driven by Selenium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import ROOT, UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.server import ServerProcess

AGENTFACTORY = str(Path(sys.executable).parent / "agentfactory")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="package")  # one server for both files: it starts in ~10 s on an idle machine
def ui_server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("ui")
    with FakeOpenAI(prompt_as_shell()) as fake:
        # `down`: a model nobody answers, so its agent fails with a line on stderr.
        down = {
            "id": "down",
            "provider": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": UPSTREAM_KEY_ENV,
        }
        catalog = write_catalog(workdir / "catalog.json", fake, extra_models=[down])
        srv = ServerProcess(workdir, catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()
        try:
            yield srv
        finally:
            srv.stop()
            srv.cleanup_containers()


def sign_in(server: ServerProcess, key: str | None = None) -> tuple[httpx.Client, str]:
    """An HTTP client holding a dashboard session (no Authorization header), and its CSRF token."""
    client = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    done = client.post("/ui/login", data={"key": key or server.admin_key, "next": "/ui/agents"})
    assert done.status_code == 303, done.text
    page = client.get("/ui/agents")
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, page.text
    return client, match.group(1)


def run_cli(server: ServerProcess, *args: str, key: str | None = None, timeout: float = 60) -> str:
    """`agentfactory ARGS` against the server; its stdout (asserting it succeeded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    env |= {"AGENTFACTORY_URL": server.url, "AGENTFACTORY_API_KEY": key or server.admin_key}
    proc = subprocess.run([AGENTFACTORY, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "Debian's `chromium` is not installed (scripts/setup.sh with AGENTFACTORY_WITH_TEST_TOOLS=1)"
    if shutil.which("chromedriver") is None:
        return "`chromedriver` (Debian's chromium-driver) is not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (poetry install)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = chromium_missing()
    if why is not None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--enable-precise-memory-info", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps", "--metrics-recording-only"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str, scroll_to: str | None = None) -> None:
    """The page at desktop and phone widths, into test-artifacts/screenshots (CI keeps the directory);
    `scroll_to`: a selector brought into view first (the log, below the summary)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("desktop", (1280, 900)), ("phone", (390, 844))):
        driver.set_window_size(width, height)
        if scroll_to:
            driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", scroll_to)
        driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        driver.save_screenshot(str(SCREENSHOTS / f"{name}-{label}.png"))
    driver.set_window_size(1280, 900)
