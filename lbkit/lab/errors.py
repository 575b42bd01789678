"""Errors of the lab, each printed by the CLI as one line (no traceback)."""


class LabError(RuntimeError):
    """Something a user can fix: the message says what, in one line."""


class TopologyError(LabError):
    """A topology file is malformed; the message names the file and the key."""
