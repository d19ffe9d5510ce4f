"""The sources (file formats) the gateway takes: a new format is one line here."""

from __future__ import annotations

from cmm_twin.gateway.sources.base import Source
from cmm_twin.gateway.sources.calypso import CalypsoSource
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.qdas import QdasSource
from cmm_twin.gateway.sources.qif import QifSource

SOURCES: tuple[type[Source], ...] = (CsvSource, QdasSource, CalypsoSource, QifSource)
"""Every source, in the order their patterns are tried."""
