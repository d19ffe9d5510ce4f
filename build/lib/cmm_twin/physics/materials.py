"""Materials table: coefficients of thermal expansion (CTE) with their source.

Values are the mean linear CTE between about 20 and 100 degC, in 1/K. Each carries a relative
standard uncertainty; by default 10 % of the value taken as a rectangular distribution (GUM 4.3.7),
i.e. u(a) = 0.1 * a / sqrt(3). The table is extended or overridden by configuration
(`materials_with_overrides`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cmm_twin.errors import ConfigError, UnknownMaterialError

DEFAULT_CTE_HALF_WIDTH_REL = 0.10
"""Half-width of the rectangular distribution of a CTE, relative to the value (README, "The physics, by hand")."""


@dataclass(frozen=True)
class Material:
    """One material: key, CTE in 1/K, the CTE's relative half-width and where the value comes from."""

    key: str
    name: str
    cte_per_k: float
    source: str
    cte_half_width_rel: float = DEFAULT_CTE_HALF_WIDTH_REL

    @property
    def cte_u_per_k(self) -> float:
        """Standard uncertainty of the CTE in 1/K (rectangular: half-width / sqrt(3))."""
        return self.cte_per_k * self.cte_half_width_rel / math.sqrt(3.0)


_ASM_NF = "ASM Handbook Vol. 2, Properties and Selection: Nonferrous Alloys (ASM International, 1990)"
_ASM_FE = "ASM Handbook Vol. 1, Properties and Selection: Irons, Steels (ASM International, 1990)"

MATERIALS: dict[str, Material] = {
    m.key: m
    for m in (
        Material("AL6061", "Aluminium 6061-T6", 23.6e-6, f"{_ASM_NF}, 6061-T6, 20-100 degC"),
        Material("AL7075", "Aluminium 7075-T6", 23.4e-6, f"{_ASM_NF}, 7075-T6, 20-100 degC"),
        Material("STEEL_1020", "Carbon steel AISI 1020", 11.7e-6, f"{_ASM_FE}, AISI 1020, 0-100 degC"),
        Material("SS304", "Stainless steel AISI 304", 17.2e-6, f"{_ASM_FE}, AISI 304, 0-100 degC"),
        Material("INVAR36", "Invar 36 (Fe-36Ni)", 1.3e-6, "Carpenter Technology, Invar 36 datasheet, 25-100 degC"),
        Material(
            "BRASS_C360",
            "Free-cutting brass C36000",
            20.5e-6,
            "Copper Development Association, C36000 properties, 20-300 degC",
        ),
        Material("TI6AL4V", "Titanium Ti-6Al-4V", 8.6e-6, f"{_ASM_NF}, Ti-6Al-4V annealed, 20-100 degC"),
    )
}


def lookup_material(key: str, table: Mapping[str, Material] = MATERIALS) -> Material:
    """Return the material for `key` (case-insensitive) or raise UnknownMaterialError."""
    material = table.get(key.strip().upper())
    if material is None:
        raise UnknownMaterialError(key, list(table))
    return material


def materials_with_overrides(
    overrides: Mapping[str, Mapping[str, object]], base: Mapping[str, Material] = MATERIALS
) -> dict[str, Material]:
    """Return the table extended by configuration.

    `overrides` maps a key to `{"cte_per_k": float, "source": str, "name"?: str,
    "cte_half_width_rel"?: float}`, e.g. from the `[materials.X]` tables of the TOML file.
    Raises ConfigError naming `materials.<KEY>.<field>` when a value is missing or implausible.
    """
    table = dict(base)
    for raw_key, spec in overrides.items():
        key = raw_key.strip().upper()
        where = f"materials.{raw_key}"
        if not key or not all(c.isalnum() or c in "_.-" for c in key):
            raise ConfigError(where, "material keys use letters, digits, '_', '.' and '-'")
        unknown = set(spec) - {"cte_per_k", "source", "name", "cte_half_width_rel"}
        if unknown:
            raise ConfigError(where, f"unknown field(s) {', '.join(sorted(unknown))}")
        cte = _positive_float(spec.get("cte_per_k"), f"{where}.cte_per_k", upper=1e-3)
        source = spec.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}.source", "every material needs a source (where the CTE comes from)")
        half_width = _positive_float(
            spec.get("cte_half_width_rel", DEFAULT_CTE_HALF_WIDTH_REL), f"{where}.cte_half_width_rel", upper=1.0
        )
        name = spec.get("name", key)
        table[key] = Material(key, str(name), cte, source.strip(), half_width)
    return table


def _positive_float(value: object, where: str, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(where, f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0.0 or number > upper:
        raise ConfigError(where, f"expected a number in (0, {upper:g}], got {value!r}")
    return number
