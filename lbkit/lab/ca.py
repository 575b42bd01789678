"""A lab certificate authority: one CA per folder, and the server certificates it signs.

    python -m lbkit.lab.ca DIR NAME [NAME...]     # prints the CA, certificate and key paths

The CA lives in ``DIR/ca.pem`` and ``DIR/ca-key.pem``: made once (P-256,
ECDSA with SHA-256), reused afterwards. A certificate for ``["app.example.com",
"*.example.com", "10.0.1.5"]`` goes to ``DIR/app.example.com.pem`` (the leaf
only) and ``DIR/app.example.com-key.pem``; asking again returns the same files
while they still fit (same names, signed by this CA, not near expiry).

Profile, after RFC 5280 and the CA/Browser Forum Baseline Requirements (so
that curl, Python's ``ssl`` and browsers accept it once the CA is trusted):

* CA: basicConstraints ``CA:TRUE, pathlen:0`` (critical, RFC 5280 §4.2.1.9),
  keyUsage ``keyCertSign, cRLSign`` (critical, §4.2.1.3), a subject key
  identifier; valid 10 years.
* leaf: subjectAltName with every name (RFC 5280 §4.2.1.6; a ``dNSName`` per
  host name, wildcards such as ``*.example.com`` included, an ``iPAddress``
  per name that parses as an IP address), extendedKeyUsage ``serverAuth``
  (§4.2.1.12), keyUsage ``digitalSignature`` (an ECDSA key signs, it does not
  encipher), basicConstraints ``CA:FALSE``, authority and subject key
  identifiers; valid 825 days, the longest that Apple's platforms accept for a
  TLS server certificate ("Requirements for trusted certificates in iOS 13 and
  macOS 10.15", HT210176).

Every file is written whole or not at all (a temporary file in the same folder,
then ``os.replace``); keys are mode 0600. A lock file (``DIR/.lock``, POSIX
``flock``) serialises whoever may create or issue at the same moment: the
workers of ``lbkit l7``, a lab's l7 hosts sharing ``STATE/tls`` (docker
containers on one volume), threads (each holds its own open file, and flock
locks belong to open files). Under the lock, the CA is loaded if there and made
if not, so every caller ends with the one CA on disk.
These are lab keys, never real ones: the CA signs whatever it is asked to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import LabError

__all__ = ["CA_DAYS", "LEAF_DAYS", "RENEW_DAYS", "LabCA", "cert_file_stem"]

CA_DAYS = 3650
LEAF_DAYS = 825  # Apple HT210176: TLS server certificates valid for at most 825 days
RENEW_DAYS = 30  # a certificate with less left than this is issued again
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
_ORG = "lbkit lab"
#: A host name in ASCII (an IDN as its A-label), a wildcard only as the whole first label.
_DNS_NAME = re.compile(r"(?:\*\.)?(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after), aware UTC (``*_utc`` came with cryptography 42)."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (
        cert.not_valid_before.replace(tzinfo=dt.UTC),
        cert.not_valid_after.replace(tzinfo=dt.UTC),
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds ``data`` whole, or keeps what it held (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (POSIX flock; no lock elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process at a time is the user's business
        yield
        return
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _general_name(name: str) -> x509.GeneralName:
    """An ``iPAddress`` when ``name`` parses as an IP address, else a ``dNSName``."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _san_key(names: list[str]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for gn in map(_general_name, names):
        if isinstance(gn, x509.IPAddress):
            out.add(("ip", str(gn.value)))
        else:
            out.add(("dns", str(gn.value).lower()))
    return out


def _cert_san_key(cert: x509.Certificate) -> set[tuple[str, str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out = {("dns", n.lower()) for n in san.get_values_for_type(x509.DNSName)}
    out |= {("ip", str(a)) for a in san.get_values_for_type(x509.IPAddress)}
    return out


def cert_file_stem(name: str) -> str:
    """The file name stem for a certificate whose first name is ``name``.

    ``*`` cannot sit well in a file name: ``*.example.com`` -> ``wildcard.example.com``.
    """
    stem = name.lower().strip("[]").replace("*", "wildcard").replace("/", "_")
    return stem or "unnamed"


class LabCA:
    """The lab's certificate authority, kept in one folder (see the module docstring)."""

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.directory = directory
        self.key = key
        self.cert = cert

    @property
    def ca_path(self) -> Path:
        """The CA certificate: for ``curl --cacert`` or ``ssl.create_default_context(cafile=)``."""
        return self.directory / CA_CERT

    # ------------------------------------------------------------------ the CA itself
    @classmethod
    def load_or_create(cls, directory: Path | str) -> LabCA:
        """The CA kept in ``directory``: loaded if ``ca.pem`` and ``ca-key.pem`` are there,
        else made (and the folder too). LabError, one line, when they cannot be used."""
        directory = Path(directory).absolute()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with _locked(directory):
                cert_path, key_path = directory / CA_CERT, directory / CA_KEY
                if cert_path.exists() or key_path.exists():
                    return cls._load(directory)
                return cls._create(directory)
        except OSError as e:
            raise LabError(f"{directory}: lab CA: {e.strerror or e}") from None

    @classmethod
    def _load(cls, directory: Path) -> LabCA:
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        for have, missing in ((cert_path, key_path), (key_path, cert_path)):
            if have.exists() and not missing.exists():
                raise LabError(
                    f"{have}: lab CA file without {missing.name}; remove it to make a new CA"
                )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError:
            raise LabError(f"{cert_path}: not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise LabError(f"{key_path}: not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise LabError(f"{key_path}: not the key of {cert_path}")
        if _validity(cert)[1] <= _now():
            raise LabError(f"{cert_path}: the lab CA expired; remove {CA_CERT} and {CA_KEY}")
        return cls(directory, key, cert)

    @classmethod
    def _create(cls, directory: Path) -> LabCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "lbkit lab CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # the key first: a ca.pem is never there without its key
        _write_atomic(directory / CA_KEY, _key_pem(key), 0o600)
        _write_atomic(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, key, cert)

    # ------------------------------------------------------------------ certificates
    def issue(self, names: list[str], directory: Path | str | None = None) -> tuple[Path, Path]:
        """A server certificate for ``names`` (the first one names the files): its paths
        ``(cert, key)`` in ``directory`` (default: the CA's folder). Files that still fit
        are reused; see the module docstring."""
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise LabError(f"{self.directory}: lab CA: a certificate needs at least one name")
        for n in names:
            if isinstance(_general_name(n), x509.DNSName) and not _DNS_NAME.fullmatch(n):
                raise LabError(f"{self.directory}: lab CA: {n!r} is not a host name or address")
        out = Path(directory).absolute() if directory is not None else self.directory
        stem = cert_file_stem(names[0])
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
        try:
            out.mkdir(parents=True, exist_ok=True)
            with _locked(out):
                if not self._fits(cert_path, key_path, names):
                    self._write_leaf(cert_path, key_path, names)
        except OSError as e:
            raise LabError(f"{out}: lab CA: {e.strerror or e}") from None
        return cert_path, key_path

    def _fits(self, cert_path: Path, key_path: Path, names: list[str]) -> bool:
        """Whether the files there are a certificate of this CA for exactly ``names``, its
        key, with more than RENEW_DAYS left."""
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert.verify_directly_issued_by(self.cert)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        start, end = _validity(cert)
        now = _now()
        return (
            key.public_key() == cert.public_key()
            and _cert_san_key(cert) == _san_key(names)
            and start <= now
            and end - now > dt.timedelta(days=RENEW_DAYS)
        )

    def _write_leaf(self, cert_path: Path, key_path: Path, names: list[str]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        # the key first, so a new certificate never pairs with an old key
        _write_atomic(key_path, _key_pem(key), 0o600)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def main(argv: list[str] | None = None) -> int:
    """``python -m lbkit.lab.ca DIR NAME [NAME...]``: print the CA, certificate and key paths."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lbkit.lab.ca", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="the CA's folder (made if missing)")
    parser.add_argument("names", nargs="+", help="DNS names (wildcards allowed) or IP addresses")
    args = parser.parse_args(argv)
    try:
        ca = LabCA.load_or_create(args.directory)
        cert, key = ca.issue(args.names)
    except LabError as e:
        print(f"lbkit ca: error: {e}", file=sys.stderr)
        return 1
    for path in (ca.ca_path, cert, key):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
