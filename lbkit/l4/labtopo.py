"""The L4 lab in each mode and engine: ``labs/l4.toml`` and its variants.

The modes differ in what the *backends* must do, which is the lesson:

* ``nat``: a backend's reply must pass the L4 box again to get its source
  rewritten back to the VIP, so each backend routes the client via the box;
* ``dsr``: the box only changes the destination MAC; the backend must accept
  packets addressed to the VIP (held on ``lo``) without claiming it on the
  wire (ARP suppressed), and replies straight to the client;
* ``tunnel``: as dsr, but the packet arrives inside IP-in-IP, so the backend
  runs a decapsulator, and its route to the client advertises an MSS 20
  bytes smaller (``advmss 1440``) so the client's segments still fit the
  1500-byte MTU once the box adds its 20-byte outer header.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from lbkit.lab.notebook import labs_dir

from .config import ENGINES, MODES, TUNNEL_MSS

CLIENT = "10.0.1.100"
VIP = "10.0.1.200"
BOX = "10.0.1.2"


def l4_topology_data(
    mode: str = "nat", engine: str = "fast", health: dict[str, Any] | str | None = None
) -> dict[str, Any]:
    """``labs/l4.toml`` as data, changed for ``mode`` and ``engine``.

    ``health``: the L4 box's ``health`` option (``{"type": "http", "interval": 0.2}``;
    see :mod:`lbkit.l4.config`); None leaves it out, as the file does.
    """
    if mode not in MODES or engine not in ENGINES:
        raise ValueError(f"mode must be one of {MODES} and engine one of {ENGINES}")
    data = tomllib.loads((labs_dir() / "l4.toml").read_text())
    data = copy.deepcopy(data)
    data["name"] = f"l4{mode[:3]}"
    data["hosts"]["lb"]["options"].update(mode=mode, engine=engine)
    if health is not None:
        data["hosts"]["lb"]["options"]["health"] = copy.deepcopy(health)
    for host in data["hosts"].values():
        if host["role"] != "backend":
            continue
        host.pop("routes", None)
        host.pop("loopback", None)
        host["options"] = {k: v for k, v in host.get("options", {}).items() if k != "decap"}
        if mode == "nat":
            host["routes"] = [f"{CLIENT}/32 via {BOX}"]
        else:
            host["loopback"] = [VIP]
        if mode == "tunnel":
            host["options"]["decap"] = True
            host["routes"] = [f"{CLIENT}/32 dev eth0 advmss {TUNNEL_MSS}"]
    return data


def write_l4_topology(
    path: Path,
    mode: str = "nat",
    engine: str = "fast",
    health: dict[str, Any] | str | None = None,
) -> Path:
    """Write the variant to ``path`` (host processes read their topology from a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(l4_topology_data(mode, engine, health)))
    return path
