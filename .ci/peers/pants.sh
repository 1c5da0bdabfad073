#!/usr/bin/env bash
# Installs Pants 2.17.1 (PyPI pantsbuild.pants; its wheel wants CPython 3.9, from pyenv) into a
# venv outside the checkout, ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/pants-2.17.1/venv, for
# crates/casket/tests/serve_pants.rs. The test runs the venv's `pants` entry point, not the scie
# launcher (which downloads). Idempotent: does nothing when the venv already reports 2.17.1.
# Needs pyenv's 3.9 and PyPI.
set -euo pipefail

version=2.17.1
python=${CASKET_PYTHON39:-/root/.pyenv/versions/3.9.18/bin/python3.9}
venv=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/pants-$version/venv

# Pants reads pants.toml from the working directory's build root: ask from an empty one, with
# its local store and sandboxes there too rather than in ~/.cache/pants and /tmp.
pants_version() {
  local root
  root=$(mktemp -d)
  touch "$root/pants.toml"
  (cd "$root" && "$venv/bin/pants" --no-pantsd --no-pantsrc --local-store-dir="$root/store" \
    --named-caches-dir="$root/named" --local-execution-root-dir="$root" --version 2>/dev/null) || true
  rm -rf "$root"
}

installed() {
  [[ -x "$venv/bin/pants" ]] && [[ "$(pants_version)" == "$version" ]]
}

if installed; then
  echo "==> pants $version already in $venv"
  exit 0
fi

if [[ ! -x "$python" ]]; then
  echo "Pants $version needs CPython 3.9; not found at $python (set CASKET_PYTHON39)" >&2
  exit 1
fi

echo "==> pants $version into $venv"
# A half-made venv (interrupted run, other Python) is made anew.
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "pantsbuild.pants==$version"

if ! installed; then
  echo "pants $version did not install into $venv; it reports: $(pants_version)" >&2
  exit 1
fi
echo "==> pants $version ($venv, $("$venv/bin/python" --version))"
