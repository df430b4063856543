#!/usr/bin/env bash
# Side-by-side loadgen runs of two builds, alternating, in both orders:
#
#   scripts/bench-ab-loadgen.sh OLD_DIR NEW_DIR [RUNS] [loadgen args...]
#
# Each DIR holds an `allot` and a `loadgen` binary (release builds, e.g.
# copied aside after `cargo build --release -p allot-scheduler --bin allot
# -p allot-sdk --example loadgen`). Each run starts a fresh dev server of
# its build and runs its loadgen against it; pairs alternate which build
# goes first. Prints one line per run: build, order, loadgen's summary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/dev-server.sh"
trap 'stop_dev_server' EXIT
old="$1" new="$2" runs="${3:-3}"
shift $(( $# >= 3 ? 3 : $# ))
one() {
    local build="$1" dir="$2" order="$3"
    local tmp
    tmp="$(mktemp -d)"
    start_dev_server "$dir/allot" "$tmp"
    local out
    out="$("$dir/loadgen" "$@" 2>&1 | tail -n 4 | tr '\n' ' ')"
    stop_dev_server
    server=
    rm -rf "$tmp"
    echo "$build ($order): $out"
}
for i in $(seq 1 "$runs"); do
    if (( i % 2 )); then
        one old "$old" first "$@"; one new "$new" second "$@"
    else
        one new "$new" first "$@"; one old "$old" second "$@"
    fi
done
