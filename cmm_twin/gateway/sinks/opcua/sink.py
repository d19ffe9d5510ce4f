"""Live OPC UA tags for SCADA/PLCs: an asyncua server fed with the newest measurement per machine.

Address space (DESIGN.md section 6), every BrowseName in the `urn:cmm-twin` namespace (index `ns`,
read it from the server's NamespaceArray), every NodeId a string NodeId so clients can address
tags directly without browsing:

    Objects/CMM                       ns=<ns>;s=CMM                         (folder)
    Objects/CMM/<machine_id>          ns=<ns>;s=CMM/<machine_id>            (object, created on first sight)
        PartId, Feature, Verdict      ns=<ns>;s=CMM/<machine_id>/<Name>     (String)
        MeasuredLength, CompensatedLength                                   (Double, mm)
        PartTemperature                                                     (Double, degC)
        Deviation, Uncertainty                                              (Double, µm)
            EngineeringUnits          ns=<ns>;s=CMM/<machine_id>/<Name>/EngineeringUnits
                                      (BrowseName 0:EngineeringUnits, EUInformation, UNECE codes)
    Objects/Gateway                   ns=<ns>;s=Gateway
        BufferDepth, FilesProcessed, RowsRejected   ns=<ns>;s=Gateway/<Name>  (Int64)
        MesConnected, HistorianConnected            ns=<ns>;s=Gateway/<Name>  (Boolean)
        BufferOldestAge                             ns=<ns>;s=Gateway/<Name>  (Double, s)

`/` separates the parts because a machine_id (`[A-Za-z0-9_.-]{1,64}`) can hold dots but never a
slash, so two machines can never map to the same NodeId. Numeric machine variables are of type
BaseAnalogType; each value carries the measurement time as SourceTimestamp.

Security, protected by default: Basic256Sha256 Sign and SignAndEncrypt are always offered with a
self-signed application certificate generated once under `state_dir/opcua/`. User-name login
accepts exactly OPCUA_USER / OPCUA_PASSWORD (from the environment). Anonymous login and the None
policy are offered only on a loopback endpoint or with `--opcua-allow-anonymous`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmm_twin.durable_io import write_atomically
from cmm_twin.errors import CmmTwinError, ConfigError
from cmm_twin.gateway.sinks.base import Delivered, Sink, WriteOutcome
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

_logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/cmm-twin/"
NAMESPACE_URI = "urn:cmm-twin"
APPLICATION_URI = "urn:cmm-twin:gateway"
"""The server's ApplicationUri; also the URI SubjectAltName of its certificate."""
SERVER_NAME = "cmm-twin gateway"
USER_ENV = "OPCUA_USER"
PASSWORD_ENV = "OPCUA_PASSWORD"
ENDPOINT_FLAG = "--opcua-endpoint"
CERT_FILE = "server_cert.der"
KEY_FILE = "server_key.pem"
CERT_DAYS = 3650
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SIGNED_POLICIES = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
)
_POLICY_NAMES: dict[ua.SecurityPolicyType, str] = {
    ua.SecurityPolicyType.NoSecurity: "None",
    ua.SecurityPolicyType.Basic256Sha256_Sign: "Basic256Sha256/Sign",
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt: "Basic256Sha256/SignAndEncrypt",
}


class OpcUaStartError(CmmTwinError):
    """The OPC UA server could not start (port taken, address not local, state dir unusable)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class OpcUaSettings:
    """Configuration of the OPC UA sink; validated on construction."""

    endpoint: str = DEFAULT_ENDPOINT
    allow_anonymous: bool = False
    state_dir: Path
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    trust_dir: Path | None = None
    """When set, only client certificates found in this directory (DER or PEM) are accepted."""

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint)
        if self.username is not None and self.password is None:
            raise ConfigError(PASSWORD_ENV, f"{USER_ENV} is set but {PASSWORD_ENV} is not")
        if self.password is not None and self.username is None:
            raise ConfigError(USER_ENV, f"{PASSWORD_ENV} is set but {USER_ENV} is not")

    @classmethod
    def from_env(
        cls,
        endpoint: str,
        allow_anonymous: bool,
        state_dir: Path,
        environ: Mapping[str, str] = os.environ,
        *,
        trust_dir: Path | None = None,
    ) -> OpcUaSettings:
        """Settings with the credentials from OPCUA_USER / OPCUA_PASSWORD (empty counts as unset)."""
        username = environ.get(USER_ENV) or None
        password = environ.get(PASSWORD_ENV) or None
        return cls(
            endpoint=endpoint,
            allow_anonymous=allow_anonymous,
            state_dir=Path(state_dir),
            username=username,
            password=password,
            trust_dir=trust_dir,
        )

    @property
    def has_credentials(self) -> bool:
        """True when a user name and password are configured."""
        return self.username is not None


def parse_endpoint(endpoint: str) -> tuple[str, int, str]:
    """(host, port, path) of an `opc.tcp://host:port/path` endpoint; ConfigError otherwise."""
    hint = "expected opc.tcp://host:port/path, e.g. " + DEFAULT_ENDPOINT
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(ENDPOINT_FLAG, f"{endpoint!r} is not a valid URL ({exc}); {hint}") from None
    if parts.scheme != "opc.tcp":
        raise ConfigError(ENDPOINT_FLAG, f"{endpoint!r} must use the opc.tcp scheme; {hint}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(ENDPOINT_FLAG, f"credentials do not belong in the endpoint; set {USER_ENV}/{PASSWORD_ENV}")
    if not parts.hostname:
        raise ConfigError(ENDPOINT_FLAG, f"{endpoint!r} has no host; {hint}")
    if port is None or not 0 < port < 65536:
        raise ConfigError(ENDPOINT_FLAG, f"{endpoint!r} needs a port between 1 and 65535; {hint}")
    if parts.query or parts.fragment:
        raise ConfigError(ENDPOINT_FLAG, f"{endpoint!r} must not have a query or fragment; {hint}")
    return parts.hostname, port, parts.path


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- security plan


def anonymous_allowed(endpoint: str, allow_anonymous: bool) -> tuple[bool, str]:
    """Whether anonymous login and the None policy are offered, and why."""
    host, _, _ = parse_endpoint(endpoint)
    if is_loopback_host(host):
        return True, f"endpoint host {host} is loopback"
    if allow_anonymous:
        return True, "--opcua-allow-anonymous is set"
    return False, f"endpoint {endpoint} is not loopback"


def select_policies(anonymous: bool) -> list[ua.SecurityPolicyType]:
    """Basic256Sha256 Sign and SignAndEncrypt always; the None policy only with anonymous access."""
    policies = [ua.SecurityPolicyType.NoSecurity] if anonymous else []
    return [*policies, *_SIGNED_POLICIES]


def select_identity_tokens(anonymous: bool, has_credentials: bool) -> list[type]:
    """Identity token types the endpoints offer (user name whenever anonymous is off)."""
    tokens: list[type] = []
    if anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    if has_credentials or not anonymous:
        tokens.append(ua.UserNameIdentityToken)
    return tokens


@dataclass(frozen=True)
class SecurityPlan:
    """What the server offers: message security policies, login token types and the reason."""

    anonymous: bool
    reason: str
    policies: tuple[ua.SecurityPolicyType, ...]
    tokens: tuple[type, ...]


def plan_security(settings: OpcUaSettings) -> SecurityPlan:
    """The security the server offers for `settings` (pure: no I/O, no logging)."""
    anonymous, reason = anonymous_allowed(settings.endpoint, settings.allow_anonymous)
    return SecurityPlan(
        anonymous=anonymous,
        reason=reason,
        policies=tuple(select_policies(anonymous)),
        tokens=tuple(select_identity_tokens(anonymous, settings.has_credentials)),
    )


class _CredentialsUserManager(UserManager):
    """Accepts exactly the configured user name and password, and anonymous when planned."""

    def __init__(self, username: str | None, password: str | None, anonymous: bool) -> None:
        self._username = username.encode() if username is not None else None
        self._password = password.encode() if password is not None else None
        self._anonymous = anonymous

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # `certificate` is the secure channel's client certificate, present whatever the login token.
        # X509 identity tokens are not offered, so no user name means an anonymous token.
        if username is None:
            return User(role=UserRole.User, name="anonymous") if self._anonymous else None
        ok = False
        if self._username is not None and self._password is not None and isinstance(password, str):
            # `&`, not `and`: always compare both, so timing tells nothing about which one was wrong.
            ok = hmac.compare_digest(username.encode(), self._username) & hmac.compare_digest(
                password.encode(), self._password
            )
        if not ok:
            return None  # logged and counted, with the client's address, by _GatewaySession
        return User(role=UserRole.User, name=username)


# --------------------------------------------------------------------------- hostile clients


class LoginThrottle:
    """Failed logins per client address, to slow down password guessing.

    After `max_failures` failures within `window_s` from one address, that address is throttled
    until its failures age out of the window: its logins are refused without checking the
    password, and its new sessions are answered only after `delay_s`. A successful login clears
    the address. Logged once per burst: a warning at the first failure and one when throttling
    starts (user names escaped); the rest at DEBUG. At most `max_clients` addresses are tracked
    (the least recently failing is forgotten first), so memory stays bounded whatever the traffic.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        delay_s: float = 1.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.delay_s = delay_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.failures_total = 0
        self.refused_total = 0
        """Logins refused unchecked because their address was throttled."""
        self.delayed_total = 0
        """New sessions answered after `delay_s` because their address was throttled."""

    def _recent(self, peer: str) -> deque[float] | None:
        times = self._failures.get(peer)
        if times is None:
            return None
        cutoff = self._clock() - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[peer]
            return None
        return times

    def throttled(self, peer: str) -> bool:
        """True while `peer` has `max_failures` failures within the window."""
        times = self._recent(peer)
        return times is not None and len(times) >= self.max_failures

    def failed(self, peer: str, user: str | None, reason: str) -> None:
        """Count a failed login of `user` from `peer` (and log it, once per burst)."""
        self.failures_total += 1
        times = self._recent(peer)
        if times is None:
            times = self._failures[peer] = deque(maxlen=self.max_failures)
            _logger.warning("OPC UA login refused from %s for user %r: %s", peer, user, reason)
        else:
            _logger.debug("OPC UA login refused from %s for user %r: %s", peer, user, reason)
        times.append(self._clock())
        self._failures.move_to_end(peer)
        if len(times) == self.max_failures:
            _logger.warning(
                "OPC UA: %d failed logins from %s within %g s (last for user %r): its logins are refused "
                "and its new sessions delayed %g s until the failures are %g s old",
                self.max_failures,
                peer,
                self.window_s,
                user,
                self.delay_s,
                self.window_s,
            )
        self._forget_old()

    def refused(self, peer: str, user: str | None) -> None:
        """Count a login refused unchecked because `peer` is throttled."""
        self.refused_total += 1
        _logger.debug("OPC UA login from throttled %s for user %r refused unchecked", peer, user)

    def succeeded(self, peer: str) -> None:
        """A login from `peer` succeeded: forget its failures."""
        self._failures.pop(peer, None)

    def _forget_old(self) -> None:
        cutoff = self._clock() - self.window_s
        while self._failures:
            peer, times = next(iter(self._failures.items()))
            if len(self._failures) <= self.max_clients and times and times[-1] >= cutoff:
                break
            del self._failures[peer]

    @property
    def clients(self) -> int:
        """Addresses tracked now."""
        return len(self._failures)


class TrustList:
    """The client certificates the server accepts (`--opcua-trust-dir`): exactly those found in the
    directory (DER or PEM files; a file that is not a certificate is skipped with a warning)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fingerprints: frozenset[bytes] = frozenset()

    def load(self) -> int:
        """(Re)read the directory; returns how many certificates it holds. Blocking."""
        found: set[bytes] = set()
        for path in sorted(self.directory.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                data = path.read_bytes()
                if b"-----BEGIN CERTIFICATE-----" in data:
                    certs = x509.load_pem_x509_certificates(data)
                else:
                    certs = [x509.load_der_x509_certificate(data)]
            except (OSError, ValueError) as exc:
                _logger.warning("--opcua-trust-dir: skipping %r: not a DER or PEM certificate (%s)", path.name, exc)
                continue
            found.update(cert.fingerprint(hashes.SHA256()) for cert in certs)
        self.fingerprints = frozenset(found)
        return len(found)

    def trusts(self, der: bytes) -> bool:
        """True when the (first) certificate of `der` is in the list and valid now."""
        try:
            cert = cast("x509.Certificate | None", uacrypto.x509_from_der(der))  # type: ignore[no-untyped-call]
        except ValueError:
            return False
        if cert is None or cert.fingerprint(hashes.SHA256()) not in self.fingerprints:
            return False
        now = dt.datetime.now(dt.UTC)
        return bool(cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)

    async def validate(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        """asyncua's certificate validator hook (CreateSession): BadCertificateUntrusted when not listed."""
        if not self.trusts(cert.public_bytes(serialization.Encoding.DER)):
            raise ServiceError(StatusCodes.BadCertificateUntrusted)


_ANONYMOUS = User(role=UserRole.Anonymous)


def _peer(name: object) -> str:
    """The client address of a session (asyncua names a client's session by its peer address);
    'unknown' when there is none, so such clients share one throttle."""
    if isinstance(name, (tuple, list)) and name and isinstance(name[0], str):
        return name[0]
    return "unknown"


def _user_of(params: ua.ActivateSessionParameters) -> str | None:
    token = params.UserIdentityToken
    return token.UserName if isinstance(token, ua.UserNameIdentityToken) else None


class _GatewaySession(InternalSession):
    """A client session that counts failed logins per client address (LoginThrottle) and checks
    the secure channel's certificate against the trust list."""

    iserver: _GatewayInternalServer

    async def create_session(
        self, params: ua.CreateSessionParameters, sockname: tuple[str, int] | None = None
    ) -> ua.CreateSessionResult:
        peer = _peer(self.name)
        throttle = self.iserver.throttle
        if throttle.throttled(peer):
            throttle.delayed_total += 1
            await asyncio.sleep(throttle.delay_s)
        try:
            return await super().create_session(params, sockname)
        except ServiceError as exc:
            if exc.code == StatusCodes.BadCertificateUntrusted:
                throttle.failed(peer, None, "client certificate not in --opcua-trust-dir")
            raise

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        peer, user = _peer(self.name), _user_of(params)
        throttle, trust = self.iserver.throttle, self.iserver.trust
        if throttle.throttled(peer):
            throttle.refused(peer, user)
            raise ServiceError(StatusCodes.BadUserAccessDenied)
        # The channel's own certificate, not the one CreateSession named (a client may leave that empty).
        if trust is not None and peer_certificate and not trust.trusts(peer_certificate):
            throttle.failed(peer, user, "client certificate not in --opcua-trust-dir")
            raise ServiceError(StatusCodes.BadCertificateUntrusted)
        try:
            result = super().activate_session(params, peer_certificate)
        except ServiceError as exc:
            if exc.code == StatusCodes.BadUserAccessDenied:
                throttle.failed(peer, user, "wrong user name or password")
            raise
        throttle.succeeded(peer)
        return result


class _GatewayInternalServer(InternalServer):
    """asyncua's internal server with `_GatewaySession` client sessions."""

    def __init__(self, user_manager: UserManager, throttle: LoginThrottle, trust: TrustList | None) -> None:
        super().__init__(user_manager=user_manager)
        self.throttle = throttle
        self.trust = trust

    def create_session(self, name: str, user: User = _ANONYMOUS, external: bool = False) -> InternalSession:
        return _GatewaySession(self, self.aspace, self.subscription_service, name, user=user, external=external)


# --------------------------------------------------------------------------- certificate


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
    _logger.info("generated the OPC UA server certificate %s (SHA-256 %s)", cert_path, _fingerprint(cert_path))
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


def _fingerprint(cert_path: Path) -> str:
    return hashlib.sha256(cert_path.read_bytes()).hexdigest().upper()


# --------------------------------------------------------------------------- units and variables


def unece_unit_id(code: str) -> int:
    """UnitId of a UNECE common code per OPC UA Part 8 (5.6.3): the code's ASCII bytes as an integer."""
    if not 0 < len(code) <= 3 or not code.isascii():
        raise ValueError(f"UNECE common code must be 1 to 3 ASCII characters, got {code!r}")
    unit_id = 0
    for i, char in enumerate(code):
        unit_id += ord(char) << (8 * (len(code) - 1 - i))
    return unit_id


def engineering_units(code: str, display: str, description: str) -> ua.EUInformation:
    """EUInformation of a UNECE unit."""
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE,
        UnitId=unece_unit_id(code),
        DisplayName=ua.LocalizedText(display),
        Description=ua.LocalizedText(description),
    )


UNIT_MM = engineering_units("MMT", "mm", "millimetre")
UNIT_DEGC = engineering_units("CEL", "°C", "degree Celsius")
UNIT_UM = engineering_units("4H", "µm", "micrometre")

_String = ua.VariantType.String
_Double = ua.VariantType.Double
_Int64 = ua.VariantType.Int64
_Boolean = ua.VariantType.Boolean

MACHINE_VARIABLES: tuple[tuple[str, ua.VariantType, ua.EUInformation | None, str], ...] = (
    ("PartId", _String, None, "Part of the latest measurement"),
    ("Feature", _String, None, "Measured feature"),
    ("MeasuredLength", _Double, UNIT_MM, "Raw CMM reading at the part temperature"),
    ("CompensatedLength", _Double, UNIT_MM, "Length compensated to 20 °C (ISO 1)"),
    ("PartTemperature", _Double, UNIT_DEGC, "Part temperature"),
    ("Deviation", _Double, UNIT_UM, "Compensated length minus nominal"),
    ("Uncertainty", _Double, UNIT_UM, "Expanded uncertainty U (k = 2)"),
    ("Verdict", _String, None, "PASS, FAIL or UNCERTAIN (ISO 14253-1)"),
)
"""(name, type, units, description) of each variable of a machine object, in write order."""

GATEWAY_VARIABLES: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("BufferDepth", _Int64, "Records not yet acknowledged, all durable sinks together"),
    ("MesConnected", _Boolean, "The MES sink is delivering"),
    ("HistorianConnected", _Boolean, "The historian sink is delivering"),
    ("FilesProcessed", _Int64, "Inbox files processed since start"),
    ("RowsRejected", _Int64, "Invalid rows since start"),
    ("BufferOldestAge", _Double, "Age of the oldest unacknowledged record, s"),
)

_INITIAL: dict[ua.VariantType, Any] = {_String: "", _Double: 0.0, _Int64: 0, _Boolean: False}
_DATATYPE: dict[ua.VariantType, int] = {
    _String: ObjectIds.String,
    _Double: ObjectIds.Double,
    _Int64: ObjectIds.Int64,
    _Boolean: ObjectIds.Boolean,
}


def _nid(identifier: str | int, ns: int = 0) -> ua.NodeId:
    """A NodeId (asyncua annotates its fields with its own int/str subclasses, hence the casts)."""
    return ua.NodeId(cast("ua.String | ua.Int32", identifier), cast("ua.Int16", ns))


def _dv(value: Any, vtype: ua.VariantType, source: dt.datetime, server: dt.datetime) -> ua.DataValue:
    """A DataValue with both timestamps."""
    return ua.DataValue(
        ua.Variant(value, vtype),
        SourceTimestamp=cast("ua.DateTime", source),
        ServerTimestamp=cast("ua.DateTime", server),
    )


def machine_node_id(ns: int, machine_id: str, variable: str | None = None) -> ua.NodeId:
    """NodeId of a machine object (variable None) or of one of its variables."""
    text = f"CMM/{machine_id}" if variable is None else f"CMM/{machine_id}/{variable}"
    return _nid(text, ns)


def gateway_node_id(ns: int, variable: str | None = None) -> ua.NodeId:
    """NodeId of the Gateway object (variable None) or of one of its variables."""
    return _nid("Gateway" if variable is None else f"Gateway/{variable}", ns)


def _object_item(nodeid: ua.NodeId, name: str, ns: int, parent: ua.NodeId, *, folder: bool = False) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, ns)
    item.ParentNodeId = parent
    item.ReferenceTypeId = _nid(ObjectIds.Organizes)
    item.NodeClass = ua.NodeClass.Object
    item.TypeDefinition = _nid(ObjectIds.FolderType if folder else ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _variable_item(
    nodeid: ua.NodeId,
    name: ua.QualifiedName,
    parent: ua.NodeId,
    value: ua.Variant,
    datatype: int,
    description: str,
    *,
    prop: bool = False,
    analog: bool = False,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = name
    item.ParentNodeId = parent
    item.NodeClass = ua.NodeClass.Variable
    if prop:
        item.ReferenceTypeId = _nid(ObjectIds.HasProperty)
        item.TypeDefinition = _nid(ObjectIds.PropertyType)
    else:
        item.ReferenceTypeId = _nid(ObjectIds.HasComponent)
        item.TypeDefinition = _nid(ObjectIds.BaseAnalogType if analog else ObjectIds.BaseDataVariableType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = _nid(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    attrs.Historizing = False
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    return item


def _ns_to_datetime(ns: int) -> dt.datetime:
    """Unix nanoseconds as an aware UTC datetime (microsecond resolution, as asyncua carries it)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


# --------------------------------------------------------------------------- the sink


class OpcUaSink(Sink):
    """Serves the newest measurement of each machine and the gateway's health as OPC UA tags.

    A live sink (not durable): `write` keeps only the last row per machine of each batch.
    """

    name = "opcua"
    durable = False

    def __init__(self, settings: OpcUaSettings) -> None:
        self.settings = settings
        self._plan = plan_security(settings)
        host, _, _ = parse_endpoint(settings.endpoint)
        self._host = host
        self._server: Server | None = None
        self._ns = 0
        self._machines: dict[str, tuple[ua.NodeId, ...]] = {}
        self._gateway_nodes: dict[str, ua.NodeId] = {}
        self._gateway_values: dict[str, Any] = {}
        self._cert_path: Path | None = None
        self._cert_fingerprint = ""
        self.login_throttle = LoginThrottle()
        self.trust = TrustList(settings.trust_dir) if settings.trust_dir is not None else None

    # -- lifecycle

    async def open(self) -> None:
        """Start the server; OpcUaStartError (after undoing a partial start) when it cannot."""
        if self._server is not None:
            raise RuntimeError("OpcUaSink.open called twice")
        endpoint = self.settings.endpoint
        if not self._plan.anonymous:
            _logger.warning(
                "anonymous access and the None policy are off: endpoint %s is not loopback; "
                "pass --opcua-allow-anonymous to allow them",
                endpoint,
            )
            if not self.settings.has_credentials:
                _logger.warning(
                    "no OPC UA client can log in: anonymous access is off and %s/%s are not set; "
                    "set them to allow user-name login",
                    USER_ENV,
                    PASSWORD_ENV,
                )
        await self._check_bindable(endpoint)
        try:
            cert_path, key_path = await asyncio.to_thread(
                ensure_certificate, self.settings.state_dir / "opcua", self._host
            )
        except OSError as exc:
            raise OpcUaStartError(f"OPC UA server on {endpoint} cannot keep its certificate: {exc}") from exc
        self._cert_path = cert_path
        self._cert_fingerprint = await asyncio.to_thread(_fingerprint, cert_path)
        if self.trust is not None:
            try:
                trusted = await asyncio.to_thread(self.trust.load)
            except OSError as exc:
                raise OpcUaStartError(f"--opcua-trust-dir {self.trust.directory}: cannot read it: {exc}") from None
            _logger.info("OPC UA trust list: %d client certificate(s) in %s", trusted, self.trust.directory)
            if not trusted:
                _logger.warning(
                    "--opcua-trust-dir %s holds no certificate: no client with a certificate can connect",
                    self.trust.directory,
                )
        users = _CredentialsUserManager(self.settings.username, self.settings.password, self._plan.anonymous)
        server = Server(iserver=_GatewayInternalServer(users, self.login_throttle, self.trust))
        if self.trust is not None:
            server.set_certificate_validator(self.trust.validate)
        self._server = server
        try:
            await self._start(server, cert_path, key_path)
        except Exception as exc:
            await self.close()
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(exc)}") from exc
        except BaseException:  # cancelled while starting: undo the partial start, then propagate
            await self.close()
            raise
        _logger.debug("OPC UA server listening on %s", self.endpoint_url)

    async def _check_bindable(self, endpoint: str) -> None:
        """Fail fast, before the slow address-space load, when the endpoint cannot be bound."""
        host, port, _ = parse_endpoint(endpoint)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(exc)}") from None
        bound, error = 0, None
        for family, kind, proto, _, address in infos:
            try:
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind(address)
                bound += 1
            except OSError as exc:
                # Like asyncio.create_server: an address that is not available (e.g. IPv6 disabled) is
                # skipped, any other failure (port in use, permission) is fatal.
                error = exc
                if exc.errno != errno.EADDRNOTAVAIL:
                    break
        if error is not None and (error.errno != errno.EADDRNOTAVAIL or not bound):
            raise OpcUaStartError(f"OPC UA server could not start on {endpoint}: {_describe(error)}")

    async def _start(self, server: Server, cert_path: Path, key_path: Path) -> None:
        server.set_server_name(SERVER_NAME)
        server.product_uri = NAMESPACE_URI
        server.manufacturer_name = "cmm-twin"
        await server.init()
        server.set_endpoint(self.settings.endpoint)
        await server.set_application_uri(APPLICATION_URI)
        server.set_security_policy(list(self._plan.policies))
        server.set_identity_tokens(list(self._plan.tokens))
        await server.load_certificate(cert_path)
        await server.load_private_key(key_path)
        self._ns = await server.register_namespace(NAMESPACE_URI)
        await self._build_address_space(server)
        await server.start()

    async def close(self) -> None:
        """Stop the server; never raises, idempotent."""
        server, self._server = self._server, None
        self._machines.clear()
        self._gateway_nodes.clear()
        self._gateway_values.clear()
        if server is None:
            return
        try:
            await _stop_clock(server)
            await server.stop()
        except Exception:
            _logger.warning("error while stopping the OPC UA server", exc_info=True)

    # -- information

    @property
    def namespace_index(self) -> int:
        """Index of `urn:cmm-twin` in the running server's NamespaceArray."""
        return self._ns

    @property
    def endpoint_url(self) -> str:
        """The endpoint the server listens on (the configured one until started)."""
        if self._server is not None:
            return str(self._server.endpoint.geturl())
        return self.settings.endpoint

    def security_summary(self) -> str:
        """One line for the startup log: policies, logins and the certificate."""
        plan = self._plan
        policies = ", ".join(_POLICY_NAMES.get(p, str(p)) for p in plan.policies)
        logins = []
        if plan.anonymous:
            logins.append("anonymous")
        if self.settings.has_credentials:
            logins.append(f"user {self.settings.username!r}")
        login = " + ".join(logins) if logins else f"nobody (set {USER_ENV}/{PASSWORD_ENV})"
        anon = f"anonymous/None {'on' if plan.anonymous else 'off'} ({plan.reason})"
        cert = "certificate not generated yet"
        if self._cert_path is not None:
            cert = f"certificate {self._cert_path} SHA-256 {self._cert_fingerprint}"
        trust = ""
        if self.trust is not None:
            trust = f"; client certificates: only the {len(self.trust.fingerprints)} in {self.trust.directory}"
        return f"OPC UA {self.endpoint_url}: policies {policies}; login {login}; {anon}; {cert}{trust}"

    # -- address space

    async def _add_nodes(self, server: Server, items: list[ua.AddNodesItem]) -> None:
        results = await server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise RuntimeError(f"cannot add OPC UA node {item.RequestedNewNodeId.to_string()}: {result.StatusCode}")

    async def _build_address_space(self, server: Server) -> None:
        ns = self._ns
        objects = _nid(ObjectIds.ObjectsFolder)
        gateway = gateway_node_id(ns)
        items = [
            _object_item(_nid("CMM", ns), "CMM", ns, objects, folder=True),
            _object_item(gateway, "Gateway", ns, objects),
        ]
        for name, vtype, description in GATEWAY_VARIABLES:
            nodeid = gateway_node_id(ns, name)
            initial = _INITIAL[vtype]
            items.append(
                _variable_item(
                    nodeid,
                    ua.QualifiedName(name, ns),
                    gateway,
                    ua.Variant(initial, vtype),
                    _DATATYPE[vtype],
                    description,
                )
            )
            self._gateway_nodes[name] = nodeid
            self._gateway_values[name] = initial
        await self._add_nodes(server, items)

    async def _add_machine(self, server: Server, machine_id: str) -> tuple[ua.NodeId, ...]:
        ns = self._ns
        obj = machine_node_id(ns, machine_id)
        items = [_object_item(obj, machine_id, ns, _nid("CMM", ns))]
        nodeids: list[ua.NodeId] = []
        for name, vtype, units, description in MACHINE_VARIABLES:
            nodeid = machine_node_id(ns, machine_id, name)
            path = f"CMM/{machine_id}/{name}"
            items.append(
                _variable_item(
                    nodeid,
                    ua.QualifiedName(name, ns),
                    obj,
                    ua.Variant(_INITIAL[vtype], vtype),
                    _DATATYPE[vtype],
                    description,
                    analog=units is not None,
                )
            )
            if units is not None:
                items.append(
                    _variable_item(
                        _nid(f"{path}/EngineeringUnits", ns),
                        ua.QualifiedName("EngineeringUnits", 0),
                        nodeid,
                        ua.Variant(units, ua.VariantType.ExtensionObject),
                        ObjectIds.EUInformation,
                        "Engineering units (UNECE)",
                        prop=True,
                    )
                )
            nodeids.append(nodeid)
        await self._add_nodes(server, items)
        self._machines[machine_id] = created = tuple(nodeids)
        _logger.info("OPC UA: new machine %s at %s", machine_id, obj.to_string())
        return created

    # -- data

    def _require_server(self) -> Server:
        if self._server is None:
            raise RuntimeError("OpcUaSink used while not open")
        return self._server

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Publish the last row of each machine in `batch` (arrival order) and return Delivered."""
        server = self._require_server()
        count = len(batch)
        if count == 0:
            return Delivered()
        # dict(zip(...)) runs in C and keeps the last position of each key: the newest row per machine.
        last_row = dict(zip(batch.machine_id, range(count), strict=True))
        rows = list(last_row.values())
        stamps = batch.timestamp_ns[rows].tolist()
        measured = batch.measured_mm[rows].tolist()
        compensated = batch.compensated_mm[rows].tolist()
        temperature = batch.part_temp_c[rows].tolist()
        deviation = batch.deviation_um[rows].tolist()
        uncertainty = batch.uncertainty_um[rows].tolist()
        verdicts = VERDICT_NAMES[batch.verdict[rows]].tolist()
        now = dt.datetime.now(dt.UTC)
        aspace = server.iserver.aspace
        value_attr = AttributeIds.Value
        for k, (machine_id, row) in enumerate(last_row.items()):
            nodeids = self._machines.get(machine_id)
            if nodeids is None:
                nodeids = await self._add_machine(server, machine_id)
            source = _ns_to_datetime(stamps[k])
            values = (
                (batch.part_id[row], _String),
                (batch.feature[row], _String),
                (measured[k], _Double),
                (compensated[k], _Double),
                (temperature[k], _Double),
                (deviation[k], _Double),
                (uncertainty[k], _Double),
                (verdicts[k], _String),
            )
            for nodeid, (value, vtype) in zip(nodeids, values, strict=True):
                status = await aspace.write_attribute_value(
                    nodeid,
                    value_attr,
                    _dv(value, vtype, source, now),
                )
                if not status.is_good():
                    _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), status)
        return Delivered()

    async def update_gateway(self, status: GatewayStatus) -> None:
        """Publish the gateway's figures; writes only the values that changed. No-op when not open."""
        server = self._server
        if server is None:
            return
        values: dict[str, Any] = {
            "BufferDepth": int(status.buffer_depth),
            "MesConnected": status.connected("mes"),
            "HistorianConnected": status.connected("historian"),
            "FilesProcessed": int(status.files_processed),
            "RowsRejected": int(status.rows_rejected),
            "BufferOldestAge": round(max((s.oldest_age_s for s in status.sinks.values()), default=0.0), 1),
        }
        now = dt.datetime.now(dt.UTC)
        for name, vtype, _ in GATEWAY_VARIABLES:
            value = values[name]
            if self._gateway_values.get(name) == value:
                continue
            nodeid = self._gateway_nodes[name]
            result = await server.iserver.aspace.write_attribute_value(
                nodeid,
                AttributeIds.Value,
                _dv(value, vtype, now, now),
            )
            if result.is_good():
                self._gateway_values[name] = value
            else:
                _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), result)


async def _stop_clock(server: Server) -> None:
    """Cancel asyncua's once-a-second clock task, so stopping does not wait up to a second for it."""
    task = server.iserver.time_task
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    server.iserver.time_task = None


def _describe(exc: BaseException) -> str:
    """A one-line reason for `exc`."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
