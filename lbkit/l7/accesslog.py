"""The L7 proxy's access log: one JSON object per request, to the logger ``lbkit.l7.access``.

Off unless that logger is enabled for INFO (``lbkit l7 --access-log FILE``
does it; benchmarks leave it off). The proxy checks once when it starts and
after a reload, so a disabled log costs nothing per request.

The fields follow nginx's ``log_format`` variables: ``time`` ($time_iso8601,
UTC with milliseconds), ``client`` ($remote_addr:$remote_port), ``method``,
``target`` ($request_uri), ``route`` (lbkit's route name), ``backend``
($upstream_addr, by name), ``status``, ``bytes`` ($bytes_sent),
``upstream_time_ms`` ($upstream_response_time, summed over attempts),
``total_time_ms`` ($request_time) and ``retries`` (attempts after the first).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

ACCESS_LOGGER = logging.getLogger("lbkit.l7.access")

FIELDS = (
    "time",
    "client",
    "method",
    "target",
    "route",
    "backend",
    "status",
    "bytes",
    "upstream_time_ms",
    "total_time_ms",
    "retries",
)


def enabled(logger: logging.Logger = ACCESS_LOGGER) -> bool:
    """Whether access lines would be written (checked once, not per request)."""
    return logger.isEnabledFor(logging.INFO)


def access_line(
    *,
    client: tuple[str, int],
    method: str,
    target: str,
    route: str | None,
    backend: str | None,
    status: int,
    nbytes: int,
    upstream_time: float | None,
    total_time: float,
    retries: int,
    when: float | None = None,
) -> str:
    """The JSON text of one access record (times in seconds in, milliseconds out)."""
    stamp = datetime.fromtimestamp(when, UTC) if when is not None else datetime.now(UTC)
    record = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": f"{client[0]}:{client[1]}",
        "method": method,
        "target": target,
        "route": route,
        "backend": backend,
        "status": status,
        "bytes": nbytes,
        "upstream_time_ms": None if upstream_time is None else round(upstream_time * 1000, 3),
        "total_time_ms": round(total_time * 1000, 3),
        "retries": retries,
    }
    return json.dumps(record, separators=(",", ":"))


def log_access(line: str, logger: logging.Logger = ACCESS_LOGGER) -> None:
    logger.info(line)


def configure(target: str | None, logger: logging.Logger = ACCESS_LOGGER) -> None:
    """Send access lines to ``target``: a file path, ``-`` for stdout, None or ``off`` for none."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if target in (None, "", "off"):
        logger.setLevel(logging.WARNING)
        logger.propagate = True
        return
    handler: logging.Handler = (
        logging.StreamHandler(sys.stdout) if target == "-" else logging.FileHandler(target)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
