#!/usr/bin/env bash
# Installs the node-opcua client of the interoperability test (tests/test_opcua_interop.py) into
# tests/interop/node_modules with `npm ci` (exact versions of package-lock.json), once: a stamp
# skips the install until package-lock.json changes. Without node/npm it installs Debian's nodejs
# and npm when running as root (as in CI); otherwise it says what to install and carries on (the
# interoperability test is then skipped, saying why).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp="$here/node_modules/.installed"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
  else
    echo "interop: node and npm are missing (install Debian's nodejs and npm, or Node.js >= 18): the node-opcua interoperability test is skipped" >&2
    exit 0
  fi
fi
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/package-lock.json" ]; then
  exit 0
fi
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
touch "$stamp"
