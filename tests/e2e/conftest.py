"""Shared fixtures: the browser (Debian Chromium through Playwright)."""

from tests.support.browser import browser

__all__ = ["browser"]
