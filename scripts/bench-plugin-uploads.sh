#!/usr/bin/env bash
# Whether plugin uploads slow other tenants' submissions (issue 12): the
# load generator (one job in flight, ROUNDS rounds of JOBS jobs) against a
# fresh `allot server --dev`, alternating rounds with nothing else going on
# and rounds while an admin uploads the Python example gpu-limit-py back to
# back (each upload validated and compiled; the plugin is never bound, so
# only the uploads' cost shows).
#
#   scripts/bench-plugin-uploads.sh [ROUNDS] [JOBS]
#
# ROUNDS defaults to 3, JOBS to 300. Build first:
#   cargo build --release -p allot-scheduler --bin allot
#   cargo build --release -p allot-sdk --example loadgen
# Needs scripts/setup.sh for componentize-py. Prints the load generator's
# report of each round under its label; the medians are for you to take.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-3}"
jobs="${2:-300}"
target="${CARGO_TARGET_DIR:-target}/release"
allot="$target/allot"
loadgen="$target/examples/loadgen"
for bin in "$allot" "$loadgen"; do
    [[ -x "$bin" ]] || { echo "error: $bin not found (see the build commands in $0)" >&2; exit 1; }
done
out=$(mktemp -d)
plugins/examples/gpu-limit-py/build.sh "$out/gpu_limit_py.wasm" 2>/dev/null
uploads=
. scripts/dev-server.sh
trap '[[ -n "$uploads" ]] && kill "$uploads" 2>/dev/null; stop_dev_server; rm -rf "$out"' EXIT
start_dev_server "$allot" "$out"

upload_loop() {
    while true; do
        ALLOT_TOKEN="$ALLOT_ADMIN_TOKEN" "$allot" plugin add "$out/gpu_limit_py.wasm" --name churn --global >/dev/null
    done
}

for round in $(seq 1 "$rounds"); do
    echo "== round $round: idle"
    "$loadgen" --jobs "$jobs" --concurrency 1
    upload_loop &
    uploads=$!
    sleep 2 # the first upload is compiling
    echo "== round $round: during back-to-back uploads"
    "$loadgen" --jobs "$jobs" --concurrency 1
    kill "$uploads"
    wait "$uploads" 2>/dev/null || true
    uploads=
    sleep 12 # the upload in flight finishes compiling (~9 s) before the next idle round
done
