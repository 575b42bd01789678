"""lbkit.health.spec: one check spec and one parser for the L4 box and the L7 pools."""

from __future__ import annotations

import pytest

from lbkit.health import CheckSpec, CheckSpecError, HealthConfig, parse_check
from lbkit.health.spec import ALL_FIELDS

TCP_SENDS_NOTHING = "only for type http (a tcp check sends no request)"
FULL = {
    "type": "http", "path": "/ready", "expect": "200,204", "body": "ok", "port": 8080,
    "interval": 1, "timeout": 0.5, "rise": 3, "fall": 2, "jitter": 0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, CheckSpec()),
        ({"type": "tcp"}, CheckSpec(type="tcp")),
        ({"type": "tcp", "port": 22, "rise": 1}, CheckSpec(type="tcp", port=22, rise=1)),
        ({"expect": 204}, CheckSpec(expect="204")),
        ({"interval": 1, "timeout": 2}, CheckSpec(interval=1.0, timeout=2.0)),
        ({"jitter": 0}, CheckSpec(jitter=0.0)),
        ({"body": ""}, CheckSpec(body="")),
        (
            FULL,
            CheckSpec(
                type="http", path="/ready", expect="200,204", body="ok", port=8080,
                interval=1.0, timeout=0.5, rise=3, fall=2, jitter=0.0,
            ),
        ),
    ],
)  # fmt: skip
def test_good_tables(value, expected):
    """A table of fields becomes the spec, unset fields at HAProxy's defaults."""
    assert parse_check(value) == expected


def test_numbers_are_stored_as_floats_and_expect_as_text():
    """interval, timeout, jitter are floats and expect a string, however they were written."""
    spec = parse_check(FULL)
    assert [type(getattr(spec, k)) for k in ("interval", "timeout", "jitter", "expect")] == [
        float, float, float, str,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp", CheckSpec(type="tcp")),
        ("http", CheckSpec()),
        ("http:/ready", CheckSpec(path="/ready")),
    ],
)
def test_shorthands(text, expected):
    """The shorthands tcp, http and http:/path stand for tables with the defaults."""
    assert parse_check(text) == expected


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        ("udp", "", "'udp' is not tcp, http or http:/PATH"),
        ("tcp:/x", "", "a path goes with http only (tcp:/x)"),
        ("http:ready", "", "expected a path like /healthz, got 'ready'"),
        ("http:", "", "expected a path like /healthz, got ''"),
        (["tcp"], "", "expected a table like { type = \"http\" } or \"tcp\", got ['tcp']"),
        ({"intervall": 1}, "intervall", "unknown key; known: " + ", ".join(ALL_FIELDS)),
        ({"type": "icmp"}, "type", "expected tcp or http, got 'icmp'"),
        ({"type": "tcp", "path": "/x"}, "path", TCP_SENDS_NOTHING),
        ({"type": "tcp", "expect": 200}, "expect", TCP_SENDS_NOTHING),
        ({"type": "tcp", "body": "ok"}, "body", TCP_SENDS_NOTHING),
        ({"path": "healthz"}, "path", "expected a path like /healthz, got 'healthz'"),
        ({"path": "/a b"}, "path", "expected a path like /healthz, got '/a b'"),
        ({"path": "/a\r\nX: y"}, "path", "expected a path like /healthz, got '/a\\r\\nX: y'"),
        ({"expect": True}, "expect", 'expected statuses like "200-399" or 200, got True'),
        ({"expect": "2xx"}, "expect", "bad status list '2xx': use e.g. '200-399,404'"),
        ({"expect": "200-999"}, "expect", "bad status range '200-999' in '200-999'"),
        ({"expect": 99}, "expect", "bad status range '99' in '99'"),
        ({"body": 1}, "body", "expected text the answer must contain, got 1"),
        ({"port": "80"}, "port", "expected a port number, got '80'"),
        ({"port": 0}, "port", "port 0 is out of range 1-65535"),
        ({"port": 65536}, "port", "port 65536 is out of range 1-65535"),
        ({"interval": 0}, "interval", "expected seconds > 0, got 0"),
        ({"interval": "1s"}, "interval", "expected seconds > 0, got '1s'"),
        ({"timeout": -1.0}, "timeout", "expected seconds > 0, got -1.0"),
        ({"timeout": True}, "timeout", "expected seconds > 0, got True"),
        ({"rise": 0}, "rise", "expected a whole number >= 1, got 0"),
        ({"fall": 1.5}, "fall", "expected a whole number >= 1, got 1.5"),
        ({"jitter": 1}, "jitter", "expected a fraction of the interval in [0, 1), got 1"),
        ({"jitter": -0.1}, "jitter", "expected a fraction of the interval in [0, 1), got -0.1"),
    ],
)  # fmt: skip
def test_each_mistake_names_its_field(value, key, message):
    """A bad value raises CheckSpecError with the field's key ("" for the value) and why."""
    with pytest.raises(CheckSpecError) as err:
        parse_check(value)
    assert (err.value.key, err.value.message) == (key, message)


def test_allowed_limits_the_fields():
    """A field the caller does not allow is an unknown key, and the list says what is known."""
    with pytest.raises(CheckSpecError) as err:
        parse_check({"port": 80}, allowed=("path", "interval"))
    assert err.value.key == "port"
    assert err.value.message == "unknown key; known: type, path, interval"


def test_error_text_is_key_then_message():
    """str(error) is ``key: message``, or the message alone for the value itself."""
    assert str(CheckSpecError("fall", "expected a whole number >= 1, got 0")) == (
        "fall: expected a whole number >= 1, got 0"
    )
    assert str(CheckSpecError("", "'udp' is not tcp")) == "'udp' is not tcp"


def test_origin_is_kept_but_not_compared():
    """origin says where the check was written; two checks alike are equal wherever written."""
    spec = parse_check("tcp", origin="r.toml: pool.api.health_check")
    assert spec.origin == "r.toml: pool.api.health_check"
    assert spec == parse_check("tcp", origin="other.toml: pool.web.health_check")


def test_config_is_the_state_machines_settings():
    """config() carries the timing fields into a HealthConfig."""
    spec = parse_check({"interval": 1, "timeout": 0.5, "rise": 3, "fall": 2, "jitter": 0})
    assert spec.config() == HealthConfig(rise=3, fall=2, interval=1.0, timeout=0.5, jitter=0.0)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (CheckSpec(), "http GET /healthz (200-399) every 2 s, timeout 1 s, rise 2, fall 3"),
        (CheckSpec(type="tcp", path="/x"), "tcp connect every 2 s, timeout 1 s, rise 2, fall 3"),
        (
            CheckSpec(path="/ready", expect="200,204", body="ok", interval=1, timeout=0.5, fall=2),
            "http GET /ready (200,204) containing 'ok' every 1 s, timeout 0.5 s, rise 2, fall 2",
        ),
        (
            CheckSpec(type="tcp", port=22, interval=0.5),
            "tcp connect on port 22 every 0.5 s, timeout 1 s, rise 2, fall 3",
        ),
    ],
)  # fmt: skip
def test_describe_is_one_line(spec, text):
    """describe(): what is sent, where, how often, and the thresholds, on one line."""
    assert spec.describe() == text
