"""Swagger UI in a real browser (issue 11): headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by selenium) loads
``/schema/swagger`` from a running ``segments serve`` with every host but the
service unreachable, renders the operations, and executes one request."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from segments_dev.embedded import EmbeddedRedis
from tests.support.serve import clean_env, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 60


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root (CI)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2000",
        # No internet: every host but the service's fails to resolve, so the
        # page works only if the service serves all its assets itself.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_swagger_ui_renders_and_executes_a_request(
    browser: Any, private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    env = clean_env(REDIS_URL=private_redis.url)
    with serving(env, tmp_path / "serve.log") as served:
        browser.get(f"{served.url}/schema/swagger")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/api/v1/segments", "/api/v1/users/{user_id}/segments", "/healthz"} <= paths

        health = browser.find_element(
            By.XPATH,
            "//div[contains(@class, 'opblock ')][.//*[contains(@class, 'opblock-summary-path')"
            " and normalize-space(.) = '/healthz']]",
        )
        health.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda _: health.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
        wait.until(lambda _: health.find_element(By.CSS_SELECTOR, ".execute")).click()
        status = wait.until(
            lambda _: health.find_element(
                By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
            )
        )
        assert status.text.strip().startswith("200"), status.text
        body = health.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight")
        assert '"ok"' in body.text, body.text
        # Every resource the page loaded came from the service itself.
        urls = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert urls and all(u.startswith(served.url) for u in urls), urls
