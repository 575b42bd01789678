"""Repository-wide pytest rules.

In CI (the ``CI`` environment variable set to a true value) a skipped test
fails the run: a test that needs root, nginx or a namespace must run there,
since CI is root and ``make test`` installs what is missing.
"""

from __future__ import annotations

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _in_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        if reporter:
            reporter.write_line(
                f"CI: {skipped} test(s) skipped; a skip is a failure in CI", red=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
