"""Settings of the OPC UA sink: the endpoint, anonymous access, the trust list and the credentials
(`--opcua-endpoint`, `--opcua-allow-anonymous`, `--opcua-trust-dir`), and the Machinery model's
(`--opcua-nodesets`, `--opcua-machine-idle-s`, each machine's identification from
`[machines."<id>"]`; docs/opcua.md, "Machinery").

The user name and password come only from the environment (OPCUA_USER / OPCUA_PASSWORD), never
from the command line; both or neither must be set. No asyncua here: the registry imports this
module at every start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cmm_twin.errors import ConfigError
from cmm_twin.options import Option, parse_switch

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/cmm-twin/"
USER_ENV = "OPCUA_USER"
PASSWORD_ENV = "OPCUA_PASSWORD"
HEALTH_INTERVAL_S = 1.0
"""The Gateway tags and the Machinery state follow the gateway once a second (an idle gateway wakes
once a second for them; at 4 Hz an idle gateway used 0.2 % of a core more)."""
ENDPOINT_FLAG = "--opcua-endpoint"
NODESETS_FLAG = "--opcua-nodesets"
MACHINE_IDLE_FLAG = "--opcua-machine-idle-s"
DEFAULT_MACHINE_IDLE_S = 600.0
MAX_MACHINE_IDLE_S = 30 * 86400.0
"""A machine is NotExecuting when no file of it arrived for this long: longer than a CMM's usual
cycle of a few minutes per part, so a machine measuring part after part stays Executing."""
IDENTITY_KEYS = ("manufacturer", "model", "serial_number", "product_instance_uri", "year_of_construction")
"""Keys of a `[machines."<id>"]` table that identify the machine on OPC UA (OPC 40001-1)."""
UNKNOWN = "unknown"
_MACHINE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+")
_TEXT_MAX = 256
_FIRST_YEAR = 1900


@dataclass(frozen=True)
class MachineIdentity:
    """A machine's MachineIdentification (OPC 40001-1). What is not configured is "unknown" (the
    mandatory texts), `urn:cmm-twin:machine:<id>` (ProductInstanceUri, unique within the
    gateway) or left out (YearOfConstruction: no year is better than a wrong one)."""

    manufacturer: str = UNKNOWN
    model: str = UNKNOWN
    serial_number: str = UNKNOWN
    product_instance_uri: str | None = None
    year_of_construction: int | None = None

    def instance_uri(self, machine_id: str) -> str:
        """ProductInstanceUri: the configured one or `urn:cmm-twin:machine:<machine_id>`."""
        return self.product_instance_uri or f"urn:cmm-twin:machine:{machine_id}"


def machine_identity(machine_id: str, entry: Mapping[str, Any], where: str) -> MachineIdentity | None:
    """The identification keys of one `[machines."<id>"]` table (`where` names it), or None when
    it has none; ConfigError naming the key and machine for a bad value."""
    given = {k: entry[k] for k in IDENTITY_KEYS if k in entry}
    if not given:
        return None
    if _MACHINE_ID.fullmatch(machine_id) is None:
        raise ConfigError(where, f"machine id {machine_id!r} must match [A-Za-z0-9_.-]{{1,64}}")
    values: dict[str, Any] = {}
    for key in ("manufacturer", "model", "serial_number", "product_instance_uri"):
        if key not in given:
            continue
        value = given[key]
        if not isinstance(value, str) or not value.strip() or len(value.strip()) > _TEXT_MAX:
            raise ConfigError(
                f"{where}.{key}", f"expected a non-empty text of at most {_TEXT_MAX} characters, got {value!r}"
            )
        values[key] = value.strip()
    uri = values.get("product_instance_uri")
    if uri is not None and _URI.fullmatch(uri) is None:
        raise ConfigError(f"{where}.product_instance_uri", f"expected a URI such as urn:vendor:serial, got {uri!r}")
    if "year_of_construction" in given:
        year = given["year_of_construction"]
        last = dt.datetime.now(dt.UTC).year + 1
        if isinstance(year, bool) or not isinstance(year, int) or not _FIRST_YEAR <= year <= last:
            raise ConfigError(f"{where}.year_of_construction", f"expected a year {_FIRST_YEAR}..{last}, got {year!r}")
        values["year_of_construction"] = year
    return MachineIdentity(**values)


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
    nodesets_dir: Path | None = None
    """Where the DI, IA and Machinery nodesets are (None: `<sys.prefix>/share/cmm-twin/nodesets`)."""
    machine_idle_s: float = DEFAULT_MACHINE_IDLE_S
    """A machine's MachineryItemState turns NotExecuting this long after its last file."""
    identities: Mapping[str, MachineIdentity] = dataclasses.field(default_factory=dict)
    """MachineIdentification by machine id, from `[machines."<id>"]` (others get the defaults)."""

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint)
        if not 0 < self.machine_idle_s <= MAX_MACHINE_IDLE_S:  # NaN fails too
            raise ConfigError(
                MACHINE_IDLE_FLAG, f"must be in (0, {MAX_MACHINE_IDLE_S:g}] s, got {self.machine_idle_s!r}"
            )
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
        nodesets = config.options["opcua_nodesets"]
        settings = cls.from_env(
            str(config.options["opcua_endpoint"]),
            bool(config.options["opcua_allow_anonymous"]),
            config.state_dir,
            {} if environ is None else environ,
            trust_dir=None if trust_dir is None else Path(trust_dir),
        )
        return dataclasses.replace(
            settings,
            nodesets_dir=None if nodesets is None else Path(nodesets),
            machine_idle_s=float(config.options["opcua_machine_idle_s"]),
            identities=dict(config.machine_identities),
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


def _idle_seconds(value: str) -> float:
    number = float(value)
    if not 0 < number <= MAX_MACHINE_IDLE_S:  # NaN fails too
        raise ValueError(f"must be in (0, {MAX_MACHINE_IDLE_S:g}] s (30 days), got {value!r}")
    return number


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
    Option(
        NODESETS_FLAG,
        Path,
        None,
        "directory of the OPC UA nodesets DI, IA and Machinery (default: <python prefix>/share/cmm-twin/nodesets,"
        " filled by `cmm-twin nodesets`); without them OPC UA serves no Machinery model",
        metavar="DIR",
    ),
    Option(
        MACHINE_IDLE_FLAG,
        _idle_seconds,
        DEFAULT_MACHINE_IDLE_S,
        "a machine's OPC UA MachineryItemState turns NotExecuting this many seconds after its last file",
        metavar="S",
    ),
)
