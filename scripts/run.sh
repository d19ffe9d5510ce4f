#!/usr/bin/env bash
# `make run`: the mock MES, the edge gateway and the shop simulator on this machine (loopback
# only). Ctrl+C stops all three cleanly. The historian and the live page join in later versions.
set -uo pipefail
PY=${PY:-.venv/bin/python}
DATA=${CMM_DATA_DIR:-data}
MES_PORT=${MES_PORT:-8000}
mkdir -p "$DATA"
"$PY" mock_mes.py --port "$MES_PORT" --db "$DATA/mes.sqlite" &
mes=$!
"$PY" cmm_edge_gateway.py --data-dir "$DATA" --mes-url "http://127.0.0.1:$MES_PORT" &
gateway=$!
stop() {
  kill -TERM "$gateway" 2>/dev/null
  wait "$gateway" 2>/dev/null
  kill -TERM "$mes" 2>/dev/null
  wait "$mes" 2>/dev/null
}
trap stop EXIT
trap 'exit 0' INT TERM
echo "cmm-twin: OPC UA opc.tcp://127.0.0.1:4840/cmm-twin/ | gateway http://127.0.0.1:8080/health | MES http://127.0.0.1:$MES_PORT/api/v1/stats" >&2
"$PY" cmm_simulator.py --outdir "$DATA/inbox" --truth-dir "$DATA/truth"
