"""Digital twin of a measuring shop: drifting air, warm parts cooling with a surface-to-core
gradient, several part types and materials, per-machine CMM errors, per-sensor offsets, per-lot CTEs.

Pure NumPy, no I/O. `ShopModel.parts` returns the measurements of a range of parts as arrays, one
row per measurement (part x feature), ordered by part then feature; every error source is kept as
ground truth next to what the CMM reports. The model, with its formulas: docs/simulator.md.

Determinism: the randomness of parts 256*b .. 256*b+255 comes only from (seed, b), through
`numpy.random.SeedSequence(seed, spawn_key=(b,))`, and every block is always generated whole. The
constants of machine m come from `spawn_key=(2**31, m)` and the CTE of lot l of part type t from
`spawn_key=(2**31 + 1, t, l)`. So a part's values depend on the seed and its index only, never on
how the requested ranges are chunked.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from cmm_twin.errors import ConfigError
from cmm_twin.physics.compensation import expand_from_20c
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.simulator.catalogue import CATALOGUE, FEATURE_KINDS, MAX_FEATURES, part_type_index, type_ordinal
from cmm_twin.simulator.machines import DEFAULT_MPE, MACHINE_KEY, MachineMpe, Machines, machine_id
from cmm_twin.simulator.scenario import ShopScenario

T = TypeVar("T", bound=np.generic)
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

BLOCK_PARTS = 256
"""Parts per random block: the unit of generation and of seeding."""
LOT_KEY = MACHINE_KEY + 1
"""First spawn key of the material lots' SeedSequence children."""
SECONDS_PER_DAY = 86400.0
MAX_MACHINES = 99
UM_PER_MM = 1000.0


@dataclass(frozen=True, eq=False)
class PartBatch:
    """Measurements of a range of parts, one element per measurement (part x feature).

    Rows are ordered by part, then feature. Values are in the row's `unit` (mm, or deg for an
    angle) unless the name says otherwise. Values named `true_*` and the error terms are the ground
    truth the simulator knows and a real shop does not; `measured`, `part_temp_c` and `air_temp_c`
    are what the CMM and its sensors report.
    """

    part_index: IntArray
    machine_index: IntArray
    shop_time_s: FloatArray
    feature_index: IntArray
    part_type: IntArray
    feature: NDArray[np.str_]
    feature_kind: NDArray[np.str_]
    unit: NDArray[np.str_]
    part_id: NDArray[np.str_]
    part_number: NDArray[np.str_]
    material: NDArray[np.str_]
    nominal: FloatArray
    lower_tol: FloatArray
    """Signed, relative to the nominal; NaN: open on that side."""
    upper_tol: FloatArray
    tolerance: FloatArray
    """The symmetric tolerance (+-); NaN for an asymmetric or one-sided zone."""
    measured: FloatArray
    true_value: FloatArray
    """True size at 20 degC (an angle: its true value)."""
    conforming: NDArray[np.bool_]
    true_part_temp_c: FloatArray
    """Mean (bulk) temperature of the part when the feature was measured."""
    true_surface_temp_c: FloatArray
    """Surface temperature at the part's thermometer reading (first feature)."""
    part_temp_c: FloatArray
    """Reported part temperature: one reading per part, on the surface."""
    true_air_temp_c: FloatArray
    air_temp_c: FloatArray
    """Reported air temperature."""
    true_cte_per_k: FloatArray
    cte_lot: IntArray
    """Lot number within the part type."""
    cmm_error_um: FloatArray
    """Systematic error of the machine e(L) (0 for angles)."""
    probe_error_um: FloatArray
    """Probing noise; for an angle its error in thousandths of a degree."""
    part_sensor_offset_k: FloatArray
    air_sensor_offset_k: FloatArray
    cmm_mpe_a_um: FloatArray
    cmm_mpe_k_mm_per_um: FloatArray

    def __len__(self) -> int:
        return int(self.part_index.shape[0])

    def select(self, rows: slice | NDArray[np.intp] | NDArray[np.bool_]) -> PartBatch:
        """The batch restricted to `rows` (a slice, index array or mask)."""
        return PartBatch(**{name: getattr(self, name)[rows] for name in _FIELDS})

    def per_part(self) -> Iterator[PartBatch]:
        """Yield one batch per part (its features), in order."""
        if len(self) == 0:
            return
        bounds = [0, *(np.flatnonzero(np.diff(self.part_index)) + 1).tolist(), len(self)]
        for begin, end in itertools.pairwise(bounds):
            yield self.select(slice(begin, end))

    @staticmethod
    def concat(batches: list[PartBatch]) -> PartBatch:
        """One batch holding the rows of `batches` in order (at least one batch)."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        return PartBatch(**{name: np.concatenate([getattr(b, name) for b in batches]) for name in _FIELDS})


_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PartBatch))


@dataclass(frozen=True, eq=False)
class _Types:
    """The catalogue as arrays (part type x feature slot, padded to MAX_FEATURES)."""

    count: IntArray
    nominal: FloatArray
    lower: FloatArray
    upper: FloatArray
    centre: FloatArray
    """Offset of the manufacturing mean from the nominal."""
    sigma: FloatArray
    """Manufacturing standard deviation."""
    angle: NDArray[np.bool_]
    name: NDArray[np.str_]
    kind: NDArray[np.str_]
    unit: NDArray[np.str_]
    part_number: NDArray[np.str_]
    material: NDArray[np.str_]
    cte_per_k: FloatArray
    cte_half_width_rel: FloatArray

    @staticmethod
    def build(s: ShopScenario) -> _Types:
        t, f = len(CATALOGUE), MAX_FEATURES
        nominal = np.ones((t, f))
        lower = np.full((t, f), np.nan)
        upper = np.full((t, f), np.nan)
        centre = np.zeros((t, f))
        sigma = np.zeros((t, f))
        angle = np.zeros((t, f), dtype=bool)
        name = np.full((t, f), "", dtype=object)
        kind = np.full((t, f), FEATURE_KINDS[0], dtype=object)
        for i, part_type in enumerate(CATALOGUE):
            for j, feature in enumerate(part_type.features):
                nominal[i, j] = feature.nominal
                name[i, j], kind[i, j], angle[i, j] = feature.name, feature.kind, feature.kind == "angle"
                if feature.lower is not None and feature.upper is not None:
                    lower[i, j], upper[i, j] = feature.lower, feature.upper
                    centre[i, j] = (feature.lower + feature.upper) / 2.0
                    sigma[i, j] = s.mfg_sigma_rel * (feature.upper - feature.lower) / 2.0
                else:  # one-sided: centred a margin of sigmas inside its limit
                    spread = float(feature.spread or 0.0)
                    sigma[i, j] = s.one_sided_sigma_rel * spread
                    if feature.upper is not None:
                        upper[i, j] = feature.upper
                        centre[i, j] = feature.upper - s.one_sided_margin_sigma * sigma[i, j]
                    else:
                        lower[i, j] = float(feature.lower or 0.0)
                        centre[i, j] = lower[i, j] + s.one_sided_margin_sigma * sigma[i, j]
        materials = [MATERIALS[p.material] for p in CATALOGUE]
        half = [
            m.cte_half_width_rel if s.cte_lot_half_width_rel is None else s.cte_lot_half_width_rel for m in materials
        ]
        return _Types(
            count=np.array([len(p.features) for p in CATALOGUE], dtype=np.int64),
            nominal=nominal,
            lower=lower,
            upper=upper,
            centre=centre,
            sigma=sigma,
            angle=angle,
            name=name.astype(str),
            kind=kind.astype(str),
            unit=np.where(angle, "deg", "mm"),
            part_number=np.array([p.part_number for p in CATALOGUE]),
            material=np.array([p.material for p in CATALOGUE]),
            cte_per_k=np.array([m.cte_per_k for m in materials]),
            cte_half_width_rel=np.array(half),
        )


class ShopModel:
    """The shop: parts measured round-robin on `machines` CMMs (part k on machine k % machines),
    of the catalogue's types in turn (`catalogue.part_type_index`)."""

    def __init__(
        self,
        scenario: ShopScenario | None = None,
        seed: int = 0,
        machines: int = 3,
        mpe: Sequence[tuple[float, float]] = DEFAULT_MPE,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
        if isinstance(machines, bool) or not isinstance(machines, int) or not 1 <= machines <= MAX_MACHINES:
            raise ConfigError("machines", f"must be an integer in 1..{MAX_MACHINES}, got {machines!r}")
        if not mpe:
            raise ConfigError("mpe", "needs at least one A:K entry")
        self.scenario = scenario or ShopScenario()
        self.seed = seed
        self.machines = machines
        self.mpe: tuple[MachineMpe, ...] = tuple(MachineMpe(*entry) for entry in mpe)
        self.machine_ids: tuple[str, ...] = tuple(machine_id(i) for i in range(machines))
        self.constants = Machines.draw(seed, machines, self.mpe, self.scenario)
        self._types = _Types.build(self.scenario)
        self._lot_cte: dict[tuple[int, int], float] = {}

    def true_air_temp_c(self, shop_time_s: FloatArray, noise_k: FloatArray | float = 0.0) -> FloatArray:
        """True shop air temperature at `shop_time_s`: mean + daily sine + HVAC sine + `noise_k`."""
        s = self.scenario
        t = np.asarray(shop_time_s, dtype=np.float64)
        daily = s.air_daily_amplitude_k * np.sin(2.0 * np.pi * t / SECONDS_PER_DAY + s.air_daily_phase_rad)
        hvac = s.hvac_amplitude_k * np.sin(2.0 * np.pi * t / s.hvac_period_s)
        return np.asarray(s.air_mean_c + daily + hvac + noise_k, dtype=np.float64)

    def lot_cte_per_k(self, part_type: int, lot: int) -> float:
        """True CTE of lot `lot` of part type `part_type`: table CTE x (1 + U(-h, h))."""
        key = (part_type, lot)
        cte = self._lot_cte.get(key)
        if cte is None:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(LOT_KEY, part_type, lot)))
            half = float(self._types.cte_half_width_rel[part_type])
            cte = float(self._types.cte_per_k[part_type]) * (1.0 + rng.uniform(-half, half))
            if len(self._lot_cte) > 4096:
                self._lot_cte.clear()
            self._lot_cte[key] = cte
        return cte

    def parts(self, start_index: int, count: int) -> PartBatch:
        """Measurements of parts start_index .. start_index + count - 1 (one row per feature)."""
        if start_index < 0 or count < 0:
            raise ValueError(f"start_index and count must be >= 0, got {start_index}, {count}")
        if count == 0:
            return self._block(0).select(slice(0, 0))
        first_block = start_index // BLOCK_PARTS
        last_block = (start_index + count - 1) // BLOCK_PARTS
        blocks = [self._block(b) for b in range(first_block, last_block + 1)]
        batch = blocks[0] if len(blocks) == 1 else PartBatch.concat(blocks)
        wanted = (batch.part_index >= start_index) & (batch.part_index < start_index + count)
        begin, end = np.flatnonzero(wanted)[[0, -1]].tolist()
        return batch.select(slice(begin, end + 1))

    def _block(self, block: int) -> PartBatch:
        """All measurements of the parts of block `block`, drawn from (seed, block) only."""
        s, types, machines = self.scenario, self._types, self.constants
        n, f = BLOCK_PARTS, MAX_FEATURES
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(block,)))
        # Draw order and shapes are fixed: changing them changes every simulated value.
        air_noise_k = rng.normal(0.0, s.air_noise_k, n)
        excess_k = rng.uniform(s.arrival_excess_min_k, s.arrival_excess_max_k, n)
        wait_s = rng.uniform(s.wait_min_s, s.wait_max_s, n)
        part_reading_noise_k = rng.normal(0.0, s.sensor_noise_k, n)
        air_reading_noise_k = rng.normal(0.0, s.sensor_noise_k, n)
        manufacturing = rng.standard_normal((n, f))
        probe = rng.standard_normal((n, f))

        part_index = np.arange(block * n, (block + 1) * n, dtype=np.int64)
        machine = part_index % self.machines
        kind_of_part = part_type_index(part_index, self.machines)
        lot = type_ordinal(part_index, self.machines) // s.lot_size
        lots = list(zip(kind_of_part.tolist(), lot.tolist(), strict=True))
        cte_by_lot = {key: self.lot_cte_per_k(*key) for key in set(lots)}
        true_cte = np.array([cte_by_lot[key] for key in lots])

        shop_time_s = part_index.astype(np.float64) * s.shop_step_s
        true_air_c = self.true_air_temp_c(shop_time_s, air_noise_k)
        # first-order lag of the mean temperature; feature i is measured at t_i = W + i * feature_time
        since_arrival_s = wait_s[:, np.newaxis] + np.arange(f) * s.feature_time_s
        true_mean_c = true_air_c[:, np.newaxis] + excess_k[:, np.newaxis] * np.exp(-since_arrival_s / s.cooling_tau_s)
        surface_c = true_air_c + (1.0 - s.gradient_fraction) * (true_mean_c[:, 0] - true_air_c)
        part_c = surface_c + machines.part_sensor_offset_k[machine] + part_reading_noise_k
        air_c = true_air_c + machines.air_sensor_offset_k[machine] + air_reading_noise_k

        nominal = types.nominal[kind_of_part]
        true_value = nominal + types.centre[kind_of_part] + types.sigma[kind_of_part] * manufacturing
        angle = types.angle[kind_of_part]
        cmm_error_um = np.where(angle, 0.0, machines.error_um(machine[:, np.newaxis], nominal))
        probe_error_um = np.where(angle, s.angle_sigma_deg * UM_PER_MM, s.probe_sigma_um) * probe
        expanded = expand_from_20c(true_value, true_mean_c, true_cte[:, np.newaxis])
        length_mm = expanded + (cmm_error_um + probe_error_um) / UM_PER_MM
        measured = np.where(angle, true_value + probe_error_um / UM_PER_MM, length_mm)
        lower, upper = types.lower[kind_of_part], types.upper[kind_of_part]
        deviation = true_value - nominal
        with np.errstate(invalid="ignore"):
            conforming = ~(deviation < lower) & ~(deviation > upper)
            tolerance = np.where((upper > 0.0) & (lower == -upper), upper, np.nan)

        valid = np.arange(f) < types.count[kind_of_part][:, np.newaxis]
        per_row = valid.sum(axis=1)

        def rows(values: NDArray[T]) -> NDArray[T]:
            return values[valid]

        def repeat(values: NDArray[T]) -> NDArray[T]:
            return np.repeat(values, per_row)

        part_ids = np.array([f"P{k:07d}" for k in part_index.tolist()])
        return PartBatch(
            part_index=repeat(part_index),
            machine_index=repeat(machine),
            shop_time_s=repeat(shop_time_s),
            feature_index=rows(np.broadcast_to(np.arange(f, dtype=np.int64), (n, f))),
            part_type=repeat(kind_of_part),
            feature=rows(types.name[kind_of_part]),
            feature_kind=rows(types.kind[kind_of_part]),
            unit=rows(types.unit[kind_of_part]),
            part_id=repeat(part_ids),
            part_number=repeat(types.part_number[kind_of_part]),
            material=repeat(types.material[kind_of_part]),
            nominal=rows(nominal),
            lower_tol=rows(lower),
            upper_tol=rows(upper),
            tolerance=rows(tolerance),
            measured=rows(measured),
            true_value=rows(true_value),
            conforming=rows(conforming),
            true_part_temp_c=rows(true_mean_c),
            true_surface_temp_c=repeat(surface_c),
            part_temp_c=repeat(part_c),
            true_air_temp_c=repeat(true_air_c),
            air_temp_c=repeat(air_c),
            true_cte_per_k=repeat(true_cte),
            cte_lot=repeat(lot),
            cmm_error_um=rows(cmm_error_um),
            probe_error_um=rows(probe_error_um),
            part_sensor_offset_k=repeat(machines.part_sensor_offset_k[machine]),
            air_sensor_offset_k=repeat(machines.air_sensor_offset_k[machine]),
            cmm_mpe_a_um=repeat(machines.mpe_a_um[machine]),
            cmm_mpe_k_mm_per_um=repeat(machines.mpe_k_mm_per_um[machine]),
        )
