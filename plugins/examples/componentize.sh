#!/usr/bin/env bash
# Builds one Python example plugin into a WebAssembly component: the shared
# steps of each example's build.sh.
#
#   examples/componentize.sh DIR WORLD OUT.wasm
#
# Runs the decision's unit tests (`python3 -m unittest` in DIR), then
# componentize-py (installed into plugins/.venv by scripts/setup.sh) on
# DIR/app.py against WORLD of wit/v0.2.0.
#
# `--stub-wasi` replaces the WASI imports of the Python runtime with traps, so
# the component imports only `allot:plugin/log` (and the types it uses): like
# every plugin it gets no clock, randomness, files or network, and `print()`
# traps. Log with `log.log(...)` instead.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 DIR WORLD OUT.wasm" >&2
    exit 2
fi
dir="$(cd "$1" && pwd)"
world="$2"
out="$3"
plugins="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
componentize_py="$plugins/.venv/bin/componentize-py"

if [[ ! -x "$componentize_py" ]]; then
    echo "error: $componentize_py not found; run scripts/setup.sh first" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
cd "$dir"
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest --quiet >&2
"$componentize_py" --wit-path "$plugins/wit/v0.2.0" --world "$world" \
    componentize --stub-wasi --python-path . app --output "$out" >&2
