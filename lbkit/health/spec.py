"""One active health check as configured, and its parser: the same for the L4 and L7 tiers.

The L4 box's ``health = {...}`` option (and its ``--health*`` flags) and an
L7 pool's ``health_check = {...}`` are one :class:`CheckSpec`, read by one
:func:`parse_check`: a table of its fields, or a shorthand for the defaults::

    { type = "http", path = "/healthz", expect = "200-399", body = "ok", port = 8080,
      interval = 2.0, timeout = 1.0, rise = 2, fall = 3, jitter = 0.1 }
    "tcp"            # a TCP connect
    "http"           # GET /healthz, 200-399
    "http:/ready"    # GET /ready, 200-399

``type`` tcp passes when a connection opens (HAProxy ``check`` without
``option httpchk``); http sends ``GET path`` and passes on a status in
``expect`` (HAProxy ``option httpchk``: "2xx and 3xx are valid") whose body
contains ``body`` when given (``http-check expect string``). The timing
fields are :class:`~lbkit.health.checker.HealthConfig`'s (HAProxy's
``inter 2s rise 2 fall 3``). A caller names the fields it takes
(``allowed``: an L7 pool has no ``port``, each backend's address has it).

A mistake is a :class:`CheckSpecError` carrying the field (``key``) and
what is wrong (``message``), so that each caller writes its own one-line
error: ``r.toml: pool.api.health_check.fall: ...`` or ``--health-fall: ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from .checker import HealthConfig
from .probes import parse_expect

#: Check kinds: a TCP connect, or an HTTP GET judged by status (and body).
CHECK_TYPES: tuple[str, ...] = ("tcp", "http")
#: Every field a check table may hold, in the order error messages list them.
ALL_FIELDS: tuple[str, ...] = (
    "type", "path", "expect", "body", "port", "interval", "timeout", "rise", "fall", "jitter",
)  # fmt: skip
#: Fields that only an http check uses (a tcp check sends no request).
HTTP_FIELDS: tuple[str, ...] = ("path", "expect", "body")


class CheckSpecError(ValueError):
    """A bad check: ``key`` the field (``""``: the value itself), ``message`` what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class CheckSpec:
    """An active health check, as configured (defaults: HAProxy's, as HealthConfig's).

    ``port`` None: each backend is probed on its own port (the L4 box's
    rule for UDP services: :func:`lbkit.l4.health.plan_checks`). Equality
    ignores ``origin`` (``file: key``): two equal checks probe alike, so a
    reload keeps the state of an unchanged one.
    """

    type: str = "http"
    path: str = "/healthz"
    expect: str = "200-399"
    body: str | None = None
    port: int | None = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1
    origin: str = field(default="", compare=False)

    def config(self) -> HealthConfig:
        """The state machine's settings (raises ValueError for out-of-range values)."""
        return HealthConfig(
            rise=self.rise,
            fall=self.fall,
            interval=self.interval,
            timeout=self.timeout,
            jitter=self.jitter,
        )

    def describe(self) -> str:
        """``http GET /healthz (200-399) every 2 s, timeout 1 s, rise 2, fall 3``: for reports."""
        what = "tcp connect" if self.type == "tcp" else f"http GET {self.path} ({self.expect})"
        if self.type == "http" and self.body is not None:
            what += f" containing {self.body!r}"
        if self.port is not None:
            what += f" on port {self.port}"
        return (
            f"{what} every {self.interval:g} s, timeout {self.timeout:g} s, "
            f"rise {self.rise}, fall {self.fall}"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise ValueError(f"expected a path like /healthz, got {value!r}")
    return value


def _expect(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f'expected statuses like "200-399" or 200, got {value!r}')
    parse_expect(str(value))  # its ValueError says what is wrong with the list
    return str(value)


def _body(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text the answer must contain, got {value!r}")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a port number, got {value!r}")
    if not 0 < value < 65536:
        raise ValueError(f"port {value} is out of range 1-65535")
    return value


def _seconds(value: object) -> float:
    if not _is_number(value) or not value > 0:  # type: ignore[operator]
        raise ValueError(f"expected seconds > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def _fraction(value: object) -> float:
    if not _is_number(value) or not 0 <= value < 1:  # type: ignore[operator]
        raise ValueError(f"expected a fraction of the interval in [0, 1), got {value!r}")
    return float(value)  # type: ignore[arg-type]


#: Each field but ``type``: its check, which returns the stored value or raises ValueError.
_FIELDS: dict[str, Callable[[object], object]] = {
    "path": _path,
    "expect": _expect,
    "body": _body,
    "port": _port,
    "interval": _seconds,
    "timeout": _seconds,
    "rise": _count,
    "fall": _count,
    "jitter": _fraction,
}


def _shorthand(text: str) -> dict[str, object]:
    """``tcp``, ``http`` or ``http:/path`` -> the table it stands for (errors: key ``""``)."""
    kind, sep, path = text.partition(":")
    if kind not in CHECK_TYPES:
        raise CheckSpecError("", f"{text!r} is not tcp, http or http:/PATH")
    if not sep:
        return {"type": kind}
    if kind != "http":
        raise CheckSpecError("", f"a path goes with http only ({text})")
    try:
        return {"type": kind, "path": _path(path)}
    except ValueError as e:
        raise CheckSpecError("", str(e)) from None


def parse_check(
    value: object, *, allowed: Collection[str] = ALL_FIELDS, origin: str = ""
) -> CheckSpec:
    """A check table, or ``"tcp"``, ``"http"``, ``"http:/path"``, -> :class:`CheckSpec`.

    ``allowed``: the fields this caller takes (``type`` always); any other
    key is unknown. ``type`` defaults to http. Raises :class:`CheckSpecError`
    naming the first bad field.
    """
    table = _shorthand(value) if isinstance(value, str) else value
    if not isinstance(table, Mapping):
        example = '{ type = "http" } or "tcp"'
        raise CheckSpecError("", f"expected a table like {example}, got {value!r}")
    known = [name for name in ALL_FIELDS if name == "type" or name in allowed]
    unknown = sorted(str(k) for k in table if k not in known)
    if unknown:
        raise CheckSpecError(unknown[0], f"unknown key; known: {', '.join(known)}")
    kind = table.get("type", "http")
    if kind not in CHECK_TYPES:
        raise CheckSpecError("type", f"expected tcp or http, got {kind!r}")
    extra = next((k for k in HTTP_FIELDS if k in table), None) if kind == "tcp" else None
    if extra is not None:
        raise CheckSpecError(extra, "only for type http (a tcp check sends no request)")
    options: dict[str, object] = {"type": kind}
    for name, check in _FIELDS.items():
        if name in table:
            try:
                options[name] = check(table[name])
            except ValueError as e:
                raise CheckSpecError(name, str(e)) from None
    return CheckSpec(**options, origin=origin)  # type: ignore[arg-type]
