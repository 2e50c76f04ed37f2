#!/usr/bin/env bash
# A real transfer on loopback: builds zsend and zrecv, serves a freshly
# generated random file, fetches it (with a progress bar on a terminal),
# verifies it independently, and stops the server.
#   SIZE=1G scripts/demo.sh      # default 256M
set -euo pipefail
cd "$(dirname "$0")/.."
size=${SIZE:-256M}
work=$(mktemp -d "${TMPDIR:-/tmp}/zsend-demo.XXXXXX")
server=""
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building zsend and zrecv"
go build -o "$work/bin/" ./cmd/zsend ./cmd/zrecv

echo "==> generating $size of random data"
mkdir -p "$work/src" "$work/out"
head -c "$(numfmt --from=iec "$size")" /dev/urandom > "$work/src/demo.bin"

echo "==> starting zsend on a free loopback port"
"$work/bin/zsend" -b tcp://127.0.0.1:0 "$work/src/demo.bin" 2> "$work/zsend.log" &
server=$!
endpoint=""
for _ in $(seq 100); do
  endpoint=$(sed -n 's/.* on \(tcp:\/\/[^ ]*\)$/\1/p' "$work/zsend.log" | head -n1)
  [ -n "$endpoint" ] && break
  sleep 0.1
done
[ -n "$endpoint" ] || { cat "$work/zsend.log"; echo "zsend did not start" >&2; exit 1; }
echo "    zsend is serving on $endpoint"

echo "==> zrecv $endpoint demo.bin"
start=$(date +%s.%N)
"$work/bin/zrecv" -o "$work/out" "$endpoint" demo.bin
end=$(date +%s.%N)

echo "==> verifying independently"
if command -v b3sum >/dev/null; then
  src=$(b3sum --no-names "$work/src/demo.bin"); dst=$(b3sum --no-names "$work/out/demo.bin")
  echo "    b3sum source:      $src"
  echo "    b3sum destination: $dst"
  [ "$src" = "$dst" ]
fi
cmp "$work/src/demo.bin" "$work/out/demo.bin"
awk -v s="$start" -v e="$end" -v b="$(stat -c %s "$work/src/demo.bin")" \
  'BEGIN { printf "==> OK: %d bytes verified in %.2f s (%.0f MB/s, fsync included)\n", b, e-s, b/(e-s)/1e6 }'
