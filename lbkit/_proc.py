"""Starting and stopping background processes by pid (never by name).

Every process lbkit starts in the background leads its own session (and so
its own process group): stopping it signals the whole group, so whatever it
started (Jupyter kernels, a server's workers) goes with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (reaping it first if it is our finished child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(pid: int, grace: float = 5.0) -> bool:
    """SIGTERM the group led by ``pid``, SIGKILL it after ``grace`` s; True if it was running."""
    if not alive(pid):
        return False
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def kill_pid(pid: int, grace: float = 2.0) -> None:
    """SIGTERM one process, SIGKILL it after ``grace`` s (for processes not leading a group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
