"""Digital twin of a measuring shop: air drift, warm parts cooling, sensor and probe noise.

Pure NumPy, no I/O. `ShopModel.parts` returns the measurements of a range of parts as arrays, one
row per measurement (part x feature), ordered by part then feature. The model (README, "The simulator"):

- Shop air, at shop time t (s):
  T_air(t) = air_mean_c + A_day * sin(2*pi*t/86400 + phase) + A_hvac * sin(2*pi*t/P_hvac) + noise,
  by default 22 degC + 3.5 K daily swing + 0.4 K HVAC cycle of 20 min + 0.05 K white noise, i.e.
  about 18..26 degC over a day (a production shop without metrology-grade climate control). With
  the default phase, shop time 0 is the coldest moment of the day (early morning).
- Parts arrive warm from machining, `excess` ~ U(0, 6) K above the air, wait ~ U(0, 60) min before
  they are measured and cool towards the air as a first-order lag with time constant tau = 30 min:
  T_part = T_air + excess * exp(-wait / tau).
- Each part's true CTE scatters around the table value with a relative normal spread of 2 %
  (material batch scatter; well inside the 10 % rectangular uncertainty the physics assumes).
- True length at 20 degC = nominal + manufacturing spread N(0, 4 um).
- Measured length = the true length expanded to the true part temperature with the true CTE
  (`expand_from_20c`, exact form) + probe noise N(0, 0.5 um).
- Reported part temperature = true + Pt100 class A error, uniform within +-(0.15 + 0.002*|t|) K
  (IEC 60751); reported air temperature = true air + uniform +-0.1 K.

Determinism: the randomness of parts 256*b .. 256*b+255 comes only from (seed, b), through
`numpy.random.SeedSequence(seed, spawn_key=(b,))` (the b-th child of `SeedSequence(seed).spawn`),
and every block is always generated whole. So a part's values depend on the seed and its index,
never on how the requested ranges are chunked.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cmm_twin.errors import ConfigError
from cmm_twin.physics.compensation import expand_from_20c
from cmm_twin.physics.materials import Material, lookup_material

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

BLOCK_PARTS = 256
"""Parts per random block: the unit of generation and of seeding."""

SECONDS_PER_DAY = 86400.0
MAX_MACHINES = 99

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Feature:
    """One measured feature of every part: name, nominal size and symmetric tolerance (+-), mm."""

    name: str
    nominal_mm: float
    tolerance_mm: float

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError("scenario.features", f"feature name {self.name!r} must match [A-Za-z0-9_.-]{{1,64}}")
        for key, value in (("nominal_mm", self.nominal_mm), ("tolerance_mm", self.tolerance_mm)):
            if not math.isfinite(value) or value <= 0.0:
                raise ConfigError(f"scenario.features.{self.name}.{key}", f"must be a finite number > 0, got {value!r}")


DEFAULT_FEATURES: tuple[Feature, ...] = (
    Feature("length_x", 100.0, 0.010),
    Feature("length_y", 60.0, 0.010),
)


@dataclass(frozen=True)
class ShopScenario:
    """Parameters of the shop model (see the module docstring); defaults are the reference shop."""

    air_mean_c: float = 22.0
    air_daily_amplitude_k: float = 3.5
    air_daily_phase_rad: float = -math.pi / 2.0
    """Phase of the daily sine; -pi/2 puts the coldest moment at shop time 0."""
    hvac_amplitude_k: float = 0.4
    hvac_period_s: float = 1200.0
    air_noise_k: float = 0.05
    """Standard deviation of the white noise of the air temperature."""
    arrival_excess_max_k: float = 6.0
    """Parts arrive U(0, this) K warmer than the air."""
    wait_max_s: float = 3600.0
    """Parts wait U(0, this) s between arrival and measurement."""
    cooling_tau_s: float = 1800.0
    """Time constant of the first-order cooling of a part towards the air."""
    material: str = "AL6061"
    cte_spread_rel: float = 0.02
    """Relative standard deviation of a part's true CTE around the table value."""
    manufacturing_sigma_mm: float = 0.004
    probe_sigma_mm: float = 0.0005
    pt100_tolerance_a_k: float = 0.15
    pt100_tolerance_b_per_k: float = 0.002
    """Pt100 tolerance +-(a + b*|t|), IEC 60751 class A: a = 0.15 K, b = 0.002."""
    air_sensor_half_width_k: float = 0.1
    features: tuple[Feature, ...] = DEFAULT_FEATURES
    shop_step_s: float = 60.0
    """Shop time between two consecutive parts; part k is measured at shop time k * shop_step_s."""

    def __post_init__(self) -> None:
        non_negative = (
            "air_daily_amplitude_k",
            "hvac_amplitude_k",
            "air_noise_k",
            "arrival_excess_max_k",
            "wait_max_s",
            "cte_spread_rel",
            "manufacturing_sigma_mm",
            "probe_sigma_mm",
            "pt100_tolerance_a_k",
            "pt100_tolerance_b_per_k",
            "air_sensor_half_width_k",
        )
        for name in non_negative:
            _require(name, getattr(self, name), lower=0.0, strict=False)
        for name in ("hvac_period_s", "cooling_tau_s", "shop_step_s"):
            _require(name, getattr(self, name), lower=0.0, strict=True)
        _require("air_mean_c", self.air_mean_c, lower=-20.0, strict=False)
        _require("air_daily_phase_rad", self.air_daily_phase_rad, lower=-math.inf, strict=False)
        if self.cte_spread_rel >= 0.2:
            raise ConfigError("scenario.cte_spread_rel", f"must be below 0.2, got {self.cte_spread_rel!r}")
        if not self.features:
            raise ConfigError("scenario.features", "needs at least one feature")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ConfigError("scenario.features", f"feature names must be unique, got {names}")
        lookup_material(self.material)


def _require(name: str, value: float, *, lower: float, strict: bool) -> None:
    number = float(value)
    if not math.isfinite(number) or number < lower or (strict and number == lower):
        relation = ">" if strict else ">="
        raise ConfigError(f"scenario.{name}", f"must be a finite number {relation} {lower:g}, got {value!r}")


@dataclass(frozen=True, eq=False)
class PartBatch:
    """Measurements of a range of parts, one element per measurement (part x feature).

    Rows are ordered by part, then feature. Values named `true_*` are the ground truth the
    simulator knows and a real shop does not; the others are what the CMM and its sensors report.
    """

    part_index: IntArray
    machine_index: IntArray
    shop_time_s: FloatArray
    feature_index: IntArray
    feature: NDArray[np.str_]
    part_id: NDArray[np.str_]
    nominal_mm: FloatArray
    tolerance_mm: FloatArray
    true_length_20c_mm: FloatArray
    measured_mm: FloatArray
    true_part_temp_c: FloatArray
    part_temp_c: FloatArray
    """Reported part temperature (true + Pt100 error)."""
    true_air_temp_c: FloatArray
    air_temp_c: FloatArray
    """Reported air temperature (true + sensor error)."""
    true_cte_per_k: FloatArray

    def __len__(self) -> int:
        return int(self.part_index.shape[0])

    def select(self, rows: slice | NDArray[np.intp] | NDArray[np.bool_]) -> PartBatch:
        """The batch restricted to `rows` (a slice, index array or mask)."""
        return PartBatch(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

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
        return PartBatch(
            **{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in dataclasses.fields(PartBatch)}
        )


def machine_id(machine_index: int) -> str:
    """Id of machine `machine_index` (0-based): "CMM-01", "CMM-02", ..."""
    return f"CMM-{machine_index + 1:02d}"


class ShopModel:
    """The shop: parts measured round-robin on `machines` CMMs (part k on machine k % machines)."""

    def __init__(self, scenario: ShopScenario | None = None, seed: int = 0, machines: int = 3) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
        if isinstance(machines, bool) or not isinstance(machines, int) or not 1 <= machines <= MAX_MACHINES:
            raise ConfigError("machines", f"must be an integer in 1..{MAX_MACHINES}, got {machines!r}")
        self.scenario = scenario or ShopScenario()
        self.seed = seed
        self.machines = machines
        self.machine_ids: tuple[str, ...] = tuple(machine_id(i) for i in range(machines))
        self.material: Material = lookup_material(self.scenario.material)

    def true_air_temp_c(self, shop_time_s: FloatArray, noise_k: FloatArray | float = 0.0) -> FloatArray:
        """True shop air temperature at `shop_time_s`: mean + daily sine + HVAC sine + `noise_k`."""
        s = self.scenario
        t = np.asarray(shop_time_s, dtype=np.float64)
        daily = s.air_daily_amplitude_k * np.sin(2.0 * np.pi * t / SECONDS_PER_DAY + s.air_daily_phase_rad)
        hvac = s.hvac_amplitude_k * np.sin(2.0 * np.pi * t / s.hvac_period_s)
        return np.asarray(s.air_mean_c + daily + hvac + noise_k, dtype=np.float64)

    def parts(self, start_index: int, count: int) -> PartBatch:
        """Measurements of parts start_index .. start_index + count - 1 (count * features rows)."""
        if start_index < 0 or count < 0:
            raise ValueError(f"start_index and count must be >= 0, got {start_index}, {count}")
        n_features = len(self.scenario.features)
        if count == 0:
            return self._block(0).select(slice(0, 0))
        first_block = start_index // BLOCK_PARTS
        last_block = (start_index + count - 1) // BLOCK_PARTS
        blocks = [self._block(b) for b in range(first_block, last_block + 1)]
        batch = blocks[0] if len(blocks) == 1 else PartBatch.concat(blocks)
        offset = (start_index - first_block * BLOCK_PARTS) * n_features
        return batch.select(slice(offset, offset + count * n_features))

    def _block(self, block: int) -> PartBatch:
        """All measurements of the parts of block `block`, drawn from (seed, block) only."""
        s = self.scenario
        n = BLOCK_PARTS
        features = s.features
        n_features = len(features)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(block,)))
        # Draw order and shapes are fixed: changing them changes every simulated value.
        air_noise_k = rng.normal(0.0, s.air_noise_k, n)
        excess_k = rng.uniform(0.0, s.arrival_excess_max_k, n)
        wait_s = rng.uniform(0.0, s.wait_max_s, n)
        cte_rel = rng.normal(0.0, s.cte_spread_rel, n)
        manufacturing_mm = rng.normal(0.0, s.manufacturing_sigma_mm, (n, n_features))
        probe_mm = rng.normal(0.0, s.probe_sigma_mm, (n, n_features))
        pt100_unit = rng.uniform(-1.0, 1.0, n)
        air_sensor_k = rng.uniform(-s.air_sensor_half_width_k, s.air_sensor_half_width_k, n)

        part_index = np.arange(block * n, (block + 1) * n, dtype=np.int64)
        shop_time_s = part_index.astype(np.float64) * s.shop_step_s
        true_air_c = self.true_air_temp_c(shop_time_s, air_noise_k)
        true_part_c = true_air_c + excess_k * np.exp(-wait_s / s.cooling_tau_s)
        true_cte = self.material.cte_per_k * (1.0 + cte_rel)
        part_c = true_part_c + pt100_unit * (s.pt100_tolerance_a_k + s.pt100_tolerance_b_per_k * np.abs(true_part_c))
        air_c = true_air_c + air_sensor_k

        nominal_mm = np.array([f.nominal_mm for f in features], dtype=np.float64)
        tolerance_mm = np.array([f.tolerance_mm for f in features], dtype=np.float64)
        true_l20_mm = nominal_mm[np.newaxis, :] + manufacturing_mm
        measured_mm = expand_from_20c(true_l20_mm, true_part_c[:, np.newaxis], true_cte[:, np.newaxis]) + probe_mm

        part_ids = np.array([f"P{k:07d}" for k in part_index.tolist()])
        return PartBatch(
            part_index=np.repeat(part_index, n_features),
            machine_index=np.repeat(part_index % self.machines, n_features),
            shop_time_s=np.repeat(shop_time_s, n_features),
            feature_index=np.tile(np.arange(n_features, dtype=np.int64), n),
            feature=np.tile(np.array([f.name for f in features]), n),
            part_id=np.repeat(part_ids, n_features),
            nominal_mm=np.tile(nominal_mm, n),
            tolerance_mm=np.tile(tolerance_mm, n),
            true_length_20c_mm=true_l20_mm.reshape(-1),
            measured_mm=measured_mm.reshape(-1),
            true_part_temp_c=np.repeat(true_part_c, n_features),
            part_temp_c=np.repeat(part_c, n_features),
            true_air_temp_c=np.repeat(true_air_c, n_features),
            air_temp_c=np.repeat(air_c, n_features),
            true_cte_per_k=np.repeat(true_cte, n_features),
        )
