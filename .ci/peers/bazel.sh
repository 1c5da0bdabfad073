#!/usr/bin/env bash
# Installs the Bazel peer of crates/casket/tests/serve_bazel.rs: Debian bookworm's Bazel 4.2.3
# (bazel-bootstrap: /usr/bin/bazel, its install base in /usr/share/bazel). The package depends
# on default-jdk-headless (Bazel's server and @local_jdk) and build-essential (the cc_binary).
# Idempotent: apt runs only when the package is missing. Needs root and Debian's archive only.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' bazel-bootstrap 2>/dev/null | grep -q "install ok installed"; then
  echo "==> apt-get install bazel-bootstrap"
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 bazel-bootstrap
fi

# The test wants exactly 4.2.3: say so here rather than in a failing test. Debian's build is
# unstamped (`bazel no_version`), so the package's version tells the release.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
version=$(USE_BAZEL_VERSION=4 /usr/bin/bazel --ignore_all_rc_files --install_base=/usr/share/bazel \
  --trust_install_base --output_user_root="$root" --version 2>/dev/null || true)
package=$(dpkg-query -W -f='${Version}' bazel-bootstrap)
case "$version/$package" in
  "bazel 4.2.3/"* | "bazel no_version/4.2.3"*) echo "==> bazel 4.2.3 (bazel-bootstrap $package)" ;;
  *)
    echo "bazel 4.2.3 expected at /usr/bin/bazel, found: ${version:-nothing} (bazel-bootstrap $package)" >&2
    exit 1
    ;;
esac
