"""lbkit: a course and a packet-level lab for load balancing, L4 vs L7."""

__version__ = "0.1.0"

from pathlib import Path as _Path

if _Path(__file__).with_name("_compiled.txt").exists():  # `make fast` built the request path
    from ._fastpath import guard as _guard

    _guard()  # a stale build (or LBKIT_PURE=1) runs the Python modules instead
