"""`python -m cmm_twin.accuracy`: see `cmm_twin.accuracy.cli`."""

from cmm_twin.accuracy.cli import main

raise SystemExit(main())
