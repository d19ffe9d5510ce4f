"""What a sink plugin declares, and the registry of them (docs/architecture.md, "Adding a sink").

A plugin is a folder `cmm_twin/gateway/sinks/<name>/` whose `__init__.py` defines
`PLUGIN = SinkPlugin(...)`: its name, the command-line options it adds (each also a `CMM_<FLAG>`
environment variable and a TOML key, resolved and parsed with the gateway's own), `validate`,
which checks how its options combine when the configuration is loaded (so a mistake stops the
gateway at start with one line naming the flag), and `build`, which makes the sink from the
validated configuration (or returns None when the sink is off). A plugin reads its options'
values from `GatewayConfig.options`. The gateway builds every registered plugin in registry
order; it knows sinks only through `Sink`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmm_twin.options import Option

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig
    from cmm_twin.gateway.sinks.base import Sink

SinkBuilder = Callable[["GatewayConfig", Mapping[str, str]], "Sink | None"]
"""Makes a sink from the validated configuration and the environment (secrets come only from
there); None when the configuration leaves the sink off. Raises ConfigError for a bad setting."""
SinkValidator = Callable[["GatewayConfig"], object]
"""Checks the plugin's options together when the configuration is loaded; raises ConfigError
naming the flag. Its return value is ignored."""


def _no_check(config: GatewayConfig) -> None:
    return None


@dataclass(frozen=True)
class SinkPlugin:
    """One sink plugin: its name, its options, how they are checked and how to build it."""

    name: str
    build: SinkBuilder
    options: tuple[Option, ...] = ()
    validate: SinkValidator = _no_check
