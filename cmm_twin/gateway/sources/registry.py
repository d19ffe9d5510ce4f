"""The sources (file formats) the gateway takes: a new format is one line here."""

from __future__ import annotations

from cmm_twin.gateway.sources.base import Source
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.qdas import QdasSource

SOURCES: tuple[type[Source], ...] = (CsvSource, QdasSource)
"""Every source, in the order their patterns are tried."""
