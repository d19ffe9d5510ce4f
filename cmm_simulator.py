#!/usr/bin/env python3
"""CMM simulator: writes the measurements of each part into an inbox, as a CSV file or in a real
CMM format (`--format dfq|calypso|qif`; see `--help`).

Thin entry point; the code lives in `cmm_twin.simulator` (argument parsing and logging in `cli.main`).
"""

from cmm_twin.simulator.cli import main

raise SystemExit(main())
