"""Settings every test shares."""

import os

# The gateway delivers to http://127.0.0.1:8000 by default (where a bare `python mock_mes.py`
# listens). A gateway a test starts must deliver only to the MES that test names (its own, on a
# free port), never to a developer's MES on the default port: off unless the test says otherwise.
os.environ["CMM_MES_URL"] = "off"
