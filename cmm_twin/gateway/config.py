"""Gateway configuration: flags, `CMM_<FLAG>` environment variables and an optional TOML file.

Resolved by `cmm_twin.options.resolve`: command-line flag, then environment variable (an empty one
counts as unset), then the TOML file, then the default. Everything is validated at start-up; an
invalid value raises ConfigError naming the flag, variable or TOML key, which the entry point
prints as one line and exits 2. Secrets (tokens, passwords) are never options: they come only from
the environment (MES_TOKEN, INFLUX_TOKEN, OPCUA_USER, OPCUA_PASSWORD) or an untracked .env loaded
into it.

The option table is `gateway_options()`: the core options and those the sink plugins declare. A
plugin reads the value of an option it declared from `GatewayConfig.options` by dest.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.quality.settings import QualitySettings, quality_settings
from cmm_twin.gateway.sinks.opcua.settings import IDENTITY_KEYS, MachineIdentity, machine_identity
from cmm_twin.gateway.sources.inputs import InputSettings, input_settings
from cmm_twin.logs import LOG_FILE_OPTIONS
from cmm_twin.options import (
    ENV_PREFIX,
    ConfigErrorParser,
    Option,
    option_table,
    parse_host,
    parse_log_level,
    parse_positive,
    parse_switch,
    parse_text,
    resolve,
)
from cmm_twin.physics.decision import DECISION_RESOLUTION_UM
from cmm_twin.physics.materials import MATERIALS, Material, materials_with_overrides
from cmm_twin.physics.thermal import DecisionRule, PhysicsConfig, ThermalLimits, UncertaintyInputs

if TYPE_CHECKING:
    from cmm_twin.gateway.sinks.plugin import SinkPlugin

PROG = "cmm_edge_gateway.py"


HTTP_TOKEN_ENV = "GATEWAY_TOKEN"
"""The bearer token of the page and the APIs (docs/page.md): a secret, so only from the environment."""
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): no one else can connect."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0..65535, got {port_text!r}")
    return host, int(port_text)


def _non_negative(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


def _host_names(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    for name in names:
        if any(c.isspace() or c in "/@?#" for c in name):
            raise ValueError(f"expected host names separated by commas, got {name!r}")
    return names


CORE_OPTIONS: tuple[Option, ...] = option_table(
    ENV_PREFIX,
    (
        Option(
            "--data-dir",
            Path,
            Path("data"),
            "data directory holding inbox/, archive/, quarantine/, state/",
            metavar="DIR",
        ),
        Option(
            "--http",
            _host_port,
            ("127.0.0.1", 8080),
            "HOST:PORT of /health, /metrics and the page",
            metavar="HOST:PORT",
        ),
        Option(
            "--http-allowed-hosts",
            _host_names,
            None,
            "comma-separated extra Host names the HTTP API answers (e.g. a reverse proxy's); "
            "loopback names and the --http address are always answered, other names get 421",
            metavar="NAMES",
        ),
        Option(
            "--http-allow-anonymous",
            parse_switch,
            False,
            f"serve the page and the APIs without a token although --http is not loopback (else {HTTP_TOKEN_ENV} is"
            " required there)",
            is_switch=True,
        ),
        Option(
            "--once",
            parse_switch,
            False,
            "process what is in the inbox, deliver it, exit: 0 when everything was delivered; 1 when a"
            " file was quarantined or refused, a row rejected, a record dead-lettered or a sink refused the gateway",
            is_switch=True,
        ),
        Option(
            "--settle-ms",
            _non_negative,
            2000.0,
            "for files whose writer the gateway cannot detect by a lease (another user's file, as in a"
            " container): read only after size and mtime stayed unchanged this long",
            metavar="MS",
        ),
        Option(
            "--spool-limit-mb",
            parse_positive,
            1024.0,
            "stop taking new files while the spool holds this much",
            metavar="MB",
        ),
        Option("--default-material", parse_text, "AL6061", "material of rows without a material column", metavar="KEY"),
        Option("--log-level", parse_log_level, "INFO", "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL"),
        *LOG_FILE_OPTIONS,
        Option(
            "--log-summary-s",
            _non_negative,
            60.0,
            "log a summary line (files, rows, rejects, each sink's buffer) this often; past a few files per"
            " interval the per-file lines go to DEBUG (0: no summary, every file at INFO)",
            metavar="S",
        ),
    ),
)
"""The gateway's own options; sink plugins append theirs in `gateway_options()`."""
OPTIONS = CORE_OPTIONS
"""The gateway's option table (the core options; `gateway_options()` adds the plugins')."""
CONFIG_OPTION = option_table(
    ENV_PREFIX,
    (
        Option(
            "--config",
            str,
            None,
            "TOML file with any of these keys (name without `--`, `-` as `_`) and the `[physics]`, "
            "`[limits]`, `[materials]`, `[ingest]`, `[sinks]` tables",
            metavar="FILE.toml",
        ),
    ),
)[0]
TOML_SECTIONS = ("physics", "limits", "materials", "ingest", "sinks", "inputs", "machines", "quality", "opcua")
MACHINE_KEYS = ("cmm_mpe_a_um", "cmm_mpe_k_mm_per_um")
"""Keys of a `[machines."<id>"]` table: the MPE E0 = A + L/K of that CMM (ISO 10360-2); the
identification keys (`IDENTITY_KEYS`: manufacturer, model, ...) may stand beside them."""
OPCUA_TABLE_KEYS = ("endpoint", "allow_anonymous", "trust_dir", "nodesets", "machine_idle_s")
"""Keys of the `[opcua]` table: the `opcua_<key>` options (e.g. `machine_idle_s` is --opcua-machine-idle-s)."""
SECTION_KEYS: dict[tuple[str, str], tuple[str, type, float]] = {
    ("ingest", "chunk_rows"): ("chunk_rows", int, 1_000_000),
    ("ingest", "files_per_commit"): ("files_per_commit", int, 10_000),
    ("sinks", "batch_size"): ("sink_batch_size", int, 100_000),
    ("sinks", "backoff_min_s"): ("sink_backoff_min_s", float, 3600.0),
    ("sinks", "backoff_max_s"): ("sink_backoff_max_s", float, 3600.0),
    ("sinks", "historian_batch_size"): ("historian_batch_size", int, 100_000),
}
"""TOML keys of the [ingest] and [sinks] tables: (config field, type, largest value)."""


@dataclass(frozen=True)
class GatewayConfig:
    """The validated configuration of one gateway run."""

    data_dir: Path = Path("data")
    http: tuple[str, int] = ("127.0.0.1", 8080)
    http_allowed_hosts: tuple[str, ...] | None = None
    http_allow_anonymous: bool = False
    once: bool = False
    settle_ms: float = 2000.0
    spool_limit_mb: float = 1024.0
    default_material: str = "AL6061"
    log_level: str = "INFO"
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    materials: Mapping[str, Material] = field(default_factory=lambda: dict(MATERIALS))
    chunk_rows: int = 1_000
    files_per_commit: int = 200
    sinks_off: frozenset[str] = frozenset()
    """Sink plugins not to build even when configured (for embedding and tests; no option)."""
    sink_batch_size: int = 500
    historian_batch_size: int = 5_000
    sink_backoff_min_s: float = 0.5
    sink_backoff_max_s: float = 30.0
    inputs: InputSettings = field(default_factory=InputSettings)
    """The `[inputs]` table: what every source settles the same way."""
    quality: QualitySettings = field(default_factory=QualitySettings)
    """The `[quality]` table: the capability monitor's window and alarm rule (docs/capability.md)."""
    machine_identities: Mapping[str, MachineIdentity] = field(default_factory=dict)
    """Each `[machines."<id>"]` table's identification (OPC UA Machinery), for those that have one."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Every option's value by dest, those of plugins' options too (a plugin reads the options it
    declared here); always agrees with the typed fields above."""

    def __post_init__(self) -> None:
        merged = {o.dest: o.default for o in gateway_options()}
        merged.update(self.options)
        merged.update((dest, getattr(self, dest)) for dest in _TYPED_FIELDS)
        object.__setattr__(self, "options", MappingProxyType(merged))

    @property
    def inbox(self) -> Path:
        """Where CSV files arrive."""
        return self.data_dir / "inbox"

    @property
    def archive(self) -> Path:
        """Where fully valid files go."""
        return self.data_dir / "archive"

    @property
    def quarantine(self) -> Path:
        """Where files with rejected rows go, beside their `.errors.json` report."""
        return self.data_dir / "quarantine"

    @property
    def state_dir(self) -> Path:
        """Durable state: spool, progress, certificates, dead letters, the embedded historian."""
        return self.data_dir / "state"

    @property
    def history_path(self) -> Path:
        """The embedded historian's database (`--historian sqlite`)."""
        return self.state_dir / "history.sqlite"


_TYPED_FIELDS = frozenset(o.dest for o in CORE_OPTIONS) & {f.name for f in fields(GatewayConfig)}
"""The options with a typed field of GatewayConfig (the core ones)."""


def gateway_options() -> tuple[Option, ...]:
    """The gateway's option table: the core options, then the options the sink plugins declare
    (appended here, each reading its variable under the gateway's prefix)."""
    extra = tuple(option for plugin in sink_plugins() for option in plugin.options)
    return CORE_OPTIONS + option_table(ENV_PREFIX, extra)


def sink_plugins() -> tuple[SinkPlugin, ...]:
    """The registered sink plugins (imported here, not at module level: plugins import this module)."""
    from cmm_twin.gateway.sinks.registry import SINK_PLUGINS  # noqa: PLC0415

    return SINK_PLUGINS


def build_parser(options: Sequence[Option] | None = None) -> argparse.ArgumentParser:
    """The gateway's command line (defaults shown are applied after env and TOML)."""
    parser = ConfigErrorParser(prog=PROG, description="cmm-twin edge gateway")
    parser.add_options(gateway_options() if options is None else options)
    parser.add_options((CONFIG_OPTION,))
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate flags, environment and TOML into a GatewayConfig (or raise ConfigError)."""
    environ = os.environ if environ is None else environ
    options = gateway_options()
    args = build_parser(options).parse_args(argv)
    config_path = resolve((CONFIG_OPTION,), args, environ).values[CONFIG_OPTION.dest]
    toml_data = _read_toml(Path(config_path), options) if config_path else {}
    _flatten_tables(toml_data, str(config_path))
    values = resolve(options, args, environ, toml_data, str(config_path)).values
    sections = {k: v for k, v in toml_data.items() if k in TOML_SECTIONS}
    typed = {k: v for k, v in values.items() if k in _TYPED_FIELDS}

    config = GatewayConfig(**typed, options=values, **_sections(sections, str(config_path)))
    _check_combinations(config)
    check_http_token(config, environ)
    for plugin in sink_plugins():  # each plugin validates its own settings now, not at first use
        plugin.validate(config)
    return config


def _flatten_tables(toml_data: dict[str, Any], where: str) -> None:
    """The TOML keys of options that live in a table: `[inputs] material` (--default-material),
    `[outbox] dir` (--outbox), `[outbox] formats` (--outbox-formats, a list) and `[opcua] <key>`
    (--opcua-<key>; the flat `opcua_<key>` wins)."""
    inputs = toml_data.get("inputs")
    if isinstance(inputs, dict) and "material" in inputs:
        toml_data.setdefault("default_material", inputs["material"])
    opcua = toml_data.pop("opcua", None)
    if opcua is not None:
        if not isinstance(opcua, dict):
            raise ConfigError(f"{where}: opcua", "must be a table")
        for key, value in opcua.items():
            if key not in OPCUA_TABLE_KEYS:
                raise ConfigError(f"{where}: opcua.{key}", f"unknown key (known: {', '.join(OPCUA_TABLE_KEYS)})")
            toml_data.setdefault(f"opcua_{key}", value)
    outbox = toml_data.get("outbox")
    if not isinstance(outbox, dict):
        return  # absent, or the flat key `outbox = "DIR"`
    del toml_data["outbox"]
    unknown = set(outbox) - {"dir", "formats"}
    if unknown:
        raise ConfigError(f"{where}: outbox.{sorted(unknown)[0]}", "unknown key")
    if "dir" in outbox:
        toml_data["outbox"] = outbox["dir"]
    formats = outbox.get("formats")
    if formats is not None:
        if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
            raise ConfigError(f"{where}: outbox.formats", f"expected a list of names, got {formats!r}")
        toml_data.setdefault("outbox_formats", ",".join(formats))


def _machines(table: Mapping[str, Any], where: str, defaults: UncertaintyInputs) -> dict[str, tuple[float, float]]:
    """The `[machines."<id>"]` tables: (A, K) of each machine's MPE; a key it omits is the
    `[physics]` one (`defaults`)."""
    machines: dict[str, tuple[float, float]] = {}
    for machine, entry in table.items():
        key = f'{where}: machines."{machine}"'
        if not isinstance(entry, dict):
            raise ConfigError(key, "must be a table")
        extra = set(entry) - set(MACHINE_KEYS) - set(IDENTITY_KEYS)
        if extra:
            known = ", ".join(MACHINE_KEYS + IDENTITY_KEYS)
            raise ConfigError(f"{key}.{sorted(extra)[0]}", f"unknown key (known: {known})")
        values = []
        for name in MACHINE_KEYS:
            value = entry.get(name, getattr(defaults, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key}.{name}", f"expected a number, got {value!r}")
            values.append(float(value))
        machines[str(machine)] = (values[0], values[1])
    return machines


def _machine_identities(table: Mapping[str, Any], where: str) -> dict[str, MachineIdentity]:
    """The identification of each `[machines."<id>"]` table that has one (OPC UA Machinery)."""
    identities: dict[str, MachineIdentity] = {}
    for machine, entry in table.items():
        if isinstance(entry, dict):  # not a table: `_machines` says so
            identity = machine_identity(str(machine), entry, f'{where}: machines."{machine}"')
            if identity is not None:
                identities[str(machine)] = identity
    return identities


def _read_toml(path: Path, options: Sequence[Option]) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(CONFIG_OPTION.flag, f"no such file: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(CONFIG_OPTION.flag, f"cannot read {path}: {exc}") from None
    unknown = set(data) - {o.dest for o in options} - set(TOML_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0]}", "unknown key")
    return data


def _table(sections: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = sections.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name}", "must be a table")
    return value


def _sections(sections: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Turn the [physics], [limits], [materials], [ingest] and [sinks] tables into config fields."""
    out: dict[str, Any] = {}
    physics = dict(_table(sections, "physics", where))
    rule = physics.pop("rule", DecisionRule.GUARD_BANDED.value)
    if rule not in [r.value for r in DecisionRule]:
        raise ConfigError(f"{where}: physics.rule", f"expected guard_banded or simple, got {rule!r}")
    scale_material = physics.pop("scale_material", None)
    resolution = physics.pop("decision_resolution_um", DECISION_RESOLUTION_UM)
    uncertainty_keys = set(UncertaintyInputs.__dataclass_fields__)
    unknown = set(physics) - uncertainty_keys
    if unknown:
        raise ConfigError(f"{where}: physics.{sorted(unknown)[0]}", "unknown key")
    materials = materials_with_overrides(_table(sections, "materials", where))
    scale_cte = scale_u = 0.0
    if scale_material is not None:
        key = str(scale_material).upper()
        if key not in materials:
            raise ConfigError(f"{where}: physics.scale_material", f"unknown material {scale_material!r}")
        scale_cte, scale_u = materials[key].cte_per_k, materials[key].cte_u_per_k
    limits = _table(sections, "limits", where)
    unknown = set(limits) - set(ThermalLimits.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{where}: limits.{sorted(unknown)[0]}", "unknown key")
    inputs = input_settings(_table(sections, "inputs", where), where, materials)
    try:
        uncertainty = UncertaintyInputs(**{k: float(v) for k, v in physics.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: physics", str(exc)) from None
    machine_mpe = _machines(_table(sections, "machines", where), where, uncertainty)  # its errors name the file
    try:
        out["physics"] = PhysicsConfig(
            uncertainty=uncertainty,
            limits=ThermalLimits(**{k: float(v) for k, v in limits.items()}),
            rule=DecisionRule(rule),
            scale_cte_per_k=scale_cte,
            scale_cte_u_per_k=scale_u,
            assumed_temp_c=inputs.assumed_temp_c,
            assumed_temp_half_range_k=inputs.assumed_temp_half_range_k,
            decision_resolution_um=float(resolution),
            machine_mpe=machine_mpe,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.key}", exc.reason) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: physics", str(exc)) from None
    out["machine_identities"] = _machine_identities(_table(sections, "machines", where), where)
    out["materials"] = materials
    out["inputs"] = inputs
    out["quality"] = quality_settings(_table(sections, "quality", where), where)
    for section in ("ingest", "sinks"):
        table = _table(sections, section, where)
        for key, value in table.items():
            spec = SECTION_KEYS.get((section, key))
            if spec is None:
                raise ConfigError(f"{where}: {section}.{key}", "unknown key")
            field_name, kind, upper = spec
            number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is int and not isinstance(value, int):
                number_ok = False
            if not number_ok or not 0 < value <= upper or not math.isfinite(value):
                raise ConfigError(
                    f"{where}: {section}.{key}", f"expected a {kind.__name__} in (0, {upper:g}], got {value!r}"
                )
            out[field_name] = kind(value)
    if out.get("sink_backoff_min_s", 0.5) > out.get("sink_backoff_max_s", 30.0):
        raise ConfigError(f"{where}: sinks.backoff_min_s", "must not exceed sinks.backoff_max_s")
    return out


def _check_combinations(config: GatewayConfig) -> None:
    if config.default_material.upper() not in config.materials:
        raise ConfigError("--default-material", f"unknown material {config.default_material!r}")
    try:
        parse_host(config.http[0])
    except ValueError as exc:
        raise ConfigError("--http", str(exc)) from None


def check_http_token(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    """Refuse an HTTP side bound beyond loopback with neither a token nor --http-allow-anonymous."""
    if is_loopback(config.http[0]) or config.http_allow_anonymous or environ.get(HTTP_TOKEN_ENV, "").strip():
        return
    raise ConfigError(
        "--http",
        f"{config.http[0]} is reachable from other hosts: set {HTTP_TOKEN_ENV} in the environment (the token the"
        " page and the APIs then require) or pass --http-allow-anonymous",
    )
