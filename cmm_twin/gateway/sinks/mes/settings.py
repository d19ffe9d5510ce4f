"""Settings of the MES sink: `--mes-url` (default the mock MES on this machine; `''` or `off` turns
the sink off) and MES_TOKEN."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cmm_twin.options import Option, parse_url

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

TOKEN_ENV = "MES_TOKEN"
DEFAULT_MES_URL = "http://127.0.0.1:8000"
"""Where `python mock_mes.py` listens by default: the three bare commands meet on one machine."""


def parse_mes_url(value: str) -> str | None:
    """An http(s) URL, or None (the sink off) for `''` or `off`."""
    if value.strip().lower() in ("", "off"):
        return None
    return parse_url(value)


OPTIONS = (
    Option(
        "--mes-url",
        parse_mes_url,
        DEFAULT_MES_URL,
        "base URL of the MES; '' or off turns the MES sink off (an empty variable counts as unset: use"
        " CMM_MES_URL=off)",
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
        """The settings, or None when `--mes-url` is off."""
        base_url = config.options["mes_url"]
        if base_url is None:
            return None
        return cls(str(base_url), (environ or {}).get(TOKEN_ENV) or None)
