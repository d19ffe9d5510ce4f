"""The live page of the gateway (`GET /`): the `PageFeed` live sink, the Server-Sent Events
stream `/api/v1/events`, the rejected-files list and the static page (index.html, app.js,
style.css next to this module, hand-written, no external library)."""

from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.sinks.page.rejects import RejectsReader

__all__ = ["PageFeed", "RejectsReader"]
