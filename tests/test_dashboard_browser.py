"""The dashboard's page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium), served by a real HTTP server, on a real Redis: the workers seeded there, a
worker's ids, a search, a restore, a dry-run purge then the purge (and one below the workers'
in-memory expiry, warned), and the dark theme."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI

from statedb.dashboard import make_router
from statedb.keys import KeySchema
from tests.admin_contract import seed
from tests.browser import browser_missing, chromium, served

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
SCREENSHOT_ENV = "STATEDB_DASHBOARD_SCREENSHOT"  # also save the screenshot there (the README's)
TIMEOUT = 15


@pytest.fixture
def page(tmp_path: Path, redis_url: str, key_prefix: str, redis_client: redis.Redis) -> Iterator[Any]:
    """The page under /admin/statedb/ in Chromium, on seeded workers; yields the driver."""
    seed(redis_client, key_prefix)
    app = FastAPI()
    app.include_router(make_router(redis_url, key_prefix=key_prefix), prefix="/admin/statedb")
    with served(app) as base, chromium(tmp_path / "profile") as driver:
        driver.get(f"{base}/admin/statedb/")
        wait(driver, lambda d: d.find_element("css selector", "body").get_attribute("data-ready") == "1")
        yield driver


def wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def test_the_page_shows_the_workers_and_lets_an_operator_restore_and_purge(
    page: Any, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    schema = KeySchema(key_prefix)
    rows = page.find_elements("css selector", "#workers tbody tr")
    assert [row.get_attribute("data-worker") for row in rows] == ["a@h", "gone@h", "s@h", "fleet"]
    assert "4 sets, 5 revoked ids" in text_of(page, "workers-summary")
    assert not page.find_element("css selector", "#workers th.live").is_displayed()  # no live workers wired
    assert rows[3].find_elements("css selector", "td")[1].text == "all workers"

    rows[0].click()  # a worker's ids, newest first
    wait(page, lambda d: len(d.find_elements("css selector", "#revoked-list li")) == 2)
    assert [li.find_element("css selector", "code").text
            for li in page.find_elements("css selector", "#revoked-list li")] == ["new-a", "old-a"]

    page.find_element("id", "search-input").send_keys("new-a")
    page.find_element("id", "search-button").click()
    wait(page, lambda d: "is revoked in 2 sets" in text_of(d, "search-result"))
    buttons = page.find_elements("css selector", "#search-result button.restore-button")
    everywhere = next(b for b in buttons if b.text == "Restore everywhere")
    everywhere.click()
    wait(page, lambda d: "removed 2 stored revocations" in text_of(d, "message"))
    wait(page, lambda d: "is not revoked anywhere" in text_of(d, "search-result"))
    assert redis_client.zscore(schema.revoked_key("a@h"), "new-a") is None
    assert redis_client.zscore(schema.shared_revoked_key, "new-a") is None

    older = page.find_element("id", "purge-older-than")
    older.clear()
    older.send_keys("30d")
    page.find_element("id", "purge-preview").click()
    wait(page, lambda d: "would remove 2 revoked ids older than 30d" in text_of(d, "purge-result"))
    assert redis_client.zcard(schema.revoked_key("a@h")) == 1  # a preview removes nothing
    page.save_screenshot(str(tmp_path / "dashboard.png"))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(tmp_path / "dashboard.png", os.environ[SCREENSHOT_ENV])
    confirm = page.find_element("id", "purge-confirm")
    assert confirm.is_displayed() and confirm.text == "Purge 2 ids"
    confirm.click()
    wait(page, lambda d: "removed 2 revoked ids older than 30d" in text_of(d, "message"))
    assert redis_client.zcard(schema.revoked_key("a@h")) == 0 and not redis_client.exists(schema.revoked_key("gone@h"))
    wait(page, lambda d: text_of(d, "workers-summary").endswith(", 1 revoked id"))  # the table was refreshed
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_a_purge_below_the_in_memory_expiry_is_warned_and_needs_a_second_look(
    page: Any, redis_client: redis.Redis, key_prefix: str
) -> None:
    older = page.find_element("id", "purge-older-than")
    older.clear()
    older.send_keys("45s")
    page.find_element("id", "purge-preview").click()
    wait(page, lambda d: "below the workers' in-memory expiry (3h)" in text_of(d, "purge-result"))
    assert text_of(page, "purge-result").startswith("would remove 3 revoked ids older than 45s")
    assert page.find_element("id", "purge-result").get_attribute("class") == "warn"
    confirm = page.find_element("id", "purge-confirm")
    assert confirm.text == "Purge 3 ids anyway"
    confirm.click()
    wait(page, lambda d: "removed 3 revoked ids older than 45s" in text_of(d, "message"))
    assert redis_client.zcard(KeySchema(key_prefix).revoked_key("a@h")) == 0


def test_errors_are_shown_not_thrown(page: Any) -> None:
    older = page.find_element("id", "purge-older-than")
    older.clear()
    older.send_keys("soon")
    page.find_element("id", "purge-preview").click()
    wait(page, lambda d: "older_than" in text_of(d, "message"))
    assert "error" in (page.find_element("id", "message").get_attribute("class") or "")


def test_the_page_follows_the_dark_preference(page: Any) -> None:
    def background() -> str:
        return str(page.execute_script("return getComputedStyle(document.body).backgroundColor"))

    light = background()
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme",
                                                                       "value": "dark"}]})
    assert background() != light and background() == "rgb(15, 18, 22)"
