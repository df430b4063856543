#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: build allot, start
# `allot server --dev` (a controller with two fake GPU nodes), submit a job,
# watch it finish, show its output, its lease and the nodes, then stop.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --bin allot --bin allot-supervise
allot="${CARGO_TARGET_DIR:-target}/debug/allot"
out=$(mktemp -d)
. scripts/dev-server.sh
trap 'stop_dev_server; rm -rf "$out"' EXIT
start_dev_server "$allot" "$out"
cat "$out/server.out"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
step allot submit --gpus 1 -- sh -c "'echo hello from \$ALLOT_JOB_ID on \$CUDA_VISIBLE_DEVICES'"
id=$("$allot" submit --gpus 1 -- sh -c 'echo "hello from $ALLOT_JOB_ID on $CUDA_VISIBLE_DEVICES"')
echo "$id"
step allot watch "$id"
"$allot" watch "$id"
step allot logs "$id"
"$allot" logs "$id"
step allot job "$id"
"$allot" job "$id"
step allot submit --mig 1g.10gb --wait -- sh -c "'echo MIG slice \$CUDA_VISIBLE_DEVICES'"
"$allot" submit --mig 1g.10gb --wait -- sh -c 'echo "MIG slice $CUDA_VISIBLE_DEVICES"'
step allot nodes
"$allot" nodes
step allot jobs
"$allot" jobs
