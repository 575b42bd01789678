"""Start and stop the course: JupyterLab on 127.0.0.1 serving ``notebooks/``.

An adapter (subprocesses, files, HTTP): it starts JupyterLab in its own
process group in the background, waits until the server answers, and keeps
what it needs to stop it again in ``STATE_DIR/course.json``. Stopping kills
that process group by the recorded id (never by name), so kernels started
from the notebooks go too.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lbkit._proc import alive as _alive
from lbkit._proc import stop_group

DEFAULT_PORT = 8888
STATE_FILE = "course.json"


class CourseError(RuntimeError):
    """The course could not be started; the message says why in one line."""


@dataclass
class Course:
    """A running JupyterLab started by :func:`course_up`."""

    pid: int
    port: int
    token: str
    root: str
    log: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lab?token={self.token}"


def _free_port(start: int) -> int:
    for port in range(start, start + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the server will bind: a port in TIME_WAIT is free to it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise CourseError(f"no free TCP port on 127.0.0.1 in {start}..{start + 99}")


def _answers(course: Course) -> bool:
    url = f"http://127.0.0.1:{course.port}/api/status?token={course.token}"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def status(state_dir: Path) -> Course | None:
    """The running course recorded in ``state_dir``, or None (stale records are ignored)."""
    path = state_dir / STATE_FILE
    try:
        course = Course(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return course if _alive(course.pid) else None


def up(
    state_dir: Path,
    notebooks: Path,
    *,
    port: int | None = None,
    timeout: float = 90.0,
) -> tuple[Course, bool]:
    """Start JupyterLab unless it already runs; return it and whether it was started now.

    Waits (polling ``/api/status``, up to ``timeout`` seconds) until the
    server answers. On failure the process group is killed and
    :class:`CourseError` names the log to read.
    """
    running = status(state_dir)
    if running:
        return running, False
    if not notebooks.is_dir():
        raise CourseError(f"{notebooks}: no such folder of notebooks")
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port(DEFAULT_PORT)
    token = secrets.token_hex(24)
    log = state_dir / "jupyter.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.root_dir={notebooks.resolve()}",
        f"--IdentityProvider.token={token}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses root without it
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    course = Course(
        pid=proc.pid, port=port, token=token, root=str(notebooks.resolve()), log=str(log.resolve())
    )
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(course), indent=2))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            down(state_dir)
            raise CourseError(f"JupyterLab exited with code {proc.returncode}; see {log}")
        if _answers(course):
            return course, True
        time.sleep(0.2)
    down(state_dir)
    raise CourseError(f"JupyterLab did not answer within {timeout:.0f} s; see {log}")


def down(state_dir: Path, *, grace: float = 10.0) -> bool:
    """Stop the course recorded in ``state_dir``; True if something was stopped.

    SIGTERM to the process group, then SIGKILL after ``grace`` seconds.
    The state file and the server's log are removed in every case.
    """
    path = state_dir / STATE_FILE
    try:
        course = Course(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        path.unlink(missing_ok=True)
        return False
    stopped = stop_group(course.pid, grace)
    path.unlink(missing_ok=True)
    Path(course.log).unlink(missing_ok=True)
    return stopped
