#!/usr/bin/env bash
# Fetches the OPC UA nodesets of the Machinery model into DIR (default: .venv/share/cmm-twin/nodesets).
# The pinned fetch itself ships inside the package, so an installed cmm-twin runs the same one as
# `cmm-twin nodesets [DIR]`: see cmm_twin/launcher/nodesets.sh.
#
#   scripts/nodesets.sh [DIR]
exec bash "$(dirname "${BASH_SOURCE[0]}")/../cmm_twin/launcher/nodesets.sh" "$@"
