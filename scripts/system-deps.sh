#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing.
# Runs apt-get only as root (as in CI); otherwise it says what is missing and carries on.
set -euo pipefail
packages=(victoria-metrics chromium systemd)  # systemd: systemd-analyze for tests/test_systemd.py
if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "system-deps: missing Debian packages: ${missing[*]} (run as root, or install them: the tests that need them fail without)" >&2
fi
