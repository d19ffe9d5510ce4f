"""The stdout sink plugin: every result record as one JSON line on standard output, for debugging.

Off unless `--stdout-sink` is given (or CMM_STDOUT_SINK=true, or `stdout_sink = true` in the TOML
file). Durable: fed from the spool like the MES, so it prints every record, in order, at least
once (a record may be printed again after a crash). The gateway logs to stderr, so stdout carries
only the records: `cmm_edge_gateway.py --stdout-sink | jq .`
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

import orjson

from cmm_twin.gateway.sinks.base import Delivered, Sink, WriteOutcome
from cmm_twin.gateway.sinks.plugin import SinkPlugin
from cmm_twin.options import Option, parse_switch
from cmm_twin.records import RecordBatch

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig


class StdoutSink(Sink):
    """Writes each record as one JSON line (the result record's field names) to a text stream."""

    name = "stdout"
    durable = True

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream

    async def open(self) -> None:
        """Nothing to connect."""

    def prepare(self, batch: RecordBatch) -> bytes:
        """The batch's JSON lines (run on a worker thread while the previous batch is written)."""
        return b"".join(orjson.dumps(record) + b"\n" for record in batch.to_dicts())

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Print the batch's lines and flush."""
        lines = prepared if isinstance(prepared, bytes) else self.prepare(batch)
        self.stream.write(lines.decode())
        self.stream.flush()
        return Delivered()

    async def close(self) -> None:
        """Nothing to release (stdout stays open)."""


def build(config: GatewayConfig, environ: Mapping[str, str]) -> Sink | None:
    """The stdout sink, or None without `--stdout-sink`."""
    return StdoutSink() if config.options["stdout_sink"] else None


PLUGIN = SinkPlugin(
    name="stdout",
    options=(
        Option(
            "--stdout-sink",
            parse_switch,
            False,
            "print every result record as one JSON line on stdout (debugging)",
            is_switch=True,
        ),
    ),
    build=build,
)
