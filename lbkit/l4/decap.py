"""IP-in-IP decapsulation for tunnel-mode backends, in user space (RFC 2003).

In tunnel mode the L4 box does not rewrite the client's packet: it wraps it
in a second IPv4 header (protocol 4, from the box to the backend) and sends
that. The backend unwraps it and handles the inner packet as if it had
arrived straight from the client, to the VIP it holds on ``lo``; its reply
goes to the client directly, never back through the box (LVS-TUN).

Linux does the unwrapping in its ``ipip`` module (``ip link add tunl0 type
ipip``). This kernel has none, so this module does the same job where the
learner can read it: an AF_PACKET socket receives the frames, the pure
:func:`decapsulate` checks the outer header and cuts the inner packet out,
and a TUN device hands the inner packet to the kernel, which routes it as
if it had been received on ``tun0``.

The inner packet is passed on unchanged (RFC 2003 §3.1: the inner header
is not modified), so its checksums must already be complete: the L4 box
completes the partial checksums of veth offload before it encapsulates.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from lbkit.lab.errors import LabError

ETH_HLEN = 14
ETH_P_IP = 0x0800
IPPROTO_IPIP = 4  # RFC 2003 §3: "Protocol: 4"
PACKET_HOST = 0  # linux/if_packet.h: addressed to this host (not our own, not broadcast)
TUNSETIFF = 0x400454CA  # linux/if_tun.h: _IOW('T', 202, int)
IFF_TUN = 0x0001  # IP packets, no Ethernet header
IFF_NO_PI = 0x1000  # no 4-byte packet-information prefix on each packet
MAX_FRAME = 65536 + ETH_HLEN
BATCH = 64  # frames read per wake-up at most, so one busy socket cannot starve the loop


@dataclass
class DecapStats:
    """What :func:`serve_decap` did: frames unwrapped, frames not for it, failed writes."""

    decapsulated: int = 0
    ignored: int = 0
    errors: int = 0


def _ipv4_checksum_ok(header: bytes) -> bool:
    """The one's complement sum of the header, checksum included, is 0xFFFF (RFC 791 §3.1)."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _ipv4_extent(packet: bytes) -> tuple[int, int] | None:
    """``(header length, total length)`` of the IPv4 packet ``packet`` starts with, if sane."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total < ihl or total > len(packet):
        return None
    return ihl, total


def decapsulate(frame: bytes, my_ip: str) -> bytes | None:
    """The inner IPv4 packet of an IP-in-IP Ethernet frame addressed to ``my_ip``, else None.

    Checks what the kernel checks before its ``ipip`` handler sees a
    packet: EtherType IPv4, a sane outer header whose checksum holds and
    whose total length fits the frame (Ethernet padding beyond it is cut),
    not a fragment (this helper does not reassemble), protocol 4, and
    destination ``my_ip``; then that the payload is a whole IPv4 packet.
    """
    me = socket.inet_aton(my_ip)
    if len(frame) < ETH_HLEN or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return None
    outer = frame[ETH_HLEN:]
    extent = _ipv4_extent(outer)
    if extent is None:
        return None
    ihl, total = extent
    if not _ipv4_checksum_ok(outer[:ihl]):
        return None
    if int.from_bytes(outer[6:8], "big") & 0x3FFF:  # MF flag or a fragment offset
        return None
    if outer[9] != IPPROTO_IPIP or outer[16:20] != me:
        return None
    inner = outer[ihl:total]
    inner_extent = _ipv4_extent(inner)
    if inner_extent is None:
        return None
    return bytes(inner[: inner_extent[1]])


# -------------------------------------------------------------- adapters


def _write_sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as e:
        raise LabError(f"cannot set {key}={value}: {e.strerror}") from None


def open_tun(name: str = "tun0") -> int:
    """Create TUN device ``name``, bring it up, and return its file descriptor.

    Closing the descriptor removes the device. Reverse-path filtering goes
    off on ``name`` and on ``all`` (the kernel uses the larger of the two):
    the inner packet arrives on ``name`` from the client, whose address is
    routed via ``eth0``, so a strict check (RFC 3704 §2.2) would drop it.
    """
    if not 0 < len(name.encode()) < 16:
        raise LabError(f"interface name {name!r}: 1 to 15 characters")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError("no /dev/net/tun: load the tun module (modprobe tun)") from None
    except PermissionError:
        raise LabError("cannot open /dev/net/tun: run as root") from None
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as e:
            why = "it exists and is in use" if e.errno == errno.EBUSY else e.strerror
            raise LabError(f"cannot create TUN device {name}: {why}") from None
        if shutil.which("ip") is None:
            raise LabError("`ip` not found: install the iproute2 package")
        done = subprocess.run(
            ["ip", "link", "set", "dev", name, "up"], capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise LabError(f"cannot bring {name} up: {done.stderr.strip()}")
        for conf in (name, "all"):
            _write_sysctl(f"net/ipv4/conf/{conf}/rp_filter", "0")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _packet_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    try:
        sock.bind((iface, ETH_P_IP))
    except OSError as e:
        sock.close()
        raise LabError(f"cannot listen on {iface}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


async def serve_decap(
    iface: str,
    my_ip: str,
    tun: str = "tun0",
    on_ready: Callable[[], None] | None = None,
    stats: DecapStats | None = None,
) -> None:
    """Unwrap every IP-in-IP frame for ``my_ip`` arriving on ``iface`` into TUN ``tun``.

    Runs until cancelled, then closes its sockets and the TUN descriptor
    (the device goes with it). Only ``PACKET_HOST`` frames count, i.e.
    frames sent to this host; the socket never forwards what it sends.

    Besides the AF_PACKET socket it holds a raw socket for protocol 4 and
    drains it unread: the kernel delivers each outer packet to its own IP
    stack too, and with no ``ipip`` handler and no raw socket for the
    protocol it would answer every one with an ICMP "protocol unreachable"
    to the L4 box (RFC 1122 §3.2.2.1).
    """
    try:
        socket.inet_aton(my_ip)
    except OSError:
        raise LabError(f"{my_ip!r} is not an IPv4 address") from None
    stats = stats if stats is not None else DecapStats()
    loop = asyncio.get_running_loop()
    fd = open_tun(tun)
    opened: list[socket.socket] = []
    try:
        sock = _packet_socket(iface)
        opened.append(sock)
        sink = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        opened.append(sink)
        sink.setblocking(False)

        def on_frames() -> None:
            for _ in range(BATCH):
                try:
                    frame, address = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    return
                inner = decapsulate(frame, my_ip) if address[2] == PACKET_HOST else None
                if inner is None:
                    stats.ignored += 1
                    continue
                try:
                    os.write(fd, inner)
                    stats.decapsulated += 1
                except OSError:
                    stats.errors += 1

        def drain_sink() -> None:
            for _ in range(BATCH):
                try:
                    sink.recv(MAX_FRAME)
                except BlockingIOError:
                    return

        loop.add_reader(sock.fileno(), on_frames)
        loop.add_reader(sink.fileno(), drain_sink)
        try:
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
        finally:
            loop.remove_reader(sock.fileno())
            loop.remove_reader(sink.fileno())
    finally:
        for s in opened:
            s.close()
        os.close(fd)


def run_decap(iface: str, my_ip: str, tun: str = "tun0") -> DecapStats:
    """Decapsulate until SIGTERM/SIGINT; print ``ready decap ...`` once listening.

    Blocking (installs signal handlers: call it from the main thread).
    Prints the counts when it stops and returns them.
    """
    stats = DecapStats()

    def ready() -> None:
        print(f"ready decap {iface} {my_ip} -> {tun}", flush=True)

    from lbkit.lab.roles.runner import until_signal

    asyncio.run(until_signal(serve_decap(iface, my_ip, tun, ready, stats)))
    print(
        f"stopped: {stats.decapsulated} decapsulated, {stats.ignored} ignored, "
        f"{stats.errors} errors",
        flush=True,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    """``python -m lbkit.l4.decap IFACE MY_IP [--tun NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lbkit.l4.decap",
        description="Unwrap IP-in-IP (RFC 2003) frames for MY_IP arriving on IFACE into a TUN.",
    )
    parser.add_argument("iface", help="interface the tunnel packets arrive on (eth0)")
    parser.add_argument("my_ip", help="this backend's own address, the outer destination")
    parser.add_argument("--tun", default="tun0", help="TUN device to create (default tun0)")
    args = parser.parse_args(argv)
    try:
        run_decap(args.iface, args.my_ip, args.tun)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
