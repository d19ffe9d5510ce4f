"""CMM simulator: NumPy model of a measuring shop (`shop`, its `scenario`, `catalogue` and
`machines`) and its atomic output (`writer`), in CSV or a real CMM format (`formats`)."""

from cmm_twin.simulator.catalogue import CATALOGUE, FEATURE_KINDS, CatalogueFeature, PartType, parts_table
from cmm_twin.simulator.formats import FORMATS, part_report
from cmm_twin.simulator.machines import DEFAULT_MPE, machine_id, machines_table, parse_mpe
from cmm_twin.simulator.scenario import SCENARIOS, ShopScenario, scenario
from cmm_twin.simulator.shop import BLOCK_PARTS, PartBatch, ShopModel
from cmm_twin.simulator.writer import (
    CSV_COLUMNS,
    TRUTH_COLUMNS,
    PartFileWriter,
    atomic_write_bytes,
    atomic_write_text,
    format_timestamp,
    part_file_name,
    part_file_stem,
    part_timestamp,
    remove_stale_temp_files,
    truth_file_name,
)

__all__ = [
    "BLOCK_PARTS",
    "CATALOGUE",
    "CSV_COLUMNS",
    "DEFAULT_MPE",
    "FEATURE_KINDS",
    "FORMATS",
    "SCENARIOS",
    "TRUTH_COLUMNS",
    "CatalogueFeature",
    "PartBatch",
    "PartFileWriter",
    "PartType",
    "ShopModel",
    "ShopScenario",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_timestamp",
    "machine_id",
    "machines_table",
    "parse_mpe",
    "part_file_name",
    "part_file_stem",
    "part_report",
    "part_timestamp",
    "parts_table",
    "remove_stale_temp_files",
    "scenario",
    "truth_file_name",
]
