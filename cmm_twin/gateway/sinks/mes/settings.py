"""Settings of the MES sink: `--mes-url` (the sink is off without it) and MES_TOKEN."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cmm_twin.options import Option, parse_url

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

TOKEN_ENV = "MES_TOKEN"

OPTIONS = (
    Option(
        "--mes-url",
        parse_url,
        None,
        "base URL of the MES (e.g. http://127.0.0.1:8000); without it the MES sink is off",
        metavar="URL",
    ),
)


@dataclass(frozen=True)
class MesSettings:
    """Where the MES is, and the bearer token (only from MES_TOKEN; empty counts as unset)."""

    base_url: str
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: GatewayConfig, environ: Mapping[str, str] | None = None) -> MesSettings | None:
        """The settings, or None when `--mes-url` is not given."""
        base_url = config.options["mes_url"]
        if base_url is None:
            return None
        return cls(str(base_url), (environ or {}).get(TOKEN_ENV) or None)
