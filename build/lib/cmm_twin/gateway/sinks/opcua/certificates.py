"""The OPC UA server's own application certificate: generated once under `state_dir/opcua/`,
then reused, so clients that trusted it keep trusting it (docs/opcua-security.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmm_twin.durable_io import write_atomically

_logger = logging.getLogger(__name__)

APPLICATION_URI = "urn:cmm-twin:gateway"
"""The server's ApplicationUri; also the URI SubjectAltName of its certificate."""
SERVER_NAME = "cmm-twin gateway"
CERT_FILE = "server_cert.der"
KEY_FILE = "server_key.pem"
CERT_DAYS = 3650


def _subject_alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(APPLICATION_URI)]
    dns = {socket.gethostname()}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        dns.add(host)
    else:
        if not ip.is_unspecified:
            names.append(x509.IPAddress(ip))
    names.extend(x509.DNSName(name) for name in sorted(dns) if name)
    return names


def ensure_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """The server certificate (DER) and key (PEM, mode 0600) in `directory`, generated once.

    Existing files are reused as they are, so clients that trusted the certificate keep trusting
    it; they are regenerated only when missing, unreadable, not matching each other, or lacking
    the application URI. Blocking: call it in a thread.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.is_file() and key_path.is_file():
        problem = _check_existing(cert_path, key_path, host)
        if problem is None:
            return cert_path, key_path
        _logger.warning("regenerating the OPC UA server certificate in %s: %s", directory, problem)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        SERVER_NAME,
        {"organizationName": "cmm-twin"},
        _subject_alt_names(host),
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=CERT_DAYS,
    )
    write_atomically(key_path, cert_gen.dump_private_key_as_pem(key), 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.DER), 0o644)
    _logger.info("generated the OPC UA server certificate %s (SHA-256 %s)", cert_path, fingerprint(cert_path))
    return cert_path, key_path


def _check_existing(cert_path: Path, key_path: Path, host: str) -> str | None:
    """Why the stored certificate/key cannot be used, or None when they can."""
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot read them ({exc})"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "the key is not an RSA key"
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
        return f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return "the key does not match the certificate"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the certificate has no subject alternative names"
    if APPLICATION_URI not in san.get_values_for_type(x509.UniformResourceIdentifier):
        return f"the certificate lacks the application URI {APPLICATION_URI}"
    if key_path.stat().st_mode & 0o077:
        _logger.warning("%s was readable by others; setting its mode to 0600", key_path)
        key_path.chmod(0o600)
    if not _names_host(san, host):
        _logger.warning(
            "the OPC UA server certificate %s does not name host %s; clients checking host names may refuse it "
            "(delete %s and %s to generate a new one)",
            cert_path,
            host,
            cert_path,
            key_path,
        )
    return None


def _names_host(san: x509.SubjectAlternativeName, host: str) -> bool:
    """True when the alternative names cover `host` (an unspecified address needs nothing)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host in san.get_values_for_type(x509.DNSName)
    return ip.is_unspecified or ip in san.get_values_for_type(x509.IPAddress)


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate file, in upper-case hex (as the start-up log prints it). Blocking."""
    return hashlib.sha256(cert_path.read_bytes()).hexdigest().upper()
