"""examples/account_sessions.py in a real browser: two devices of one user, in Chromium.

Two browser contexts (two cookie jars, two User-Agents) log in as one user through the real
form; "Log out other devices" on one of them ends the other, whose next navigation lands
on the login form. Same requirements and skip/fail rules as ``test_browser.py`` (whose
constants this module shares): skipped locally without Chromium or Playwright, a failure
under CI (``CI=true``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import pytest_asyncio
from aiohttp import web

from examples import account_sessions

from .test_browser import PLAYWRIGHT_MISSING, TIMEOUT_MS
from .test_browser import browser as browser  # the module-scoped Chromium: a fixture

if PLAYWRIGHT_MISSING is None:
    from playwright.async_api import Browser, Page, expect

# every test shares the module's event loop, where the browser lives
pytestmark = pytest.mark.asyncio(loop_scope="module")

LAPTOP = "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0 Laptop-of-alice"
PHONE = "Mozilla/5.0 (Linux; Android 14) Chrome/130.0 Mobile Phone-of-alice"


@pytest_asyncio.fixture(loop_scope="module")
async def base() -> AsyncIterator[str]:
    """The example served by ``web.AppRunner`` on a free port: ``http://127.0.0.1:<port>``."""
    runner = web.AppRunner(account_sessions.make_app(), shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def device(browser: Browser, user_agent: str) -> AsyncIterator[Page]:
    """A page in a new browser context (its own cookie jar) sending *user_agent*."""
    ctx = await browser.new_context(user_agent=user_agent)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.set_default_navigation_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        yield await ctx.new_page()
    finally:
        await ctx.close()


async def log_in(page: Page, base: str, username: str) -> None:
    """Log in through the real form and land on the devices page."""
    await page.goto(f"{base}/login")
    await page.fill('input[name="username"]', username)
    await page.click('button[type="submit"]:has-text("Log in")')
    await expect(page).to_have_url(f"{base}/devices")
    await expect(page.locator("h1")).to_have_text("Your devices")


async def expect_devices(page: Page, agents: list[str], mine: str) -> None:
    """The devices page lists exactly *agents* (in any order), *mine* marked as this one."""
    items = page.locator("li.device")
    await expect(items).to_have_count(len(agents))
    for agent in agents:
        await expect(items.filter(has_text=agent)).to_have_count(1)
    current = page.locator('li.device[data-current="true"]')
    await expect(current).to_have_count(1)
    await expect(current.locator(".agent")).to_have_text(mine)
    await expect(current.locator(".this-device")).to_have_text("(this device)")



async def test_log_out_other_devices_ends_the_other_browser(browser: Browser, base: str) -> None:
    async with device(browser, LAPTOP) as laptop, device(browser, PHONE) as phone:
        await log_in(laptop, base, "alice")
        await log_in(phone, base, "alice")

        await laptop.reload()
        await expect_devices(laptop, [LAPTOP, PHONE], mine=LAPTOP)
        await expect(laptop.locator(".count")).to_have_text("2")
        await expect_devices(phone, [LAPTOP, PHONE], mine=PHONE)  # its landing page

        await laptop.click('button[type="submit"]:has-text("Log out other devices")')
        await expect(laptop).to_have_url(f"{base}/devices")
        await expect_devices(laptop, [LAPTOP], mine=LAPTOP)

        # the phone's session was destroyed: its next navigation gets the login form
        await phone.goto(f"{base}/devices")
        await expect(phone).to_have_url(f"{base}/login")
        await expect(phone.locator('input[name="username"]')).to_be_visible()

        await laptop.goto(f"{base}/devices")
        await expect(laptop).to_have_url(f"{base}/devices")
        await expect_devices(laptop, [LAPTOP], mine=LAPTOP)
        await expect(laptop.locator(".count")).to_have_text("1")


async def test_log_out_one_device_from_the_other(browser: Browser, base: str) -> None:
    async with device(browser, LAPTOP) as laptop, device(browser, PHONE) as phone:
        await log_in(laptop, base, "bob")
        await log_in(phone, base, "bob")
        await laptop.reload()
        await expect_devices(laptop, [LAPTOP, PHONE], mine=LAPTOP)

        other = laptop.locator('li.device[data-current="false"]')
        await other.locator('button:has-text("Log out")').click()
        await expect(laptop).to_have_url(f"{base}/devices")
        await expect_devices(laptop, [LAPTOP], mine=LAPTOP)

        await phone.reload()
        await expect(phone).to_have_url(f"{base}/login")

        # this device's own "Log out" in the list logs it out too
        mine = laptop.locator('li.device[data-current="true"]')
        await mine.locator('button:has-text("Log out")').click()
        await expect(laptop).to_have_url(f"{base}/login")
        await laptop.goto(f"{base}/devices")
        await expect(laptop).to_have_url(f"{base}/login")
