"""The sink plugins the gateway knows, in the order it builds and opens them. Adding a sink is one
folder under `cmm_twin/gateway/sinks/` and one line here (docs/architecture.md, "Adding a sink")."""

from __future__ import annotations

from cmm_twin.gateway.sinks import historian, mes, opcua, outbox, page, stdout
from cmm_twin.gateway.sinks.plugin import SinkPlugin

SINK_PLUGINS: tuple[SinkPlugin, ...] = (
    opcua.PLUGIN,
    page.PLUGIN,
    mes.PLUGIN,
    historian.PLUGIN,
    stdout.PLUGIN,
    outbox.PLUGIN,
)
