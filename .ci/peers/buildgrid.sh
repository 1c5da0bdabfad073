#!/usr/bin/env bash
# Installs BuildGrid 0.4.4 (PyPI; `bgd`, its server and client) into a venv outside the
# checkout, ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bgd-venv, for the client table of
# `cargo xtask bench-peers --only clients`. Idempotent: does nothing when the venv already
# holds 0.4.4. BuildGrid 0.4.4 needs Python >= 3.11 (the machine's python3).
set -euo pipefail

version=0.4.4
venv=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bgd-venv

installed() {
  [[ -x "$venv/bin/bgd" ]] && "$venv/bin/pip" show buildgrid 2>/dev/null | grep -qx "Version: $version"
}

if installed; then
  echo "==> BuildGrid $version already in $venv"
  exit 0
fi

echo "==> pip install buildgrid==$version into $venv"
python3 -m venv --clear "$venv"
"$venv/bin/pip" install --quiet "buildgrid==$version"
installed || { echo "BuildGrid $version did not install into $venv" >&2; exit 1; }
