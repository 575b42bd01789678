"""Health in the L7 tier: config, the pool's state table, slow start, outlier detection,
and the asyncio runner (with fake probes: no sockets but the admin API's)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from lbkit.health import CheckSpec, OutlierConfig, ProbeResult
from lbkit.l7.healthrun import HealthRunner, make_probe
from lbkit.l7.model import (
    Listen,
    Location,
    RouterConfig,
    ServerBlock,
    Upstream,
    UpstreamServer,
)
from lbkit.l7.nginxconf import check_nginx
from lbkit.l7.pools import Pool
from lbkit.l7.router import Decision, RequestHead, Router
from lbkit.l7.tomlconf import parse_router_toml
from lbkit.lab.errors import LabError

HEAD = RequestHead("GET", "/", "1.1", [("Host", "x.test")], ("198.51.100.2", 1), ("10.0.1.3", 80))
FAST = CheckSpec(interval=0.01, timeout=0.05, rise=2, fall=3, jitter=0.1)


def toml(pool: dict, source: str = "r.toml") -> RouterConfig:
    data = {
        "server": [{"listen": [80], "route": [{"path": "/", "pool": "p"}]}],
        "pool": {"p": {"servers": [{"address": "10.0.1.10:80", "name": "a"}], **pool}},
    }
    return parse_router_toml(data, source)


def upstream(*names: str, check=None, backups=(), **kw) -> Upstream:
    servers = [
        UpstreamServer(f"10.0.1.{10 + i}:80", name=n, backup=n in backups)
        for i, n in enumerate(names)
    ]
    return Upstream("p", servers, health_check=check, **kw)


def router(up: Upstream, source: str = "r.toml") -> Router:
    server = ServerBlock([Listen(80)], locations=[Location("/", proxy_pass="http://p")])
    return Router(RouterConfig([server], {"p": up}, source=source))


def route(r: Router) -> Decision:
    d = r.route(HEAD, 0.0)
    assert isinstance(d, Decision)
    return d


# ------------------------------------------------------------------ TOML config


def test_health_check_table_is_read_into_the_model():
    """Every key of health_check lands in the pool's CheckSpec; interval etc. as floats."""
    cfg = toml(
        {
            "health_check": {
                "type": "http", "path": "/ready", "expect": "200,204", "body": "ok",
                "interval": 1, "timeout": 0.5, "rise": 3, "fall": 2, "jitter": 0.2,
            }
        }
    )  # fmt: skip
    check = cfg.upstreams["p"].health_check
    assert check == CheckSpec(
        type="http", path="/ready", expect="200,204", body="ok",
        interval=1.0, timeout=0.5, rise=3, fall=2, jitter=0.2,
    )  # fmt: skip
    assert check.origin == "r.toml: pool.p.health_check"
    assert check.describe() == (
        "http GET /ready (200,204) containing 'ok' every 1 s, timeout 0.5 s, rise 3, fall 2"
    )


def test_health_check_shorthand_string():
    """health_check = "http:/up": the defaults (HAProxy's timings); every shorthand is in
    test_health_spec."""
    check = toml({"health_check": "http:/up"}).upstreams["p"].health_check
    assert (check, check.origin) == (CheckSpec(path="/up"), "r.toml: pool.p.health_check")


@pytest.mark.parametrize(
    ("value", "key", "words"),
    [
        ({"intervall": 1}, "pool.p.health_check.intervall", "unknown key"),
        ({"port": 8080}, "pool.p.health_check.port", "unknown key"),
        ({"type": "icmp"}, "pool.p.health_check.type", "expected tcp or http, got 'icmp'"),
        ({"path": "healthz"}, "pool.p.health_check.path", "expected a path"),
        ({"expect": "2xx"}, "pool.p.health_check.expect", "bad status list"),
        ({"rise": 0}, "pool.p.health_check.rise", "expected a whole number >= 1"),
        ({"interval": 0}, "pool.p.health_check.interval", "expected seconds > 0"),
        ({"jitter": 1.5}, "pool.p.health_check.jitter", "expected a fraction of the interval"),
        ({"timeout": "1s"}, "pool.p.health_check.timeout", "expected seconds"),
        ({"type": "tcp", "path": "/x"}, "pool.p.health_check.path", "only for type http"),
        ("ping", "pool.p.health_check", "'ping' is not tcp, http or http:/PATH"),
        (3, "pool.p.health_check", "expected a table"),
    ],
)
def test_health_check_mistakes_are_one_line_naming_file_and_key(value, key, words):
    """A bad health_check: one LabError line, ``r.toml: KEY: why``."""
    with pytest.raises(LabError) as err:
        toml({"health_check": value})
    message = str(err.value)
    assert message.startswith(f"r.toml: {key}: ") and words in message and "\n" not in message


def test_outlier_table_is_an_outlier_config():
    """outlier = {...}: OutlierConfig's fields; failure_percentage_threshold = false is off."""
    cfg = toml({"outlier": {"consecutive_5xx": 3, "base_ejection_time": 5,
                            "failure_percentage_threshold": False}})  # fmt: skip
    assert cfg.upstreams["p"].outlier == OutlierConfig(
        consecutive_5xx=3, base_ejection_time=5.0, failure_percentage_threshold=None
    )


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"consecutive_5xxx": 3}, "pool.p.outlier.consecutive_5xxx"),
        ({"consecutive_5xx": -1}, "pool.p.outlier.consecutive_5xx"),
        ({"max_ejection_time": 1}, "pool.p.outlier.max_ejection_time"),
        ({"always_eject_one": 1}, "pool.p.outlier.always_eject_one"),
    ],
)
def test_outlier_mistakes_name_the_key(value, key):
    """A bad outlier field: one line naming it."""
    with pytest.raises(LabError, match=rf"^r\.toml: {re.escape(key)}: [^\n]+$"):
        toml({"outlier": value})


def test_slow_start_is_seconds_on_a_weight_based_pool():
    """slow_start = 10 on least_connections: Upstream.slow_start 10.0."""
    cfg = toml({"algorithm": "least_connections", "slow_start": 10})
    assert cfg.upstreams["p"].slow_start == 10.0


@pytest.mark.parametrize("algorithm", ["ip_hash", "ring_hash", "maglev"])
def test_slow_start_on_a_hash_pool_is_refused_with_the_reason(algorithm):
    """slow_start with a hash algorithm: an error naming the key and saying why (keys remap)."""
    with pytest.raises(LabError) as err:
        toml({"algorithm": algorithm, "slow_start": 10})
    message = str(err.value)
    assert message.startswith(f"r.toml: pool.p.slow_start: not with algorithm '{algorithm}': ")
    assert "remaps keys" in message and "\n" not in message


def test_negative_slow_start_is_refused():
    """slow_start = -1: an error naming the key."""
    with pytest.raises(LabError, match=r"pool\.p\.slow_start: expected seconds >= 0"):
        toml({"slow_start": -1})


# ------------------------------------------------------------------ nginx import


def test_nginx_plus_health_features_are_warnings_naming_the_line(tmp_path: Path):
    """health_check (and match) and server slow_start=: warnings "nginx Plus only" at their
    line; max_fails/fail_timeout still apply; the pools get no active check."""
    conf = tmp_path / "site.conf"
    conf.write_text(
        "upstream api {\n"
        "    server 10.0.1.10:80 slow_start=30s max_fails=2 fail_timeout=5s;\n"
        "}\n"
        "match ok { status 200; }\n"
        "server {\n"
        "    listen 80;\n"
        "    location / { proxy_pass http://api; health_check interval=2; }\n"
        "}\n"
    )
    check = check_nginx(conf)
    assert check.errors == []
    plus = [w for w in check.warnings if "nginx Plus only" in w]
    assert [w.split(": ", 1)[0] for w in plus] == [f"{conf}:2", f"{conf}:4", f"{conf}:7"]
    assert plus[0].startswith(f'{conf}:2: "slow_start=30s": nginx Plus only')
    assert plus[2].startswith(f'{conf}:7: "health_check": nginx Plus only; nginx OSS has no')
    up = check.config.upstreams["api"]
    assert (up.servers[0].max_fails, up.servers[0].fail_timeout) == (2, 5.0)
    assert up.health_check is None and up.slow_start == 0.0


# ------------------------------------------------------------------ the pool's state table

#: (operator, check) -> the balancer's state: lbkit.health.EFFECTIVE with up/drain/down.
TABLE = {
    ("up", "unknown"): "up",
    ("up", "up"): "up",
    ("up", "down"): "down",
    ("drain", "unknown"): "drain",
    ("drain", "up"): "drain",
    ("drain", "down"): "down",
    ("down", "unknown"): "down",
    ("down", "up"): "down",
    ("down", "down"): "down",
}


def checked_pool(*names: str, **kw) -> Pool:
    return Pool(upstream(*names, check=FAST, **kw))


def set_health(pool: Pool, name: str, health: str, now: float = 1.0) -> None:
    """Drive ``name``'s checker to ``health`` (unknown: leave it unchecked)."""
    assert pool.checker is not None
    machine = pool.checker.machines[name]
    while machine.state != health and health != "unknown":
        pool.checker.record(name, health == "up", "test", now)


@pytest.mark.parametrize(("admin", "health"), sorted(TABLE))
def test_operator_and_checks_combine_as_the_table_says(admin, health):
    """The balancer's state for each (operator, check) pair; a failed check beats drain."""
    pool = checked_pool("a", "b")
    set_health(pool, "a", health)
    pool.set_admin_state("a", admin)
    assert pool.state("a") == TABLE[admin, health]


@pytest.mark.parametrize(("admin", "expected"), [("up", "down"), ("drain", "drain")])
def test_max_fails_takes_an_up_backend_down_only(admin, expected):
    """Out for max_fails: an up backend goes down, a draining one stays draining."""
    pool = checked_pool("a", "b")
    set_health(pool, "a", "up")
    pool.set_admin_state("a", admin)
    pool.on_finish(pool.backend("a"), 1.0, failure=True)
    assert pool.state("a") == expected and "a" in pool.ejected


def test_a_pool_without_checks_is_check_unknown():
    """No health_check: the operator alone decides, as before (no checker at all)."""
    pool = Pool(upstream("a", "b"))
    assert pool.checker is None and pool.state("a") == "up"
    pool.set_admin_state("a", "drain")
    assert pool.state("a") == "drain"


def test_backups_serve_while_every_primary_fails_its_check():
    """Primaries a and b down by their checks: the backup c takes the requests."""
    r = router(upstream("a", "b", "c", check=FAST, backups=("c",)))
    pool = r.pools["p"]
    assert route(r).pick(1.0).name in {"a", "b"}
    for name in ("a", "b"):
        set_health(pool, name, "down")
    assert {route(r).pick(1.0).name for _ in range(4)} == {"c"}


@pytest.mark.parametrize(("source", "status"), [("r.toml", 503), ("nginx.conf", 502)])
def test_nothing_up_is_no_backend(source, status):
    """Every backend down by its check: no pick; the router answers 503 (TOML), 502 (nginx)."""
    r = router(upstream("a", "b", check=FAST), source)
    for name in ("a", "b"):
        set_health(r.pools["p"], name, "down")
    d = route(r)
    assert d.pick(1.0) is None and d.no_backend_status == status


def test_quick_recovery_never_overrides_a_failed_check():
    """a down by its check, b out for max_fails: quick recovery brings b back, never a."""
    r = router(upstream("a", "b", check=FAST))
    pool = r.pools["p"]
    set_health(pool, "a", "down")
    pool.on_finish(pool.backend("b"), 1.0, failure=True)
    assert {route(r).pick(2.0).name for _ in range(3)} == {"b"}
    assert pool.state("a") == "down"


def test_a_check_up_clears_max_fails_and_logs_it():
    """A backend out for max_fails and down by its check: its UP (rise successes) ends both."""
    pool = checked_pool("a", "b")
    pool.on_finish(pool.backend("a"), 1.0, failure=True)  # fail_timeout 10 s: out till 11
    set_health(pool, "a", "down", 1.1)
    pool.checker.record("a", True, "HTTP 200 on /healthz", 1.2)
    pool.checker.record("a", True, "HTTP 200 on /healthz", 1.3)
    assert pool.state("a") == "up" and "a" not in pool.ejected
    assert [t.message for t in pool.events][-3:] == [
        "a DOWN after 1 failure: test",
        "a UP after 2 successes",
        "a BACK: failures cleared: health check UP",
    ]


def test_operator_changes_with_a_time_are_events():
    """Router.set_backend_state(..., now): the change is logged; without now it is not."""
    r = router(upstream("a", "b"))
    r.set_backend_state("p", "a", "drain", now=5.0)
    r.set_backend_state("p", "a", "up")
    (t,) = r.pools["p"].events
    assert (t.message, t.at, t.reason) == ("a DRAIN (operator)", 5.0, "operator")


# ------------------------------------------------------------------ slow start


def test_slow_start_ramps_a_backend_that_comes_back_up():
    """slow_start 10 s: a backend back UP at t=100 has 10% of its weight, half at t=105,
    all of it at t=110 (Envoy's linear ramp; weights scaled by 100)."""
    r = router(upstream("a", "b", check=FAST, slow_start=10.0, algorithm="round_robin"))
    pool = r.pools["p"]
    assert pool.backend("a").weight == 100
    set_health(pool, "a", "down", 90.0)
    set_health(pool, "a", "up", 100.0)
    assert pool.backend("a").weight == 10
    r.tick(105.0)
    assert pool.backend("a").weight == 50
    r.tick(110.0)
    assert pool.backend("a").weight == 100 and pool.backend("b").weight == 100


def test_the_first_up_does_not_ramp():
    """unknown -> up at start is not a recovery (HAProxy): full weight at once."""
    pool = Pool(upstream("a", check=FAST, slow_start=10.0))
    set_health(pool, "a", "up", 1.0)
    assert pool.backend("a").weight == 100 and pool.slow_start.ramping(1.0) == set()


def test_slow_start_on_a_hash_pool_made_in_code_is_inert():
    """An Upstream built in code with ring_hash and slow_start: weights untouched, reason kept."""
    pool = Pool(upstream("a", "b", check=FAST, slow_start=10.0, algorithm="ring_hash"))
    assert not pool.slow_start.enabled and "remaps keys" in pool.slow_start.reason
    assert pool.backend("a").weight == 1 and not pool.needs_ticks


# ------------------------------------------------------------------ outlier detection


def test_five_500s_in_a_row_eject_a_backend_for_its_time():
    """outlier consecutive_5xx 5: five 500s through Decision.on_finish eject b for 30 s;
    a tick at 31 s returns it."""
    r = router(upstream("a", "b", outlier=OutlierConfig(), algorithm="round_robin"))
    pool = r.pools["p"]
    b = pool.backend("b")
    for i in range(5):
        route(r).on_finish(b, 1.0 + i, True, 500)
    assert pool.state("b") == "down" and pool.outlier_out == {"b"}
    assert pool.last["b"].message == "b EJECTED for 30 s after 5 consecutive failures: HTTP 500"
    assert {route(r).pick(10.0).name for _ in range(4)} == {"a"}
    r.tick(36.0)
    assert pool.state("b") == "up" and pool.last["b"].message.startswith("b RETURNED after 30 s")


def test_outlier_counts_errors_but_not_client_aborts():
    """A connection error counts as a failure; an attempt the client abandoned does not;
    a 200 resets the run."""
    up = upstream("a", "b", outlier=OutlierConfig(consecutive_5xx=2))
    for server in up.servers:
        server.max_fails = 0  # only outlier detection may take a backend out here
    pool = Pool(up)
    a = pool.backend("a")
    pool.on_finish(a, 1.0, True, ok=False, status=None)  # refused: a failure
    pool.on_finish(a, 1.1, False, ok=True, status=None)  # client gone: not counted
    assert pool.state("a") == "up"
    pool.on_finish(a, 1.2, True, ok=False, status=502)  # a retried 502: a failure
    assert pool.state("a") == "down"


def test_no_outlier_config_means_no_detector():
    """Without outlier, on_finish never builds a detector (no per-request cost)."""
    pool = Pool(upstream("a"))
    for _ in range(10):
        pool.on_finish(pool.backend("a"), 1.0, False, True, 500)
    assert pool.outlier is None and pool.outlier_config is None and not pool.needs_ticks


# ------------------------------------------------------------------ the runner (fake probes)


class FakeProbes:
    """Probes whose verdict per backend is set by the test; counts the probes made."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.made: list[tuple[str, str, str]] = []

    def __call__(self, pool: str, backend: str, check: CheckSpec, address: str):
        self.made.append((pool, backend, address))

        async def probe(timeout: float) -> ProbeResult:
            await asyncio.sleep(0)
            if backend in self.failing:
                return ProbeResult(False, "HTTP 500 on /healthz", 0.0)
            return ProbeResult(True, "HTTP 200 on /healthz", 0.0)

        return probe


async def until(predicate, what: str, deadline: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not predicate():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_the_runner_probes_reports_and_stops():
    """A failing probe takes api2 down (event, report in the L4 tier's format); stop ends
    the loops; a router without checks starts nothing."""
    fake = FakeProbes()
    r = router(upstream("api1", "api2", check=FAST))
    seen = []

    async def main() -> dict:
        runner = HealthRunner(r, probes=fake, on_event=lambda p, t: seen.append((p, t.message)))
        runner.start()
        await until(lambda: r.pools["p"].checker.machines["api1"].state == "up", "api1 up")
        fake.failing.add("api2")
        await until(lambda: r.pools["p"].state("api2") == "down", "api2 down")
        report = runner.report()
        await runner.stop()
        assert runner.tasks == [] and runner.enabled
        idle = HealthRunner(router(upstream("x")), probes=fake)
        idle.start()
        assert idle.tasks == [] and not idle.enabled
        return report

    report = asyncio.run(main())
    assert sorted(fake.made) == [("p", "api1", "10.0.1.10:80"), ("p", "api2", "10.0.1.11:80")]
    assert set(report) == {"checks", "backends", "events", "transitions"}
    assert report["checks"] == {"p": FAST.describe()}
    row = report["backends"]["api2"]
    assert (row["state"], row["health"], row["pool"]) == ("down", "down", "p")
    assert row["last"] == "api2 DOWN after 3 failures: HTTP 500 on /healthz"
    assert report["events"][-1]["message"] == row["last"] and row["since"] > 1e9  # epoch
    assert ("p", row["last"]) in seen


def test_a_reload_keeps_the_state_of_backends_that_stay():
    """replace(): same check -> api2 stays down (no fresh 'unknown'); a changed check
    starts over; the old loops are cancelled."""
    fake = FakeProbes()
    fake.failing.add("api2")
    first = router(upstream("api1", "api2", check=FAST))

    async def main() -> tuple[str, str, list]:
        runner = HealthRunner(first, probes=fake)
        runner.start()
        await until(lambda: first.pools["p"].state("api2") == "down", "api2 down")
        old_tasks = list(runner.tasks)
        same = router(upstream("api1", "api2", check=FAST))
        kept = runner.replace(same)
        kept_state = same.pools["p"].checker.machines["api2"].state
        await asyncio.sleep(0)
        assert all(t.cancelled() or t.done() for t in old_tasks)
        changed = router(upstream("api1", "api2", check=CheckSpec(type="tcp", interval=0.01)))
        runner.replace(changed)
        fresh = changed.pools["p"].checker.machines["api2"].state
        await runner.stop()
        return kept_state, fresh, kept

    kept_state, fresh, kept = asyncio.run(main())
    assert kept == ["p/api1", "p/api2"] and kept_state == "down" and fresh == "unknown"


def test_report_keys_backends_by_pool_when_names_repeat():
    """One backend name in two pools: the report keys them pool/name."""
    servers = [UpstreamServer("10.0.1.10:80", name="api1")]
    ups = {
        "p": Upstream("p", servers, health_check=FAST),
        "q": Upstream("q", list(servers)),
    }
    blocks = [ServerBlock([Listen(80)], locations=[Location("/", proxy_pass="http://p")])]
    runner = HealthRunner(Router(RouterConfig(blocks, ups, source="r.toml")))
    report = runner.report()
    assert set(report["backends"]) == {"p/api1", "q/api1"}
    assert report["backends"]["q/api1"]["health"] is None


def test_make_probe_aims_at_the_backend_address():
    """make_probe: a tcp or http probe callable for host:port (no I/O until awaited)."""
    assert callable(make_probe("p", "a", CheckSpec(type="tcp"), "10.0.1.10:80"))
    assert callable(make_probe("p", "a", CheckSpec(), "[2001:db8::1]:8080"))


# ------------------------------------------------------------------ the proxy and its admin API


async def _get(address: tuple[str, int], path: str) -> str:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode()


def test_proxy_runs_the_checks_and_exposes_them_in_stats_and_metrics():
    """Proxy: checks start with it, /stats has "health", /metrics a gauge per backend."""
    from lbkit.l7.proxy import Proxy

    fake = FakeProbes()
    fake.failing.add("api2")
    r = router(upstream("api1", "api2", check=FAST))

    async def main() -> tuple[dict, str]:
        proxy = Proxy(r)
        proxy.health.probes = fake
        await proxy.start([("127.0.0.1", 0)], ("127.0.0.1", 0))
        try:
            await until(lambda: r.pools["p"].state("api2") == "down", "api2 down")
            return proxy.stats(), await _get(proxy.admin_address, "/metrics")
        finally:
            await proxy.close()
            assert proxy.health.tasks == []

    stats, metrics = asyncio.run(main())
    assert stats["health"]["backends"]["api2"]["state"] == "down"
    rows = {b["name"]: b for b in stats["router"]["upstreams"]["p"]["backends"]}
    assert rows["api2"]["health"] == "down" and rows["api1"]["health"] == "up"
    assert 'lbkit_l7_backend_up{backend="api2",upstream="p"} 0.0' in metrics
    assert 'lbkit_l7_backend_up{backend="api1",upstream="p"} 1.0' in metrics
    assert 'lbkit_l7_backend_health{backend="api2",upstream="p"} 0.0' in metrics
    assert 'lbkit_l7_health_transitions_total{backend="api2",to="down",upstream="p"}' in metrics
