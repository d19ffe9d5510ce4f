#!/usr/bin/env bash
# `make run`: the edge gateway and the shop simulator on this machine (loopback only).
# Ctrl+C stops both cleanly. The mock MES and the historian join in later versions.
set -uo pipefail
PY=${PY:-.venv/bin/python}
DATA=${CMM_DATA_DIR:-data}
"$PY" cmm_edge_gateway.py --data-dir "$DATA" &
gateway=$!
stop() {
  kill -TERM "$gateway" 2>/dev/null
  wait "$gateway" 2>/dev/null
}
trap stop EXIT
trap 'exit 0' INT TERM
"$PY" cmm_simulator.py --outdir "$DATA/inbox" --truth-dir "$DATA/truth"
