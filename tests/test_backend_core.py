"""The backend role's pure core: answers per mode, echo JSON, control requests."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbkit.lab.roles.backend_core import (
    ANSWER,
    CLOSE,
    HANG,
    MODES,
    RoleState,
    bad_request_answer,
    echo_body,
    handle_control,
    hostport,
    http_answer,
    line_reply,
    request_path,
    udp_reply,
)
from lbkit.lab.roles.placeholder import placeholder_answer, placeholder_state

CLIENT = ("10.0.1.2", 40000)
SERVER = ("10.0.1.10", 80)


def answer(mode: str, path: str, method: str = "GET", slow_delay: float = 0.25):
    state = RoleState("api1", mode=mode, slow_delay=slow_delay)
    return http_answer(state, method, path, "1.1", [("Host", "lab")], 0, CLIENT, SERVER)


# (mode, path) -> (status, body, delay, action); "JSON" marks the echo document.
HTTP_TABLE = [
    ("healthy", "/", 200, b"api1\n", 0.0, ANSWER),
    ("healthy", "/healthz", 200, b"ok\n", 0.0, ANSWER),
    ("healthy", "/echo", 200, "JSON", 0.0, ANSWER),
    ("healthy", "/any/other?x=1", 200, b"api1\n", 0.0, ANSWER),
    ("slow", "/", 200, b"api1\n", 0.25, ANSWER),
    ("slow", "/healthz", 200, b"ok\n", 0.25, ANSWER),
    ("slow", "/echo", 200, "JSON", 0.25, ANSWER),
    ("error-500", "/", 500, b"api1: error\n", 0.0, ANSWER),
    ("error-500", "/healthz", 500, b"api1: error\n", 0.0, ANSWER),
    ("error-500", "/echo", 500, b"api1: error\n", 0.0, ANSWER),
    ("healthz-500", "/", 200, b"api1\n", 0.0, ANSWER),
    ("healthz-500", "/healthz", 500, b"api1: error\n", 0.0, ANSWER),
    ("healthz-500", "/healthz?probe=1", 500, b"api1: error\n", 0.0, ANSWER),
    ("healthz-500", "/echo", 200, "JSON", 0.0, ANSWER),
    ("accept-no-answer", "/", 0, b"", 0.0, HANG),
    ("accept-no-answer", "/healthz", 0, b"", 0.0, HANG),
    ("refuse", "/", 0, b"", 0.0, CLOSE),
    ("refuse", "/healthz", 0, b"", 0.0, CLOSE),
]


@pytest.mark.parametrize(("mode", "path", "status", "body", "delay", "action"), HTTP_TABLE)
def test_http_answer_per_mode(mode, path, status, body, delay, action):
    """Each mode gives the status, body, delay and action of the module's table."""
    got = answer(mode, path)
    assert (got.status, got.delay, got.action) == (status, delay, action)
    if body == "JSON":
        assert json.loads(got.body)["backend"] == "api1"
    else:
        assert got.body == body


@pytest.mark.parametrize(("mode", "path"), [(m, p) for m, p, *_, a in HTTP_TABLE if a == ANSWER])
def test_every_answer_carries_name_length_and_type(mode, path):
    """Answers carry X-Backend, a Content-Length equal to the body, and a Content-Type."""
    got = answer(mode, path)
    headers = dict(got.headers)
    assert headers["X-Backend"] == "api1"
    assert headers["Content-Length"] == str(len(got.body))
    assert headers["Content-Type"] in ("text/plain; charset=utf-8", "application/json")


def test_echo_is_any_method():
    """/echo answers the JSON document to any method, e.g. DELETE."""
    assert json.loads(answer("healthy", "/echo", method="DELETE").body)["method"] == "DELETE"


def test_echo_body_reports_the_request_as_received():
    """The echo document has every documented field, headers in order and original case."""
    headers = [("Host", "lab"), ("X-Forwarded-For", "198.51.100.2"), ("x-lower", "v")]
    doc = json.loads(echo_body("api2", "POST", "/echo?a=1&b", "1.0", headers, 12, CLIENT, SERVER))
    assert doc == {
        "backend": "api2",
        "method": "POST",
        "path": "/echo?a=1&b",
        "http_version": "1.0",
        "client": "10.0.1.2:40000",
        "server": "10.0.1.10:80",
        "headers": [["Host", "lab"], ["X-Forwarded-For", "198.51.100.2"], ["x-lower", "v"]],
        "body_bytes": 12,
    }


def test_slow_uses_the_configured_delay():
    """slow delays by the state's slow_delay, whatever it is set to."""
    assert answer("slow", "/", slow_delay=2.5).delay == 2.5


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/healthz", "/healthz"),
        ("/healthz?x=1", "/healthz"),
        ("http://api1/healthz?x", "/healthz"),
        ("http://api1", "/"),
        ("*", "*"),
    ],
)
def test_request_path_of_origin_and_absolute_forms(target, path):
    """The path is taken from origin-form and absolute-form targets alike (RFC 9112 §3.2)."""
    assert request_path(target) == path


def test_hostport_brackets_ipv6():
    """IPv6 addresses are bracketed before the port (RFC 3986 §3.2.2)."""
    assert hostport(("::1", 80)) == "[::1]:80"
    assert hostport(("10.0.1.2", 80)) == "10.0.1.2:80"


@pytest.mark.parametrize(
    ("mode", "status", "action"),
    [
        ("healthy", 400, ANSWER),
        ("error-500", 400, ANSWER),
        ("healthz-500", 400, ANSWER),
        ("slow", 400, ANSWER),
        ("accept-no-answer", 0, HANG),
        ("refuse", 0, CLOSE),
    ],
)
def test_bad_request_answer_per_mode(mode, status, action):
    """A malformed request gets 400 in answering modes, silence or a drop otherwise."""
    got = bad_request_answer(RoleState("api1", mode=mode), 400, "Invalid method")
    assert (got.status, got.action) == (status, action)
    if action == ANSWER:
        assert got.body == b"api1: bad request: Invalid method\n"
        assert dict(got.headers)["X-Backend"] == "api1"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("healthy", (ANSWER, b"api1: hello\n", 0.0)),
        ("slow", (ANSWER, b"api1: hello\n", 0.25)),
        ("error-500", (ANSWER, b"api1: hello\n", 0.0)),
        ("healthz-500", (ANSWER, b"api1: hello\n", 0.0)),
        ("accept-no-answer", (HANG, b"", 0.0)),
        ("refuse", (CLOSE, b"", 0.0)),
    ],
)
def test_line_reply_per_mode(mode, expected):
    """Lines come back prefixed in answering modes, delayed when slow."""
    assert line_reply(RoleState("api1", mode=mode, slow_delay=0.25), b"hello") == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("healthy", b"api1: \x00ping"),
        ("slow", b"api1: \x00ping"),
        ("error-500", b"api1: \x00ping"),
        ("healthz-500", b"api1: \x00ping"),
        ("accept-no-answer", None),
        ("refuse", None),
    ],
)
def test_udp_reply_per_mode(mode, expected):
    """Datagrams come back prefixed, byte for byte, unless the mode is silent."""
    assert udp_reply(RoleState("api1", mode=mode), b"\x00ping") == expected


def test_status_has_the_documented_fields():
    """status reports host, role, mode, slow_delay, request counts and listeners."""
    state = RoleState("api1")
    state.listening.append(("tcp", "127.0.0.1", 8080))
    assert handle_control(state, {"op": "status"}) == {
        "ok": True,
        "host": "api1",
        "role": "backend",
        "mode": "healthy",
        "slow_delay": 1.0,
        "requests": {"http": 0, "line": 0, "udp": 0},
        "listening": [["tcp", "127.0.0.1", 8080]],
    }


def test_set_mode_changes_mode_and_delay():
    """set-mode switches the mode and slow_delay and answers with the new status."""
    state = RoleState("api1")
    reply = handle_control(state, {"op": "set-mode", "mode": "slow", "slow_delay": 0.5})
    assert (reply["ok"], reply["mode"], reply["slow_delay"]) == (True, "slow", 0.5)
    assert (state.mode, state.slow_delay) == ("slow", 0.5)


def test_set_mode_without_delay_keeps_it():
    """slow_delay is optional in set-mode; the current value stays."""
    state = RoleState("api1", slow_delay=3.0)
    assert handle_control(state, {"op": "set-mode", "mode": "refuse"})["slow_delay"] == 3.0


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (["status"], "expected a JSON object"),
        ({"op": "reboot"}, "unknown op 'reboot'"),
        ({}, "unknown op None"),
        ({"op": "status", "verbose": True}, "unknown key 'verbose'"),
        ({"op": "set-mode"}, "set-mode needs a mode"),
        ({"op": "set-mode", "mode": "broken"}, "unknown mode 'broken'"),
        ({"op": "set-mode", "mode": "slow", "slow_delay": -1}, "slow_delay must be"),
        ({"op": "set-mode", "mode": "slow", "slow_delay": "1"}, "slow_delay must be"),
        ({"op": "set-mode", "mode": "slow", "slow_delay": True}, "slow_delay must be"),
        ({"op": "set-mode", "mode": "slow", "slow_delay": float("nan")}, "slow_delay must be"),
        ({"op": "set-mode", "mode": "slow", "slow_delay": 1e9}, "slow_delay must be"),
        ({"op": "set-mode", "mode": "slow", "delay": 1}, "unknown key 'delay'"),
    ],
)
def test_bad_control_requests_get_one_line_and_change_nothing(request_, needle):
    """Bad input: ok false, a one-line error naming the problem, state untouched."""
    state = RoleState("api1")
    reply = handle_control(state, request_)
    assert reply["ok"] is False and needle in reply["error"]
    assert "\n" not in reply["error"]
    assert (state.mode, state.slow_delay) == ("healthy", 1.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["op", "mode", "slow_delay", "x"]),
        st.one_of(
            st.sampled_from(["status", "set-mode", *MODES]),
            st.none(),
            st.booleans(),
            st.floats(allow_nan=True),
            st.integers(),
            st.text(max_size=5),
        ),
    )
)
def test_control_never_raises_and_keeps_a_valid_mode(request_):
    """Any object gets an ok true status or an ok false error; the mode stays valid."""
    state = RoleState("api1")
    reply = handle_control(state, request_)
    assert reply["ok"] is True or isinstance(reply["error"], str)
    assert state.mode in MODES and 0 <= state.slow_delay <= 3600


def test_fixed_mode_roles_refuse_set_mode():
    """A placeholder's mode is fixed: set-mode answers ok false."""
    state = placeholder_state("nlb", "l4")
    reply = handle_control(state, {"op": "set-mode", "mode": "refuse"})
    assert reply["ok"] is False and "fixed mode 'placeholder'" in reply["error"]
    assert state.mode == "placeholder"


def test_placeholder_status_has_no_slow_delay():
    """A placeholder's status names its role and mode, and counts only HTTP."""
    reply = handle_control(placeholder_state("alb1", "l7"), {"op": "status"})
    assert reply["role"] == "l7" and reply["mode"] == "placeholder"
    assert reply["requests"] == {"http": 0} and "slow_delay" not in reply


def test_placeholder_answer_names_host_and_role():
    """The placeholder page says which host and tier it is, with X-Placeholder."""
    got = placeholder_answer("nlb", "l4")
    assert got.status == 200 and dict(got.headers)["X-Placeholder"] == "nlb"
    assert got.body == (
        b"nlb (l4): placeholder. This tier is not built yet; it arrives with a later chapter.\n"
    )
