"""The QIF source: inbox `*.qif` files, QIF 3 results documents (docs/formats/qif.md)."""

from cmm_twin.gateway.sources.qif.source import QifSource

__all__ = ["QifSource"]
