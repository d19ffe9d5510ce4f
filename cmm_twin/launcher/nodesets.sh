#!/usr/bin/env bash
# Fetches the official OPC UA nodesets the gateway's Machinery model needs (DI, IA, Machinery,
# Machinery Result; MIT-licensed, OPC Foundation) from the npm package node-opcua-nodesets, checks
# the tarball against the pinned sha512, and extracts them into DIR (default: the virtual
# environment's share/cmm-twin/nodesets, where the gateway looks by default; see docs/opcua.md,
# "Machinery"). Never committed to the repository: the set-up fetches them once and keeps them.
#
#   scripts/nodesets.sh [DIR]       (in a checkout)
#   cmm-twin nodesets [DIR]         (an installed package; DIR defaults to <python prefix>/share/...)
#
# Nothing to do when DIR already holds this version. Without npm or without the registry it says
# so and exits 0: the gateway then serves OPC UA without the Machinery model (one warning at
# start-up), and the tests that need the nodesets fail, naming this script.
set -euo pipefail

PACKAGE=node-opcua-nodesets
VERSION=2.185.0
INTEGRITY="sha512-7qDwdkYRKIGRBk0gKhY5C3olQ0wRHTCoZj4FbzD1GmXF5xGaZcv/OatvFa73H7yyq3LxWxTKVteELlbbyziyLg=="
FILES=(Opc.Ua.Di.NodeSet2.xml Opc.Ua.IA.NodeSet2.xml Opc.Ua.Machinery.NodeSet2.xml Opc.Ua.Machinery_Result.NodeSet2.xml)

dest="${1:-${VENV:-.venv}/share/cmm-twin/nodesets}"
stamp="$dest/SOURCE"
want="$PACKAGE@$VERSION $INTEGRITY"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  complete=1
  for f in "${FILES[@]}"; do [ -s "$dest/$f" ] || complete=0; done
  [ "$complete" -eq 1 ] && exit 0
fi

say() { echo "nodesets: $*" >&2; }
without() {
  say "$1"
  say "the OPC UA server will run without the Machinery model (OPC 40001-1); run scripts/nodesets.sh (or cmm-twin nodesets) again when fixed"
  exit 0
}

command -v npm >/dev/null 2>&1 || without "npm not found: cannot fetch $PACKAGE@$VERSION (install nodejs and npm)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack "$PACKAGE@$VERSION" --silent >pack.log 2>&1); then
  without "npm pack $PACKAGE@$VERSION failed (no network or registry?): $(tail -n 3 "$work/pack.log" | tr '\n' ' ')"
fi
tarball="$work/$PACKAGE-$VERSION.tgz"
[ -f "$tarball" ] || without "npm pack did not leave $tarball"

# npm pack checks the registry's integrity itself; checking the pinned one too means a changed
# tarball under the same version is refused, not loaded.
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 | tr -d '\n')"
if [ "$actual" != "$INTEGRITY" ]; then
  say "REFUSED $PACKAGE@$VERSION: its sha512 is $actual, pinned $INTEGRITY"
  exit 1
fi

members=("package/LICENSE")
for f in "${FILES[@]}"; do members+=("package/nodesets/$f"); done
tar -xzf "$tarball" -C "$work" "${members[@]}"
mkdir -p "$(dirname "$dest")"
staged="$(mktemp -d "$(dirname "$dest")/.nodesets.XXXXXX")"
for f in "${FILES[@]}"; do cp "$work/package/nodesets/$f" "$staged/$f"; done
cp "$work/package/LICENSE" "$staged/LICENSE.node-opcua-nodesets"
echo "$want" >"$staged/SOURCE"
chmod 755 "$staged"
rm -rf "$dest"
mv "$staged" "$dest"
say "$PACKAGE@$VERSION (sha512 checked): ${FILES[*]} in $dest"
