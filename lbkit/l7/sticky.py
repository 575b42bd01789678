"""Sticky sessions by cookie: the same client keeps reaching the same backend.

The first response carries ``Set-Cookie: NAME=TOKEN; Path=/; HttpOnly;
SameSite=Lax`` (RFC 6265 §4.1; ``Secure`` over https). The token is
``base64url(HMAC-SHA256(secret, "lbkit-sticky" NUL upstream NUL backend))``
cut to 128 bits (RFC 2104; RFC 4868 §2.3 allows truncation to half the
output). The MAC *is* the backend's identifier: it names the backend to
whoever holds the secret and to nobody else, so it reveals no server names
or addresses, cannot be forged to pick a backend, and every router sharing
the secret (alb1 and alb2 of the lab) reads the others' cookies. AWS ALB
(``AWSALB``) and nginx Plus (``sticky cookie``) use opaque cookies likewise.

A token that matches no backend of the pool (tampered, from another lab,
or for a removed server) is ignored: the request is balanced normally and
the response sets a fresh cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

TOKEN_BYTES = 16


def sticky_token(secret: str, upstream: str, backend: str) -> str:
    """The cookie value that pins a client to ``backend`` of ``upstream``."""
    msg = f"lbkit-sticky\0{upstream}\0{backend}".encode()
    mac = hmac.new(secret.encode(), msg, hashlib.sha256).digest()[:TOKEN_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def resolve_token(secret: str, upstream: str, backends: Iterable[str], token: str) -> str | None:
    """The backend name ``token`` stands for, or None; compared in constant time."""
    found = None
    for name in backends:
        if hmac.compare_digest(sticky_token(secret, upstream, name), token):
            found = name
    return found


def set_cookie(name: str, token: str, *, secure: bool = False) -> tuple[str, str]:
    """The ``Set-Cookie`` header that pins the client (a session cookie: no Expires)."""
    attrs = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    return ("Set-Cookie", f"{name}={token}{attrs}")
