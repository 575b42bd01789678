"""Pictures and playgrounds for the course: plots, ipywidgets, exercise checkers.

Every plot takes data (a :class:`lbkit.sim.SimResult`, a table, a list of
picks) and returns a :class:`matplotlib.figure.Figure` built without pyplot,
so it works under the Agg backend, never pops a window and shows exactly once
in a notebook. Nothing is written unless a ``path`` is given.

``algorithm_playground`` needs ipywidgets (the ``notebooks`` extra) and is
imported on first use, so the CLI can plot without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .algorithms import (
    backend_colors,
    nginx_upstream,
    peak_ewma_trace,
    pick_counts,
    pick_sequence,
    plot_comparison,
    plot_concurrency,
    plot_latency_estimates,
    plot_maglev_table,
    plot_pick_sequence,
    plot_pick_sequences,
    plot_remap,
    plot_ring,
    plot_sim_result,
    slowdown_samples,
)
from .exercises import (
    Verdict,
    check_ring_fraction,
    check_sticky,
    check_wrr_sequence,
    sticky_choices,
)

if TYPE_CHECKING:
    from .widgets import AlgorithmPlayground, algorithm_playground


def __getattr__(name: str) -> object:
    if name in ("algorithm_playground", "AlgorithmPlayground"):
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlgorithmPlayground",
    "Verdict",
    "algorithm_playground",
    "backend_colors",
    "check_ring_fraction",
    "check_sticky",
    "check_wrr_sequence",
    "nginx_upstream",
    "peak_ewma_trace",
    "pick_counts",
    "pick_sequence",
    "plot_comparison",
    "plot_concurrency",
    "plot_latency_estimates",
    "plot_maglev_table",
    "plot_pick_sequence",
    "plot_pick_sequences",
    "plot_remap",
    "plot_ring",
    "plot_sim_result",
    "slowdown_samples",
    "sticky_choices",
]
