"""The `[quality]` TOML table: the rolling window of the capability monitor and its alarm rule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cmm_twin.errors import ConfigError
from cmm_twin.physics.capability import ALARM_RULES

MAX_WINDOW = 100_000


@dataclass(frozen=True)
class QualitySettings:
    """Window and alarm rule of the capability monitor (docs/capability.md)."""

    window: int = 125
    """Values kept per machine and characteristic (the newest ones)."""
    slope_limit_um_per_k: float = 0.5
    """|slope| of the compensated deviation against the part temperature that raises the alarm
    (when its confidence interval also excludes zero)."""
    confidence: float = 0.95
    """Two-sided confidence level of the slope's interval."""
    min_samples: int = 80
    """Fewest values (with a measured part temperature) before the alarm can be raised. 80: with
    fewer, tested after every part, the simulated shop's manufacturing scatter raised chance
    alarms on right CTEs (docs/capability.md)."""
    rule: str = "beyond_limit"
    """`beyond_limit`: the slope's confidence interval lies wholly beyond +-limit; `significant`:
    |slope| > limit and the interval excludes zero (see `physics.capability.slope_alarm`)."""


def _integer(value: Any, key: str, lower: int, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lower <= value <= upper:
        raise ConfigError(key, f"expected an integer in [{lower}, {upper}], got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return float(value)


def quality_settings(table: Mapping[str, Any], where: str) -> QualitySettings:
    """The settings of a `[quality]` table (from the TOML file `where`); ConfigError naming the key."""
    keys = {"window", "slope_limit_um_per_k", "confidence", "min_samples", "rule"}
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"{where}: quality.{unknown[0]}", f"unknown key (known: {', '.join(sorted(keys))})")
    defaults = QualitySettings()
    window = _integer(table.get("window", defaults.window), f"{where}: quality.window", 3, MAX_WINDOW)
    limit = _number(
        table.get("slope_limit_um_per_k", defaults.slope_limit_um_per_k), f"{where}: quality.slope_limit_um_per_k"
    )
    if limit <= 0.0:
        raise ConfigError(f"{where}: quality.slope_limit_um_per_k", f"must be > 0 um/K, got {limit!r}")
    confidence = _number(table.get("confidence", defaults.confidence), f"{where}: quality.confidence")
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(
            f"{where}: quality.confidence", f"expected a level in [0.5, 1), e.g. 0.95, got {confidence!r}"
        )
    min_samples = _integer(
        table.get("min_samples", defaults.min_samples), f"{where}: quality.min_samples", 3, MAX_WINDOW
    )
    if min_samples > window:
        raise ConfigError(
            f"{where}: quality.min_samples", f"must not exceed quality.window ({window}), got {min_samples}"
        )
    rule = table.get("rule", defaults.rule)
    if rule not in ALARM_RULES:
        raise ConfigError(f"{where}: quality.rule", f"expected {' or '.join(ALARM_RULES)}, got {rule!r}")
    return QualitySettings(window, limit, confidence, min_samples, rule)
