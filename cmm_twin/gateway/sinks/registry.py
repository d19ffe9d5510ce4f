"""The sink plugins the gateway knows, in the order it builds and opens them. Adding a sink is one
folder under `cmm_twin/gateway/sinks/` and one line here (docs/architecture.md, "Adding a sink")."""

from __future__ import annotations

from cmm_twin.gateway.sinks import historian, mes, opcua, page
from cmm_twin.gateway.sinks.plugin import SinkPlugin
from cmm_twin.options import Option

SINK_PLUGINS: tuple[SinkPlugin, ...] = (
    opcua.PLUGIN,
    page.PLUGIN,
    mes.PLUGIN,
    historian.PLUGIN,
)


def plugin_options() -> tuple[Option, ...]:
    """The options every plugin adds to the gateway's command line, in registry order."""
    return tuple(option for plugin in SINK_PLUGINS for option in plugin.options)
