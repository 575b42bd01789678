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


def _skipped(config: pytest.Config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter else 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and exitstatus == 0 and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if _in_ci() and skipped:
        terminalreporter.section("CI", red=True)
        terminalreporter.write_line(
            f"{skipped} test(s) skipped: in CI a skip is a failure (CI runs as root and "
            "`make test` installs what tests need)",
            red=True,
        )
