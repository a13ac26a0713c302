"""Fixtures of the browser tests: Chromium driven by Playwright, a real `krenalis serve` on a
real nats-server and PostgreSQL, a static server for the pages, RudderStack's SDK from npm.

The tests run when Chromium is installed and are skipped, saying how to install it, when it is
not (CI installs it). A failing test leaves a screenshot of each of its pages, and their console
output, in its pytest temporary directory (the path is printed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    CHROMIUM_ARGS,
    INSTALL_HINT,
    PageServer,
    chromium_executable,
    install_rudderstack,
)

from e2e.e2e_support import Deployment
from krenalis.runtime.nats_server import EmbeddedNats


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the test, for fixtures to see whether it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_executable()
    if path is None:
        pytest.skip(INSTALL_HINT)
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    async with playwright_api.async_playwright() as playwright:
        # Playwright gives each launch a new, empty profile (user data) directory.
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def new_page(
    browser: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """A factory of pages, each in a context of its own (no shared storage); on failure each
    leaves a screenshot and its console lines in the test's temporary directory."""
    pages: list[tuple[Any, list[str]]] = []

    async def make() -> Any:
        context = await browser.new_context()
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"page error: {error}"))
        pages.append((page, console))
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    failed = report is not None and report.failed
    for number, (page, console) in enumerate(pages):
        if failed:
            await _keep_evidence(page, console, tmp_path / f"page-{number}")
        await page.context.close()


async def _keep_evidence(page: Any, console: list[str], stem: Path) -> None:
    try:
        await page.screenshot(path=f"{stem}.png", full_page=True)
    except Exception as exc:  # a crashed page has no picture; its console still helps
        console.append(f"(no screenshot: {exc})")
    stem.with_suffix(".console.txt").write_text("\n".join(console))
    print(f"browser evidence: {stem}.png, {stem}.console.txt (url {page.url})")
    print("\n".join(console[-50:]))


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[PageServer]:
    root = tmp_path / "site"
    root.mkdir()
    with PageServer(root).running() as server:
        yield server


@pytest.fixture(scope="session")
def rudderstack_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RudderStack JS SDK v3's browser build, installed from npm for this session."""
    return install_rudderstack(tmp_path_factory.mktemp("rudderstack-sdk"))


@pytest.fixture
def deployment(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator[Deployment]:
    """A directory for krenalis.yaml and `krenalis serve` on the test's nats-server; every
    process stopped at the end, its log printed."""
    root = tmp_path / "krenalis"
    root.mkdir()
    deployment = Deployment(root, nats_server.url)
    try:
        yield deployment
    finally:
        deployment.stop_all()
        for process in deployment.processes:
            print(f"===== {process.name} =====")
            print(process.log()[-20_000:])
