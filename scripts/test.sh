#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script):
# go test -race over every package, summarised by internal/cmd/testsummary,
# which prints go test's per-package ok/FAIL lines, the output of every
# failed test, and every skipped test with its reason.
# Extra arguments go to go test (e.g. scripts/test.sh -count=1).
# The exit status is go test's.
set -uo pipefail
cd "$(dirname "$0")/.."

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/testsummary" ./internal/cmd/testsummary || exit 1

go test -race -json "$@" ./... | "$bin/testsummary"
status=("${PIPESTATUS[@]}")
if [ "${status[0]}" -ne 0 ]; then
  exit "${status[0]}"
fi
exit "${status[1]}"
