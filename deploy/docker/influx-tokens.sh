#!/bin/bash
# One-shot init step of docker-compose.yml (service influxdb-init, the influxdb image's `influx` CLI):
# with the admin token, which only this step and InfluxDB itself see, it makes two least-privilege
# tokens and leaves them in the influx-tokens volume:
#   /tokens/gateway.token   write-only on the bucket  (the gateway: INFLUX_TOKEN_FILE)
#   /tokens/grafana.token   read-only on the bucket   (Grafana's datasource: $__file{...})
# A token already in the volume and still known to InfluxDB is kept, so `docker compose up` again
# changes nothing for the running services; a missing or unknown one is made anew.
set -euo pipefail

: "${INFLUX_HOST:?}" "${INFLUX_TOKEN:?}" "${INFLUX_ORG:?}" "${INFLUX_BUCKET:?}"
dir=/tokens
gateway_uid=10001  # the cmm user of the cmm-twin image (Dockerfile)
grafana_uid=472    # the grafana user of the grafana image

bucket_id="$(influx bucket list --org "$INFLUX_ORG" --name "$INFLUX_BUCKET" --hide-headers | cut -f1)"
[ -n "$bucket_id" ] || { echo "influx-tokens: no bucket $INFLUX_BUCKET in org $INFLUX_ORG" >&2; exit 1; }
known="$(influx auth list --org "$INFLUX_ORG" --json)"

# make NAME UID FLAG: the token in $dir/NAME.token, made with `influx auth create FLAG <bucket>`.
make() {
  local name="$1" uid="$2" flag="$3" file="$dir/$1.token" token
  if [ -s "$file" ] && grep -qF "\"$(cat "$file")\"" <<<"$known"; then
    echo "influx-tokens: $name token kept"
  else
    token="$(influx auth create --org "$INFLUX_ORG" "$flag" "$bucket_id" \
      --description "cmm-twin $name: ${flag#--} $INFLUX_BUCKET" --json \
      | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p')"
    [ -n "$token" ] || { echo "influx-tokens: no token in the answer of influx auth create" >&2; exit 1; }
    umask 077
    printf '%s' "$token" >"$file.new"
    mv "$file.new" "$file"
    echo "influx-tokens: $name token made (${flag#--} on $INFLUX_BUCKET)"
  fi
  chown "$uid" "$file"
  chmod 0400 "$file"
}

make gateway "$gateway_uid" --write-bucket
make grafana "$grafana_uid" --read-bucket
