"""IP hash: nginx's ``ip_hash``, byte for byte."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ._base import Balancer, Flow
from ._smooth import smooth_wrr_step

#: nginx gives up re-hashing after this many tries and falls back to round robin.
MAX_TRIES = 20


def nginx_ip_hash_key(client_ip: str) -> bytes:
    """The address bytes nginx hashes: the first three octets of IPv4, all 16 of IPv6.

    Source: ``ngx_http_upstream_init_ip_hash_peer`` (``iphp->addrlen = 3``
    for AF_INET). So every client of one /24 lands on the same backend:
    the naivety the course shows.
    """
    addr = ipaddress.ip_address(client_ip)
    return addr.packed[:3] if addr.version == 4 else addr.packed


class IpHash(Balancer):
    """Hash the client address to a backend, exactly as nginx ``ip_hash``.

    Source: ``ngx_http_upstream_get_ip_hash_peer`` in
    src/http/modules/ngx_http_upstream_ip_hash_module.c. Starting from 89,
    ``hash = (hash * 113 + byte) % 6271`` over the address bytes; then
    ``w = hash % total_weight`` walks the primary servers in configuration
    order (down ones included, so a server going down does not reshuffle
    everyone else). If the server found is unavailable, the same formula is
    applied again on the running hash; after 20 failed tries nginx falls back
    to (smooth weighted) round robin, and so do we. With fewer than two
    primaries nginx skips hashing altogether.

    Differences from nginx: nginx refuses ``backup`` with ``ip_hash``; here
    backups are hashed the same way when every primary is unavailable.

    nginx config: ``upstream pool { ip_hash; server a; server b; }``.
    """

    name = "ip_hash"
    needs_flow = True
    consistent = True

    def _changed(self) -> None:
        if not hasattr(self, "_current"):
            self._current = [0] * len(self.backends)
        self._weights = [b.weight for b in self.backends]

    def _choose(self, candidates: Sequence[int], flow: Flow | None, now: float) -> int:
        assert flow is not None
        in_backup_tier = self.backends[candidates[0]].backup
        tier = [i for i, b in enumerate(self.backends) if b.backup == in_backup_tier]
        if len(tier) < 2:
            return smooth_wrr_step(self._current, self._weights, candidates)
        allowed = set(candidates)
        key = nginx_ip_hash_key(flow.client_ip)
        total = sum(self._weights[i] for i in tier)
        h = 89
        for _ in range(MAX_TRIES + 1):
            for byte in key:
                h = (h * 113 + byte) % 6271
            w = h % total
            for p in tier:
                if w < self._weights[p]:
                    break
                w -= self._weights[p]
            if p in allowed:
                return p
        return smooth_wrr_step(self._current, self._weights, candidates)
