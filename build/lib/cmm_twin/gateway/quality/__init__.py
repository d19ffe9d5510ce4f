"""Capability at 20 degC and compensation health per machine and characteristic (docs/capability.md).

`QualityMonitor` keeps the rolling windows (fed by the ingest pipeline before each commit),
`history.rebuild` fills it from the embedded historian at start-up, `report` shapes what
`/api/v1/capability`, `/health` and `/metrics` show, `settings` reads the `[quality]` table.
"""

from __future__ import annotations

from cmm_twin.gateway.quality.monitor import CharacteristicReport, QualityMonitor
from cmm_twin.gateway.quality.settings import QualitySettings, quality_settings

__all__ = ["CharacteristicReport", "QualityMonitor", "QualitySettings", "quality_settings"]
