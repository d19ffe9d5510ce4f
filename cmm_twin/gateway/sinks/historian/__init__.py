"""The historian sink plugin: measurements and gateway health as time series, durable.

`--historian sqlite` (the default) keeps them in the embedded store `state/history.sqlite`, served
by `GET /api/v1/history`; `--historian influx` writes them to InfluxDB v2 (token from
INFLUX_TOKEN; influxdb-client is imported only then); `--historian none` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The configured historian sink, or None with `--historian none`."""
    sink: Sink
    if config.historian == "sqlite":
        from cmm_twin.gateway.sinks.historian.sqlite import SqliteHistorianSink  # noqa: PLC0415

        sink = SqliteHistorianSink(config.history_path, config.history_retention_days)
    elif config.historian == "influx":
        # Imported only when used: influxdb-client costs about 16 MB of RSS.
        from cmm_twin.gateway.sinks.historian.influx import InfluxSink  # noqa: PLC0415

        assert config.influx_url and config.influx_org and config.influx_bucket  # checked by load_config
        sink = InfluxSink.from_env(
            config.influx_url, config.influx_org, config.influx_bucket, config.influx_precision, environ
        )
    else:
        return None
    sink.batch_size = config.historian_batch_size
    sink.health_interval_s = config.health_interval_s
    return sink


PLUGIN = SinkPlugin(name="historian", build=build)
