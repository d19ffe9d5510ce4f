"""The outbox sink plugin: compensated result files (QIF 3, and DFQ for Q-DAS inputs) for quality
software, written into `--outbox DIR` (TOML `[outbox] dir`), durable like the MES path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.outbox.settings import OPTIONS, OutboxSettings
from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The outbox sink, or None without `--outbox`."""
    settings = OutboxSettings.from_config(config)
    if settings is None:
        return None
    from cmm_twin.gateway.ingest.pipeline import ingest_settings  # noqa: PLC0415
    from cmm_twin.gateway.sinks.outbox.sink import OutboxSink  # noqa: PLC0415

    return OutboxSink(
        settings,
        config.state_dir / "outbox.sqlite",
        (config.inbox, config.archive, config.quarantine),
        ingest_settings(config),
        config.physics.uncertainty.coverage_factor,
    )


PLUGIN = SinkPlugin(name="outbox", build=build, options=OPTIONS, validate=OutboxSettings.from_config)
