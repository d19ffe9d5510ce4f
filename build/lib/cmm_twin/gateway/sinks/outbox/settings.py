"""The outbox's options: where compensated result files go and in which formats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmm_twin.errors import ConfigError
from cmm_twin.options import Option, parse_path

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

FORMATS = ("qif", "dfq")
"""Output formats: a QIF 3 results document for every input file, a DFQ for Q-DAS inputs."""


def _formats(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"expected a comma-separated list of {', '.join(FORMATS)}, got {value!r}")
    return names


OPTIONS = (
    Option(
        "--outbox",
        parse_path,
        None,
        "write compensated result files here (QIF 3 for every input file, DFQ for Q-DAS inputs); off when absent."
        " TOML: [outbox] dir",
        metavar="DIR",
    ),
    Option(
        "--outbox-formats",
        _formats,
        FORMATS,
        "comma-separated output formats of the outbox (qif, dfq). TOML: [outbox] formats",
        metavar="LIST",
    ),
)


@dataclass(frozen=True)
class OutboxSettings:
    """Validated outbox settings."""

    directory: Path
    formats: tuple[str, ...]

    @staticmethod
    def from_config(config: GatewayConfig) -> OutboxSettings | None:
        """The settings, or None when the outbox is off; ConfigError for a bad combination."""
        directory = config.options.get("outbox")
        if directory is None:
            return None
        directory = Path(directory)
        if directory.resolve() in {config.inbox.resolve(), config.archive.resolve(), config.quarantine.resolve()}:
            raise ConfigError("--outbox", f"must not be the gateway's own inbox/, archive/ or quarantine/: {directory}")
        return OutboxSettings(directory, tuple(config.options["outbox_formats"]))
