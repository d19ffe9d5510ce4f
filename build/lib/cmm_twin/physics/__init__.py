"""Physics of thermal compensation (pure NumPy, no I/O)."""

from cmm_twin.physics.checks import ThermalLimits, implausible_results
from cmm_twin.physics.compensation import REFERENCE_TEMP_C, compensate_linear, compensate_to_20c, expand_from_20c
from cmm_twin.physics.decision import VERDICT_NAMES, DecisionRule, Verdict, decide
from cmm_twin.physics.materials import MATERIALS, Material, lookup_material, materials_with_overrides
from cmm_twin.physics.thermal import FLAG_NAMES, Evaluation, Flag, PhysicsConfig, evaluate, flag_names
from cmm_twin.physics.uncertainty import UncertaintyInputs, cmm_mpe_um, standard_uncertainty_um

__all__ = [
    "FLAG_NAMES",
    "MATERIALS",
    "REFERENCE_TEMP_C",
    "VERDICT_NAMES",
    "DecisionRule",
    "Evaluation",
    "Flag",
    "Material",
    "PhysicsConfig",
    "ThermalLimits",
    "UncertaintyInputs",
    "Verdict",
    "cmm_mpe_um",
    "compensate_linear",
    "compensate_to_20c",
    "decide",
    "evaluate",
    "expand_from_20c",
    "flag_names",
    "implausible_results",
    "lookup_material",
    "materials_with_overrides",
    "standard_uncertainty_um",
]
