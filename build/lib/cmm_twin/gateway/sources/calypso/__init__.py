"""The Zeiss Calypso source: inbox `<prefix>_chr.txt` table files with their optional
`<prefix>_hdr.txt` run header (docs/formats/calypso.md)."""

from cmm_twin.gateway.sources.calypso.source import CalypsoSource

__all__ = ["CalypsoSource"]
