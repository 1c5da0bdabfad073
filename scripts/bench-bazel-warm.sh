#!/usr/bin/env bash
# Bazel 4.2.3's warm build through `casket serve`, on the block store against the file store
# (issue 14): the workload of crates/casket/tests/serve_bazel.rs (about 130 actions, outputs
# from empty to over 1 MiB, a tree artifact), built cold once per store to fill it, then
# `bazel clean` and a warm build (every action a remote hit) REPS times, alternating stores.
#
#   scripts/bench-bazel-warm.sh [REPS] [WORK_DIR]      (defaults: 5, a directory in $TMPDIR)
#
# Prints each warm build's wall-clock seconds and the medians. Needs target/release/casket and
# Debian's bazel-bootstrap 4.2.3 (.ci/peers/bazel.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-5}
work=${2:-$(mktemp -d "${TMPDIR:-/tmp}/casket-bazel-warm.XXXXXX")}
casket=$PWD/target/release/casket
flags=(--host_javabase=@local_jdk//:jdk --spawn_strategy=local --symlink_prefix=/
       --incompatible_strict_action_env --jobs=4 --color=no --curses=no)

bazel() {
  local kind=$1; shift
  USE_BAZEL_VERSION=4 /usr/bin/bazel --ignore_all_rc_files --install_base=/usr/share/bazel \
    --trust_install_base --output_user_root="$work/$kind/output_user_root" --max_idle_secs=300 "$@"
}

declare -A url pid
for kind in blocks disk; do
  mkdir -p "$work/$kind"
  cp -r crates/casket/tests/fixtures/bazel "$work/$kind/src"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listen = "127.0.0.1:%s"\nanonymous = "write"\n[store]\nkind = "%s"\npath = "%s"\n' \
    "$port" "$kind" "$work/$kind/store" > "$work/$kind/casket.toml"
  "$casket" serve --config "$work/$kind/casket.toml" 2> "$work/$kind/serve.log" &
  pid[$kind]=$!
  until grep -q serving "$work/$kind/serve.log"; do sleep 0.1; done
  url[$kind]=grpc://127.0.0.1:$port
  (cd "$work/$kind/src/workspace" && bazel "$kind" build "${flags[@]}" --remote_cache="${url[$kind]}" //:all 2>/dev/null)
done
trap 'kill ${pid[blocks]} ${pid[disk]}; for k in blocks disk; do (cd "$work/$k/src/workspace" && bazel "$k" shutdown); done' EXIT

declare -A times
for rep in $(seq "$reps"); do
  for kind in blocks disk; do
    cd "$work/$kind/src/workspace"
    bazel "$kind" clean 2>/dev/null
    started=$(date +%s.%N)
    bazel "$kind" build "${flags[@]}" --remote_cache="${url[$kind]}" //:all 2> "$work/$kind/warm.log"
    seconds=$(echo "$(date +%s.%N) - $started" | bc)
    grep -q "remote cache hit" "$work/$kind/warm.log" || { echo "no remote hits on $kind" >&2; exit 1; }
    echo "$kind warm build $rep: ${seconds}s ($(grep -o '[0-9]* processes: .*' "$work/$kind/warm.log"))"
    times[$kind]+="$seconds "
    cd - > /dev/null
  done
done
for kind in blocks disk; do
  echo "$kind median: $(echo "${times[$kind]}" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')s"
done
