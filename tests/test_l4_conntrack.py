"""The conntrack table on its own: keys, reverse index, LRU bound, timeouts, TCP states."""

from __future__ import annotations

import pytest

from lbkit.algorithms import Backend, make_balancer
from lbkit.l4 import TIMEOUTS, Conntrack, FlowKey, Target, tcp_next
from lbkit.l4.flow import ACK, FIN, PSH, RST, SYN

BACKEND = Backend("api1", address="10.0.1.10:8080")
TARGET = Target(
    "tcp", "10.0.1.200", 80, BACKEND, "10.0.1.10", 8080, make_balancer("maglev", [BACKEND])
)
MAC = b"\x02\x00\x00\x00\x00\xfe"


def key(port: int = 40000, proto: str = "tcp") -> FlowKey:
    return FlowKey(proto, "203.0.113.7", port, "10.0.1.200", 80)


def test_added_flow_is_found_by_key():
    """A flow added is found again by its FlowKey (or an equal plain tuple)."""
    ct = Conntrack()
    e = ct.add(key(), TARGET, MAC, "new", 0.0)
    assert ct.get(key(), 1.0) is e
    assert ct.get(tuple(key()), 1.0) is e


def test_reply_index_finds_flow_from_backend_side():
    """A NAT reply's (proto, backend ip, port, client ip, port) finds the flow."""
    ct = Conntrack()
    e = ct.add(key(), TARGET, MAC, "new", 0.0)
    assert ct.get_reply(("tcp", "10.0.1.10", 8080, "203.0.113.7", 40000), 1.0) is e


def test_full_table_evicts_least_recently_used():
    """At size entries, adding one evicts the entry touched longest ago."""
    ct = Conntrack(size=2)
    a = ct.add(key(1), TARGET, MAC, "new", 0.0)
    ct.add(key(2), TARGET, MAC, "new", 1.0)
    ct.touch(a, 2.0, "established")
    ct.add(key(3), TARGET, MAC, "new", 3.0)
    assert key(1) in ct and key(2) not in ct and key(3) in ct
    assert ct.evicted == 1


def test_removal_reports_reason_to_callback():
    """on_remove hears every entry that leaves, with why."""
    seen = []
    ct = Conntrack(size=1, on_remove=lambda e, now, why: seen.append((e.key.client_port, why)))
    ct.add(key(1), TARGET, MAC, "new", 0.0)
    ct.add(key(2), TARGET, MAC, "new", 1.0)
    ct.remove(ct.get(key(2), 2.0), 2.0, "repicked")
    assert seen == [(1, "evicted"), (2, "repicked")]


@pytest.mark.parametrize("state", ["new", "established", "closing", "udp"])
def test_lookup_expires_entry_after_its_state_timeout(state):
    """An entry idle for its state's timeout is gone on lookup; just before, it is there."""
    ct = Conntrack()
    ct.add(key(), TARGET, MAC, state, 0.0)
    assert ct.get(key(), TIMEOUTS[state] - 0.001) is not None
    assert ct.get(key(), TIMEOUTS[state]) is None and ct.expired == 1


def test_timeouts_follow_ipvs_defaults():
    """Defaults: SYN_RECV 60 s, ESTABLISHED 900 s, FIN_WAIT 120 s, UDP 300 s (ip_vs_proto_*.c)."""
    assert TIMEOUTS == {"new": 60.0, "established": 900.0, "closing": 120.0, "udp": 300.0}


def test_timeouts_can_be_overridden():
    """A timeouts mapping replaces the defaults per state."""
    ct = Conntrack(timeouts={"established": 5.0})
    ct.add(key(), TARGET, MAC, "established", 0.0)
    assert ct.get(key(), 5.0) is None


def test_touch_restarts_the_timer():
    """A packet restarts the idle timer."""
    ct = Conntrack()
    e = ct.add(key(), TARGET, MAC, "new", 0.0)
    ct.touch(e, 50.0, "new")
    assert ct.get(key(), 100.0) is e


def test_expire_sweeps_and_returns_removed_entries():
    """expire(now) removes exactly the entries past their timeout and returns them."""
    ct = Conntrack()
    ct.add(key(1), TARGET, MAC, "new", 0.0)  # 60 s
    ct.add(key(2), TARGET, MAC, "established", 0.0)  # 900 s
    ct.add(key(3), TARGET, MAC, "new", 30.0)
    gone = ct.expire(61.0)
    assert [e.key.client_port for e in gone] == [1]
    assert len(ct) == 2


def test_reply_index_survives_removal_of_an_older_duplicate():
    """When a newer flow took the same reply key, removing the older keeps the newer's index."""
    ct = Conntrack()
    old = ct.add(key(), TARGET, MAC, "new", 0.0)
    other_vip = FlowKey("tcp", "203.0.113.7", 40000, "10.0.1.201", 80)
    new = ct.add(other_vip, TARGET, MAC, "new", 1.0)
    ct.remove(old, 2.0)
    assert ct.get_reply(new.reply_key, 3.0) is new


def test_rows_describe_flows_for_display():
    """rows() gives proto, client, vip, backend, state, age and idle per flow."""
    ct = Conntrack()
    e = ct.add(key(), TARGET, MAC, "new", 10.0)
    ct.touch(e, 12.0, "established")
    (row,) = ct.rows(now=15.0)
    assert row["client"] == "203.0.113.7:40000" and row["vip"] == "10.0.1.200:80"
    assert (row["backend"], row["state"], row["age"], row["idle"]) == (
        "api1",
        "established",
        5.0,
        3.0,
    )


def test_size_must_be_positive():
    """A table of size 0 is refused."""
    with pytest.raises(ValueError):
        Conntrack(size=0)


@pytest.mark.parametrize(
    ("state", "flags", "from_client", "expected"),
    [
        (None, SYN, True, "new"),
        (None, ACK, True, "established"),  # midstream
        (None, SYN | ACK, True, "established"),
        (None, RST, True, "closing"),
        ("new", SYN, True, "new"),  # a retransmitted SYN
        ("new", ACK, True, "established"),
        ("new", SYN | ACK, False, "new"),  # the backend's SYN-ACK
        ("established", PSH | ACK, True, "established"),
        ("established", FIN | ACK, True, "closing"),
        ("established", FIN | ACK, False, "closing"),
        ("established", RST, False, "closing"),
        ("closing", ACK, True, "closing"),
    ],
)
def test_tcp_state_transitions(state, flags, from_client, expected):
    """TCP states move new -> established -> closing as the flags say."""
    assert tcp_next(state, flags, from_client) == expected
