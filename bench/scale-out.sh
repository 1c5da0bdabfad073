#!/usr/bin/env bash
# Scale-out benchmark: one `casket serve` on a local disk store against two frontends (A and B,
# tiered: a local near disk in front of one bucket) over a real three-node Garage cluster
# (replication factor 3), in one run, on loopback. Push goes through A, pull through B.
#
#   bench/scale-out.sh            # prints a Markdown table; cleans up after itself
#
# Workloads: 10,000 files of 4 KiB (push, pull); one 1 GiB file (push, pull);
# FindMissingBlobs of the 10,000 + directories, as a push of a tree the server already has:
# cold (a frontend just started, empty near disk and existence cache) and warm (again).
# S3 requests are Garage's own counters (api_s3_request_counter on each node's admin port),
# summed over the three nodes, per blob of the phase.
# Needs: a release build of casket (built if missing), garage (.ci/peers/garage.sh),
# python3, curl, ~4 GiB free under /tmp (1 GiB x 3 replicas).
set -euo pipefail
cd "$(dirname "$0")/.."

G=${CASKET_GARAGE:-${CASKET_PEERS_DIR:-/var/cache/casket-peers}/garage/bin/garage}
CASKET=${CASKET_BIN:-$PWD/target/release/casket}
GEN=${CASKET_SHARED:-../shared}/peers/gen_tree.py
[[ -x $CASKET ]] || cargo build --release -q -p casket
[[ -x $G ]] || { echo "no garage at $G (run .ci/peers/garage.sh)" >&2; exit 1; }
[[ -f $GEN ]] || GEN=/work/shared/peers/gen_tree.py

W=$(mktemp -d /tmp/casket-scale-bench.XXXXXX)
PIDS=()
cleanup() {
  local status=$?
  if ((status != 0)); then
    for log in "$W"/*.log; do echo "== $log" >&2; tail -5 "$log" >&2; done
  fi
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

# ---- Garage: three nodes, ports from a free base --------------------------------------------
free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BASE=$((20000 + RANDOM % 20000))
while ! { free $((BASE + 100)) && free $((BASE + 101)) && free $((BASE + 103)) && free $((BASE + 200)) &&
  free $((BASE + 201)) && free $((BASE + 203)) && free $((BASE + 300)) && free $((BASE + 301)) &&
  free $((BASE + 303)); }; do BASE=$((20000 + RANDOM % 20000)); done
port() { echo $((BASE + 100 * $1 + $2)); }
KEY_ID=GK0123456789abcdef01234567
KEY_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
SECRET=$(openssl rand -hex 32)
gcli() { local n=$1; shift; "$G" -c "$W/g$n/garage.toml" "$@"; }
for n in 1 2 3; do
  mkdir -p "$W/g$n"
  cat >"$W/g$n/garage.toml" <<TOML
metadata_dir = "$W/g$n/meta"
data_dir = "$W/g$n/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$(port $n 1)"
rpc_public_addr = "127.0.0.1:$(port $n 1)"
rpc_secret = "$SECRET"
[s3_api]
api_bind_addr = "127.0.0.1:$(port $n 0)"
s3_region = "garage"
[admin]
api_bind_addr = "127.0.0.1:$(port $n 3)"
TOML
  "$G" -c "$W/g$n/garage.toml" server >"$W/g$n/log" 2>&1 &
  PIDS+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 200); do gcli $n status >/dev/null 2>&1 && break; sleep 0.05; done
done
gcli 1 node connect "$(gcli 2 node id -q)" >/dev/null
gcli 1 node connect "$(gcli 3 node id -q)" >/dev/null
gcli 2 node connect "$(gcli 3 node id -q)" >/dev/null
for n in 1 2 3; do id=$(gcli $n node id -q); gcli 1 layout assign -z dc1 -c 10G "${id%@*}" >/dev/null; done
gcli 1 layout apply --version 1 >/dev/null
for n in 1 2 3; do
  for _ in $(seq 600); do gcli $n json-api GetClusterHealth 2>/dev/null | grep -q '"status": *"healthy"' && break; sleep 0.1; done
done
gcli 1 key import --yes -n casket "$KEY_ID" "$KEY_SECRET" >/dev/null
gcli 1 bucket create casket >/dev/null
gcli 1 bucket allow --read --write --owner casket --key casket >/dev/null

# S3 requests served by the whole cluster so far, as "Endpoint count" lines.
s3_requests() {
  for n in 1 2 3; do curl -sf "http://127.0.0.1:$(port $n 3)/metrics"; done |
    awk -F'[{}" ]+' '/^api_s3_request_counter\{/ { for (i = 2; i < NF; i++) if ($i == "api_endpoint=") e = $(i + 1); c[e] += $NF }
      END { for (e in c) print e, c[e] }'
}
# The requests between two snapshots: "PutObject 10101 (1.000/blob), ...; 1.000/blob".
per_blob() {
  local before=$1 after=$2 blobs=$3
  join -a2 -e0 -o 0,1.2,2.2 <(sort <<<"$before") <(sort <<<"$after") |
    awk -v n="$blobs" '{ d = $3 - $2; if (d > 0) { printf "%s%s %d", sep, $1, d; sep = ", "; t += d } }
      END { if (t == 0) printf "none"; else printf "; %.4f per blob", t / n }'
}

# ---- casket frontends -------------------------------------------------------------------------
# serve NAME ARGS...: starts `casket serve ARGS`, sets URL_<NAME>.
serve() {
  local name=$1; shift
  "$CASKET" --quiet serve --listen 127.0.0.1:0 --allow-push "$@" 2>"$W/$name.log" &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 200); do grep -q "serving" "$W/$name.log" 2>/dev/null && break; sleep 0.05; done
  local addr
  # "casket: serving STORE on 127.0.0.1:PORT (...)"; the store may name an endpoint too.
  addr=$(grep -o ' on 127\.0\.0\.1:[0-9]*' "$W/$name.log" | head -1 | sed 's/^ on //' || true)
  [[ -n $addr ]] || { cat "$W/$name.log" >&2; exit 1; }
  eval "URL_$name=http://$addr"
}
tiered() { # tiered NAME NODE
  cat >"$W/$1.toml" <<TOML
[store]
kind = "tiered"
[store.near]
kind = "disk"
path = "$W/$1-near"
quota = "8G"
[store.far]
kind = "s3"
bucket = "casket"
endpoint = "http://127.0.0.1:$(port $2 0)"
region = "garage"
allow_http = true
access_key_id = "$KEY_ID"
secret_access_key = "$KEY_SECRET"
TOML
  serve "$1" --config "$W/$1.toml"
}
serve local --store "$W/local-store"
tiered A 1
tiered B 2

# ---- trees --------------------------------------------------------------------------------------
python3 "$GEN" "$W/small" --files 10000 --size 4096 --dirs 100 --seed 1 --symlinks 0 >/dev/null
mkdir -p "$W/large"
head -c 1G /dev/urandom >"$W/large/blob.bin"
SMALL=$("$CASKET" --quiet --store "$W/client" capture "$W/small")
LARGE=$("$CASKET" --quiet --store "$W/client" capture "$W/large")
SMALL_BLOBS=$(($(find "$W/small" -type f | wc -l) + $(find "$W/small" -type d | wc -l)))
rm -rf "$W/large"

now() { date +%s.%N; }
ROWS=()
# phase LABEL BLOBS LOCAL_CMD -- GARAGE_CMD: times both, counts S3 requests of the second.
phase() {
  local label=$1 blobs=$2; shift 2
  local local_cmd=() garage_cmd=()
  while [[ $1 != -- ]]; do local_cmd+=("$1"); shift; done
  shift
  garage_cmd=("$@")
  local t0 t1 t2 before after
  t0=$(now); "${local_cmd[@]}" >/dev/null; t1=$(now)
  before=$(s3_requests)
  t2=$(now); "${garage_cmd[@]}" >/dev/null; local t3; t3=$(now)
  after=$(s3_requests)
  local l g
  l=$(echo "$t1 - $t0" | bc -l); g=$(echo "$t3 - $t2" | bc -l)
  ROWS+=("$(printf '| %s | %.2f s | %.2f s | %.1fx | %s |' "$label" "$l" "$g" "$(echo "$g / $l" | bc -l)" "$(per_blob "$before" "$after" "$blobs")")")
}
c() { "$CASKET" --quiet --store "$W/$1" "${@:2}"; }

phase "push 10,000 x 4 KiB" "$SMALL_BLOBS" \
  c client push --remote "$URL_local" "$SMALL" -- c client push --remote "$URL_A" "$SMALL"
phase "pull 10,000 x 4 KiB" "$SMALL_BLOBS" \
  c pull-local pull --remote "$URL_local" "$SMALL" -- c pull-B pull --remote "$URL_B" "$SMALL"
# A fresh B: empty near disk and existence cache.
kill -KILL "$PID_B"; rm -rf "$W/B-near"; tiered B 2
phase "FindMissingBlobs 10,000, cold cache" "$SMALL_BLOBS" \
  c client push --remote "$URL_local" "$SMALL" -- c client push --remote "$URL_B" "$SMALL"
phase "FindMissingBlobs 10,000, warm cache" "$SMALL_BLOBS" \
  c client push --remote "$URL_local" "$SMALL" -- c client push --remote "$URL_B" "$SMALL"
phase "push 1 GiB" 1 \
  c client push --remote "$URL_local" "$LARGE" -- c client push --remote "$URL_A" "$LARGE"
rm -rf "$W/pull-local" "$W/pull-B"
phase "pull 1 GiB" 1 \
  c pull-local pull --remote "$URL_local" "$LARGE" -- c pull-B pull --remote "$URL_B" "$LARGE"

echo "| workload | one frontend, local disk | two frontends over Garage (push via A, pull via B) | ratio | S3 requests per blob (Garage, all nodes) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "$SMALL_BLOBS blobs in the small tree (files and directories); $(nproc) cores; garage $("$G" --version | awk '{print $2}')"
