"""The MES sink plugin: result records POSTed to the plant's MES, durable (store-and-forward).

On unless `--mes-url` is off (its default is the mock MES on 127.0.0.1:8000); the bearer token
comes only from MES_TOKEN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.mes.settings import OPTIONS, MesSettings
from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The MES sink, or None when `--mes-url` is off."""
    settings = MesSettings.from_config(config, environ)
    if settings is None:
        return None
    from cmm_twin.gateway.sinks.mes.sink import MesSink  # noqa: PLC0415

    return MesSink(settings.base_url, settings.token)


PLUGIN = SinkPlugin(name="mes", build=build, options=OPTIONS, validate=MesSettings.from_config)
