"""Health: is a backend fit to take traffic? Pure state machines; probes live at the edge.

* :mod:`.checker`: active checks' state machine (rise/fall), schedule, and
  the operator's ready/drain/maint combined into a balancer state.
* :mod:`.outlier`: Envoy's outlier detection on live traffic (ejection).
* :mod:`.passive`: nginx's ``max_fails``/``fail_timeout`` accounting.
* :mod:`.slowstart`: Envoy's slow-start weight ramp for recovered backends.
* :mod:`.probes`: TCP and HTTP(S) probes (asyncio) and the loop driving a checker.
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
from .slowstart import (
    NO_SLOW_START,
    SLOW_START_ALGORITHMS,
    SlowStart,
    slow_start_factor,
    slow_start_weight,
    supports_slow_start,
    why_no_slow_start,
)

__all__ = [
    "ADMIN_STATES",
    "EFFECTIVE",
    "HEALTH_STATES",
    "NO_SLOW_START",
    "SLOW_START_ALGORITHMS",
    "BackendHealth",
    "HealthChecker",
    "HealthConfig",
    "OutlierConfig",
    "OutlierDetector",
    "PassiveHealth",
    "Probe",
    "ProbeResult",
    "Result",
    "SlowStart",
    "Transition",
    "http_check",
    "http_probe",
    "parse_expect",
    "run_checks",
    "slow_start_factor",
    "slow_start_weight",
    "supports_slow_start",
    "tcp_check",
    "tcp_probe",
    "timeout_reason",
    "why_no_slow_start",
]
