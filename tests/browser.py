"""Headless Chromium for browser tests (the report; later the labeling UI), driven by Playwright.

Playwright's own browser download does not work offline, so the tests use Debian's ``chromium`` package through
``executable_path``. Where it is missing, the session tries to install it (``apt-get install -y chromium``, when
running as root with apt); if that is impossible the browser tests skip with the reason — or fail, under CI
(``CI=true`` or ``CURATE_REQUIRE_BROWSER=1``), where a skipped browser test would hide a broken check.

Screenshots and other artifacts go under ``CURATE_TEST_ARTIFACTS`` (default ``<repo>/test-artifacts/``, ignored by
git).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")


def browser_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("CURATE_REQUIRE_BROWSER") == "1"


def artifacts_dir() -> Path:
    """Where tests keep what a person looks at afterwards (created on first use)."""
    path = Path(os.environ.get("CURATE_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium() -> str:
    """Install Debian's chromium; returns why not (empty when it worked)."""
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(args)} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    return ""


def _unavailable(reason: str) -> None:
    message = f"headless Chromium unavailable: {reason}"
    if browser_required():
        pytest.fail(f"{message} (browser tests are required under CI; apt-get install -y chromium)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium executable, installed through apt first if missing and possible."""
    path = find_chromium()
    if path is None:
        why = install_chromium()
        path = find_chromium()
        if path is None:
            _unavailable(why or "apt-get installed chromium but no executable was found")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium for the session (Playwright's sync API)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        try:
            instance = pw.chromium.launch(executable_path=chromium_path, headless=True)
        except Exception as exc:  # Playwright raises its own Error type; the reason is in the message
            _unavailable(f"{chromium_path} did not start: {str(exc).splitlines()[0]}")
        yield instance
        instance.close()


@dataclass
class BrowserPage:
    """A page and the requests it tried to make beyond local files (all of them refused)."""

    page: Any
    blocked: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(browser: Any) -> Iterator[BrowserPage]:
    """A fresh page in its own context that may load only ``file:`` and ``data:`` URLs: a test sees whether what
    it opens needs the network."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = BrowserPage(context.new_page())

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            opened.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    yield opened
    context.close()
