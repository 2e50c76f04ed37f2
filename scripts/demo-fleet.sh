#!/usr/bin/env bash
# Configuration distribution on loopback: builds zsend and zrecv, publishes
# a generated configuration tree with zsend --watch, starts three followers
# (zrecv --follow, each with an --exec hook), changes a file, prints the
# fleet status as the change lands, gates on zsend --status --wait,
# verifies every follower's tree independently (diff -r against the
# source), and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/zsend-fleet.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building zsend and zrecv"
go build -o "$work/bin/" ./cmd/zsend ./cmd/zrecv
zsend=$work/bin/zsend zrecv=$work/bin/zrecv

echo "==> generating a configuration tree: $work/myapp"
mkdir -p "$work/myapp/conf.d"
echo "listen 8080" > "$work/myapp/app.conf"
for i in $(seq -w 1 50); do echo "upstream backend$i 10.0.0.$i" > "$work/myapp/conf.d/$i.conf"; done
ln -s app.conf "$work/myapp/current.conf"

echo "==> zsend --watch (publishes a version at start and on every change)"
"$zsend" -b tcp://127.0.0.1:0 --state-dir "$work/state" --watch "$work/myapp" 2> "$work/zsend.log" &
pids+=($!)
endpoint=""
for _ in $(seq 100); do
  endpoint=$(sed -n 's/.* on \(tcp:\/\/[^ ]*\)$/\1/p' "$work/zsend.log" | head -n1)
  [ -n "$endpoint" ] && break
  sleep 0.1
done
[ -n "$endpoint" ] || { cat "$work/zsend.log"; echo "zsend did not start" >&2; exit 1; }
echo "    serving on $endpoint"

echo "==> three followers: zrecv --follow -o NODE --node webN --exec '...' $endpoint myapp"
for n in 1 2 3; do
  mkdir -p "$work/web$n"
  "$zrecv" --follow -o "$work/web$n" --node "web$n" \
    --exec 'echo "$(date +%T) switched $ZSND_TREE to v$ZSND_SEQ" >> reload.log' \
    "$endpoint" myapp 2> "$work/web$n.log" &
  pids+=($!)
done
"$zsend" --status "$endpoint" --wait --min-nodes 3 --timeout 30s
echo

echo "==> changing a file at the source"
echo "listen 9090" > "$work/myapp/app.conf"
start=$(date +%s.%N)
echo "==> the status as the change lands (zsend --watch publishes after 100 ms of quiet):"
last=""
for _ in $(seq 200); do
  line=$("$zsend" --status "$endpoint" | tail -n1)
  if [ "$line" != "$last" ]; then
    awk -v s="$start" -v e="$(date +%s.%N)" -v l="$line" 'BEGIN { printf "    +%4.0f ms  %s\n", (e-s)*1000, l }'
    last=$line
  fi
  [ "$line" = "3/3 nodes on myapp v2" ] && break
  sleep 0.02
done
echo "==> deploy gate: zsend --status --wait --min-nodes 3"
"$zsend" --status "$endpoint" --wait --min-nodes 3 --timeout 30s
echo

echo "==> verifying every follower independently (diff -r against the source)"
for n in 1 2 3; do
  diff -r "$work/myapp" "$work/web$n/myapp"
  echo "    web$n/myapp == source ($(readlink "$work/web$n/myapp")); hook: $(tail -n1 "$work/web$n/reload.log")"
done
echo "==> OK: three followers run the new version; stopping everything"
