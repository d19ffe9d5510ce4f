"""CMM simulator: NumPy model of a measuring shop (`shop`) and its atomic output (`writer`), in CSV
or a real CMM format (`formats`)."""

from cmm_twin.simulator.formats import FORMATS, part_report
from cmm_twin.simulator.shop import (
    BLOCK_PARTS,
    DEFAULT_FEATURES,
    Feature,
    PartBatch,
    ShopModel,
    ShopScenario,
    machine_id,
)
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
    "CSV_COLUMNS",
    "DEFAULT_FEATURES",
    "FORMATS",
    "TRUTH_COLUMNS",
    "Feature",
    "PartBatch",
    "PartFileWriter",
    "ShopModel",
    "ShopScenario",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_timestamp",
    "machine_id",
    "part_file_name",
    "part_file_stem",
    "part_report",
    "part_timestamp",
    "remove_stale_temp_files",
    "truth_file_name",
]
