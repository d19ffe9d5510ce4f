"""The OPC UA sink plugin: live tags for SCADA from the gateway's own OPC UA server (asyncua).

Always on (unless embedded with `sinks_off`); the endpoint, anonymous access and
the trust list come from `--opcua-endpoint`, `--opcua-allow-anonymous` and `--opcua-trust-dir`,
the user and password from OPCUA_USER / OPCUA_PASSWORD. The gateway gets a `DeferredSink`:
asyncua is imported, and the server built, at the first `open`, after HTTP and the intake started.

Modules: `settings` (configuration and credential checks), `security` (policies, logins, the
login throttle, the trust list), `certificates` (the server's own certificate), `address_space`
(node ids, the machine and Gateway objects) and `sink` (`OpcUaSink`: open, write, write_health,
close).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.deferred import DeferredSink
from cmm_twin.gateway.sinks.opcua.settings import HEALTH_INTERVAL_S, OPTIONS, OpcUaSettings
from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The OPC UA sink, or None when OPC UA is off."""
    settings = OpcUaSettings.from_config(config, environ)
    if settings is None:
        return None
    from cmm_twin.gateway.quality.history import embedded_history_path  # noqa: PLC0415

    history_path = embedded_history_path(config)

    def real_sink() -> Sink:
        from cmm_twin.gateway.sinks.opcua.sink import OpcUaSink  # noqa: PLC0415 (asyncua is heavy)

        return OpcUaSink(settings, history_path=history_path)

    return DeferredSink("opcua", real_sink, durable=False, health_interval_s=HEALTH_INTERVAL_S)


PLUGIN = SinkPlugin(name="opcua", build=build, options=OPTIONS, validate=OpcUaSettings.from_config)
