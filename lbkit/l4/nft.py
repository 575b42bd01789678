"""The nftables engine of the L4 tier (NAT mode), and the VIP guard of lbkit's engines.

Two halves, as everywhere in lbkit:

* pure renderers that turn plain data into an ``nft -f`` script
  (:func:`render_nat`, :func:`render_vip_guard`) and read counters back out
  of ``nft -j`` output (:func:`parse_counters`);
* thin adapters that run ``nft`` here or inside a network namespace
  (:func:`apply`, :func:`delete_table`, :func:`counters`, :func:`set_sysctls`).

NAT mode is LVS-NAT done by netfilter: the L4 box holds the VIP, DNATs a
connection's first packet to a backend chosen by an nftables expression
(``numgen inc`` for round robin, ``numgen random``, ``jhash`` of the
client's address and port), and conntrack rewrites every later packet of
that connection, both ways, the same way (nft(8), "NAT STATEMENTS";
"NUMGEN EXPRESSION"; "HASH EXPRESSIONS"). The backends' route to the client
goes through the box, so replies pass it and get their source put back to
the VIP.

Every script starts with ``table ip T`` then ``delete table ip T``: the first
line creates the table if it is missing, so the delete never fails, and the
whole file is one netlink transaction, so re-applying replaces the old rules
atomically (nft(8), "TABLES": ``add`` and ``delete``; the nftables wiki,
"Scripting": atomic rule replacement).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbkit.lab.errors import LabError

PROTOS = ("tcp", "udp")
ALGORITHMS = ("round_robin", "random", "hash")
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")
SYSCTL_RE = re.compile(r"^[A-Za-z0-9_./-]+$")
NFT_TIMEOUT = 30.0
HEADER = "# lbkit {what}: generated from data; edit the data and re-render, not this file\n"

Backend = tuple[str, int]


@dataclass(frozen=True)
class NftService:
    """One virtual service: ``vip:port/proto`` balanced over ``backends`` by ``algorithm``.

    A backend listed twice gets twice the share (the map maps two slots to it).
    """

    vip: str
    port: int
    proto: str = "tcp"
    backends: Sequence[Backend] = ()
    algorithm: str = "round_robin"

    def __post_init__(self) -> None:
        _check_ip(self.vip, "VIP")
        _check_port(self.port, f"{self.vip} port")
        if self.proto not in PROTOS:
            raise LabError(f"{self.key}: protocol {self.proto!r} (expected tcp or udp)")
        if self.algorithm not in ALGORITHMS:
            raise LabError(
                f"{self.key}: algorithm {self.algorithm!r} "
                f"(the nftables engine has {', '.join(ALGORITHMS)})"
            )
        backends = tuple((str(ip), int(port)) for ip, port in self.backends)
        for ip, port in backends:
            _check_ip(ip, f"{self.key} backend")
            _check_port(port, f"{self.key} backend {ip}")
        object.__setattr__(self, "backends", backends)

    @property
    def key(self) -> str:
        """``"10.0.1.200:80/tcp"``: the comment (and counter name) of the service's rule."""
        return f"{self.vip}:{self.port}/{self.proto}"


def backend_key(service: NftService, backend: Backend) -> str:
    """``"10.0.1.200:80/tcp -> 10.0.1.10:80"``: the counter name of one backend."""
    return f"{service.key} -> {backend[0]}:{backend[1]}"


def _check_ip(ip: str, what: str) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise LabError(f"{what} {ip!r} is not an IPv4 address") from None


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise LabError(f"{what}: {port!r} is not a port (1-65535)")


def _check_table(table: str) -> None:
    if not TABLE_RE.match(table):
        raise LabError(f"table name {table!r}: use letters, digits and _ (at most 31)")


# ------------------------------------------------------------------ pure


def without_down(services: Iterable[NftService], down: Collection[Backend]) -> list[NftService]:
    """``services`` with every backend in ``down`` left out (re-render with the result).

    A health checker calls this with the backends it marked down, then
    renders and applies again. The replace does not touch conntrack: new
    connections avoid the downed backend, while those already pinned to it
    stay pinned until their entries expire (``conntrack -D`` ends them).
    """
    gone = {(ip, int(port)) for ip, port in down}
    return [
        NftService(
            s.vip,
            s.port,
            s.proto,
            [b for b in s.backends if b not in gone],
            s.algorithm,
        )
        for s in services
    ]


def _selector(service: NftService) -> str:
    n = len(service.backends)
    if service.algorithm == "round_robin":
        return f"numgen inc mod {n}"
    if service.algorithm == "random":
        return f"numgen random mod {n}"
    return f"jhash ip saddr . {service.proto} sport mod {n}"


def _match(service: NftService) -> str:
    return f"ip daddr {service.vip} {service.proto} dport {service.port}"


def _replace_table(table: str) -> str:
    return f"table ip {table}\ndelete table ip {table}\n"


def render_nat(
    table: str,
    services: Sequence[NftService],
    down: Collection[Backend] = (),
    *,
    drop_unserved: bool = False,
) -> str:
    """The ``nft -f`` script of the NAT engine for ``services`` (backends in ``down`` left out).

    Per service, one rule in ``prerouting`` (hook priority ``dstnat``)::

        ip daddr VIP tcp dport 80 counter dnat ip addr . port to numgen inc mod 2 map
            { 0 : 10.0.1.10 . 80, 1 : 10.0.1.11 . 80 } comment "VIP:80/tcp"

    and per backend, one counting rule in ``postrouting`` that matches the
    connections DNATed to it (``ct original`` is the address the client
    asked for). Netfilter runs NAT chains for a connection's first packet
    only, so these counters count connections, not traffic. A service
    whose backends are all down keeps a counting rule without ``dnat``:
    its packets reach the box itself, which answers a reset (tcp) or a
    port unreachable (udp), so the client fails fast. With
    ``drop_unserved`` that rule drops them instead, as lbkit's own engines
    do (``drop:no-backend``): the client's SYN goes unanswered and is
    retried. The dropped packet's conntrack entry is never confirmed, so
    every retry meets the rule again: it counts packets, like lbkit's.
    The rule says ``ct state new`` although a NAT chain only sees new
    connections anyway: a ``ct`` (or ``dnat``) expression is what turns
    conntrack on in the namespace, and without conntrack the kernel never
    runs NAT chains at all (``nf_nat_inet_fn`` accepts a packet without a
    ``ct``), so with every service unserved the rule would be skipped and
    the box's own stack would answer a reset.

    Deterministic: services and backends in the order given.
    """
    _check_table(table)
    services = without_down(services, down) if down else list(services)
    keys = [s.key for s in services]
    for key in keys:
        if keys.count(key) > 1:
            raise LabError(f"service {key} is listed twice")
    pre: list[str] = []
    post: list[str] = []
    for s in services:
        if not s.backends:
            if drop_unserved:
                pre.append(f"# {s.key}: no backend up, new flows dropped (and counted)")
                pre.append(f'{_match(s)} ct state new counter drop comment "{s.key}"')
            else:
                pre.append(f"# {s.key}: no backend up, the box answers itself")
                pre.append(f'{_match(s)} counter comment "{s.key}"')
            continue
        slots = ", ".join(f"{i} : {ip} . {port}" for i, (ip, port) in enumerate(s.backends))
        pre.append(
            f"{_match(s)} counter dnat ip addr . port to {_selector(s)} map {{ {slots} }} "
            f'comment "{s.key}"'
        )
        for ip, port in dict.fromkeys(s.backends):
            post.append(
                f"ip daddr {ip} {s.proto} dport {port} "
                f"ct original ip daddr {s.vip} ct original proto-dst {s.port} "
                f'counter comment "{backend_key(s, (ip, port))}"'
            )
    lines = [
        f"table ip {table} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f"\t\t{rule}" for rule in pre),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f"\t\t{rule}" for rule in post),
        "\t}",
        "}",
    ]
    return HEADER.format(what="nftables NAT") + _replace_table(table) + "\n".join(lines) + "\n"


def render_vip_guard(table: str, vips: Sequence[tuple[str, int, str]]) -> str:
    """An ``input`` filter that drops packets to each ``(vip, port, proto)``.

    For lbkit's own engines: they read the VIP's frames with AF_PACKET,
    which sees a frame when the driver hands it up, before the IP layer and
    its ``input`` hook, and forward it themselves. Without this guard the
    box's own kernel would also take the packet, find no listener and
    answer a TCP reset (or an ICMP port unreachable) that kills the
    client's connection. ARP is another protocol (not in the ``ip``
    family's hooks), so the kernel still answers ARP for the VIP it holds
    and clients keep sending the VIP's frames to this box.
    """
    _check_table(table)
    rules = []
    for vip, port, proto in vips:
        s = NftService(vip, port, proto)  # validates
        rules.append(f'\t\t{_match(s)} counter drop comment "{s.key}"')
    lines = [
        f"table ip {table} {{",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        *rules,
        "\t}",
        "}",
    ]
    return HEADER.format(what="VIP guard") + _replace_table(table) + "\n".join(lines) + "\n"


def parse_counters(listing: str) -> dict[str, dict[str, int]]:
    """Rule counters from ``nft -j list table ...`` output.

    Keyed by the rule's comment (:attr:`NftService.key`, :func:`backend_key`),
    or ``"CHAIN#HANDLE"`` for a rule without one; each value is
    ``{"packets": N, "bytes": N}``.
    """
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise LabError("nft -j gave output that is not an nftables listing") from None
    found: dict[str, dict[str, int]] = {}
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                key = rule.get("comment") or f"{rule.get('chain')}#{rule.get('handle')}"
                c = expr["counter"]
                found[key] = {"packets": int(c["packets"]), "bytes": int(c["bytes"])}
                break
    return found


def nat_sysctls(iface: str = "eth0") -> dict[str, str]:
    """The sysctls the L4 box needs in NAT mode (keys as paths under ``/proc/sys``).

    * ``ip_forward = 1``: the box routes packets between clients and
      backends instead of dropping those not addressed to itself.
    * ``send_redirects = 0`` on ``all``, ``default`` and ``iface``: in the
      lab the client, the box and the backends share one segment, so every
      forwarded packet leaves by the interface it came in on. For that case
      the kernel sends the sender an ICMP redirect ("reach that address
      directly", RFC 792; RFC 1812 §5.2.7.2): the lab's box sends them
      (``nstat IcmpOutRedirects`` counts them) unless told not to. Linux
      hosts happen to refuse these (``secure_redirects=1`` accepts only a
      listed gateway), but a backend that obeys stops sending replies
      through the box: they reach the client from the backend's own
      address, never un-NATed, and the client resets the connection. The
      kernel sends redirects if ``all`` *or* the interface says so, hence
      both (and ``default`` for interfaces made later).
    """
    return {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/default/send_redirects": "0",
        f"net/ipv4/conf/{iface}/send_redirects": "0",
    }


# -------------------------------------------------------------- adapters


def _in_netns(argv: list[str], netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def _run(argv: list[str], netns: str | None, stdin: str | None = None) -> str:
    if shutil.which(argv[0]) is None:
        package = "nftables" if argv[0] == "nft" else "coreutils"
        raise LabError(f"`{argv[0]}` not found: install the {package} package")
    if netns and shutil.which("ip") is None:
        raise LabError("`ip` not found: install the iproute2 package")
    try:
        done = subprocess.run(
            _in_netns(argv, netns),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{argv[0]} did not finish in {NFT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.strip().splitlines() if ln.strip()]
        where = f" (in {netns})" if netns else ""
        message = " | ".join(lines[:2]) or f"exit status {done.returncode}"
        raise LabError(f"{' '.join(argv[:3])}{where}: {message}")
    return done.stdout


def apply(script: str, netns: str | None = None, *, check: bool = False) -> None:
    """Load ``script`` with ``nft -f -`` (in ``netns`` if given); ``check``: ``nft -c``, no change.

    LabError with nft's own message (file position and offending line) if
    nft rejects it.
    """
    _run(["nft", "-c", "-f", "-"] if check else ["nft", "-f", "-"], netns, script)


def delete_table(table: str, netns: str | None = None) -> None:
    """Remove ``ip table`` (no error if it is not there)."""
    _check_table(table)
    apply(_replace_table(table), netns)


def counters(table: str, netns: str | None = None) -> dict[str, dict[str, int]]:
    """The counters of ``ip table``'s rules, as :func:`parse_counters` keys them."""
    _check_table(table)
    return parse_counters(_run(["nft", "-j", "list", "table", "ip", table], netns))


def set_sysctls(values: dict[str, str], netns: str | None = None) -> None:
    """Write each ``/proc/sys`` key (``net/ipv4/ip_forward``) here or inside ``netns``."""
    for key, value in values.items():
        if not SYSCTL_RE.match(key) or ".." in key:
            raise LabError(f"not a sysctl key: {key!r}")
        path = f"/proc/sys/{key}"
        if netns is None:
            try:
                Path(path).write_text(f"{value}\n")
            except OSError as e:
                raise LabError(f"cannot set {key}={value}: {e.strerror}") from None
        else:
            _run(["tee", path], netns, f"{value}\n")


__all__ = [
    "ALGORITHMS",
    "PROTOS",
    "NftService",
    "apply",
    "backend_key",
    "counters",
    "delete_table",
    "nat_sysctls",
    "parse_counters",
    "render_nat",
    "render_vip_guard",
    "set_sysctls",
    "without_down",
]
