"""What a running lab has created, recorded before it is created.

The record is an intent log: a namespace's name is written *before* the
namespace is made and a process's pid right after it starts, so a ``down``
after an ``up`` that was killed halfway (even by SIGKILL) still finds and
removes everything. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "lab.json"


def lab_prefix(state_dir: Path) -> str:
    """A short prefix for this state directory's namespaces: ``lbk`` + 4 hex digits.

    Derived from the absolute path, so two checkouts (or a test's temporary
    lab and a learner's lab) never share namespace names, and the same
    checkout always gets the same, guessable names.
    """
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()
    return f"lbk{digest[:4]}"


@dataclass
class LabState:
    """The lab recorded in ``STATE_DIR/lab.json``."""

    topology: str
    provider: str
    prefix: str
    addressing: str = "native"
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def load(cls, state_dir: Path) -> LabState | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
            return cls(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{STATE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, state_dir / STATE_FILE)

    @staticmethod
    def remove(state_dir: Path) -> None:
        (state_dir / STATE_FILE).unlink(missing_ok=True)
