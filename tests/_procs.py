"""Helpers for tests that must leave nothing running: processes, labs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a unique temporary path), not this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return [p for p in found if p != os.getpid()]


@contextlib.contextmanager
def lab_running(lab, state_dir: Path):
    """``lab.up()`` for the block; then down, and no namespace or process of it may remain."""
    from lbkit.lab.providers.netns import list_namespaces

    try:
        yield lab.up()
    finally:
        lab.down()
    assert [ns for ns in list_namespaces() if ns.startswith(f"{lab.prefix}-")] == []
    assert processes_mentioning(str(state_dir)) == []
