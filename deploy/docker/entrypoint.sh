#!/bin/sh
# Entry point of the cmm-twin image: for each secret VAR the programs read from the environment,
# VAR_FILE (a file mounted from a volume or a Docker secret) may give it instead, as the images of
# InfluxDB and Grafana allow. docker-compose.yml hands the gateway its write-only InfluxDB token
# this way: the init step creates it, so it cannot be in .env. Then runs the command (e.g.
# `cmm-twin gateway ...`) in place of this shell, so it gets the signals itself.
set -eu
for var in INFLUX_TOKEN MES_TOKEN OPCUA_PASSWORD GATEWAY_TOKEN; do
  eval "file=\${${var}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "entrypoint: ${var}_FILE=$file is not a readable file" >&2
      exit 2
    fi
    value="$(cat "$file")"
    export "$var=$value"
    unset "${var}_FILE"
  fi
done
exec "$@"
