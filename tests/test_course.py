"""`make lab-up`'s course: JupyterLab starts, answers, and stops without leftovers."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from lbkit import course

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_course_up_serves_notebooks_and_down_stops_it(tmp_path):
    """up -> the server answers with its token and lists notebooks; down -> the pid is gone."""
    state = tmp_path / "state"
    try:
        started, fresh = course.up(state, NOTEBOOKS)
        assert fresh
        assert started.url.startswith("http://127.0.0.1:")
        api = f"http://127.0.0.1:{started.port}/api/contents?token={started.token}"
        with urllib.request.urlopen(api, timeout=10) as resp:
            listing = json.load(resp)
        assert any(item["name"].endswith(".ipynb") for item in listing["content"])
        again, fresh_again = course.up(state, NOTEBOOKS)
        assert not fresh_again and again.pid == started.pid
        assert course.status(state).pid == started.pid
    finally:
        stopped = course.down(state)
    assert stopped
    assert not alive(started.pid)
    assert not (state / course.STATE_FILE).exists()
    assert not Path(started.log).exists()
    assert course.status(state) is None


def test_course_up_with_missing_folder_is_a_clear_error(tmp_path):
    """A folder that does not exist: CourseError naming it, and nothing left running."""
    with pytest.raises(course.CourseError, match="no such folder"):
        course.up(tmp_path / "state", tmp_path / "nowhere")
    assert course.status(tmp_path / "state") is None


def test_course_down_when_nothing_runs(tmp_path):
    """down on a clean state directory reports that nothing was running."""
    assert course.down(tmp_path) is False
