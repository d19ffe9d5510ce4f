"""Settings of the historian sink: which store (`--historian`), InfluxDB's address, organisation,
bucket and precision (its token only from INFLUX_TOKEN), the embedded store's retention, and how
often a `gateway_health` point is written. Checked together when the configuration is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.sinks.historian.lineprotocol import Precision
from cmm_twin.options import Option, parse_positive, parse_text, parse_url

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

HISTORIANS = ("sqlite", "influx", "none")
TOKEN_ENV = "INFLUX_TOKEN"


def parse_historian(value: str) -> str:
    """sqlite, influx, none or auto."""
    value = value.strip().lower()
    if value not in (*HISTORIANS, "auto"):
        raise ValueError(f"expected one of {', '.join(HISTORIANS)} or auto, got {value!r}")
    return value


def parse_precision(value: str) -> Precision:
    """ns or ms."""
    try:
        return Precision(value.strip().lower())
    except ValueError:
        raise ValueError(f"expected ns or ms, got {value!r}") from None


OPTIONS = (
    Option(
        "--historian",
        parse_historian,
        "auto",
        f"historian: {', '.join(HISTORIANS)}; auto = influx when --influx-url is given, else sqlite",
        metavar="KIND",
    ),
    Option("--influx-url", parse_url, None, f"InfluxDB v2 URL (token from {TOKEN_ENV})", metavar="URL"),
    Option("--influx-org", parse_text, None, "InfluxDB organisation (required with influx)", metavar="ORG"),
    Option("--influx-bucket", parse_text, None, "InfluxDB bucket (required with influx)", metavar="BUCKET"),
    Option(
        "--influx-precision",
        parse_precision,
        Precision.NS,
        "timestamp precision written to InfluxDB: ns or ms",
        metavar="P",
    ),
    Option(
        "--history-retention-days",
        parse_positive,
        30.0,
        "days the embedded (sqlite) historian keeps points",
        metavar="DAYS",
    ),
    Option(
        "--health-interval-s",
        parse_positive,
        5.0,
        "seconds between gateway_health points in the historian",
        metavar="S",
    ),
)


@dataclass(frozen=True)
class InfluxSettings:
    """Where InfluxDB is; the token only from INFLUX_TOKEN (empty counts as unset)."""

    url: str
    org: str
    bucket: str
    precision: Precision = Precision.NS
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HistorianSettings:
    """The validated historian settings: `kind` is sqlite or influx (None when it is off)."""

    kind: str
    history_path: Path
    retention_days: float
    health_interval_s: float
    batch_size: int
    influx: InfluxSettings | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig, environ: Mapping[str, str] | None = None) -> HistorianSettings | None:
        """The settings, or None with `--historian none`; ConfigError naming the flag when the
        InfluxDB options do not fit the kind (one given without influx, one missing with it)."""
        options = config.options
        kind = str(options["historian"])
        if kind == "auto":
            kind = "influx" if options["influx_url"] is not None else "sqlite"
        influx_flags = ("influx_url", "influx_org", "influx_bucket")
        for dest in influx_flags:
            flag = "--" + dest.replace("_", "-")
            if kind != "influx" and options[dest] is not None:
                raise ConfigError(flag, "only used with --historian influx")
            if kind == "influx" and options[dest] is None:
                raise ConfigError(flag, "required with --historian influx")
        if kind == "none":
            return None
        influx = None
        if kind == "influx":
            influx = InfluxSettings(
                url=str(options["influx_url"]),
                org=str(options["influx_org"]),
                bucket=str(options["influx_bucket"]),
                precision=Precision(options["influx_precision"]),
                token=(environ or {}).get(TOKEN_ENV) or None,
            )
        return cls(
            kind=kind,
            history_path=config.history_path,
            retention_days=float(options["history_retention_days"]),
            health_interval_s=float(options["health_interval_s"]),
            batch_size=config.historian_batch_size,
            influx=influx,
        )
