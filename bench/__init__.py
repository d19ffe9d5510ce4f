"""The benchmarks (`python -m bench.run_all`; each module also runs alone)."""

import os

# The gateway delivers to http://127.0.0.1:8000 by default (a bare `python mock_mes.py`). A gateway a
# benchmark starts delivers only to the MES that benchmark names (`--mes-url`, which wins over this).
os.environ["CMM_MES_URL"] = "off"
