"""What every source settles the same way, configured once: the `[inputs]` table (time zone of
local times, the machine of files that name none, the part catalogue of materials, whether the CMM
software already compensated, the temperature assumed when a file carries none, the patterns
that mark a characteristic as a temperature)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cmm_twin.errors import ConfigError

LOCALTIME = Path("/etc/localtime")


@dataclass(frozen=True)
class PartSettings:
    """One entry of the part catalogue (`[inputs.parts."<part number>"]`)."""

    material: str | None = None
    """Key of the materials table; None: the default material."""
    already_compensated: bool | None = None
    """None: the inputs' setting."""


@dataclass(frozen=True)
class InputSettings:
    """The `[inputs]` table (see the README, 'Real CMM formats')."""

    timezone: str | None = None
    """IANA zone of the local times in Q-DAS and Calypso files; None: the host's zone."""
    machine_id: str = "CMM"
    """Machine of the records of a file that names none."""
    already_compensated: bool = False
    """True: the CMM software already corrected every value to 20 degC."""
    assumed_temp_c: float = 20.0
    """Part temperature used when a file carries none (flag `temperature_assumed`)."""
    assumed_temp_half_range_k: float = 2.0
    """Half-width of the range the assumed temperature stands for: u(T) = half_range / sqrt(3)
    (rectangular distribution, GUM 4.3.7)."""
    part_temp_pattern: str = "(?i)temp"
    """A characteristic whose description matches (re.search) is a temperature, not a measurement."""
    air_temp_pattern: str = "(?i)(air|ambient|room|luft|umgebung)"
    """A temperature characteristic whose description also matches this is the air's, else the part's."""
    parts: Mapping[str, PartSettings] = field(default_factory=dict)
    """The part catalogue by part number (Q-DAS K1001, Calypso planid, QIF part number)."""
    companion_wait_s: float = 600.0
    """How long a unit (a .dfd without its .dfx) may lack a companion before it is quarantined."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.assumed_temp_c):
            raise ConfigError("inputs.assumed_temp_c", f"must be finite, got {self.assumed_temp_c!r}")
        half = self.assumed_temp_half_range_k
        if not (math.isfinite(half) and half > 0):
            raise ConfigError("inputs.assumed_temp_half_range_k", f"must be > 0, got {half!r}")
        if not (math.isfinite(self.companion_wait_s) and self.companion_wait_s >= 0):
            raise ConfigError("inputs.companion_wait_s", f"must be >= 0, got {self.companion_wait_s!r}")
        for key in ("part_temp_pattern", "air_temp_pattern"):
            try:
                re.compile(getattr(self, key))
            except re.error as exc:
                raise ConfigError(f"inputs.{key}", f"not a regular expression: {exc}") from None
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.machine_id):
            raise ConfigError("inputs.machine_id", f"expected [A-Za-z0-9_.-]{{1,64}}, got {self.machine_id!r}")
        self.zone  # noqa: B018 (an unknown zone stops the start, named)

    @cached_property
    def zone(self) -> tzinfo:
        """The zone of local times: `timezone`, else the host's (/etc/localtime, else UTC)."""
        if self.timezone:
            try:
                return ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError("inputs.timezone", f"unknown time zone {self.timezone!r}") from None
        try:
            with LOCALTIME.open("rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            return ZoneInfo("UTC")

    @cached_property
    def part_temp_regex(self) -> re.Pattern[str]:
        return re.compile(self.part_temp_pattern)

    @cached_property
    def air_temp_regex(self) -> re.Pattern[str]:
        return re.compile(self.air_temp_pattern)

    @property
    def assumed_temp_u_k(self) -> float:
        """Standard uncertainty of the assumed temperature: half_range / sqrt(3)."""
        return self.assumed_temp_half_range_k / math.sqrt(3.0)

    def local(self, naive: datetime) -> datetime:
        """A local time of a file as an aware datetime in `zone`. An ambiguous time (the hour the
        clocks go back) is taken as its first occurrence (fold = 0)."""
        return naive.replace(tzinfo=self.zone, fold=0)

    def part(self, part_number: str | None) -> PartSettings:
        """The catalogue entry of `part_number` (an empty one when it is not listed)."""
        if part_number is None:
            return _NO_PART
        return self.parts.get(part_number.strip(), _NO_PART)

    def compensated_by_source(self, part_number: str | None) -> bool:
        """Whether values of this part were already corrected to 20 degC by the CMM software."""
        own = self.part(part_number).already_compensated
        return self.already_compensated if own is None else own


_NO_PART = PartSettings()

INPUT_KEYS = frozenset(
    {
        "timezone",
        "machine_id",
        "material",
        "already_compensated",
        "assumed_temp_c",
        "assumed_temp_half_range_k",
        "part_temp_pattern",
        "air_temp_pattern",
        "companion_wait_s",
        "parts",
    }
)
"""Keys of the `[inputs]` table (`material` is the default material, as `--default-material`)."""


def input_settings(table: Mapping[str, Any], where: str, materials: Mapping[str, Any]) -> InputSettings:
    """The `[inputs]` table (read from `where`) as InputSettings; raises ConfigError naming the key.
    `materials`: the materials table, to check the part catalogue's materials against."""
    unknown = set(table) - INPUT_KEYS
    if unknown:
        raise ConfigError(f"{where}: inputs.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for key, kind in (
        ("timezone", str),
        ("machine_id", str),
        ("part_temp_pattern", str),
        ("air_temp_pattern", str),
        ("already_compensated", bool),
        ("assumed_temp_c", float),
        ("assumed_temp_half_range_k", float),
        ("companion_wait_s", float),
    ):
        if key in table:
            values[key] = _typed(table[key], kind, f"{where}: inputs.{key}")
    parts = table.get("parts", {})
    if not isinstance(parts, dict):
        raise ConfigError(f"{where}: inputs.parts", "must be a table of part numbers")
    catalogue: dict[str, PartSettings] = {}
    for number, entry in parts.items():
        key = f'{where}: inputs.parts."{number}"'
        if not isinstance(entry, dict):
            raise ConfigError(key, "must be a table")
        extra = set(entry) - {"material", "already_compensated"}
        if extra:
            raise ConfigError(f"{key}.{sorted(extra)[0]}", "unknown key")
        material = entry.get("material")
        if material is not None:
            material = _typed(material, str, f"{key}.material").strip().upper()
            if material not in materials:
                raise ConfigError(f"{key}.material", f"unknown material {entry['material']!r}")
        compensated = entry.get("already_compensated")
        if compensated is not None:
            compensated = _typed(compensated, bool, f"{key}.already_compensated")
        catalogue[str(number).strip()] = PartSettings(material, compensated)
    try:
        return InputSettings(**values, parts=catalogue)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.key}", exc.reason) from None


def _typed(value: object, kind: type, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(key, f"expected a {kind.__name__}, got {value!r}")
    return value
