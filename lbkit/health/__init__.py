"""Health: is a backend fit to take traffic? Pure state machines; probes live at the edge.

* :mod:`.checker`: active checks' state machine (rise/fall), schedule, and
  the operator's ready/drain/maint combined into a balancer state.
* :mod:`.outlier`: Envoy's outlier detection on live traffic (ejection).
* :mod:`.passive`: nginx's ``max_fails``/``fail_timeout`` accounting.
* :mod:`.slowstart`: Envoy's slow-start weight ramp for recovered backends.
* :mod:`.spec`: one active check as configured (:class:`CheckSpec`) and its
  parser (:func:`parse_check`), shared by the L4 box and the L7 pools.
* :mod:`.probes`: TCP and HTTP(S) probes (asyncio) and the loop driving a checker.
* :mod:`.sim`: the checker driven in simulated time in front of backends that
  fail on a timeline; detection and recovery delays, their predicted
  windows, client errors and probe load.
"""

from .checker import (
    ADMIN_STATES,
    EFFECTIVE,
    HEALTH_STATES,
    BackendHealth,
    HealthChecker,
    HealthConfig,
    Result,
    Transition,
    timeout_reason,
)
from .outlier import OutlierConfig, OutlierDetector
from .passive import PassiveHealth
from .probes import (
    Probe,
    ProbeResult,
    http_check,
    http_probe,
    parse_expect,
    run_checks,
    tcp_check,
    tcp_probe,
)
from .sim import (
    DelayWindow,
    DetectionSample,
    HealthSimResult,
    Outage,
    ProbeLoad,
    SimBackend,
    Traffic,
    compare_checks,
    detection_samples,
    detection_table,
    predict_detection,
    predict_probe_load,
    predict_recovery,
    probe_load_samples,
    scenario,
    simulate_health,
)
from .slowstart import (
    NO_SLOW_START,
    SLOW_START_ALGORITHMS,
    SlowStart,
    slow_start_factor,
    slow_start_weight,
    supports_slow_start,
    why_no_slow_start,
)
from .spec import CheckSpec, CheckSpecError, parse_check

__all__ = [
    "ADMIN_STATES",
    "EFFECTIVE",
    "HEALTH_STATES",
    "NO_SLOW_START",
    "SLOW_START_ALGORITHMS",
    "BackendHealth",
    "CheckSpec",
    "CheckSpecError",
    "DelayWindow",
    "DetectionSample",
    "HealthChecker",
    "HealthConfig",
    "HealthSimResult",
    "Outage",
    "OutlierConfig",
    "OutlierDetector",
    "PassiveHealth",
    "Probe",
    "ProbeLoad",
    "ProbeResult",
    "Result",
    "SimBackend",
    "SlowStart",
    "Traffic",
    "Transition",
    "compare_checks",
    "detection_samples",
    "detection_table",
    "http_check",
    "http_probe",
    "parse_check",
    "parse_expect",
    "predict_detection",
    "predict_probe_load",
    "predict_recovery",
    "probe_load_samples",
    "run_checks",
    "scenario",
    "simulate_health",
    "slow_start_factor",
    "slow_start_weight",
    "supports_slow_start",
    "tcp_check",
    "tcp_probe",
    "timeout_reason",
    "why_no_slow_start",
]
