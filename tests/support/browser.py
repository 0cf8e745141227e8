"""Debian's Chromium driven by Playwright, for the tests that use the portal in a browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip("no /usr/bin/chromium and not root to install it (scripts/)")
        raise AssertionError("/usr/bin/chromium is missing: run scripts/install-system-deps.sh")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()
