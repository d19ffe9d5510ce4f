"""The historian sink plugin: measurements and gateway health as time series, durable.

`--historian sqlite` (the default) keeps them in the embedded store `state/history.sqlite`, served
by `GET /api/v1/history`; `--historian influx` writes them to InfluxDB v2 (token from
INFLUX_TOKEN; influxdb-client is imported only then); `--historian none` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.historian.settings import OPTIONS, HistorianSettings
from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The configured historian sink, or None with `--historian none`."""
    settings = HistorianSettings.from_config(config, environ)
    if settings is None:
        return None
    sink: Sink
    if settings.influx is not None:
        # Imported only when used: influxdb-client costs about 16 MB of RSS.
        from cmm_twin.gateway.sinks.historian.influx import InfluxSink  # noqa: PLC0415

        influx = settings.influx
        sink = InfluxSink(influx.url, influx.org, influx.bucket, influx.token, influx.precision)
    else:
        from cmm_twin.gateway.sinks.historian.sqlite import SqliteHistorianSink  # noqa: PLC0415

        sink = SqliteHistorianSink(settings.history_path, settings.retention_days)
    sink.batch_size = settings.batch_size
    sink.health_interval_s = settings.health_interval_s
    return sink


PLUGIN = SinkPlugin(name="historian", build=build, options=OPTIONS, validate=HistorianSettings.from_config)
