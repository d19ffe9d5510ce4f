"""Settings of the OPC UA sink: the endpoint, anonymous access, the trust list and the credentials
(`--opcua-endpoint`, `--opcua-allow-anonymous`, `--opcua-trust-dir`).

The user name and password come only from the environment (OPCUA_USER / OPCUA_PASSWORD), never
from the command line; both or neither must be set. No asyncua here: the registry imports this
module at every start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cmm_twin.errors import ConfigError
from cmm_twin.options import Option, parse_switch

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/cmm-twin/"
USER_ENV = "OPCUA_USER"
PASSWORD_ENV = "OPCUA_PASSWORD"
ENDPOINT_FLAG = "--opcua-endpoint"


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

    @classmethod
    def from_config(cls, config: GatewayConfig, environ: Mapping[str, str] | None = None) -> OpcUaSettings | None:
        """The settings from the gateway's configuration, or None when OPC UA is off."""
        if "opcua" in config.sinks_off:
            return None
        trust_dir = config.options["opcua_trust_dir"]
        return cls.from_env(
            str(config.options["opcua_endpoint"]),
            bool(config.options["opcua_allow_anonymous"]),
            config.state_dir,
            {} if environ is None else environ,
            trust_dir=None if trust_dir is None else Path(trust_dir),
        )

    @property
    def has_credentials(self) -> bool:
        """True when a user name and password are configured."""
        return self.username is not None

    @property
    def host(self) -> str:
        """The endpoint's host name or address."""
        return parse_endpoint(self.endpoint)[0]


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


def _endpoint_option(value: str) -> str:
    try:
        parse_endpoint(value.strip())
    except ConfigError as exc:
        raise ValueError(exc.reason) from None
    return value.strip()


def _trust_dir(value: str) -> Path:
    path = Path(value.strip())
    if not path.is_dir():
        raise ValueError(f"no such directory: {value!r}")
    return path


OPTIONS = (
    Option(ENDPOINT_FLAG, _endpoint_option, DEFAULT_ENDPOINT, "OPC UA server endpoint", metavar="URL"),
    Option(
        "--opcua-allow-anonymous",
        parse_switch,
        False,
        "offer anonymous login and the None policy off loopback too",
        is_switch=True,
    ),
    Option(
        "--opcua-trust-dir",
        _trust_dir,
        None,
        "directory of trusted OPC UA client certificates (DER or PEM): when given, only these are accepted",
        metavar="DIR",
    ),
)
