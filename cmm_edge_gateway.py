#!/usr/bin/env python3
"""cmm-twin edge gateway: watches the inbox, compensates to 20 degC, serves OPC UA, /health, /metrics.

Thin entry point; the code lives in `cmm_twin.gateway` (see `--help`).
"""

from cmm_twin.gateway.cli import main

raise SystemExit(main())
