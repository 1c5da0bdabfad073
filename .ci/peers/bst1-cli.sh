#!/usr/bin/env bash
# Installs what the bst 1.6.8 CLI peer test (crates/casket/tests/serve_bst1_cli.rs) needs beyond
# python3-buildstream: Debian's `buildstream` ships /usr/bin/bst (python3-buildstream is only
# the library), `bubblewrap` is bst's build sandbox, `fuse` gives bst's sandbox mounts their
# fusermount, and `dash` is copied from the host into the test's tiny runtime (with libc and
# ld.so from libc6). Idempotent: installs only what dpkg-query does not report installed, then
# checks that bst is 1.6.8 and that bubblewrap can run a command in a user namespace here.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
packages=(python3-buildstream buildstream bubblewrap fuse dash libc6)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -q
  # No recommends: git, ostree and the external plugins are not needed for local sources.
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

version=$(/usr/bin/bst --version)
if [[ "$version" != "1.6.8" ]]; then
  echo "bst1-cli: /usr/bin/bst is $version, the test needs 1.6.8" >&2
  exit 1
fi
if [[ "$(bwrap --ro-bind / / --unshare-user --uid 0 --gid 0 whoami 2>&1)" != "root" ]]; then
  echo "bst1-cli: warning: bwrap cannot use user namespaces here; bst will build without them" >&2
fi
