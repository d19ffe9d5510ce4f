"""The CSV source: inbox `*.csv` files (the contract: README, 'The CSV format (inbox)')."""

from cmm_twin.gateway.sources.csv.source import CsvSource

__all__ = ["CsvSource"]
