"""``lbkit lab health``: every load balancer's view of its backends, and the last transitions.

Asks each ``l4`` and ``l7`` host of the running lab for its ``health``
report (:meth:`lbkit.lab.Lab.health`) and prints two tables: one row per
backend a host checks (its state, since when, and the transition that put it
there), then the latest transitions of all hosts in time order. Hosts that
run no active checks (a placeholder tier, a router file without
``health_check``) are one row each: ``no active checks``. ``--json`` prints
the reports as they came.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import LabError

STATE_STYLE = {"up": "green", "down": "red", "drain": "yellow"}
DEFAULT_EVENTS = 10

HELP = "each load balancer's view of its backends (health checks) and the last transitions"
DESCRIPTION = """\
Ask every l4 and l7 host of the running lab for its health report and print
one row per backend it checks (state up/drain/down, since when, the transition
that put it there), then the latest transitions of all hosts in time order.
Hosts without active checks are listed as 'no active checks'.

Checks are configured per pool in an l7 router file, e.g.
  [pool.api]
  health_check = { type = "http", path = "/healthz", interval = 2.0, rise = 2, fall = 3 }
and per l4 box (hosts.nlb.options.health)."""
EPILOG = (
    "examples:\n"
    "  lbkit lab health\n"
    "  lbkit lab backend api2 --mode healthz-500 && sleep 8 && lbkit lab health\n"
    "  lbkit lab health --json | jq '.alb1.backends.api2'\n"
    "state: what the balancer is told (a failed check beats the operator's drain);\n"
    "(check) (max_fails) (outlier) (operator) say what took a backend out."
)


def add_health_parser(cmds: argparse._SubParsersAction, state: argparse.ArgumentParser) -> None:
    p = cmds.add_parser(
        "health",
        parents=[state],
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the hosts' reports as JSON")
    p.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        metavar="N",
        help=f"how many of the latest transitions to list (default: {DEFAULT_EVENTS})",
    )
    p.set_defaults(func=run_health)


def run_health(args: argparse.Namespace) -> int:
    from .lab import Lab

    if args.events < 0:
        raise LabError(f"--events must be >= 0, got {args.events}")
    lab = Lab.attach(args.state_dir)
    doc = lab.health()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    out = Console(soft_wrap=True)
    title = f"health ({lab.topology.name})"
    out.print(health_table(doc, title=title))
    events = events_table(doc, args.events)
    if events is not None:
        out.print()
        out.print(events)
    return 0


def _ago(at: float | None, now: float) -> str:
    """``4.2s ago``, ``3m05s ago``, ``2h10m ago``: how long a state has lasted."""
    if at is None:
        return "-"
    ago = max(0.0, now - at)
    if ago < 60:
        return f"{ago:.1f}s ago"
    if ago < 3600:
        return f"{int(ago // 60)}m{int(ago % 60):02d}s ago"
    return f"{int(ago // 3600)}h{int(ago % 3600 // 60):02d}m ago"


def _clock(at: float) -> str:
    """``06:21:14.153``: local time to the millisecond."""
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


def _why(row: dict[str, Any]) -> str:
    """What took a backend out (or keeps it draining), for the state column."""
    reasons = []
    if row.get("health") == "down":
        reasons.append("check")
    if row.get("failed"):
        reasons.append("max_fails")
    if row.get("ejected"):
        reasons.append("outlier")
    if row.get("admin") in ("down", "drain", "maint"):
        reasons.append("operator")
    return f" ({', '.join(reasons)})" if reasons and row.get("state") != "up" else ""


def _state(row: dict[str, Any]) -> str:
    state = str(row.get("state", "?"))
    style = STATE_STYLE.get(state)
    text = f"[{style}]{state}[/]" if style else state
    return text + _why(row)


def _where(row: dict[str, Any]) -> str:
    if row.get("pool"):
        return str(row["pool"])
    services = row.get("services")
    return ", ".join(services) if services else "-"


def health_table(doc: dict[str, dict], *, title: str = "health", now: float | None = None) -> Table:
    """One row per checked backend of each host; one row per host without checks."""
    now = time.time() if now is None else now
    t = Table(title=title, show_edge=False)
    for col in ("host", "pool/service", "backend", "state", "since", "last transition"):
        t.add_column(col)
    for host, report in doc.items():
        if "error" in report:
            t.add_row(host, "-", "-", "[red]unreachable[/]", "-", str(report["error"]))
            continue
        backends = report.get("backends") or {}
        if not report.get("checks"):
            t.add_row(host, "-", "-", "-", "-", "[dim]no active checks[/]")
            continue
        unchecked: list[str] = []
        for key, row in backends.items():
            if row.get("pool") and row.get("health") is None:  # an l7 pool without checks
                if row.get("pool") and row["pool"] not in unchecked:
                    unchecked.append(str(row["pool"]))
                continue
            t.add_row(
                host,
                _where(row),
                str(row.get("backend", key)),
                _state(row),
                _ago(row.get("since"), now),
                str(row.get("last") or row.get("result") or "-"),
            )
        if unchecked:
            t.add_row(host, ", ".join(unchecked), "-", "-", "-", "[dim]no active checks[/]")
    return t


def events_table(doc: dict[str, dict], count: int) -> Table | None:
    """The latest ``count`` transitions of every host, oldest first (None when there are none)."""
    merged = [
        (event.get("at") or 0.0, host, event)
        for host, report in doc.items()
        for event in report.get("events") or []
    ]
    merged.sort(key=lambda item: item[0])
    merged = merged[-count:] if count > 0 else []
    if not merged:
        return None
    t = Table(title="last transitions", show_edge=False)
    for col in ("when", "host", "pool/service", "transition"):
        t.add_column(col)
    for at, host, event in merged:
        t.add_row(_clock(at), host, str(event.get("pool") or "-"), str(event.get("message")))
    return t
