"""Repository-wide pytest rules.

In CI (the ``CI`` environment variable set to a true value) a skipped test
fails the run: a test that needs root, nginx or a namespace must run there,
since CI is root and ``make test`` installs what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Labs started by notebooks under test live in a temporary folder, not in .lab/."""
    if "LBKIT_STATE_ROOT" not in os.environ:
        os.environ["LBKIT_STATE_ROOT"] = tempfile.mkdtemp(prefix="lbkit-nb-")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skipped(config: pytest.Config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter else 0


def _sweep_notebook_labs() -> None:
    """Take down any lab a notebook under test left behind (a failed cell, a killed kernel)."""
    root = os.environ.get("LBKIT_STATE_ROOT")
    if not root or not os.path.isdir(root):
        return
    from lbkit.lab import Lab, LabError

    for entry in os.scandir(root):
        if os.path.exists(os.path.join(entry.path, "lab.json")):
            with contextlib.suppress(LabError):
                Lab.attach(entry.path).down()
    shutil.rmtree(root, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _sweep_notebook_labs()
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
