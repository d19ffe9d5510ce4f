"""The simulated shop's part catalogue: part types, each with a part number, a material and 3-6
features (outer and inner diameters, distances, angles) with symmetric, asymmetric (ISO 286 fits
such as H7 / h6) or one-sided tolerances (docs/simulator.md, "Part catalogue").

Together the part types cover the whole materials table (`cmm_twin.physics.materials.MATERIALS`)
and every feature kind. Part k of a shop with M machines is of type (k // M) % len(CATALOGUE), so
every machine measures every type.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from cmm_twin.errors import ConfigError
from cmm_twin.physics.materials import MATERIALS

FEATURE_KINDS: Final = ("outer_diameter", "inner_diameter", "distance", "angle")
"""Kinds of feature; an angle is in degrees and thermal expansion does not change it."""
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class CatalogueFeature:
    """One feature of a part type: nominal and limits (signed, relative to the nominal, in `unit`;
    None: open on that side).

    `spread` is the scale of the manufacturing scatter of a one-sided feature (a typical tolerance
    of such a feature, in `unit`); a two-sided feature scatters relative to its half-width.
    """

    name: str
    kind: str
    nominal: float
    lower: float | None
    upper: float | None
    spread: float | None = None

    def __post_init__(self) -> None:
        where = f"catalogue.{self.name}"
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError(where, "feature name must match [A-Za-z0-9_.-]{1,64}")
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"{where}.kind", f"expected one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.nominal) or self.nominal <= 0.0:
            raise ConfigError(f"{where}.nominal", f"must be a finite number > 0, got {self.nominal!r}")
        if self.lower is None and self.upper is None:
            raise ConfigError(where, "needs a lower or an upper limit")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ConfigError(f"{where}.lower", f"must be below the upper limit {self.upper!r}, got {self.lower!r}")
        if (self.lower is None or self.upper is None) and (self.spread is None or self.spread <= 0.0):
            raise ConfigError(f"{where}.spread", "a one-sided feature needs a spread > 0")

    @property
    def unit(self) -> str:
        """`deg` for an angle, else `mm`."""
        return "deg" if self.kind == "angle" else "mm"

    @property
    def symmetric(self) -> bool:
        """Whether the zone is +-tol around the nominal."""
        return self.lower is not None and self.upper is not None and self.lower == -self.upper


@dataclass(frozen=True)
class PartType:
    """A part type: its part number, the key of its material and its features."""

    part_number: str
    material: str
    description: str
    features: tuple[CatalogueFeature, ...]

    def __post_init__(self) -> None:
        if self.material not in MATERIALS:
            raise ConfigError(f"catalogue.{self.part_number}.material", f"unknown material {self.material!r}")
        if not 3 <= len(self.features) <= 6:
            raise ConfigError(f"catalogue.{self.part_number}", "a part type has 3 to 6 features")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ConfigError(f"catalogue.{self.part_number}", f"feature names must be unique, got {names}")


def _f(
    name: str, kind: str, nominal: float, lower: float | None, upper: float | None, spread: float | None = None
) -> CatalogueFeature:
    return CatalogueFeature(name, kind, nominal, lower, upper, spread)


CATALOGUE: tuple[PartType, ...] = (
    PartType(
        "FL-120-AL6061",
        "AL6061",
        "flange, aluminium 6061",
        (
            _f("bore_d", "inner_diameter", 40.0, 0.0, 0.025),  # H7
            _f("outer_d", "outer_diameter", 120.0, -0.020, 0.020),
            _f("bolt_circle", "distance", 80.0, -0.015, 0.015),
            _f("spigot_depth", "distance", 12.0, None, 0.030, spread=0.030),  # upper only
            _f("chamfer_angle", "angle", 45.0, -0.05, 0.05),
        ),
    ),
    PartType(
        "SH-180-STEEL1020",
        "STEEL_1020",
        "shaft, carbon steel 1020",
        (
            _f("journal_d", "outer_diameter", 25.0, -0.013, 0.0),  # h6
            _f("shoulder_len", "distance", 60.0, -0.020, 0.020),
            _f("total_len", "distance", 180.0, -0.050, 0.050),
            _f("key_width", "distance", 8.0, -0.051, -0.015),  # P9
        ),
    ),
    PartType(
        "HSG-300-AL7075",
        "AL7075",
        "gearbox housing, aluminium 7075",
        (
            _f("bearing_bore_d", "inner_diameter", 62.0, 0.0, 0.030),  # H7
            _f("bore_spacing", "distance", 150.0, -0.020, 0.020),
            _f("housing_width", "distance", 300.0, -0.050, 0.050),
            _f("pin_bore_d", "inner_diameter", 10.0, 0.0, 0.015),  # H7
            _f("face_angle", "angle", 90.0, -0.03, 0.03),
            _f("wall_thickness", "distance", 8.0, -0.040, None, spread=0.040),  # lower only
        ),
    ),
    PartType(
        "VB-095-SS304",
        "SS304",
        "valve body, stainless steel 304",
        (
            _f("port_d", "inner_diameter", 20.0, 0.0, 0.021),  # H7
            _f("body_len", "distance", 95.0, -0.030, 0.030),
            _f("spigot_d", "outer_diameter", 50.0, -0.025, 0.0),  # h7
            _f("seat_angle", "angle", 60.0, -0.04, 0.04),
        ),
    ),
    PartType(
        "FR-250-INVAR36",
        "INVAR36",
        "optical frame, Invar 36",
        (
            _f("mount_spacing", "distance", 250.0, -0.010, 0.010),
            _f("lens_bore_d", "inner_diameter", 30.0, 0.0, 0.013),  # H6
            _f("frame_d", "outer_diameter", 280.0, -0.032, 0.0),  # h6
            _f("flange_thickness", "distance", 15.0, -0.020, None, spread=0.020),  # lower only
        ),
    ),
    PartType(
        "FT-035-BRASSC360",
        "BRASS_C360",
        "hydraulic fitting, brass C36000",
        (
            _f("thread_od", "outer_diameter", 16.0, -0.032, -0.006),  # g6-like
            _f("bore_d", "inner_diameter", 10.0, 0.0, 0.022),  # H8
            _f("fitting_len", "distance", 35.0, -0.050, 0.050),
            _f("cone_angle", "angle", 24.0, -0.05, 0.05),
        ),
    ),
    PartType(
        "BR-070-TI6AL4V",
        "TI6AL4V",
        "bracket, titanium Ti-6Al-4V",
        (
            _f("hole_d", "inner_diameter", 12.0, 0.0, 0.018),  # H7
            _f("hole_spacing", "distance", 45.0, -0.010, 0.010),
            _f("bracket_width", "distance", 70.0, -0.020, 0.020),
            _f("boss_d", "outer_diameter", 18.0, -0.017, -0.006),  # g6
            _f("step_height", "distance", 22.0, None, 0.025, spread=0.025),  # upper only
        ),
    ),
)
"""The part types of the simulated shop."""

MAX_FEATURES = max(len(t.features) for t in CATALOGUE)


def part_type_index(part_index: NDArray[np.int64], machines: int) -> NDArray[np.int64]:
    """Type of each part: (k // machines) % types, so every machine measures every type."""
    return np.asarray((part_index // machines) % len(CATALOGUE), dtype=np.int64)


def type_ordinal(part_index: NDArray[np.int64], machines: int) -> NDArray[np.int64]:
    """How many parts of the same type come before each part (0-based): the lot counter."""
    round_ = part_index // machines
    return np.asarray((round_ // len(CATALOGUE)) * machines + part_index % machines, dtype=np.int64)


def parts_table() -> dict[str, dict[str, object]]:
    """The gateway's `[inputs.parts]` entries: part number -> {"material": key}, so a gateway reading
    dfq, calypso or qif knows each part's material."""
    return {t.part_number: {"material": t.material} for t in CATALOGUE}
