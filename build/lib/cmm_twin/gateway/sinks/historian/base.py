"""What the two historian sinks share: the sink name, the columns they store and how a gateway
health sample becomes a `gateway_health` point.

Health samples reach a historian from its runner (`write_health`), which keeps them in a bounded
queue until the receiver holds them, so the buffer's rise and fall during an outage of the
historian itself is written when it comes back.
"""

from __future__ import annotations

from collections.abc import Sequence

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.sinks.historian.lineprotocol import FIELD_KEYS, TAG_KEYS, HealthSample

HISTORIAN_SINK_NAME = "historian"
MES_SINK_NAME = "mes"


class HistorianSink(Sink):
    """A durable sink that also keeps the gateway's health history."""

    name = HISTORIAN_SINK_NAME
    durable = True
    columns = ("timestamp_ns", *TAG_KEYS, *FIELD_KEYS)


def health_points(samples: Sequence[GatewayHealth]) -> list[HealthSample]:
    """The `gateway_health` points of `samples`, in order."""
    return [
        HealthSample(
            timestamp_ns=s.timestamp_ns,
            buffer_depth=s.buffer_depth,
            mes_connected=s.connected(MES_SINK_NAME),
            historian_connected=s.connected(HISTORIAN_SINK_NAME),
            files_processed=s.files_processed,
            rows_rejected=s.rows_rejected,
        )
        for s in samples
    ]
