"""TLS termination: the lab CA, the proxy's contexts (SNI, versions), and HTTPS end to end.

Certificates come from :class:`lbkit.lab.ca.LabCA` in a temporary folder. The
proxy, backends, event loop thread and CLI runner are test_l7_proxy's (imported,
not copied); clients are blocking ``ssl`` sockets or curl, all on 127.0.0.1.
Waits are on conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography import x509

from lbkit._net import free_ports
from lbkit.l7.cli import build_router
from lbkit.l7.model import RouterConfig
from lbkit.l7.nginxconf import load_nginx
from lbkit.l7.proxy import Proxy
from lbkit.l7.tls import TLSConfigError, certificate_names, server_contexts
from lbkit.l7.tomlconf import load_router_toml
from lbkit.lab.ca import LabCA
from lbkit.lab.errors import LabError
from tests.test_l7_proxy import (
    DEADLINE,
    IP,
    ROOT,
    Client,
    Lab,
    Reply,
    lab,  # noqa: F401  (a fixture)
    lbkit_l7,
    loop_thread,  # noqa: F401  (a fixture)
    wait_until,
)

TLS_PORT = 8443  # the port the configs name; in-process proxies really listen on port 0


# ------------------------------------------------------------------ helpers


def router_toml(tmp_path: Path, backend: str, *, default_b: bool = False) -> Path:
    """Two TLS server blocks (a.test; b.test and *.b.test) with lab certificates."""
    default = ", default_server = true" if default_b else ""
    conf = tmp_path / "router.toml"
    conf.write_text(
        'tls_ca_dir = "tls"\n'
        "[[server]]\n"
        f'listen = [{{ address = "{IP}", port = {TLS_PORT}, ssl = true }}]\n'
        'server_name = ["a.test"]\n'
        'ssl_certificate = "lab"\n'
        "[[server.route]]\n"
        'path = "/"\n'
        'pool = "web"\n'
        'set_headers = { X-Scheme = "$scheme" }\n'
        "[[server]]\n"
        f'listen = [{{ address = "{IP}", port = {TLS_PORT}, ssl = true{default} }}]\n'
        'server_name = ["b.test", "*.b.test"]\n'
        "[[server.route]]\n"
        'path = "/"\n'
        'pool = "web"\n'
        "[pool.web]\n"
        f'servers = [{{ address = "{backend}", name = "web1" }}]\n'
    )
    return conf


def start_tls_proxy(lab: Lab, config: RouterConfig) -> Proxy:  # noqa: F811
    """The proxy on 127.0.0.1:0, terminating TLS with ``config``'s one TLS address."""
    contexts = server_contexts(config)
    ((_, context),) = contexts.items()

    async def start() -> Proxy:
        p = Proxy(build_router(config), config.limits, access_log=False)
        await p.start([(IP, 0)], None, tls={(IP, 0): context})
        return p

    p = lab.lt.run(start())
    lab.proxies.append(p)
    return p


async def on_loop(fn: Any) -> Any:
    """``fn()``, run on the loop's thread (LoopThread.run takes a coroutine)."""
    return fn()


def client_context(ca: Path, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        for attr, version in versions.items():
            setattr(ctx, attr, version)
    return ctx


def tls_client(port: int, name: str | None, ctx: ssl.SSLContext) -> Client:
    """test_l7_proxy's h11 Client, its socket wrapped in TLS with SNI ``name``."""
    c = Client(port)
    c.sock = ctx.wrap_socket(c.sock, server_hostname=name)
    return c


def get(c: Client, host: str, path: str = "/echo") -> Reply:
    """GET ``path`` with ``Host: host`` (Client.render always says Host: lab)."""
    data = c.conn.send(h11.Request(method="GET", target=path, headers=[("Host", host)]))
    c.sock.sendall((data or b"") + (c.conn.send(h11.EndOfMessage()) or b""))
    return c.reply()


def san(cert: dict[str, Any]) -> set[str]:
    """The DNS names of a ``getpeercert()`` dict."""
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


def in_memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A whole TLS handshake between two contexts through memory BIOs (no socket)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    done = {"s": False, "c": False}
    for _ in range(10):
        for key, obj in (("c", cli), ("s", srv)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the in-memory handshake did not finish")


# ------------------------------------------------------------------ the lab CA


def test_the_ca_is_made_once_then_reused(tmp_path: Path) -> None:
    """load_or_create makes ca.pem/ca-key.pem (key mode 0600) once; a second call reuses them."""
    first = LabCA.load_or_create(tmp_path / "tls")
    pem = first.ca_path.read_bytes()
    again = LabCA.load_or_create(tmp_path / "tls")
    assert again.ca_path.read_bytes() == pem
    assert (tmp_path / "tls" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (bc.critical, bc.value.ca, ku.key_cert_sign, ku.crl_sign) == (True, True, True, True)


def test_a_ca_file_without_its_key_is_a_one_line_error(tmp_path: Path) -> None:
    """ca.pem without ca-key.pem: a LabError naming the file, no new CA made over it."""
    ca = LabCA.load_or_create(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(LabError, match=r"ca\.pem: lab CA file without ca-key\.pem") as e:
        LabCA.load_or_create(tmp_path)
    assert "\n" not in str(e.value)
    assert ca.ca_path.exists()


CA_RACE = """
import sys, time
from pathlib import Path
from lbkit.lab.ca import LabCA
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
print(LabCA.load_or_create(sys.argv[1]).cert.serial_number)
"""


def test_processes_making_the_ca_at_once_end_with_one_ca(tmp_path: Path) -> None:
    """Four processes call load_or_create on one empty folder at the same moment (as alb1
    and alb2 do in docker): every one gets the CA that is on disk, so there is one."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CA_RACE, str(tmp_path / "tls"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    go.touch()
    serials = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        serials.add(int(out))
    on_disk = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.pem").read_bytes())
    assert serials == {on_disk.serial_number}


def test_threads_making_the_ca_and_issuing_at_once_share_one_ca(tmp_path: Path) -> None:
    """Eight threads make the CA and issue the same names at once: one CA, one certificate,
    and each thread's certificate verifies against the CA on disk."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(8)

    def make() -> tuple[int, bytes]:
        barrier.wait()
        ca = LabCA.load_or_create(tmp_path / "tls")
        cert, _ = ca.issue(["app.example.com"])
        return ca.cert.serial_number, cert.read_bytes()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: make(), range(8)))
    assert len({serial for serial, _ in results}) == 1
    assert len({pem for _, pem in results}) == 1
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(results[0][1]).verify_directly_issued_by(ca)


def test_an_issued_certificate_is_reused_for_the_same_names_only(tmp_path: Path) -> None:
    """Issuing the same names again returns the same files; other names, a new certificate."""
    ca = LabCA.load_or_create(tmp_path)
    cert, key = ca.issue(["a.test", "www.a.test"])
    pem = cert.read_bytes()
    assert (cert.name, key.name) == ("a.test.pem", "a.test-key.pem")
    assert key.stat().st_mode & 0o777 == 0o600
    assert ca.issue(["a.test", "www.a.test"])[0].read_bytes() == pem
    assert ca.issue(["a.test"])[0].read_bytes() != pem


def test_an_issued_certificate_verifies_for_each_of_its_names(tmp_path: Path) -> None:
    """Against the CA (create_default_context(cafile=)), the certificate holds for its DNS,
    wildcard and IP names, and not for another name."""
    ca = LabCA.load_or_create(tmp_path)
    cert, key = ca.issue(["app.example.com", "*.example.com", "127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca.ca_path))
    for name in ("app.example.com", "api.example.com", "127.0.0.1"):
        in_memory_handshake(server, client, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        in_memory_handshake(server, client, "other.test")


def test_lab_certificate_names_skip_what_a_certificate_cannot_hold() -> None:
    """ "", "_", regexes and trailing wildcards are skipped; ".x.test" gives x.test and *.x.test."""
    from lbkit.l7.model import Listen, ServerBlock

    block = ServerBlock(
        listens=[Listen(443, "10.0.0.5", ssl=True)],
        server_names=["", "_", "~^w+\\.test$", "mail.*", ".x.test", "a.test"],
    )
    assert certificate_names(block) == ["x.test", "*.x.test", "a.test"]
    assert certificate_names(ServerBlock(listens=block.listens)) == ["localhost", "10.0.0.5"]


# ------------------------------------------------------------------ SNI and versions


@pytest.mark.parametrize(("sni", "expected"), [("a.test", "a.test"), ("x.b.test", "b.test")])
def test_sni_picks_the_certificate_of_the_matching_server_block(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    sni: str,
    expected: str,
) -> None:
    """SNI a.test gets a.test's certificate; x.b.test matches *.b.test of the other block."""
    config = load_router_toml(router_toml(tmp_path, lab.backend("b1").address))
    p = start_tls_proxy(lab, config)
    c = tls_client(p.addresses[0][1], sni, client_context(tmp_path / "tls" / "ca.pem"))
    try:
        assert expected in san(c.sock.getpeercert())  # type: ignore[attr-defined]
    finally:
        c.close()


@pytest.mark.parametrize("sni", ["unknown.test", None])
def test_an_unknown_or_missing_sni_gets_the_default_servers_certificate(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    sni: str | None,
) -> None:
    """A name no block has, or no SNI at all, gets the default_server block's (b.test)."""
    config = load_router_toml(router_toml(tmp_path, lab.backend("b1").address, default_b=True))
    p = start_tls_proxy(lab, config)
    ctx = client_context(tmp_path / "tls" / "ca.pem")
    ctx.check_hostname = False  # the certificate is for b.test, asked as something else
    c = tls_client(p.addresses[0][1], sni, ctx)
    try:
        assert san(c.sock.getpeercert()) == {"b.test", "*.b.test"}  # type: ignore[attr-defined]
    finally:
        c.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_clients_are_served(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    version: ssl.TLSVersion,
) -> None:
    """A client limited to TLS 1.2, or to 1.3, completes the handshake and gets an answer."""
    config = load_router_toml(router_toml(tmp_path, lab.backend("b1").address))
    p = start_tls_proxy(lab, config)
    ctx = client_context(
        tmp_path / "tls" / "ca.pem", minimum_version=version, maximum_version=version
    )
    c = tls_client(p.addresses[0][1], "a.test", ctx)
    try:
        assert c.sock.version() == version.name.replace("_", ".")  # type: ignore[attr-defined]
        assert get(c, "a.test").status == 200
    finally:
        c.close()


def test_a_tls_1_1_client_is_refused_counted_and_the_proxy_serves_on(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TLS 1.1 handshake fails (counted in tls_handshake_failures, nothing logged as an
    error), and the next TLS 1.3 client is served."""
    config = load_router_toml(router_toml(tmp_path, lab.backend("b1").address))
    p = start_tls_proxy(lab, config)
    port, ca = p.addresses[0][1], tmp_path / "tls" / "ca.pem"
    old = client_context(
        ca, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1
    )
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what OpenSSL 3 disables
    with pytest.raises(OSError):  # an alert (SSLError) or a reset, depending on timing
        tls_client(port, "a.test", old).close()
    wait_until(lab, lambda: p.counters.tls_handshake_failures == 1, "the failure counted")
    c = tls_client(port, "a.test", client_context(ca))
    try:
        assert get(c, "a.test").status == 200
    finally:
        c.close()
    assert p.stats()["proxy"]["tls_handshakes"] == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# ------------------------------------------------------------------ HTTPS to plain HTTP


def test_a_request_over_tls_reaches_the_backend_as_http_marked_https(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The backend (plain HTTP) gets X-Forwarded-Proto: https and $scheme = https."""
    b = lab.backend("b1")
    p = start_tls_proxy(lab, load_router_toml(router_toml(tmp_path, b.address)))
    c = tls_client(p.addresses[0][1], "a.test", client_context(tmp_path / "tls" / "ca.pem"))
    try:
        reply = get(c, "a.test")
    finally:
        c.close()
    assert reply.status == 200
    headers = reply.json()["headers"]
    assert (headers["x-forwarded-proto"], headers["x-scheme"]) == ("https", "https")
    assert headers["host"] == "a.test"


def test_a_host_other_than_the_sni_name_is_421(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """SNI a.test with Host b.test: the router sees the SNI name and answers 421."""
    b = lab.backend("b1")
    p = start_tls_proxy(lab, load_router_toml(router_toml(tmp_path, b.address)))
    c = tls_client(p.addresses[0][1], "a.test", client_context(tmp_path / "tls" / "ca.pem"))
    try:
        assert get(c, "b.test").status == 421
    finally:
        c.close()
    assert b.seen == []


def test_curl_with_the_lab_ca_gets_an_answer_over_https(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """curl --cacert ca.pem --resolve a.test:PORT:127.0.0.1 https://a.test:PORT/echo works."""
    b = lab.backend("b1")
    p = start_tls_proxy(lab, load_router_toml(router_toml(tmp_path, b.address)))
    port = p.addresses[0][1]
    out = subprocess.run(
        ["curl", "-sS", "--max-time", str(DEADLINE), "--cacert", str(tmp_path / "tls" / "ca.pem"),
         "--resolve", f"a.test:{port}:{IP}", f"https://a.test:{port}/echo"],
        capture_output=True, text=True, timeout=DEADLINE * 2,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["headers"]["x-forwarded-proto"] == "https"


# ------------------------------------------------------------------ nginx syntax, the CLI


def nginx_conf(tmp_path: Path, port: int, backend: str, cert: str, key: str) -> Path:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n"
        f"  upstream web {{ server {backend}; }}\n"
        "  server {\n"
        f"    listen {IP}:{port} ssl;\n"
        "    server_name a.test;\n"
        f"    ssl_certificate {cert};\n"
        f"    ssl_certificate_key {key};\n"
        "    location / {\n"
        "      proxy_pass http://web;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    }\n"
        "  }\n}\n"
    )
    return conf


def test_an_nginx_config_with_listen_ssl_is_served_by_lbkit_l7(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """``listen PORT ssl`` + ssl_certificate (relative to the file): lbkit l7 serves HTTPS."""
    b = lab.backend("b1")
    ca = LabCA.load_or_create(tmp_path / "tls")
    ca.issue(["a.test"])
    (port,) = free_ports(1)
    conf = nginx_conf(tmp_path, port, b.address, "tls/a.test.pem", "tls/a.test-key.pem")
    assert load_nginx(conf).servers[0].ssl_certificate == str(tmp_path / "tls" / "a.test.pem")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbkit.l7.cli", "--nginx-conf", str(conf), "--admin", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ready:"), (line, proc.stderr.read() if proc.poll() else "")  # type: ignore[union-attr]
        c = tls_client(port, "a.test", client_context(ca.ca_path))
        try:
            reply = get(c, "a.test")
        finally:
            c.close()
        assert (reply.status, reply.json()["headers"]["x-forwarded-proto"]) == (200, "https")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_check_reports_a_missing_certificate_in_one_line_and_exits_1(tmp_path: Path) -> None:
    """--check on an nginx config whose certificate file is missing: one [emerg] line naming
    the file and the config line, exit 1, no traceback."""
    LabCA.load_or_create(tmp_path / "tls").issue(["a.test"])
    conf = nginx_conf(tmp_path, TLS_PORT, f"{IP}:9", "missing.pem", "tls/a.test-key.pem")
    out = lbkit_l7("--nginx-conf", str(conf), "--check")
    assert out.returncode == 1
    emerg = [ln for ln in out.stderr.splitlines() if "[emerg]" in ln]
    assert emerg == [
        f'lbkit l7: [emerg] {conf}:7: cannot load certificate "{tmp_path / "missing.pem"}": '
        "no such file"
    ]
    assert "Traceback" not in out.stderr


def test_check_of_a_toml_config_loads_its_certificate_files(tmp_path: Path) -> None:
    """--check on a TOML config: a missing certificate is one line naming file and key."""
    conf = tmp_path / "router.toml"
    conf.write_text(
        f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n"
        'ssl_certificate = "certs/app.pem"\nssl_certificate_key = "certs/app-key.pem"\n'
        '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    out = lbkit_l7("--config", str(conf), "--check")
    assert out.returncode == 1
    emerg = [ln for ln in out.stderr.splitlines() if "[emerg]" in ln]
    assert emerg == [
        f"lbkit l7: [emerg] {conf}: server[0].ssl_certificate: cannot load certificate "
        f'"{tmp_path / "certs" / "app.pem"}": No such file or directory'
    ]


def test_check_with_tls_dir_issues_lab_certificates(tmp_path: Path) -> None:
    """--check --tls-dir DIR: a TLS server without certificate files gets one from the lab CA."""
    conf = tmp_path / "router.toml"
    conf.write_text(
        f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n"
        'server_name = ["app.test"]\n[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    out = lbkit_l7("--config", str(conf), "--check", "--tls-dir", str(tmp_path / "tls"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tls" / "app.test.pem").is_file()


def test_several_servers_without_a_ca_folder_are_one_line(tmp_path: Path) -> None:
    """Two servers with ssl_certificate = "lab" and no CA folder: one [emerg] line (the
    first server's, counting the other), exit 1."""
    conf = tmp_path / "router.toml"
    conf.write_text(
        "".join(
            f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n"
            f'server_name = ["{name}"]\nssl_certificate = "lab"\n'
            '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
            for name in ("a.test", "b.test")
        )
    )
    out = lbkit_l7("--config", str(conf), "--check")
    assert out.returncode == 1
    emerg = [ln for ln in out.stderr.splitlines() if "[emerg]" in ln]
    assert emerg == [
        f'lbkit l7: [emerg] {conf}: server[0].ssl_certificate: ssl_certificate = "lab" needs '
        "the lab CA's folder (tls_ca_dir, or lbkit l7 --tls-dir) (and 1 more server block "
        "like it)"
    ]


def test_the_layered_labs_router_file_checks_by_hand_with_a_tls_dir(tmp_path: Path) -> None:
    """labs/l7/router.toml as its header says: --check without --tls-dir is one line naming
    --tls-dir; with it, the default server's and app.example.com's certificates are issued
    for exactly their server_names."""
    conf = str(ROOT / "labs/l7/router.toml")
    out = lbkit_l7("--config", conf, "--check")
    emerg = [ln for ln in out.stderr.splitlines() if "[emerg]" in ln]
    assert out.returncode == 1 and len(emerg) == 1 and "--tls-dir" in emerg[0]
    out = lbkit_l7("--config", conf, "--check", "--tls-dir", str(tmp_path / "tls"))
    assert out.returncode == 0, out.stderr
    names = {}
    for stem in ("lb.example.com", "app.example.com"):
        cert = x509.load_pem_x509_certificate((tmp_path / "tls" / f"{stem}.pem").read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names[stem] = [str(v) for v in alt.get_values_for_type(x509.DNSName)] + [
            str(v) for v in alt.get_values_for_type(x509.IPAddress)
        ]
    assert names == {
        "lb.example.com": ["lb.example.com", "api.example.com", "10.0.1.3", "10.0.1.4"],
        "app.example.com": ["app.example.com"],
    }


# ------------------------------------------------------------------ TOML and config errors


def test_toml_certificate_paths_resolve_against_the_files_folder(tmp_path: Path) -> None:
    """ssl_certificate/ssl_certificate_key and tls_ca_dir are made absolute from the TOML's
    folder, as nginx makes them absolute from its prefix."""
    conf = tmp_path / "sub" / "router.toml"
    conf.parent.mkdir()
    conf.write_text(
        'tls_ca_dir = "ca"\n'
        f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n"
        'ssl_certificate = "c.pem"\nssl_certificate_key = "../k.pem"\n'
        '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    config = load_router_toml(conf)
    block = config.servers[0]
    assert (block.ssl_certificate, block.ssl_certificate_key) == (
        str(conf.parent / "c.pem"),
        str(tmp_path / "k.pem"),
    )
    assert config.tls_ca_dir == str(conf.parent / "ca")


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            'ssl_certificate = "lab"\nssl_certificate_key = "k.pem"\n',
            "server[0].ssl_certificate_key",
        ),
        ('ssl_certificate = "c.pem"\n', "server[0].ssl_certificate_key: needed with"),
        ('ssl_certificate_key = "k.pem"\n', "server[0].ssl_certificate: needed with"),
    ],
)
def test_toml_certificate_mistakes_name_the_file_and_key(
    tmp_path: Path, server: str, message: str
) -> None:
    """A key with "lab", a certificate without key, a key without certificate: LabError."""
    conf = tmp_path / "router.toml"
    conf.write_text(
        f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n{server}"
        '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    with pytest.raises(LabError, match="^" + re.escape(f"{conf}: {message}")):
        load_router_toml(conf)


def test_lab_certificate_without_a_ca_folder_is_an_error_naming_the_key(tmp_path: Path) -> None:
    """ssl_certificate = "lab" with no tls_ca_dir and no --tls-dir: one line, file and key."""
    conf = tmp_path / "router.toml"
    conf.write_text(
        f"[[server]]\nlisten = [{{ port = {TLS_PORT}, ssl = true }}]\n"
        'ssl_certificate = "lab"\n[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    with pytest.raises(TLSConfigError) as e:
        server_contexts(load_router_toml(conf))
    assert e.value.errors == [
        f'{conf}: server[0].ssl_certificate: ssl_certificate = "lab" needs the lab CA\'s folder '
        "(tls_ca_dir, or lbkit l7 --tls-dir)"
    ]


def test_a_plain_and_a_tls_listen_on_one_address_make_it_a_tls_address(tmp_path: Path) -> None:
    """``listen 443`` in one block and ``listen 443 ssl`` in another: the address is TLS
    (nginx: ssl is an option of the socket), and lbkit l7 does not also serve it plain."""
    from lbkit.l7.cli import listen_addresses

    conf = tmp_path / "router.toml"
    conf.write_text(
        'tls_ca_dir = "tls"\n'
        '[[server]]\nlisten = [80, 443]\nserver_name = ["a.test"]\n'
        '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
        '[[server]]\nlisten = [{ port = 443, ssl = true }]\nserver_name = ["b.test"]\n'
        '[[server.route]]\npath = "/"\nreturn = { status = 204 }\n'
    )
    config = load_router_toml(conf)
    assert list(server_contexts(config)) == [("0.0.0.0", 443)]
    assert listen_addresses(config) == [("0.0.0.0", 80)]


def test_handshake_timeouts_use_client_header_timeout(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """A client that connects and never says hello is closed after client_header_timeout."""
    config = load_router_toml(router_toml(tmp_path, lab.backend("b1").address))
    config.limits.client_header_timeout = 0.2
    p = start_tls_proxy(lab, config)
    with (
        socket.create_connection((IP, p.addresses[0][1]), timeout=DEADLINE) as s,
        contextlib.suppress(ConnectionResetError),  # closed, by EOF or by reset
    ):
        assert s.recv(1) == b""


def test_a_reload_brings_new_certificate_choices_to_new_handshakes(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Proxy.set_tls (SIGHUP): an unknown name got a.test's certificate, then the new default's."""
    b = lab.backend("b1")
    p = start_tls_proxy(lab, load_router_toml(router_toml(tmp_path, b.address)))
    ctx = client_context(tmp_path / "tls" / "ca.pem")
    ctx.check_hostname = False

    def names() -> set[str]:
        c = tls_client(p.addresses[0][1], "unknown.test", ctx)
        try:
            return san(c.sock.getpeercert())  # type: ignore[attr-defined]
        finally:
            c.close()

    assert names() == {"a.test"}
    new = server_contexts(load_router_toml(router_toml(tmp_path, b.address, default_b=True)))
    ((_, context),) = new.items()
    lab.lt.run(on_loop(lambda: p.set_tls({(IP, 0): context})))
    assert names() == {"b.test", "*.b.test"}
