"""The live page plugin (`GET /`): the `PageFeed` live sink, the Server-Sent Events stream
`/api/v1/events`, the rejected-files list and the static page (index.html, app.js, style.css next
to this module, hand-written, no external library). Always on: it keeps a bounded ring in memory.
It also guards the whole HTTP side with the gateway's token when there is one (`auth.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cmm_twin.gateway.sinks.page.auth import http_auth
from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.sinks.page.rejects import RejectsReader
from cmm_twin.gateway.sinks.plugin import SinkPlugin

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink

__all__ = ["PLUGIN", "PageFeed", "RejectsReader"]


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The page's feed (always on); it also installs the HTTP token check (GATEWAY_TOKEN, auth.py)."""
    return PageFeed(config.quarantine, auth=http_auth(config, environ))


PLUGIN = SinkPlugin(name="page", build=build)
