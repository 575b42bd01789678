"""``Lab``: bring a topology up on a provider, use it, and take it down.

The same API serves the CLI, the notebooks and the tests::

    with Lab("labs/basic.toml", state_dir=tmp) as lab:
        print(lab.exec("client", ["curl", "-s", lab.url("api1")]).stdout)

``up`` is idempotent; ``down`` removes every namespace, interface and
process the lab made (found through the intent log in ``STATE/lab.json``
and the lab's namespace prefix), also after an ``up`` that was killed.
A failed ``up`` takes down what it built before it raises.

HTTPS: when an l7 host's router file terminates TLS, ``up`` makes one lab CA
for the lab in ``STATE/tls`` (:attr:`Lab.ca_path`) and issues the routers'
certificates there before any host starts; ``down`` removes it with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lbkit._proc import alive, stop_group

from .errors import LabError
from .hostcmd import control_socket, host_command, tls_dir
from .providers import local as local_provider
from .providers import netns as netns_provider
from .roles.l7 import check_l7_hosts, issue_l7_certificates
from .services import (
    default_service,
    endpoint,
    router_terminates_tls,
    scheme,
    service_named,
    services_of,
)
from .state import LabState, lab_prefix
from .topology import Host, Topology, l7_router_option, load_topology

PROVIDERS = ("auto", "netns", "local")
READY_TIMEOUT = 20.0
Progress = Callable[[str], None]


def default_provider() -> str:
    """netns when root on Linux, else local (docker is only ever asked for)."""
    linux = sys.platform.startswith("linux")
    return "netns" if linux and hasattr(os, "geteuid") and os.geteuid() == 0 else "local"


def _off_running_loop(work: Callable[[], None]) -> None:
    """Run ``work`` here, or on a worker thread if this thread runs an event loop.

    pyroute2 drives netlink with an asyncio loop of its own, which cannot
    start inside a running one (a Jupyter kernel's, say).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        work()
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(work).result()


class Lab:
    """A lab topology on a provider, with its state under ``state_dir``."""

    def __init__(
        self,
        topology: str | Path | Topology = "labs/layered.toml",
        *,
        provider: str = "auto",
        state_dir: str | Path = ".lab",
    ) -> None:
        if provider not in PROVIDERS:
            raise LabError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
        self.state_dir = Path(state_dir).resolve()
        if isinstance(topology, Topology):
            self.topology = topology
            self.topology_path = Path(topology.source).resolve()
        else:
            self.topology_path = Path(topology).resolve()
            self.topology = load_topology(topology)
        self.provider = default_provider() if provider == "auto" else provider
        self.prefix = lab_prefix(self.state_dir)
        self.addressing = "native" if self.provider == "netns" else None

    @property
    def ca_path(self) -> Path:
        """The lab CA's certificate, ``STATE/tls/ca.pem``: what a client trusts to reach
        the L7 routers over HTTPS (``curl --cacert``, ``ssl.create_default_context(
        cafile=...)``). One CA per lab, made by :meth:`up` when an l7 host terminates TLS
        (alb1 and alb2 share it), removed by :meth:`down`; the file exists only then."""
        return Path(tls_dir(str(self.state_dir))) / "ca.pem"  # lbkit.lab.ca.CA_CERT

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def attach(cls, state_dir: str | Path = ".lab") -> Lab:
        """The lab currently recorded in ``state_dir`` (LabError if none)."""
        state = LabState.load(Path(state_dir))
        if state is None:
            raise LabError(f"no lab is up in {state_dir} (start one with: lbkit lab up)")
        lab = cls(state.topology, provider=state.provider, state_dir=state_dir)
        lab.addressing = state.addressing
        return lab

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def plan(self) -> list[str]:
        """The commands ``up`` amounts to, for ``--dry-run`` (after the checks ``up`` makes)."""
        check_l7_hosts(self.topology)
        if self.provider == "netns":
            cmds = [s.command for s in netns_provider.plan(self.topology, self.prefix)]
            prefix = netns_provider.exec_prefix
        else:
            cmds = [f"# {local_provider.NOTICE}"]
            prefix = lambda _p, _h: []  # noqa: E731
        tls_files: dict[str, str] = {}  # router file -> its lbkit l7 option
        for host in self.topology.by_role("l7"):
            found = l7_router_option(host)
            if found is not None and router_terminates_tls(host):
                flag = "--config" if found[0] == "config" else "--nginx-conf"
                tls_files[str(host.router_path)] = flag
        cmds[:0] = [  # up does this first: the lab CA, and the routers' certificates from it
            f"lbkit l7 {flag} {path} --tls-dir {self.ca_path.parent} --check"
            for path, flag in tls_files.items()
        ]
        for host in self.topology.hosts.values():
            argv = [*prefix(self.prefix, host.name), *self._host_argv(host.name, "lbkit")]
            cmds.append(" ".join(argv) + " &")
        return cmds

    def up(self, progress: Progress | None = None) -> Lab:
        """Build the network and start every host; return when all answer."""
        say = progress or (lambda _msg: None)
        state = LabState.load(self.state_dir)
        if state is not None:
            if state.topology != str(self.topology_path) or state.provider != self.provider:
                raise LabError(
                    f"another lab is up in {self.state_dir} ({Path(state.topology).name}, "
                    f"{state.provider}): run `lbkit lab down` first"
                )
            if state.complete and self._healthy(state):
                self.addressing = state.addressing
                say("already up")
                return self
            say("cleaning up a lab that did not finish")
            self.down()
        check_l7_hosts(self.topology)  # a bad router file fails here, before anything is made
        if self.provider == "netns":
            netns_provider.require_root_and_tools()
            self._clear_leftovers()
        else:
            self.addressing = local_provider.loopback_addressing()
            self._check_ports()
        state = LabState(
            topology=str(self.topology_path),
            provider=self.provider,
            prefix=self.prefix,
            addressing=self.addressing or "native",
        )
        state.save(self.state_dir)
        try:
            # one CA for the lab, and the routers' certificates, before any host starts
            if issue_l7_certificates(self.topology, self.ca_path.parent):
                say("lab CA and certificates ready")
            if self.provider == "netns":
                say(f"building {len(self.topology.hosts)} namespaces")
                _off_running_loop(lambda: self._build(state))
            say("starting hosts")
            self._start_hosts(state)
        except BaseException:
            self.down()
            raise
        state.complete = True
        state.save(self.state_dir)
        say("up")
        return self

    def _build(self, state: LabState) -> None:
        for step in netns_provider.plan(self.topology, self.prefix):
            if step.namespace:
                state.namespaces.append(step.namespace)  # recorded before it exists
                state.save(self.state_dir)
            step.apply()

    def down(self) -> bool:
        """Stop and remove everything this lab made; True if anything was there."""
        state = LabState.load(self.state_dir)
        found = state is not None
        if state is not None:
            for pid in [*state.forwards.values(), *state.processes.values()]:
                stop_group(pid, grace=3.0)
            namespaces = list(state.namespaces)
        else:
            namespaces = []
        if self.provider == "netns" and os.geteuid() == 0:
            namespaces += [n for n in netns_provider.list_namespaces() if self._ours(n)]
        # Hosts first (their veths vanish with them), the switch last.
        sw = netns_provider.switch_name(self.prefix)
        for ns in sorted(set(namespaces), key=lambda n: n == sw):
            found = True
            netns_provider.delete_namespace(ns)
        LabState.remove(self.state_dir)
        # logs, sockets, the lab CA and its certificates, captures kept inside the state
        for made in ("hosts", "tls", "captures"):
            shutil.rmtree(self.state_dir / made, ignore_errors=True)
        if self.topology_path.parent == self.state_dir:  # a generated variant kept with the lab
            self.topology_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # only if nothing else (the course, say) lives there
        return found

    def _ours(self, ns: str) -> bool:
        return ns.startswith(f"{self.prefix}-")

    def _clear_leftovers(self) -> None:
        for ns in netns_provider.list_namespaces():
            if self._ours(ns):
                netns_provider.delete_namespace(ns)

    def _check_ports(self) -> None:
        for host in self.topology.hosts.values():
            for svc in services_of(host):
                ip, port = endpoint(self.topology, host, svc, self.addressing)
                if not local_provider.port_free(ip, port, svc.proto):
                    raise LabError(
                        f"{ip}:{port}/{svc.proto} ({host.name} {svc.name}) is in use: stop "
                        "what uses it, or run `lbkit lab down` if it is an old lab"
                    )

    # ----------------------------------------------------------------- hosts
    def _host_argv(self, host: str, *program: str) -> list[str]:
        return host_command(
            host,
            str(self.topology_path),
            str(self.state_dir),
            self.addressing or "loopback",
            program=program or (sys.executable, "-m", "lbkit"),
        )

    def exec_prefix(self, host: str) -> list[str]:
        """argv prefix that runs a command inside ``host``."""
        self.topology.host(host)
        if self.provider == "netns":
            return netns_provider.exec_prefix(self.prefix, host)
        return []

    def _start_hosts(self, state: LabState) -> None:
        """Start the backends (and clients) first and wait for them, then the balancers:
        a balancer's first health checks must not meet backends still starting (each
        would begin with a false "DOWN after 1 failure: connection refused")."""
        balancers = [h.name for h in self.topology.hosts.values() if h.role in ("l4", "l7")]
        first = [name for name in self.topology.hosts if name not in balancers]
        for wave in (first, balancers):
            for name in wave:
                self._start_host(state, name)
            self._wait_ready(state, only=wave)

    def _start_host(self, state: LabState, name: str) -> None:
        logs = self.state_dir / "hosts"
        logs.mkdir(parents=True, exist_ok=True)
        argv = [*self.exec_prefix(name), *self._host_argv(name, sys.executable, "-m", "lbkit")]
        with open(logs / f"{name}.log", "ab") as log:  # a restart appends
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state.processes[name] = proc.pid
        state.save(self.state_dir)

    def _running_state(self, host: str) -> LabState:
        self.topology.host(host)  # LabError for an unknown host
        state = LabState.load(self.state_dir)
        if state is None:
            raise LabError(f"no lab is up in {self.state_dir} (run `lbkit lab up` first)")
        return state

    def stop(self, host: str) -> bool:
        """Kill ``host``'s process, as a crash would (SIGTERM, then SIGKILL); its namespace,
        address and routes stay, so its peers see connections refused. True if it ran."""
        state = self._running_state(host)
        pid = state.processes.get(host)
        return pid is not None and stop_group(pid, grace=3.0)

    def start(self, host: str) -> Lab:
        """Start ``host``'s process again after :meth:`stop` and wait until it is ready
        (a no-op if it runs)."""
        state = self._running_state(host)
        pid = state.processes.get(host)
        if pid is not None and alive(pid):
            return self
        self._start_host(state, host)
        self._wait_ready(state, only=[host])
        return self

    def _wait_ready(self, state: LabState, only: list[str] | None = None) -> None:
        from .control import send_control

        deadline = time.monotonic() + READY_TIMEOUT
        waiting = {n: pid for n, pid in state.processes.items() if only is None or n in only}
        while waiting:
            for name, pid in list(waiting.items()):
                if not alive(pid):
                    raise LabError(f"host {name} exited while starting: {self._log_tail(name)}")
                try:
                    if send_control(self.control_path(name), {"op": "status"}, timeout=1.0)["ok"]:
                        del waiting[name]
                except LabError:
                    pass
            if waiting and time.monotonic() > deadline:
                raise LabError(f"hosts not ready after {READY_TIMEOUT:.0f} s: {', '.join(waiting)}")
            if waiting:
                time.sleep(0.05)

    def _healthy(self, state: LabState) -> bool:
        if not all(alive(pid) for pid in state.processes.values()):
            return False
        if self.provider == "netns":
            present = set(netns_provider.list_namespaces())
            return all(ns in present for ns in state.namespaces)
        return True

    def _log_tail(self, host: str) -> str:
        try:
            lines = (self.state_dir / "hosts" / f"{host}.log").read_text().strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    # --------------------------------------------------------------- using it
    def control_path(self, host: str) -> str:
        return control_socket(str(self.state_dir), host)

    def endpoint(self, host: str, service: str | None = None) -> tuple[str, int]:
        """``(ip, port)`` where ``host``'s ``service`` is reached under this provider.

        ``service`` defaults to ``http``, or to the VIP for a forwarding L4 box.
        """
        h = self.topology.host(host)
        service = service or default_service(h)
        try:
            svc = service_named(h, service)
        except KeyError as e:
            raise LabError(str(e.args[0])) from None
        return endpoint(self.topology, h, svc, self.addressing or "native")

    def url(self, host: str, path: str = "/", service: str | None = None) -> str:
        """The URL of ``path`` on ``host``'s ``service`` (default as :meth:`endpoint`):
        ``http://IP[:port]/path``, or ``https://...`` for the ``https`` service (an L7
        router terminating TLS; trust :attr:`ca_path`). The port is left out when it is
        the scheme's own (80, 443), so locally it shows (``:8080``, ``:8443``)."""
        ip, port = self.endpoint(host, service)
        h = self.topology.host(host)
        proto = scheme(service or default_service(h))
        default = 443 if proto == "https" else 80
        return f"{proto}://{ip}{'' if port == default else f':{port}'}{path}"

    def exec(
        self, host: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``host``; capture its output as text."""
        try:
            return subprocess.run(
                [*self.exec_prefix(host), *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=check,
            )
        except FileNotFoundError:
            raise LabError(f"{argv[0]}: command not found (inside {host})") from None

    def backend(self, host: str, mode: str | None = None, **options: object) -> dict:
        """A host's status from its control channel; with ``mode``, switch it first."""
        from .control import send_control

        self.topology.host(host)
        request: dict[str, object] = {"op": "status"}
        if mode is not None:
            request = {"op": "set-mode", "mode": mode, **options}
        reply = send_control(self.control_path(host), request)
        if not reply.get("ok"):
            raise LabError(f"{host}: {reply.get('error', 'refused')}")
        return reply

    def health(self, timeout: float = 5.0) -> dict[str, dict]:
        """Every l4/l7 host's health report, by host name (``lbkit lab health``).

        Each host is asked the ``health`` control op; its answer (the format
        of :meth:`lbkit.l7.healthrun.HealthRunner.report` and
        :meth:`lbkit.l4.health.L4Health.report`: ``checks``, ``backends``
        ``{NAME: {"state", "since", "last", ...}}``, ``events``) is kept with
        ``role`` added. ``checks`` None means no active checks there; a host
        that has no ``health`` op (a placeholder) answers with ``checks`` None
        and a ``note``; one that cannot be reached with an ``error``.
        """
        from .control import send_control

        out: dict[str, dict] = {}
        for host in self.hosts():
            if host.role not in ("l4", "l7"):
                continue
            try:
                reply = send_control(self.control_path(host.name), {"op": "health"}, timeout)
            except LabError as e:
                out[host.name] = {"role": host.role, "error": str(e)}
                continue
            if reply.get("ok"):
                report = {k: v for k, v in reply.items() if k not in ("ok", "host")}
                out[host.name] = {"role": host.role, **report}
            else:
                out[host.name] = {
                    "role": host.role,
                    "checks": None,
                    "backends": {},
                    "events": [],
                    "note": str(reply.get("error", "no health op")),
                }
        return out

    def forward(
        self, host: str, service: str | None = None, local_port: int = 0
    ) -> tuple[str, int]:
        """Make ``host``'s service reachable from this machine; return ``(url, relay pid)``.

        netns: a relay on 127.0.0.1 connecting from inside the lab's client
        host (see :mod:`lbkit.lab.relay`), or from inside ``host`` itself for an
        internal service (an L7 admin API); recorded, and stopped by ``down``.
        local: the service already listens on loopback, so its own URL (pid 0).
        """
        ip, port = self.endpoint(host, service)
        h = self.topology.host(host)
        proto = scheme(service or default_service(h))
        if self.provider != "netns":
            return f"{proto}://{ip}:{port}/", 0
        state = LabState.load(self.state_dir)
        if state is None or not state.complete:
            raise LabError("the lab is not up (start it with: lbkit lab up)")
        if service_named(h, service or default_service(h)).internal:
            via = netns_provider.ns_name(self.prefix, host)  # its 127.0.0.1, from inside it
        else:
            clients = self.topology.by_role("client") or self.hosts()
            via = netns_provider.ns_name(self.prefix, clients[0].name)
        argv = [sys.executable, "-m", "lbkit.lab.relay", str(local_port), ip, str(port), via]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if not line.startswith("listening "):
            stop_group(proc.pid)
            raise LabError(f"forward to {host}:{port} failed: {line or 'relay exited'}")
        state.forwards[f"{host}:{port}@{line.rsplit(':', 1)[1]}"] = proc.pid
        state.save(self.state_dir)
        return f"{proto}://{line.split()[1]}/", proc.pid

    def capture(
        self,
        hosts: Sequence[str],
        out_dir: str | Path,
        *,
        count: int | None = None,
        filter: str | None = None,
    ):
        """A :class:`~lbkit.lab.capture.Capture` on ``hosts`` (use it as a context manager).

        Each host records on its only interface (``eth0``, with Ethernet
        headers) or on ``any`` when it has several. netns only: with the
        local provider every host shares this machine's loopback.
        """
        from .capture import Capture

        if self.provider != "netns":
            raise LabError(
                "per-host captures need the netns provider (Linux, root); with the local "
                "provider all hosts share loopback: run `tcpdump -i lo` yourself"
            )
        chosen = [self.topology.host(h) for h in hosts]
        return Capture(
            {h.name: self.exec_prefix(h.name) for h in chosen},
            out_dir,
            interfaces={h.name: "eth0" if len(h.interfaces) == 1 else "any" for h in chosen},
            count=count,
            filter=filter,
        )

    def hosts(self) -> list[Host]:
        return list(self.topology.hosts.values())

    def status(self) -> dict:
        """Plain data: the lab, each host with its addresses, process and state."""
        state = LabState.load(self.state_dir)
        rows = []
        for host in self.hosts():
            pid = state.processes.get(host.name) if state else None
            row = {
                "name": host.name,
                "role": host.role,
                "addresses": [itf.ip for itf in host.interfaces],
                "pid": pid,
                "running": bool(pid and alive(pid)),
                "services": {
                    s.name: "{}:{}/{}".format(
                        *endpoint(self.topology, host, s, self.addressing or "native"), s.proto
                    )
                    for s in services_of(host)
                },
            }
            if self.provider == "netns":
                row["namespace"] = netns_provider.ns_name(self.prefix, host.name)
            rows.append(row)
        return {
            "topology": self.topology.name,
            "file": str(self.topology_path),
            "provider": self.provider,
            "addressing": self.addressing,
            "state_dir": str(self.state_dir),
            "ca_path": str(self.ca_path) if self.ca_path.exists() else None,
            "up": bool(state and state.complete),
            "hosts": rows,
        }
