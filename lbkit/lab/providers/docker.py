"""The ``docker`` provider: a docker compose file generated from a topology.

Pure: :func:`render_compose` takes a :class:`~lbkit.lab.topology.Topology` and
returns YAML text; nothing here talks to Docker. Every host becomes one
service whose ``command`` is exactly :func:`~lbkit.lab.hostcmd.host_command`
with ``native`` addressing, the argv the netns provider runs with ``ip netns
exec``: what works in one provider works in the other.

Mapping, one topology item to one compose item:

* segment -> a bridge network of the same name; its ``.1`` is docker's
  gateway (the topology keeps ``.1`` free for exactly this);
* host -> a service of the same name and hostname, attached to each of its
  segments with ``ipv4_address`` = its address there. A multi-homed host gets
  network ``priority`` in address order (compose connects networks by
  descending priority, and the engine names interfaces in connection order,
  so the first address lands on ``eth0`` as with netns);
* the topology file -> a read-only bind mount at ``/lab/topology.toml``;
* an l7 host's router file (``options.config`` or ``nginx_conf``, relative to
  the topology) -> its folder mounted read-only where that relative path
  leads from ``/lab`` (``l7/router.toml`` -> ``/lab/l7``), so certificates and
  includes beside it come along; a file beside the topology, or given by an
  absolute path, is mounted alone;
* the lab state -> one named volume ``labstate`` at ``/lab/state``, shared by
  all services, so control sockets (``hostcmd.control_socket``) are reachable
  from any container: ``docker compose exec client lbkit lab ... --state-dir
  /lab/state`` works. The lab CA lives there too (``/lab/state/tls``): no
  ``lab up`` runs first, so the l7 container that starts first makes it (under
  the CA's lock file, :mod:`lbkit.lab.ca`) and every l7 host uses that one.

Every service carries the same ``image`` and ``build``: compose v2 keys its
builds by image name (``pkg/compose/build.go``, ``opts[imageName]``), so the
image is built once and shared.
"""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from ..hostcmd import host_command, tls_dir
from ..services import endpoint, services_of
from ..topology import Host, Topology, l7_router_option

IMAGE = "lbkit-lab:latest"
DOCKERFILE = "docker/Dockerfile"
LAB_DIR = "/lab"
TOPOLOGY_PATH = f"{LAB_DIR}/topology.toml"
STATE_DIR = f"{LAB_DIR}/state"
STATE_VOLUME = "labstate"
ADDRESSING = "native"
#: The course's full stack; its compose file is ``docker/compose.yaml``.
DEFAULT_TOPOLOGY = "layered"

#: Kernel settings per role, applied by docker in the container's namespace.
ROLE_SYSCTLS: dict[str, dict[str, int]] = {
    # A forwarder: route between segments, and do not drop packets whose
    # source would route back another way (rp_filter: RFC 3704 §2.2 strict,
    # §2.4 loose). ``default`` too, for interfaces added after start.
    "l4": {
        "net.ipv4.ip_forward": 1,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
    },
    # Direct server return: the VIP sits on lo, and only the L4 box may answer
    # ARP for it (Linux ip-sysctl.rst: arp_ignore=1 replies only for addresses
    # on the receiving interface; arp_announce=2 uses the best local source).
    "backend": {
        "net.ipv4.conf.all.arp_ignore": 1,
        "net.ipv4.conf.all.arp_announce": 2,
    },
}

#: Roles whose host command changes interfaces, addresses or nftables rules.
NET_ADMIN_ROLES = ("l4", "backend", "tools")


def default_compose_file(topology: Topology) -> str:
    """Where a topology's compose file lives: ``docker/compose.yaml`` for the
    layered lab, ``docker/compose.NAME.yaml`` for any other."""
    if topology.name == DEFAULT_TOPOLOGY:
        return "docker/compose.yaml"
    return f"docker/compose.{topology.name}.yaml"


def render_compose(
    topology: Topology,
    *,
    topology_file: str,
    project: str | None = None,
    compose_file: str | None = None,
) -> str:
    """The compose file for ``topology``, as YAML text; byte-identical for the same input.

    ``topology_file`` and ``compose_file`` are paths from the repository root
    (the build context), e.g. ``labs/layered.toml`` and ``docker/compose.yaml``
    (default: :func:`default_compose_file`); the bind mount and the build
    context are written relative to the compose file's folder, as compose
    resolves them. An absolute ``topology_file`` is mounted as is.
    ``project``, when given, is written as compose's top-level ``name:``. By
    default there is none: Debian's docker-compose 1.29, which validates the
    committed files offline, rejects that key, and compose then names the
    project after the compose file's folder (``docker``) unless given ``-p``.
    """
    compose_file = _posix(compose_file or default_compose_file(topology))
    if posixpath.isabs(compose_file):
        raise ValueError(f"compose_file must be relative to the repository root: {compose_file}")
    compose_dir = posixpath.dirname(compose_file) or "."
    mount = _posix(topology_file)
    if not posixpath.isabs(mount):
        mount = posixpath.relpath(mount, compose_dir)
    context = posixpath.relpath(".", compose_dir)

    doc: dict[str, Any] = {}
    if project:
        doc["name"] = project
    doc |= {
        "services": {
            h.name: _service(h, mount=mount, context=context) for h in topology.hosts.values()
        },
        "networks": {
            seg.name: {
                "driver": "bridge",
                "ipam": {
                    "config": [{"subnet": str(seg.subnet), "gateway": str(seg.gateway_reserved)}]
                },
            }
            for seg in topology.segments.values()
        },
        "volumes": {STATE_VOLUME: {}},
    }
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    header = _header(topology, topology_file=_posix(topology_file), compose_file=compose_file)
    return header + body


def compose_hosts_table(topology: Topology) -> list[dict[str, Any]]:
    """One row per host: name, role, address per segment, and its services as
    ``name ip:port/proto`` (native addressing, as inside the containers)."""
    rows = []
    for h in topology.hosts.values():
        rows.append(
            {
                "host": h.name,
                "role": h.role,
                "addresses": {itf.segment: itf.ip for itf in h.interfaces},
                "services": [
                    "{} {}:{}/{}".format(s.name, *endpoint(topology, h, s, ADDRESSING), s.proto)
                    for s in services_of(h)
                ],
            }
        )
    return rows


def _router_mount(host: Host, mount: str) -> str | None:
    """The bind mount (``source:target:ro``) that puts an l7 host's router file where its
    path, relative to ``/lab/topology.toml``, leads (``mount``: the topology's source)."""
    found = l7_router_option(host)
    if found is None:
        return None
    written = _posix(found[1])
    source = posixpath.normpath(posixpath.join(posixpath.dirname(mount), written))
    target = posixpath.normpath(posixpath.join(LAB_DIR, written))  # an absolute path stays
    folder, target_folder = posixpath.dirname(source), posixpath.dirname(target)
    hides = f"{LAB_DIR}/".startswith(f"{target_folder.rstrip('/')}/")  # /, /lab
    if posixpath.isabs(written) or hides or f"{target_folder}/".startswith(f"{STATE_DIR}/"):
        return f"{source}:{target}:ro"  # the file alone: its folder could hide the image's
    return f"{folder}:{target_folder}:ro"


def _service(host: Host, *, mount: str, context: str) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": IMAGE,
        "build": {"context": context, "dockerfile": DOCKERFILE},  # relative to the context
        "hostname": host.name,
        "command": host_command(host.name, TOPOLOGY_PATH, STATE_DIR, ADDRESSING),
        # tini as PID 1: SIGTERM from `docker compose stop` reaches the host command.
        "init": True,
        "stop_grace_period": "5s",
    }
    # A host that sets up its own routes, loopback VIPs or offloads (the host
    # command does, see lbkit.lab.hostsetup) needs NET_ADMIN too.
    self_setup = host.gateway is not None or host.routes or host.loopback or "tso" in host.options
    if host.role in NET_ADMIN_ROLES or self_setup:
        svc["cap_add"] = ["NET_ADMIN"]
    if host.role in ROLE_SYSCTLS:
        svc["sysctls"] = dict(ROLE_SYSCTLS[host.role])
    if host.role == "l4" and "vip" in host.options:
        # /proc/sys is read-only in a container: the forwarder's sysctls come from here.
        # lbkit's engines forward themselves (the kernel must not); nftables is the kernel.
        kernel = host.options.get("engine", "fast") == "nftables"
        svc["sysctls"]["net.ipv4.ip_forward"] = 1 if kernel else 0
        if kernel:  # all=0 alone turns redirects off: the kernel ANDs all with the interface
            svc["sysctls"]["net.ipv4.conf.all.send_redirects"] = 0
            svc["sysctls"]["net.ipv4.conf.default.send_redirects"] = 0
    router = _router_mount(host, mount)
    svc["volumes"] = [
        f"{mount}:{TOPOLOGY_PATH}:ro",
        *([router] if router else []),
        f"{STATE_VOLUME}:{STATE_DIR}",
    ]
    networks: dict[str, Any] = {}
    for itf in host.interfaces:
        attach: dict[str, Any] = {"ipv4_address": itf.ip}
        if len(host.interfaces) > 1:
            attach["priority"] = 100 * (len(host.interfaces) - itf.index)
        networks[itf.segment] = attach
    svc["networks"] = networks
    return svc


def _entry_url(topology: Topology) -> str | None:
    """A URL the client can fetch: the nearest tier on the client's segment."""
    clients = topology.by_role("client")
    if not clients:
        return None
    segments = {itf.segment for itf in clients[0].interfaces}
    for role in ("l4", "l7", "backend"):
        for h in topology.by_role(role):
            for itf in h.interfaces:
                if itf.segment in segments:
                    if "vip" in h.options:  # a forwarding L4 box: the VIP is the front door
                        return f"http://{h.options['vip']}/"
                    return f"http://{itf.ip}/"
    return None


def _https_curl(topology: Topology) -> str | None:
    """curl over HTTPS to the first l7 host that terminates TLS, trusting the lab CA that
    the l7 containers make in the shared state volume (``/lab/state/tls``)."""
    from ..roles.l7 import https_name

    for h in topology.by_role("l7"):
        name = https_name(topology, h)
        if name is not None:
            ca = f"{tls_dir(STATE_DIR)}/ca.pem"
            return f"curl -s --cacert {ca} --resolve {name}:443:{h.ip} https://{name}/"
    return None


def _header(topology: Topology, *, topology_file: str, compose_file: str) -> str:
    lines = [
        f"# Generated by `lbkit lab render docker {topology_file}`: do not edit by hand;",
        "# edit the topology and regenerate (docker/README.md says how).",
        f"# Lab {topology.name!r}" + (f": {topology.description}" if topology.description else ""),
        "#",
        "# Each container runs exactly the command a network-namespace host runs.",
        "# From the repository root:",
        f"#   docker compose -f {compose_file} up -d --build",
    ]
    url = _entry_url(topology)
    if url:
        lines.append(f"#   docker compose -f {compose_file} exec client curl -s {url}")
    https = _https_curl(topology)
    if https and topology.by_role("client"):
        lines.append(f"#   docker compose -f {compose_file} exec client {https}")
    lines.append(f"#   docker compose -f {compose_file} down -v")
    return "\n".join(lines) + "\n"


def _posix(path: str) -> str:
    return path.replace("\\", "/")


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents lists under their key and never writes aliases."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True
