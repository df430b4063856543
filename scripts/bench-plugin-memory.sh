#!/usr/bin/env bash
# What a Python plugin costs the server (issue 12): the time of each upload
# (validation and compilation), and the server's resident memory after each
# step of CYCLES rounds of add, bind, one call, unbind and remove of the
# gpu-limit-py example, on a fresh `allot server --dev`.
#
#   scripts/bench-plugin-memory.sh [CYCLES] [ALLOT]
#
# CYCLES defaults to 6; ALLOT to target/release/allot (build it first:
# cargo build --release -p allot-scheduler --bin allot). Needs
# scripts/setup.sh for componentize-py. Prints one line per step:
#
#   cycle  step      seconds  rss_mib  peak_mib
set -euo pipefail
cd "$(dirname "$0")/.."

cycles="${1:-6}"
allot="${2:-${CARGO_TARGET_DIR:-target}/release/allot}"
[[ -x "$allot" ]] || { echo "error: $allot not found; build it: cargo build --release -p allot-scheduler --bin allot" >&2; exit 1; }
out=$(mktemp -d)
plugins/examples/gpu-limit-py/build.sh "$out/gpu_limit_py.wasm" 2>/dev/null
. scripts/dev-server.sh
trap 'stop_dev_server; rm -rf "$out"' EXIT
start_dev_server "$allot" "$out"

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$server/status"; }
row() {
    printf '%5s  %-8s %8s  %7d  %8d\n' "$1" "$2" "$3" $(($(kib VmRSS) / 1024)) $(($(kib VmHWM) / 1024))
}
timed() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

printf '%5s  %-8s %8s  %7s  %8s\n' cycle step seconds rss_mib peak_mib
row 0 start -
for cycle in $(seq 1 "$cycles"); do
    row "$cycle" add "$(timed "$allot" plugin add "$out/gpu_limit_py.wasm" --name gpu-limit)"
    "$allot" plugin bind gpu-limit >/dev/null
    # One call: a job without a team tag is rejected by the plugin.
    row "$cycle" call "$(timed sh -c "'$allot' submit -- true 2>'$out/call.err' || true")"
    grep -q 'rejected by admission plugin' "$out/call.err" || { cat "$out/call.err" >&2; exit 1; }
    "$allot" plugin unbind --point admission >/dev/null
    row "$cycle" remove "$(timed "$allot" plugin remove gpu-limit)"
done
