#!/usr/bin/env python3
"""CMM simulator: writes one CSV file per measured part into an inbox (see `--help`).

Thin entry point; the code lives in `cmm_twin.simulator` (argument parsing and logging in `cli.main`).
"""

from cmm_twin.simulator.cli import main

raise SystemExit(main())
