#!/usr/bin/env bash
# Installs the Bazel 2.1.0 peer of crates/casket/tests/serve_bazel2.rs, an older REAPI 2.0
# client than Debian's 4.2.3: the official Linux binary (with its embedded JDK) from the npm
# package @bazel/bazel-linux_x64@2.1.0, unpacked outside the checkout in
# ${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bazel-2.1.0/node_modules/@bazel/bazel-linux_x64/.
# Idempotent: npm runs only when the binary is missing or is not 2.1.0. Needs npm and the npm
# registry only.
set -euo pipefail

version=2.1.0
root=${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bazel-$version
bin=$root/node_modules/@bazel/bazel-linux_x64/bazel-$version-linux-x86_64

# `bazel --version` prints "bazel 2.1.0" without starting a server or writing anything; 2.1.0
# takes it only as the sole argument (after any other startup option it is unknown).
probe() {
  "$bin" --version 2>/dev/null || true
}

if [[ -x "$bin" ]] && [[ "$(probe)" == "bazel $version" ]]; then
  echo "==> bazel $version ($bin, already installed)"
  exit 0
fi

echo "==> npm install @bazel/bazel-linux_x64@$version into $root"
mkdir -p "$root"
# --ignore-scripts: the package has no install script to run; the binary is all we want.
npm install --prefix "$root" --no-save --no-package-lock --no-audit --no-fund --ignore-scripts \
  "@bazel/bazel-linux_x64@$version"
chmod +x "$bin"

found=$(probe)
if [[ "$found" != "bazel $version" ]]; then
  echo "bazel $version expected at $bin, found: ${found:-nothing}" >&2
  exit 1
fi
echo "==> bazel $version ($bin)"
