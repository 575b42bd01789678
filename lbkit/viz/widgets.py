"""An ipywidgets playground over the simulator.

Builds without a running kernel: ``AlgorithmPlayground().update()`` runs one
simulation and redraws, so a test can drive it like a learner would.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
from IPython.display import display
from matplotlib.figure import Figure

from lbkit.algorithms import ALGORITHMS
from lbkit.sim import ARRIVALS, ServerSpec, SimResult, Workload, simulate

from .algorithms import plot_sim_result

#: Kept small so one redraw (simulation + plot) takes well under a second.
MAX_REQUESTS = 20_000


def playground_servers(n: int, slow_speed: float) -> list[ServerSpec]:
    """``n`` servers ``s1``..: all of speed 1 but the last, ``slow``, of ``slow_speed``."""
    if n < 1:
        raise ValueError(f"backends must be >= 1, got {n}")
    servers = [ServerSpec(f"s{i + 1}") for i in range(n - 1)]
    servers.append(ServerSpec("slow" if slow_speed != 1.0 else f"s{n}", speed=slow_speed))
    return servers


class AlgorithmPlayground(widgets.VBox):
    """Controls for algorithm, backends, slow server, load, requests, arrivals; a live plot.

    Every change reruns :func:`lbkit.sim.simulate` (seed 1) and redraws
    :func:`lbkit.viz.plot_sim_result` in an ``Output``. The last run is kept
    in ``result`` and its figure in ``figure``.
    """

    def __init__(self, **kwargs: Any) -> None:
        style = {"description_width": "150px"}
        layout = widgets.Layout(width="480px")
        slider = {"style": style, "layout": layout, "continuous_update": False}
        self.algorithm = widgets.Dropdown(
            options=list(ALGORITHMS),
            value="round_robin",
            description="algorithm",
            style=style,
            layout=layout,
        )
        self.backends = widgets.IntSlider(4, min=2, max=12, description="backends", **slider)
        self.slow_speed = widgets.FloatSlider(
            0.25, min=0.1, max=1.0, step=0.05, description="speed of the slow one", **slider
        )
        self.load = widgets.FloatSlider(
            0.7, min=0.1, max=0.98, step=0.02, description="load", **slider
        )
        self.requests = widgets.IntSlider(
            10_000, min=1_000, max=MAX_REQUESTS, step=1_000, description="requests", **slider
        )
        self.arrivals = widgets.ToggleButtons(
            options=list(ARRIVALS), value="poisson", description="arrivals", style=style
        )
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        self.result: SimResult | None = None
        self.figure: Figure | None = None
        controls = [
            self.algorithm,
            self.backends,
            self.slow_speed,
            self.load,
            self.requests,
            self.arrivals,
        ]
        for w in controls:
            w.observe(self.update, names="value")
        super().__init__([*controls, self.summary, self.output], **kwargs)
        self.update()

    def update(self, change: object = None) -> SimResult:
        """Run the simulation for the current controls and redraw; return its result."""
        servers = playground_servers(self.backends.value, self.slow_speed.value)
        workload = Workload(
            requests=self.requests.value, load=self.load.value, arrivals=self.arrivals.value
        )
        result = simulate(self.algorithm.value, servers, workload, seed=1)
        figure = plot_sim_result(result)
        self.result, self.figure = result, figure
        self.summary.value = (
            f"<b>p50</b> {result.p50:.2f} &nbsp; <b>p95</b> {result.p95:.2f} &nbsp; "
            f"<b>p99</b> {result.p99:.2f} &nbsp; <b>longest queue</b> {result.max_queue}"
        )
        self.output.clear_output(wait=True)
        with self.output:
            display(figure)
        return result


def algorithm_playground() -> AlgorithmPlayground:
    """The chapter's playground widget, already drawn once."""
    return AlgorithmPlayground()
