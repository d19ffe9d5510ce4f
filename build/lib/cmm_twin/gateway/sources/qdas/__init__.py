"""The Q-DAS AQDEF source: `*.dfq`, and `*.dfd` + `*.dfx` pairs (docs/formats/qdas.md)."""

from cmm_twin.gateway.sources.qdas.source import QdasSource

__all__ = ["QdasSource"]
