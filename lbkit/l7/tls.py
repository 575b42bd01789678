"""TLS termination for the L7 proxy: a server-side ``ssl.SSLContext`` per ``listen ... ssl``.

The proxy decrypts, routes as for plain HTTP, and speaks plain HTTP to the
backends; ``$scheme`` is ``https`` and X-Forwarded-Proto says so. What is
built here, and where each rule comes from:

* One context per TLS address ``(address, port)``: an address is TLS when any
  ``listen`` on it says ``ssl`` (in nginx, ``ssl`` is an option of the
  listening socket, shared by every server block on it).
* Its certificate is the default server's: the block whose listen there says
  ``default_server``, else the first block listening there (nginx
  ``ngx_http_add_addresses``); without one it is nginx's error
  ``no "ssl_certificate" is defined for the "listen ... ssl" directive``.
* SNI (RFC 6066 §3, the ``server_name`` extension of the ClientHello) picks
  the certificate of the block whose ``server_name`` matches, by nginx's own
  rules (:func:`lbkit.l7.matching.select_server`: exact, leading wildcard,
  trailing wildcard, regex), as ``ngx_http_ssl_servername`` does. No SNI, or a
  name no block has, gets the default server's certificate; a block without
  a certificate of its own keeps the default one (nginx does the same).
* TLS 1.2 and 1.3 only (RFC 8446 for 1.3; RFC 8996 deprecates 1.0 and 1.1);
  ALPN offers ``http/1.1`` (RFC 7301: the proxy speaks HTTP/1.1 only);
  client-initiated renegotiation is refused (``OP_NO_RENEGOTIATION``; nginx
  refuses it too, ``ngx_ssl_info_callback``).
* Certificates come from files (``ssl_certificate``/``ssl_certificate_key``,
  absolute after loading: nginx's loader resolves them against the nginx file's
  folder, the TOML loader against the TOML file's folder) or from the lab CA
  (:class:`lbkit.lab.ca.LabCA`) for the block's names: when the block says
  ``ssl_certificate = "lab"``, or names no file and a CA folder is given
  (``cert_dir``, else the TOML's ``tls_ca_dir``).

Every problem is one line naming the file and where the config set it, raised
as :class:`TLSConfigError` (a LabError) while building: nginx -t loads the
certificates too, so ``lbkit l7 --check`` calls :func:`server_contexts`.
Servers that ask the lab CA while no CA folder is given are one problem, so
one line (the first server's, with how many more).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

from lbkit.lab.errors import LabError

from .matching import select_server
from .model import Listen, RouterConfig, ServerBlock

__all__ = [
    "ALPN",
    "ServerSSLObject",
    "TLSConfigError",
    "certificate_names",
    "count_handshakes",
    "load_context",
    "server_contexts",
    "sni_of",
    "tls_addresses",
]

ALPN = ["http/1.1"]
_NO_CERT = 'no "ssl_certificate" is defined for the "listen ... ssl" directive'
_NEEDS_CA = 'ssl_certificate = "lab" needs the lab CA\'s folder (tls_ca_dir, or lbkit l7 --tls-dir)'
_WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", "*", ""})


class TLSConfigError(LabError):
    """The TLS part of a config cannot be served; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ServerSSLObject(ssl.SSLObject):
    """The proxy's TLS connections: remember the SNI name, count handshake outcomes.

    Installed as ``SSLContext.sslobject_class`` (a documented hook of :mod:`ssl`);
    asyncio and uvloop create one per connection with ``wrap_bio``.
    """

    sni: str | None = None  # set by the SNI callback: RFC 6066 §3 HostName, as sent
    counters: Any = None  # an object with tls_handshakes, tls_handshake_failures (or None)

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not done yet: more bytes to exchange
        except ssl.SSLError:
            if self.counters is not None:
                self.counters.tls_handshake_failures += 1
            raise
        if self.counters is not None:
            self.counters.tls_handshakes += 1


def sni_of(ssl_object: Any) -> str | None:
    """The server name the client sent (RFC 6066 §3) on this connection, or None."""
    return getattr(ssl_object, "sni", None)


def count_handshakes(context: ssl.SSLContext, counters: Any) -> None:
    """Count ``context``'s handshakes in ``counters.tls_handshakes`` and failed ones (an
    alert: an old protocol version, no shared cipher, not TLS at all) in
    ``counters.tls_handshake_failures``. A client that leaves or times out mid-handshake
    is not counted: its connection just closes."""
    context.sslobject_class = type("CountingSSLObject", (ServerSSLObject,), {"counters": counters})


# ------------------------------------------------------------------ contexts


def load_context(cert: str | Path, key: str | Path, origin: str) -> ssl.SSLContext:
    """A server context with this certificate and key, TLS 1.2+, ALPN http/1.1.

    TLSConfigError (one line: ``origin: cannot load ... "FILE": reason``) when a
    file cannot be read or the pair does not load.
    """
    for path, what in ((cert, "certificate"), (key, "certificate key")):
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TLSConfigError([f'{origin}: cannot load {what} "{path}": {e.strerror}']) from None
        if what == "certificate key" and b"ENCRYPTED" in data:
            message = f'{origin}: cannot load {what} "{path}": encrypted keys are not supported'
            raise TLSConfigError([message])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(cert, key, password=b"")  # never a passphrase prompt
    except ssl.SSLError as e:
        reason = e.reason or e.strerror or str(e)
        message = f'{origin}: cannot load certificate "{cert}" with key "{key}": {reason}'
        raise TLSConfigError([message]) from None
    return context


def tls_addresses(config: RouterConfig) -> dict[tuple[str, int], list[tuple[ServerBlock, Listen]]]:
    """Each TLS address (one with any ``ssl`` listen) -> its (block, listen) pairs, in order."""
    by_address: dict[tuple[str, int], list[tuple[ServerBlock, Listen]]] = {}
    for block in config.servers:
        for ln in block.listens:
            by_address.setdefault((ln.address, ln.port), []).append((block, ln))
    return {a: pairs for a, pairs in by_address.items() if any(ln.ssl for _, ln in pairs)}


def certificate_names(block: ServerBlock, listens: list[Listen] | None = None) -> list[str]:
    """The names a lab certificate for ``block`` carries: its exact and leading-wildcard
    ``server_name`` s (``.example.com`` gives ``example.com`` and ``*.example.com``); not
    ``""``, ``_``, trailing wildcards or regexes, which no certificate can hold. A block with
    none of those gets ``localhost`` and the specific addresses it listens on."""
    names: list[str] = []
    for name in block.server_names:
        name = name.lower().rstrip(".")
        if not name or name == "_" or name.startswith("~") or name.endswith(".*"):
            continue
        names += [name[1:], "*" + name] if name.startswith(".") else [name]
    if not names:
        names = ["localhost"]
        for ln in block.listens if listens is None else listens:
            if ln.address not in _WILDCARD_ADDRESSES:
                names.append(str(ipaddress.ip_address(ln.address.strip("[]"))))
    return list(dict.fromkeys(names))


class _SNI:
    """``SSLContext.sni_callback`` of one address: ``ngx_http_ssl_servername`` in small."""

    def __init__(
        self,
        blocks: list[ServerBlock],
        port: int,
        contexts: dict[int, ssl.SSLContext],
        default: ssl.SSLContext,
    ) -> None:
        self.blocks = blocks
        self.port = port
        self.contexts = contexts  # id(block) -> its context; absent: the default's
        self.default = default

    def __call__(self, ssl_object: Any, server_name: str | None, _initial: Any) -> None:
        ssl_object.sni = server_name
        target = self.default
        if server_name:
            block = select_server(self.blocks, server_name, self.port)
            if block is not None:
                target = self.contexts.get(id(block), self.default)
        # always set (the default too): a reload swaps this callback on a listening context
        # that still carries the old certificate
        if ssl_object.context is not target:
            ssl_object.context = target


class _Certificates:
    """Each server block's certificate files (made by the lab CA when it should), and each
    pair of files loaded once."""

    def __init__(self, ca_dir: Path | str | None, addresses: dict[tuple[str, int], Any]) -> None:
        self.ca_dir = ca_dir
        self.addresses = addresses
        self.ca: Any = None
        self.loaded: dict[tuple[str, str], ssl.SSLContext] = {}

    def files(self, block: ServerBlock) -> tuple[str, str, str] | None:
        """``(cert, key, origin)``, or None when the block names none and there is no CA."""
        origin = block.ssl_origin or block.origin
        if block.ssl_lab_ca or (block.ssl_certificate is None and self.ca_dir is not None):
            if self.ca_dir is None:
                raise TLSConfigError([f"{origin}: {_NEEDS_CA}"])
            try:
                if self.ca is None:
                    from lbkit.lab.ca import LabCA

                    self.ca = LabCA.load_or_create(Path(self.ca_dir))
                listens = [ln for ln in block.listens if (ln.address, ln.port) in self.addresses]
                cert, key = self.ca.issue(certificate_names(block, listens))
            except LabError as e:  # the lab CA's own (a folder it cannot write, ...)
                raise TLSConfigError([f"{origin}: {e}"]) from None
            return str(cert), str(key), origin
        if block.ssl_certificate is None:
            return None
        if block.ssl_certificate_key is None:
            message = (
                f'no "ssl_certificate_key" is defined for certificate "{block.ssl_certificate}"'
            )
            raise TLSConfigError([f"{origin}: {message}"])
        return block.ssl_certificate, block.ssl_certificate_key, origin

    def context(self, found: tuple[str, str, str]) -> ssl.SSLContext:
        pair = found[:2]
        if pair not in self.loaded:
            self.loaded[pair] = load_context(*found)
        return self.loaded[pair]


def server_contexts(
    config: RouterConfig, *, cert_dir: Path | str | None = None
) -> dict[tuple[str, int], ssl.SSLContext]:
    """One server context per TLS address of ``config`` (see the module docstring).

    ``cert_dir``: the lab CA's folder (``lbkit l7 --tls-dir``), else ``config.tls_ca_dir``;
    lab certificates are issued into it. TLSConfigError lists every problem, one a line.
    """
    addresses = tls_addresses(config)
    certs = _Certificates(cert_dir if cert_dir is not None else config.tls_ca_dir, addresses)
    errors: list[str] = []
    files: dict[int, tuple[str, str, str] | None] = {}  # id(block) -> files; absent: failed
    contexts: dict[int, ssl.SSLContext] = {}  # id(block) -> its context (if it has files)
    blocks_on_tls = {id(b): b for pairs in addresses.values() for b, _ in pairs}
    for key, block in blocks_on_tls.items():
        try:
            found = certs.files(block)
            if found is not None:
                contexts[key] = certs.context(found)
        except TLSConfigError as e:
            errors += e.errors
            continue
        files[key] = found

    out: dict[tuple[str, int], ssl.SSLContext] = {}
    for address, pairs in addresses.items():
        blocks = list({id(b): b for b, _ in pairs}.values())
        default = next((b for b, ln in pairs if ln.default_server), blocks[0])
        if id(default) not in files:
            continue  # its certificate failed: reported above
        found = files[id(default)]
        if found is None:
            errors.append(f"{default.origin}: {_NO_CERT}")
            continue
        listening = load_context(*found)  # its own object: it carries the SNI callback
        listening.sslobject_class = ServerSSLObject
        listening.sni_callback = _SNI(blocks, address[1], contexts, contexts[id(default)])
        out[address] = listening
    if errors:
        raise TLSConfigError(_one_line_for_the_ca_folder(list(dict.fromkeys(errors))))
    return out


def _one_line_for_the_ca_folder(errors: list[str]) -> list[str]:
    """Every server asking the lab CA with no folder given is one mistake: one line (the
    first server's), saying how many more there are."""
    missing = [e for e in errors if e.endswith(_NEEDS_CA)]
    if len(missing) < 2:
        return errors
    more = len(missing) - 1
    first = f"{missing[0]} (and {more} more server block{'s' if more > 1 else ''} like it)"
    return [first if e == missing[0] else e for e in errors if e == missing[0] or e not in missing]
