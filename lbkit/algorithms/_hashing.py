"""Stable hashes: the same bytes hash to the same number in every process.

Python's built-in ``hash()`` of ``str``/``bytes`` is salted per process
(PYTHONHASHSEED), so two L4 boxes using it would disagree on where a flow
goes. BLAKE2b (RFC 7693) from the standard library is stable everywhere;
``person`` gives independent hash functions from one primitive, as Maglev's
h1/h2 need (Maglev paper §3.4).
"""

from __future__ import annotations

from hashlib import blake2b


def stable_hash64(data: bytes | str, person: bytes = b"lbkit") -> int:
    """A 64-bit unsigned hash of ``data``, identical on every machine."""
    if isinstance(data, str):
        data = data.encode()
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "big")
