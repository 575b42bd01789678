"""``lbkit lab capture``: record on several hosts, then print one merged timeline."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

from rich.console import Console

from .capture_merge import merge_pcaps, timeline_records, timeline_table
from .errors import LabError

MAX_ROWS = 80


def run_capture(args: argparse.Namespace) -> int:
    from .lab import Lab

    hosts = [h for h in args.hosts.split(",") if h]
    if not hosts:
        raise LabError("name at least one host, e.g. client,api1")
    if args.seconds <= 0:
        raise LabError(f"--seconds must be > 0, got {args.seconds}")
    lab = Lab.attach(args.state_dir)
    out_dir = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    err = Console(stderr=True)
    cap = lab.capture(hosts, out_dir, count=args.count, filter=args.filter)
    with cap:
        err.print(
            f"capturing on {', '.join(hosts)} for up to {args.seconds:g} s"
            + (f" or {args.count} packets per host" if args.count else "")
            + " (Ctrl-C stops)"
        )
        deadline = time.monotonic() + args.seconds
        try:
            while time.monotonic() < deadline and (args.count is None or cap.running):
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
    rows = merge_pcaps(cap.paths)
    (out_dir / "timeline.json").write_text(json.dumps(timeline_records(rows), indent=1))
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # a file or a pipe: no reason to wrap at 80
    out.print(timeline_table(rows, max_rows=MAX_ROWS))
    print(f"{len(rows)} packets; pcaps and timeline.json in {out_dir}")
    return 0
