"""What the OPC UA server offers and whom it lets in (docs/opcua-security.md).

- `plan_security`: the message security policies and login token types for the settings
  (Basic256Sha256 Sign and SignAndEncrypt always; anonymous login and the None policy only on a
  loopback endpoint or with `--opcua-allow-anonymous`).
- `CredentialsUserManager`: accepts exactly OPCUA_USER / OPCUA_PASSWORD (compared in constant time).
- `LoginThrottle`: slows down password guessing per client address.
- `TrustList`: the client certificates of `--opcua-trust-dir`, the only ones accepted when given.
- `GatewayInternalServer`: asyncua's internal server whose sessions apply the throttle and the
  trust list.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cmm_twin.gateway.sinks.opcua.settings import OpcUaSettings, is_loopback_host, parse_endpoint

_logger = logging.getLogger(__name__)

_SIGNED_POLICIES = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
)
POLICY_NAMES: dict[ua.SecurityPolicyType, str] = {
    ua.SecurityPolicyType.NoSecurity: "None",
    ua.SecurityPolicyType.Basic256Sha256_Sign: "Basic256Sha256/Sign",
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt: "Basic256Sha256/SignAndEncrypt",
}
"""How the start-up log names each policy."""


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


class CredentialsUserManager(UserManager):
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
            return None  # logged and counted, with the client's address, by GatewaySession
        return User(role=UserRole.User, name=username)


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


class GatewaySession(InternalSession):
    """A client session that counts failed logins per client address (LoginThrottle) and checks
    the secure channel's certificate against the trust list."""

    iserver: GatewayInternalServer

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


class GatewayInternalServer(InternalServer):
    """asyncua's internal server with `GatewaySession` client sessions."""

    def __init__(self, user_manager: UserManager, throttle: LoginThrottle, trust: TrustList | None) -> None:
        super().__init__(user_manager=user_manager)
        self.throttle = throttle
        self.trust = trust

    def create_session(self, name: str, user: User = _ANONYMOUS, external: bool = False) -> InternalSession:
        return GatewaySession(self, self.aspace, self.subscription_service, name, user=user, external=external)
