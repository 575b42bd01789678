"""A picture of a lab topology: hosts coloured by role, wired to their segments."""

from __future__ import annotations

from matplotlib.figure import Figure

from lbkit.lab.topology import Topology

ROLE_COLORS = {
    "client": "#4c78a8",
    "l4": "#f58518",
    "l7": "#e45756",
    "backend": "#54a24b",
    "tools": "#b279a2",
}


def _layout(topology: Topology) -> dict[str, tuple[float, float]]:
    """Tiers left to right (client, l4, l7, backends); segments between the tiers they join."""
    tiers = {"client": 0, "tools": 0, "l4": 1, "l7": 2, "backend": 3}
    columns: dict[int, list[str]] = {}
    for h in topology.hosts.values():
        columns.setdefault(tiers[h.role] * 2, []).append(h.name)
    pos: dict[str, tuple[float, float]] = {}
    for x, names in columns.items():
        for i, name in enumerate(names):
            pos[name] = (float(x), (len(names) - 1) / 2 - i)
    for seg in topology.segments.values():
        xs = [
            pos[h.name][0]
            for h in topology.hosts.values()
            if any(i.segment == seg.name for i in h.interfaces)
        ]
        x = (min(xs) + max(xs)) / 2 if xs else 0.0
        if x in columns:  # a segment joining hosts of one column goes beside it
            x += 1.0
        wide = len({p for p in xs}) > 2
        top = max(p[1] for p in pos.values())
        # A segment spanning several tiers sits above them, so its wires clear the hosts.
        pos[f"[{seg.name}]"] = (x, top + 1.0 if wide else 0.0)
    return pos


def plot_topology(topology: Topology, path: str | None = None) -> Figure:
    """Draw ``topology``; write a PNG to ``path`` if given. Returns the figure."""
    g = topology.graph()
    pos = _layout(topology)
    rows = max(sum(1 for p in pos.values() if p[0] == x) for x, _ in pos.values())
    fig = Figure(figsize=(11, max(3.0, 0.45 * rows + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    for a, b in g.edges():
        (x1, y1), (x2, y2) = pos[a], pos[b]
        ax.plot([x1, x2], [y1, y2], color="#999", lw=1, zorder=1)
    for node, data in g.nodes(data=True):
        x, y = pos[node]
        if data["kind"] == "segment":
            ax.scatter([x], [y], marker="s", s=900, color="#ddd", edgecolor="#666", zorder=2)
            ax.annotate(f"{node}\n{data['subnet']}", (x, y), ha="center", va="center", fontsize=7)
        else:
            ax.scatter(
                [x], [y], s=500, color=ROLE_COLORS[data["role"]], edgecolor="white", zorder=3
            )
            left = x == 0  # the first column is labelled on its left, clear of the wires
            ax.annotate(
                f"{node}  {data['ip']}",
                (x, y),
                xytext=(-13 if left else 13, 0),
                textcoords="offset points",
                ha="right" if left else "left",
                va="center",
                fontsize=8,
            )
    for role, color in ROLE_COLORS.items():
        if topology.by_role(role):
            ax.scatter([], [], s=80, color=color, label=role)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(f"lab {topology.name}: {topology.description}", fontsize=10)
    ax.margins(0.08, 0.12)
    ax.set_xlim(-1.6, max(x for x, _ in pos.values()) + 1.6)
    ax.axis("off")
    if path is not None:
        fig.savefig(path, dpi=110, format="png")
    return fig
