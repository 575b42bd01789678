"""Record packets on several lab hosts at once: one tcpdump per host.

Thin adapter: it starts and stops processes and nothing else; reading and
merging the files is :mod:`lbkit.lab.capture_merge`. Each host is reached by
an argv prefix that runs a command there (``["ip", "netns", "exec", NS]`` for
a namespace, ``[]`` for this machine). The prefix should ``exec`` its command
(``ip netns exec`` does): tcpdump is signalled through its process group,
which is its own (``start_new_session``), so a prefix that forks is fine too.

tcpdump options (tcpdump(8)): ``-U`` writes each packet to the file as it is
captured, ``--immediate-mode`` delivers packets from the kernel without the
TPACKET_V3 block buffering (libpcap ``pcap-linux.c``), so a capture stopped
right after the traffic normally holds it; ``-n`` keeps names out of it. On a
busy machine a tcpdump may not have read the last packets when ``stop()``
signals it, and those are lost: when every packet matters, give ``count``
and let :meth:`Capture.wait` return once each tcpdump has them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from .errors import LabError

READY_MARK = b"listening on"
#: How a missing command is reported by ``ip netns exec``, sh and docker exec.
MISSING_MARKS = ('exec of "{cmd}" failed', "{cmd}: not found", "executable file not found")


class Capture:
    """One tcpdump per host, writing ``out_dir/HOST.pcap``.

    ``start()`` returns once every tcpdump has said ``listening on`` (packets
    sent after that are recorded); ``stop()`` ends them with SIGINT (SIGKILL
    after ``stop_timeout``) and returns ``{host: pcap path}``. As a context
    manager it starts on entry and stops on exit, also after an exception.
    """

    def __init__(
        self,
        hosts: dict[str, list[str]],
        out_dir: str | Path,
        *,
        interfaces: dict[str, str] | None = None,
        count: int | None = None,
        snaplen: int = 262144,
        filter: str | None = None,
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        tcpdump: str = "tcpdump",
    ) -> None:
        if not hosts:
            raise LabError("capture: no host to capture on")
        self.hosts = {host: list(prefix) for host, prefix in hosts.items()}
        self.out_dir = Path(out_dir).resolve()
        self.interfaces = dict(interfaces or {})
        self.count = count
        self.snaplen = snaplen
        self.filter = filter
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.tcpdump = tcpdump
        self.messages: dict[str, str] = {}  # each tcpdump's stderr, for reports
        self._procs: dict[str, subprocess.Popen] = {}

    # -- pure parts -------------------------------------------------------

    @property
    def paths(self) -> dict[str, Path]:
        """Where each host's capture is written: ``out_dir/HOST.pcap``."""
        return {host: self.out_dir / f"{host}.pcap" for host in self.hosts}

    def argv(self, host: str) -> list[str]:
        """The full command that records on ``host``."""
        return [
            *self.hosts[host],
            self.tcpdump,
            "-U",
            "-n",
            "--immediate-mode",
            "-s",
            str(self.snaplen),
            "-i",
            self.interfaces.get(host, "any"),
            "-w",
            str(self.paths[host]),
            *(["-c", str(self.count)] if self.count is not None else []),
            *([self.filter] if self.filter else []),
        ]

    @property
    def pids(self) -> dict[str, int]:
        """Process ids (and process group ids) of the started tcpdumps, for a lab's cleanup."""
        return {host: proc.pid for host, proc in self._procs.items()}

    @property
    def running(self) -> list[str]:
        """Hosts whose tcpdump has not exited yet."""
        return [host for host, proc in self._procs.items() if proc.poll() is None]

    # -- processes --------------------------------------------------------

    def start(self) -> Capture:
        """Start every tcpdump; return when all listen. :class:`LabError` names a failing host."""
        if self._procs:
            raise LabError("capture: already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for host in self.hosts:
                self._procs[host] = self._spawn(host)
            deadline = time.monotonic() + self.ready_timeout
            for host, proc in self._procs.items():
                self._await_ready(host, proc, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self, timeout: float) -> dict[str, Path]:
        """With ``count``: wait until every tcpdump has its packets and exited; return the files."""
        if self.count is None:
            raise ValueError("Capture.wait() needs count: without it tcpdump runs until stop()")
        deadline = time.monotonic() + timeout
        for host, proc in self._procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                raise LabError(
                    f"capture on {host}: fewer than {self.count} packets after {timeout:g}s"
                ) from None
        return self.stop()

    def stop(self) -> dict[str, Path]:
        """SIGINT every tcpdump still running, wait (SIGKILL after the deadline); the files."""
        for proc in self._procs.values():
            _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + self.stop_timeout
        for host, proc in self._procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout)
            self._collect_stderr(host, proc)
        return {host: self.paths[host] for host in self._procs}

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, host: str) -> subprocess.Popen:
        argv = self.argv(host)
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            missing = e.filename or argv[0]
            if missing == self.tcpdump:
                raise LabError(_not_installed(host, f"{missing}: not found")) from None
            raise LabError(f"capture on {host}: cannot run {missing!r}: not found") from None

    def _await_ready(self, host: str, proc: subprocess.Popen, deadline: float) -> None:
        """Read tcpdump's stderr until it says ``listening on``, it exits, or the deadline."""
        fd = proc.stderr.fileno()
        text = b""
        while READY_MARK not in text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(
                    f"capture on {host}: tcpdump did not start listening "
                    f"within {self.ready_timeout:g}s"
                )
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # EOF: tcpdump (or the prefix) has exited
                code = proc.wait(timeout=self.stop_timeout)
                stderr = text.decode(errors="replace")
                raise LabError(_early_exit(host, self.tcpdump, stderr, code))
            text += chunk
        self.messages[host] = text.decode(errors="replace")

    def _collect_stderr(self, host: str, proc: subprocess.Popen) -> None:
        if proc.stderr is None or proc.stderr.closed:
            return
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        chunks = []
        for _ in range(64):  # bounded: tcpdump writes a few lines at exit
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.stderr.close()
        self.messages[host] = self.messages.get(host, "") + b"".join(chunks).decode(
            errors="replace"
        )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal ``proc``'s process group, only while ``proc`` is not yet reaped (its pid is ours)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _not_installed(host: str, detail: str) -> str:
    return f"capture on {host}: tcpdump is not installed ({detail}); install the 'tcpdump' package"


def _early_exit(host: str, cmd: str, stderr: str, code: int) -> str:
    detail = _last_line(stderr)
    if code == 127 or any(mark.format(cmd=cmd) in detail for mark in MISSING_MARKS):
        return _not_installed(host, detail)
    return f"capture on {host}: tcpdump exited before listening (exit {code}): {detail}"
