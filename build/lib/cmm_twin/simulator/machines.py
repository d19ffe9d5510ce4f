"""The simulated CMMs: their MPE (ISO 10360-2, E0 = A + L/K), their systematic length error and the
offsets of their thermometers, fixed per machine and seed (docs/simulator.md, "CMM error")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from cmm_twin.simulator.scenario import ShopScenario

FloatArray = NDArray[np.float64]


class MachineMpe(NamedTuple):
    """The MPE of a machine, E0 = A + L/K (ISO 10360-2)."""

    a_um: float
    k_mm_per_um: float

    def __str__(self) -> str:
        """As `--mpe` takes it: `A:K`."""
        return f"{self.a_um:g}:{self.k_mm_per_um:g}"


DEFAULT_MPE: Final[tuple[MachineMpe, ...]] = (MachineMpe(1.5, 333.0),)
MACHINE_KEY: Final = 2**31
"""First spawn key of the machines' SeedSequence children (part blocks use 0 .. 2**31 - 1)."""


def machine_id(machine_index: int) -> str:
    """Id of machine `machine_index` (0-based): "CMM-01", "CMM-02", ..."""
    return f"CMM-{machine_index + 1:02d}"


def parse_mpe(text: str) -> tuple[MachineMpe, ...]:
    """`A:K[,A:K...]` (one entry per machine, cycled) as ((A_um, K_mm_per_um), ...); ValueError with
    the reason otherwise (the options module names the flag)."""
    entries: list[MachineMpe] = []
    for raw in text.split(","):
        item = raw.strip()
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(f"expected A:K[,A:K...] (e.g. 1.5:333), got {item!r}")
        try:
            a_um, k = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"expected numbers A:K (e.g. 1.5:333), got {item!r}") from None
        if not (math.isfinite(a_um) and a_um >= 0.0):
            raise ValueError(f"A must be a finite number >= 0 um, got {parts[0].strip()!r} in {item!r}")
        if not (math.isfinite(k) and k > 0.0):
            raise ValueError(f"K must be a finite number > 0 mm/um, got {parts[1].strip()!r} in {item!r}")
        entries.append(MachineMpe(a_um, k))
    return tuple(entries)


def format_mpe(mpe: Sequence[tuple[float, float]]) -> str:
    """The `--mpe` text of `mpe`."""
    return ",".join(str(MachineMpe(*entry)) for entry in mpe)


def machine_mpe(mpe: Sequence[tuple[float, float]], machines: int) -> list[MachineMpe]:
    """The MPE of each of `machines` machines: the list `mpe` cycled."""
    if not mpe:
        raise ValueError("mpe needs at least one entry")
    return [MachineMpe(*mpe[i % len(mpe)]) for i in range(machines)]


def machines_table(machines: int, mpe: Sequence[tuple[float, float]] = DEFAULT_MPE) -> dict[str, dict[str, float]]:
    """Machine id -> {"cmm_mpe_a_um": A, "cmm_mpe_k_mm_per_um": K}: the gateway's `[machines."<id>"]`."""
    return {
        machine_id(i): {"cmm_mpe_a_um": a, "cmm_mpe_k_mm_per_um": k}
        for i, (a, k) in enumerate(machine_mpe(mpe, machines))
    }


@dataclass(frozen=True, eq=False)
class Machines:
    """Per-machine constants, drawn once per seed: each machine from its own SeedSequence child
    `spawn_key=(MACHINE_KEY, m)`, so adding machines leaves the first ones unchanged."""

    mpe_a_um: FloatArray
    mpe_k_mm_per_um: FloatArray
    error_a_um: FloatArray
    """Length-independent systematic error a_m, um."""
    error_b_um_per_mm: FloatArray
    """Scale error b_m, um/mm (1 um/mm = 1000 ppm)."""
    part_sensor_offset_k: FloatArray
    air_sensor_offset_k: FloatArray

    @staticmethod
    def draw(seed: int, machines: int, mpe: Sequence[tuple[float, float]], s: ShopScenario) -> Machines:
        """The constants of `machines` machines for `seed` (see the class)."""
        units = np.empty((machines, 4), dtype=np.float64)
        for m in range(machines):
            # Draw order is fixed: changing it changes every machine.
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(MACHINE_KEY, m)))
            units[m] = rng.uniform(-1.0, 1.0, 4)
        cycled = machine_mpe(mpe, machines)
        a_um = np.array([a for a, _ in cycled], dtype=np.float64)
        k = np.array([k for _, k in cycled], dtype=np.float64)
        return Machines(
            mpe_a_um=a_um,
            mpe_k_mm_per_um=k,
            error_a_um=units[:, 0] * a_um * s.mpe_usage,
            error_b_um_per_mm=units[:, 1] / k * s.mpe_usage,
            part_sensor_offset_k=units[:, 2] * s.pt100_half_width_k,
            air_sensor_offset_k=units[:, 3] * s.air_sensor_half_width_k,
        )

    def error_um(self, machine_index: NDArray[np.int64], length_mm: FloatArray) -> FloatArray:
        """Systematic length error e(L) = a_m + b_m * L in um; |e(L)| <= E0(L) = A + L/K."""
        return np.asarray(self.error_a_um[machine_index] + self.error_b_um_per_mm[machine_index] * length_mm)
