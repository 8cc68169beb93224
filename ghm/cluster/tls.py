"""A cluster's certificate authority and node certificates, for Ray's TLS between hosts (``python -m ghm.cluster certs``).

Ray's token authenticates but does not encrypt. With ``RAY_USE_TLS=1`` every Ray process (head, workers, drivers)
speaks gRPC over mutual TLS: it presents ``RAY_TLS_SERVER_CERT`` / ``RAY_TLS_SERVER_KEY`` and accepts only peers whose
certificate ``RAY_TLS_CA_CERT`` signed. This module makes that CA (once; kept, with its key, in the output folder,
which must never be committed) and a node certificate per host, valid for the names and addresses given (a host's
address as the other hosts reach it, compose service names, 127.0.0.1). The same CA signs the MLflow server's and
PostgreSQL's certificates, so remote workers check those endpoints too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest a TLS client trusts a leaf certificate


@dataclass
class Issued:
    certificate: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ghm-sweep cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def certificate_authority(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The folder's CA (``ca.crt``, ``ca.key``), made the first time."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_path}: not an EC key"
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(_name("ghm-sweep cluster CA")).issuer_name(_name("ghm-sweep cluster CA"))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def issue(folder: Path, name: str, hosts: list[str]) -> Issued:
    """``<name>.crt`` / ``<name>.key`` signed by the folder's CA, for these host names and IP addresses (server and client:
    Ray's processes are both)."""
    if not hosts:
        raise ValueError("a node certificate needs at least one host name or address (--host)")
    ca, ca_key = certificate_authority(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    issued = Issued(folder / f"{name}.crt", folder / f"{name}.key")
    _write_key(issued.key, key)
    issued.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return issued


def ray_tls_environment(folder: Path, name: str) -> dict[str, str]:
    """Ray's TLS variables for a process that presents ``<name>.crt``."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": os.fspath(folder / f"{name}.crt"),
            "RAY_TLS_SERVER_KEY": os.fspath(folder / f"{name}.key"), "RAY_TLS_CA_CERT": os.fspath(folder / "ca.crt")}
