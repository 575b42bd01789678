"""The Internet checksum: full computation (RFC 1071) and incremental update (RFC 1624).

The checksum of IPv4, TCP, UDP and ICMP is the one's complement of the one's
complement sum of the data taken as 16-bit big-endian words (RFC 1071 §1).
Two facts make it cheap in Python:

* ``2**16 == 1 (mod 0xFFFF)``, so the end-around-carry sum of the words is
  the number the bytes spell, reduced mod ``0xFFFF`` (RFC 1071 §2 (B), (C):
  the sum is independent of how carries are deferred). ``int.from_bytes``
  and one ``%`` sum a 1500-byte segment in C.
* In one's complement arithmetic ``~x == -x (mod 0xFFFF)``, so RFC 1624 eq. 3,
  ``HC' = ~(~HC + ~m + m')``, is ``HC' = HC + m - m' (mod 0xFFFF)``. A rewrite
  that replaces words ``m`` by ``m'`` adds one precomputable constant
  ``sum(m) - sum(m')`` to the checksum: see :func:`update`.

Representation: a sum over data that is not all zero is never ``+0``
(``0x0000``); it is ``0xFFFF`` instead, so a computed checksum is never
``0xFFFF``. :func:`update` and :func:`l4_checksum` keep that convention, which
is why they agree bit for bit with a full recomputation (scapy's included).
UDP alone transmits a computed ``0`` as ``0xFFFF``, because ``0`` means "no
checksum" (RFC 768).
"""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The one's complement sum of ``data`` as 16-bit words, in ``0..0xFFFF`` (RFC 1071 §1).

    An odd trailing byte is padded with a zero byte. Only all-zero data sums to 0.
    """
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8
    return (x % 0xFFFF or 0xFFFF) if x else 0


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of ``data``: ``~ones_sum(data)`` (RFC 1071 §1).

    Over a header that holds a correct checksum the result is 0: that is how
    a receiver verifies one (RFC 1071 §1 (3)).
    """
    return 0xFFFF - ones_sum(data)


def update(hc: int, delta: int) -> int:
    """RFC 1624 eq. 3 in modular form: the checksum after a rewrite.

    ``delta`` is ``sum(old words) - sum(new words)`` over the 16-bit words the
    rewrite changed (any sign and size; ``ones_sum(old) - ones_sum(new)``
    will do). Returns ``HC + delta (mod 0xFFFF)``, which is
    ``~(~HC + ~m + m')`` with the same ``-0`` convention as a full
    computation. For UDP apply :func:`udp_fix` too.
    """
    return (hc + delta) % 0xFFFF


def udp_fix(hc: int) -> int:
    """A computed UDP checksum of 0 is sent as 0xFFFF: 0 means none (RFC 768)."""
    return hc or 0xFFFF


def pseudo_header_sum(src4: bytes, dst4: bytes, proto: int, length: int) -> int:
    """The sum of the TCP/UDP pseudo-header's words, mod 0xFFFF (RFC 793 §3.1, RFC 768)."""
    s, d = src4, dst4
    return ((s[0] + s[2] + d[0] + d[2]) << 8) + s[1] + s[3] + d[1] + d[3] + proto + length


def l4_checksum(
    src4: bytes, dst4: bytes, proto: int, segment: bytes | bytearray | memoryview, field: int
) -> int:
    """The full TCP or UDP checksum of ``segment``, whatever its checksum field holds.

    ``field`` is the offset of the checksum in ``segment`` (16 for TCP, 6 for
    UDP); its current value is subtracted, so the field may hold anything: an
    old checksum, zero, or the partial pseudo-header sum a NIC offload left
    there (Linux ``CHECKSUM_PARTIAL``). UDP's 0 -> 0xFFFF rule is applied.
    """
    x = int.from_bytes(segment, "big")
    if len(segment) & 1:
        x <<= 8
    old = (segment[field] << 8) | segment[field + 1]
    total = pseudo_header_sum(src4, dst4, proto, len(segment)) + x - old
    hc = (-total) % 0xFFFF
    return (hc or 0xFFFF) if proto == 17 else hc
