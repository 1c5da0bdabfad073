#!/usr/bin/env bash
# Installs Garage 2.5.0 (the S3-compatible object store, from crates.io) outside the checkout,
# ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/garage/bin/garage, for the 3-node cluster of
# crates/casket/tests/support/garage.rs. Idempotent: does nothing when the binary already
# reports 2.5.0. Needs crates.io and a C compiler (lmdb and sqlite are bundled); the build
# takes about 8 minutes on 2 cores.
set -euo pipefail

version=2.5.0
root=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/garage

installed() {
  # `garage --version` prints "garage cargo:2.5.0 [features: ...]".
  [[ -x "$root/bin/garage" ]] && "$root/bin/garage" --version 2>/dev/null | grep -qF "cargo:$version "
}

if installed; then
  echo "==> garage $version already in $root"
  exit 0
fi

echo "==> cargo install garage $version into $root"
mkdir -p "$root"
# --force: a binary left without cargo's install records (or another version) is replaced.
cargo install garage --version "$version" --locked --force --root "$root"

if ! installed; then
  echo "garage $version did not install into $root:" >&2
  "$root/bin/garage" --version >&2 || true
  exit 1
fi
echo "==> $("$root/bin/garage" --version) ready"
