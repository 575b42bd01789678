"""Make the self-signed certificate and key that labs/nginx/seed-fixed.conf serves.

    python3 labs/nginx/make_cert.py [--days 7300] [--out labs/nginx/certs]

Writes ``api.example.com.pem`` (the certificate, subjectAltName
api.example.com) and ``api.example.com-key.pem`` (its P-256 key, unencrypted:
a lab key, never a real one). Needs the ``cryptography`` package (Debian's
python3-cryptography, or ``pip install cryptography``).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

NAME = "api.example.com"
HERE = Path(__file__).resolve().parent


def make_cert(out: Path, days: int = 7300, name: str = NAME) -> tuple[Path, Path]:
    """Write ``NAME.pem`` and ``NAME-key.pem`` into ``out``; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lbkit lab (self-signed)"),
        ]
    )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o644)  # a lab key, readable by nginx workers and lab users alike
    return cert_path, key_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7300, help="validity (default 20 years)")
    parser.add_argument("--out", type=Path, default=HERE / "certs", help="output folder")
    args = parser.parse_args(argv)
    for path in make_cert(args.out, args.days):
        print(path)


if __name__ == "__main__":
    main()
