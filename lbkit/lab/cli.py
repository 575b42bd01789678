"""``lbkit lab ...``: the lab's command group (an adapter over :class:`Lab`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import LabError
from .topology import l7_router_option

DEFAULT_TOPOLOGY = "labs/layered.toml"


def me() -> str:
    """How the user can run lbkit again: ``lbkit`` if that is on PATH, else the path used."""
    import shutil

    used = Path(sys.argv[0])
    on_path = shutil.which("lbkit")
    if on_path and used.name == "lbkit" and Path(on_path).resolve() == used.resolve():
        return "lbkit"
    if used.name == "lbkit":
        return os.path.relpath(used) if not os.path.relpath(used).startswith("..") else str(used)
    return "lbkit"


def _state_dir_default() -> str:
    return os.environ.get("LBKIT_STATE_DIR", ".lab")


def add_lab_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="bring up, use and take down a multi-host lab",
        description=(
            "A multi-host lab from one topology file: network namespaces (Linux, root), "
            "processes on loopback (any OS), or docker compose."
        ),
        epilog=(
            "examples:\n"
            "  lbkit lab up labs/basic.toml\n"
            "  lbkit lab exec client -- curl -s http://10.0.1.10/echo\n"
            "  lbkit lab backend api2 --mode error-500\n"
            "  lbkit lab health\n"
            "  lbkit lab capture client,api1 --count 20\n"
            "  lbkit lab down"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_state_dir_default()),
        help="where the running lab is recorded (default: $LBKIT_STATE_DIR or .lab)",
    )
    cmds = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    cmds.required = True

    p = cmds.add_parser("up", parents=[state], help="bring a lab up (idempotent)")
    p.add_argument(
        "topology",
        nargs="?",
        default=DEFAULT_TOPOLOGY,
        help=f"topology file (default: {DEFAULT_TOPOLOGY})",
    )
    p.add_argument(
        "--provider",
        choices=["auto", "netns", "local"],
        default="auto",
        help="auto: netns when root on Linux, else local (docker: see `lab render`)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the equivalent ip commands and exit, changing nothing",
    )
    p.add_argument("--course", action="store_true", help="also start JupyterLab (make lab-up)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_up)

    p = cmds.add_parser("down", parents=[state], help="remove everything the lab made")
    p.add_argument("--course", action="store_true", help="also stop JupyterLab")
    p.set_defaults(func=_down)

    p = cmds.add_parser("status", parents=[state], help="hosts, addresses, processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = cmds.add_parser(
        "exec",
        parents=[state],
        help="run a command inside a host",
        usage="lbkit lab exec HOST -- CMD [ARG...]",
    )
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=_exec)

    p = cmds.add_parser("backend", parents=[state], help="show or switch a backend's mode")
    p.add_argument("host")
    p.add_argument(
        "--mode",
        choices=["healthy", "slow", "error-500", "healthz-500", "accept-no-answer", "refuse"],
    )
    p.add_argument("--slow-delay", type=float, help="seconds added by the slow mode")
    p.set_defaults(func=_backend)

    p = cmds.add_parser(
        "stop",
        parents=[state],
        help="kill one host's process, as a crash would (its address stays: peers are refused)",
    )
    p.add_argument("host")
    p.set_defaults(func=_stop)
    p = cmds.add_parser("start", parents=[state], help="start a stopped host again")
    p.add_argument("host")
    p.set_defaults(func=_start)

    from .health_cli import add_health_parser

    add_health_parser(cmds, state)

    p = cmds.add_parser(
        "forward",
        parents=[state],
        help="reach HOST:PORT from this machine via 127.0.0.1 (like kubectl)",
    )
    p.add_argument("target", metavar="HOST[:SERVICE]", help="e.g. api1 or api1:http-alt")
    p.add_argument("local_port", nargs="?", type=int, default=0)
    p.set_defaults(func=_forward)

    p = cmds.add_parser(
        "capture", parents=[state], help="capture on several hosts at once and merge one timeline"
    )
    p.add_argument("hosts", metavar="HOST[,HOST...]")
    p.add_argument("--count", type=int, default=None, help="stop after N packets per host")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after this long (default: 10)")
    p.add_argument("--filter", default=None, help="BPF filter, e.g. 'tcp port 80'")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("captures"),
        help="folder for HOST.pcap files (default: ./captures)",
    )
    p.set_defaults(func=_capture)

    p = cmds.add_parser("show", help="print a topology's hosts and draw it")
    p.add_argument("topology", nargs="?", default=DEFAULT_TOPOLOGY)
    p.add_argument("-o", "--out", type=Path, help="PNG to write (default: TOPOLOGY.png in .)")
    p.set_defaults(func=_show)

    p = cmds.add_parser("render", help="generate a provider's files (docker compose)")
    p.add_argument("kind", choices=["docker"])
    p.add_argument("topology")
    p.add_argument("-o", "--out", type=Path, help="write here instead of stdout")
    p.set_defaults(func=_render)

    p = cmds.add_parser("host")  # what each lab host runs; internal, so hidden from the list
    cmds._choices_actions = [a for a in cmds._choices_actions if a.dest != "host"]
    p.add_argument("name")
    p.add_argument("--topology", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--addressing", default="native")
    p.set_defaults(func=_host)


def _short(endpoint: str, address: str) -> str:
    """``10.0.1.10:80/tcp`` -> ``:80``; ``127.0.1.3:8080/tcp`` stays (it differs)."""
    hostport, proto = endpoint.rsplit("/", 1)
    ip, port = hostport.rsplit(":", 1)
    where = f":{port}" if ip == address else hostport
    return where if proto == "tcp" else f"{where}/{proto}"


def _hosts_table(status: dict) -> Table:
    t = Table(title=f"lab {status['topology']} ({status['provider']})", show_edge=False)
    for col in ("host", "role", "address", "services", "up"):
        t.add_column(col)
    for h in status["hosts"]:
        services = (
            ", ".join(f"{k} {_short(v, h['addresses'][0])}" for k, v in h["services"].items())
            or "-"
        )
        t.add_row(
            h["name"],
            h["role"],
            ", ".join(h["addresses"]),
            services,
            "yes" if h["running"] else "[red]no[/]",
        )
    return t


def _up(args: argparse.Namespace) -> int:
    from .lab import Lab

    lab = Lab(args.topology, provider=args.provider, state_dir=args.state_dir)
    out = Console(soft_wrap=True)
    if args.dry_run:
        for line in lab.plan():
            print(line)
        return 0
    with Console(stderr=True).status("bringing the lab up") as spin:
        lab.up(progress=lambda msg: spin.update(f"lab: {msg}"))
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    out.print(_hosts_table(status))
    backend = (lab.topology.by_role("backend") or lab.hosts())[0].name
    client = (lab.topology.by_role("client") or lab.hosts())[0].name
    # The outermost tier that does something: an L4 box with a VIP, else an L7 router,
    # else a backend (a placeholder page is no place to send a browser).
    working = [
        *(h for h in lab.topology.by_role("l4") if "vip" in h.options),
        *(h for h in lab.topology.by_role("l7") if l7_router_option(h) is not None),
        *lab.topology.by_role("backend"),
    ]
    entry = working[0].name if working else backend
    hints: list[tuple[str, str]] = []
    curl = f"curl -s {lab.url(backend, '/echo')}"
    if lab.provider == "netns":
        curl = f"{me()} lab exec {client} -- {curl}"
    hints.append(("curl a backend from the client", curl))
    for box in lab.topology.by_role("l4"):
        if "vip" in box.options:
            vip = f"curl -s {lab.url(box.name)}"
            if lab.provider == "netns":
                vip = f"{me()} lab exec {client} -- {vip}"
            hints.append((f"curl the VIP of {box.name}", vip))
    routers = [h.name for h in lab.topology.by_role("l7") if l7_router_option(h) is not None]
    if routers:
        route = f"curl -s {lab.url(routers[0])}"
        if lab.provider == "netns":
            route = f"{me()} lab exec {client} -- {route}"
        hints.append((f"curl the L7 router {routers[0]}", route))
        https = _https_hint(lab)
        if https is not None:
            hints.append(https)
        stats = f"curl -s {lab.url(routers[0], '/stats', 'admin')}"
        if lab.provider == "netns":
            stats = f"{me()} lab exec {routers[0]} -- {stats}"
        hints.append((f"{routers[0]}'s admin API", stats))
        hints.append(("backends as the balancers see them", f"{me()} lab health"))
    url, _ = lab.forward(entry)
    hints.append((f"open {entry} in your browser", url))
    if args.course:
        hints.append(("the course (JupyterLab)", _course_up(args.state_dir)))
    hints.append(("stop everything", f"make lab-down (or: {me()} lab down)"))
    width = max(len(label) for label, _ in hints)
    print()
    for label, text in hints:  # plain lines: commands and URLs must never wrap
        print(f"{label:<{width}}  {text}")
    if lab.provider == "local":
        out.print(
            "[dim]local provider: hosts are processes on loopback; packet-level "
            "features need the netns provider (Linux, root).[/]"
        )
        if any("vip" in h.options for h in lab.topology.by_role("l4")):
            from lbkit.l4.proxy import NOTICE

            out.print(f"[dim]{NOTICE}[/]")
    return 0


def _shown(path: Path) -> str:
    """``path`` as the user may type it here: relative when under the current folder."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def _https_hint(lab) -> tuple[str, str] | None:
    """``(label, command)``: curl the first L7 router that terminates TLS, by one of its
    names, trusting the lab CA (``lab.ca_path``); from the client under netns."""
    from .roles.l7 import https_name

    for host in lab.topology.by_role("l7"):
        name = https_name(lab.topology, host)
        if name is None:
            continue
        ip, port = lab.endpoint(host.name, "https")
        where = name if port == 443 else f"{name}:{port}"
        curl = (
            f"curl -s --cacert {_shown(lab.ca_path)} --resolve {name}:{port}:{ip} https://{where}/"
        )
        if lab.provider == "netns":
            client = (lab.topology.by_role("client") or lab.hosts())[0].name
            curl = f"{me()} lab exec {client} -- {curl}"
        return f"curl {host.name} over HTTPS (lab CA)", curl
    return None


def _course_up(state_dir: Path) -> str:
    from lbkit import course

    try:
        running, _ = course.up(state_dir, Path("notebooks"))
    except course.CourseError as e:
        raise LabError(str(e)) from None
    return running.url


def _down(args: argparse.Namespace) -> int:
    from .lab import Lab
    from .state import LabState

    state = LabState.load(args.state_dir)
    removed = False
    if state is not None:
        removed = Lab(state.topology, provider=state.provider, state_dir=args.state_dir).down()
    else:
        # No record: still sweep namespaces carrying this state dir's prefix.
        from .lab import default_provider

        if default_provider() == "netns" and Path(DEFAULT_TOPOLOGY).exists():
            removed = Lab(DEFAULT_TOPOLOGY, provider="netns", state_dir=args.state_dir).down()
    print("lab removed" if removed else "no lab was up")
    if args.course:
        from lbkit import course

        print("course stopped" if course.down(args.state_dir) else "course was not running")
    if args.state_dir.is_dir() and not any(args.state_dir.iterdir()):
        args.state_dir.rmdir()
    return 0


def _status(args: argparse.Namespace) -> int:
    from .lab import Lab

    lab = Lab.attach(args.state_dir)
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        Console(soft_wrap=True).print(_hosts_table(status))
        https = _https_hint(lab) if status["up"] else None
        if https is not None:
            print(f"\n{https[0]}  {https[1]}")  # plain: a command must never wrap
    return 0 if status["up"] else 1


def _exec(args: argparse.Namespace) -> int:
    from .lab import Lab

    argv = list(args.argv)
    if "--" in argv:  # options may also sit between HOST and `--`
        cut = argv.index("--")
        extra = argparse.ArgumentParser(prog="lbkit lab exec", add_help=False)
        extra.add_argument("--state-dir", type=Path)
        known, unknown = extra.parse_known_args(argv[:cut])
        if unknown:
            raise LabError(f"unexpected {' '.join(unknown)} before `--`")
        if known.state_dir:
            args.state_dir = known.state_dir
        argv = argv[cut + 1 :]
    if not argv:
        raise LabError("no command given: lbkit lab exec HOST -- CMD [ARG...]")
    lab = Lab.attach(args.state_dir)
    try:
        os.execvp(*_exec_argv(lab, args.host, argv))
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: command not found") from None
    return 0  # not reached


def _exec_argv(lab, host: str, argv: list[str]) -> tuple[str, list[str]]:
    full = [*lab.exec_prefix(host), *argv]
    return full[0], full


def _stop(args: argparse.Namespace) -> int:
    from .lab import Lab

    ran = Lab.attach(args.state_dir).stop(args.host)
    print(f"{args.host}: stopped" if ran else f"{args.host}: was not running")
    return 0


def _start(args: argparse.Namespace) -> int:
    from .lab import Lab

    Lab.attach(args.state_dir).start(args.host)
    print(f"{args.host}: running")
    return 0


def _backend(args: argparse.Namespace) -> int:
    from .lab import Lab

    lab = Lab.attach(args.state_dir)
    options = {} if args.slow_delay is None else {"slow_delay": args.slow_delay}
    if args.slow_delay is not None and args.mode is None:
        raise LabError("--slow-delay goes with --mode slow")
    reply = lab.backend(args.host, args.mode, **options)
    print(
        f"{args.host}: mode {reply.get('mode')}"
        + (f" (slow_delay {reply['slow_delay']} s)" if reply.get("mode") == "slow" else "")
    )
    return 0


def _forward(args: argparse.Namespace) -> int:
    from .lab import Lab

    host, _, service = args.target.partition(":")
    lab = Lab.attach(args.state_dir)
    url, pid = lab.forward(host, service or None, args.local_port)
    note = f"  (relay pid {pid}; stopped by lbkit lab down)" if pid else ""
    print(f"{args.target} -> {url}{note}")
    return 0


def _capture(args: argparse.Namespace) -> int:
    from .capture_cli import run_capture

    return run_capture(args)


def _show(args: argparse.Namespace) -> int:
    from lbkit.viz.topology import plot_topology

    from .topology import load_topology

    topo = load_topology(args.topology)
    t = Table(title=f"{topo.name}: {topo.description}", show_edge=False)
    for col in ("host", "role", "addresses", "segments", "gateway"):
        t.add_column(col)
    for h in topo.hosts.values():
        t.add_row(
            h.name,
            h.role,
            ", ".join(i.ip for i in h.interfaces),
            ", ".join(i.segment for i in h.interfaces),
            str(h.gateway or "-"),
        )
    Console(soft_wrap=True).print(t)
    out = args.out or Path(f"{topo.name}.png")
    try:
        plot_topology(topo, path=str(out))
    except OSError as e:
        raise LabError(f"{out}: {e.strerror or e}") from None
    print(f"picture written to {out}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from .providers.docker import render_compose
    from .topology import load_topology

    topo = load_topology(args.topology)
    text = render_compose(
        topo, topology_file=args.topology, compose_file=str(args.out) if args.out else None
    )
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as e:
            raise LabError(f"{args.out}: {e.strerror or e}") from None
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _host(args: argparse.Namespace) -> int:
    from .roles.runner import run_role
    from .topology import load_topology

    topo = load_topology(args.topology)
    run_role(topo, topo.host(args.name), args.state_dir, args.addressing)
    return 0
