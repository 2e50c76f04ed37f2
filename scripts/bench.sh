#!/usr/bin/env bash
# Benchmarks zsend/zrecv against raw zmq4, rsync (daemon, --whole-file, with
# and without --fsync) and a plain TCP copy, plus fan-out, high-latency,
# many-small-files and memory scenarios; contenders alternate round by round
# in one run; writes BENCHMARKS.md (and the raw results as JSON).
#
#   scripts/bench.sh                 # full run (SIZE=1G ROUNDS=3)
#   QUICK=1 scripts/bench.sh         # smoke run: small sizes, 1 round, report only
#
# Knobs (environment):
#   SIZE=1G           single-stream file            ROUNDS=3        rounds (single, fan-out, latency)
#   FAN_SIZE=512M     fan-out file                  FAN_N=8         fan-out receivers
#   LAT_SIZE=512M     latency file                  DELAY=25ms      one-way proxy delay
#   PROXY_QUEUE=64M   proxy bytes in flight per direction
#   SMALL_N=1000      small files                   SMALL_SIZE=4K   each; SMALL_ONE=4M the single file
#   SMALL_ROUNDS=5    rounds of the small-files scenario
#   TREE_N=10000      tree files (0..TREE_MAX=16K each) in TREE_DIRS=1000 directories; TREE_ROUNDS=3
#   TREE_MEM_N=100000 entries of the tree-memory scenario
#   MEM_SIZE=4G       memory-scenario file          MEM_ROUNDS=1
#   RELAY_N=20        relay scenario (ONLY=relay): receiving nodes, each a zrecv --follow process (the issue asks 200)
#   RELAY_RELAYS=     relays of the tree topology (default round(sqrt(RELAY_N)))
#   RELAY_RATE=100M   --rate-limit of every server (root and relays), bytes/s; 0 = unlimited
#                     On a 2-core machine 200 nodes at 100M/s are bound by the CPU, not the rate:
#                     RELAY_N=200 RELAY_RATE=20M RELAY_PAYLOADS=big ONLY=relay (about 15 min) is rate-bound
#   RELAY_MB=64M      the big version              RELAY_FILES=10000 files of the tree (0..RELAY_FILE_MAX=1K each)
#   RELAY_TOPOLOGIES= star,tree (default both)      RELAY_PAYLOADS= big,tree (default both: the RELAY_MB version, one file of the tree)
#   PROP_N=50         propagation scenario (ONLY=propagation): followers of a tree served with zsend --watch
#   PROP_FILES=10000  files of the tree (0..PROP_FILE_MAX=1K each); PROP_CHANGES=20 one-file changes; PROP_BULK=1000 files at once
#   PROP_BARRIER=1    then PROP_CHANGES changes again with the root restarted with --barrier (0: skip)
#   CHUNK=1M          frame/write size of the raw zmq4 and TCP baselines
#   ONLY=single,fanout,latency,small,memory,tree,treemem,relay,propagation   run a subset (relay and propagation
#                     are not in the default run: name them)
#   OUT=BENCHMARKS.md report path                   JSON=FILE       keep raw results
#   QUIET_WAIT=10s    before each run, wait up to this long for other load on the machine to settle (QUICK: 0, only record it)
#   STRICT=1          exit 3 when a target fails (ignored with QUICK=1)
#   MERGE=1           merge the scenarios run into the existing report (OUT) instead of replacing it:
#                     MERGE=1 ONLY=relay scripts/bench.sh adds or refreshes the relay section of BENCHMARKS.md
#   TIMEOUT=3600      seconds before the whole run is aborted
#   TMPDIR            where the scratch directory goes (sources and outputs: same disk)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  d_size=64M d_rounds=1 d_fan=32M d_lat=32M d_small_rounds=1 d_mem=256M d_quiet=0 d_tree_rounds=1 d_tree_mem=20000
else
  d_size=1G d_rounds=3 d_fan=512M d_lat=512M d_small_rounds=5 d_mem=4G d_quiet=10s d_tree_rounds=3 d_tree_mem=100000
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/zsend-bench.XXXXXX")
suite_pid=""
cleanup() {
  local rc=$?
  if [ -n "$suite_pid" ] && kill -0 "$suite_pid" 2>/dev/null; then
    kill -TERM "$suite_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$suite_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$suite_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v rsync >/dev/null || { echo "bench.sh: rsync is not installed (apt-get install -y rsync)" >&2; exit 2; }
rsync_help=$(rsync --help 2>&1 || true)   # not a pipe into grep -q: SIGPIPE + pipefail
grep -q -- '--fsync' <<<"$rsync_help" || { echo "bench.sh: this rsync has no --fsync (need 3.2.4 or newer)" >&2; exit 2; }

echo "==> building zsend, zrecv, zbench and zrun into $work/bin"
go build -o "$work/bin/" ./cmd/zsend ./cmd/zrecv ./bench/cmd/zbench ./bench/cmd/zrun

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain -- cmd sender receiver protocol credit internal 2>/dev/null)" ]; then
  # Name the exact product source measured: a digest of its non-test Go files.
  src_sum=$(find cmd sender receiver protocol credit internal -name '*.go' ! -name '*_test.go' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)
  commit="$commit + uncommitted changes (product sources sha256 $src_sum)"
fi
go_ver=$(go version | sed 's/^go version //')
rsync_ver=$(rsync --version 2>/dev/null | sed -n '1{s/  */ /g;p}' || true)
meta="go=$go_ver;rsync=$rsync_ver;commit=$commit;date=$(date -u '+%Y-%m-%d %H:%M UTC')"

echo "==> running the suite (scratch: $work)"
args=(suite -bin "$work/bin" -work "$work" -o "${OUT:-$root/BENCHMARKS.md}"
  -rounds "${ROUNDS:-$d_rounds}" -size "${SIZE:-$d_size}" -chunk "${CHUNK:-1M}"
  -fan-size "${FAN_SIZE:-$d_fan}" -fan-n "${FAN_N:-8}"
  -lat-size "${LAT_SIZE:-$d_lat}" -delay "${DELAY:-25ms}" -proxy-queue "${PROXY_QUEUE:-64M}"
  -tree-n "${TREE_N:-10000}" -tree-dirs "${TREE_DIRS:-1000}" -tree-max "${TREE_MAX:-16K}" -tree-rounds "${TREE_ROUNDS:-$d_tree_rounds}" -tree-mem-n "${TREE_MEM_N:-$d_tree_mem}"
  -small-n "${SMALL_N:-1000}" -small-size "${SMALL_SIZE:-4K}" -small-one "${SMALL_ONE:-4M}" -small-rounds "${SMALL_ROUNDS:-$d_small_rounds}"
  -mem-size "${MEM_SIZE:-$d_mem}" -mem-rounds "${MEM_ROUNDS:-1}"
  -relay-n "${RELAY_N:-20}" -relay-relays "${RELAY_RELAYS:-0}" -relay-rate "${RELAY_RATE:-100M}" -relay-size "${RELAY_MB:-64M}"
  -relay-files "${RELAY_FILES:-10000}" -relay-file-max "${RELAY_FILE_MAX:-1K}" -relay-topologies "${RELAY_TOPOLOGIES:-}" -relay-payloads "${RELAY_PAYLOADS:-}"
  -prop-n "${PROP_N:-50}" -prop-files "${PROP_FILES:-10000}" -prop-file-max "${PROP_FILE_MAX:-1K}" -prop-changes "${PROP_CHANGES:-20}"
  -prop-bulk "${PROP_BULK:-1000}" -prop-barrier="$([ "${PROP_BARRIER:-1}" = 1 ] && echo true || echo false)"
  -quiet-wait "${QUIET_WAIT:-$d_quiet}" -only "${ONLY:-}" -meta "$meta" -timeout "${TIMEOUT:-3600}s")
[ "$quick" = 1 ] && args+=(-quick)
[ "${STRICT:-0}" = 1 ] && args+=(-strict)
[ "${MERGE:-0}" = 1 ] && args+=(-merge)
[ -n "${JSON:-}" ] && args+=(-json "$JSON")

# Run in the background and wait, so a signal reaches the trap at once.
"$work/bin/zbench" "${args[@]}" &
suite_pid=$!
set +e
wait "$suite_pid"
rc=$?
set -e
suite_pid=""
exit "$rc"
