#!/usr/bin/env python3
"""cmm-twin mock MES: receives, validates, de-duplicates and durably stores measurements (see `--help`).

Thin entry point; the code lives in `cmm_twin.mes`.
"""

from cmm_twin.mes.cli import main

raise SystemExit(main())
