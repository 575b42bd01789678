"""Labs for notebooks: each chapter its own state directory, always taken down.

A notebook cell can fail halfway; the lab it started must not outlive the
kernel. :func:`notebook_lab` registers ``down`` to run when the interpreter
exits (a kernel shutdown is a normal exit), and keeps each chapter's lab in
its own state directory: ``$LBKIT_STATE_ROOT/NAME`` when that is set (the
test suite sets it to a temporary folder), else ``.lab/NAME`` in the
checkout, apart from the lab ``make lab-up`` runs in ``.lab``.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from .lab import Lab

REPO = Path(__file__).resolve().parents[2]


def labs_dir() -> Path:
    """The checkout's ``labs/`` folder (topology files)."""
    return REPO / "labs"


def notebook_state_dir(name: str) -> Path:
    root = os.environ.get("LBKIT_STATE_ROOT")
    return Path(root) / name if root else REPO / ".lab" / name


def notebook_lab(topology: str = "basic", name: str = "tour", provider: str = "auto") -> Lab:
    """A :class:`Lab` for ``labs/TOPOLOGY.toml``, brought up, and taken down at exit."""
    lab = Lab(
        labs_dir() / f"{topology}.toml", provider=provider, state_dir=notebook_state_dir(name)
    )
    atexit.register(lab.down)
    return lab.up()
