#!/usr/bin/env bash
# Builds the gpu-limit admission plugin (Python) into a WebAssembly component.
#
#   examples/gpu-limit-py/build.sh [OUT.wasm]
#
# Runs the decision's unit tests, then componentize-py (installed into
# plugins/.venv by scripts/setup.sh) against the world `admission` of
# wit/v0.1.0. OUT defaults to target/wasm32-wasip2/release/gpu_limit_py.wasm
# under plugins/.
#
# `--stub-wasi` replaces the WASI imports of the Python runtime with traps, so
# the component imports only `allot:plugin/log` (and the types it uses): like
# every plugin it gets no clock, randomness, files or network, and `print()`
# traps. Log with `log.log(...)` instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins="$(cd "$here/../.." && pwd)"
out="${1:-$plugins/target/wasm32-wasip2/release/gpu_limit_py.wasm}"
componentize_py="$plugins/.venv/bin/componentize-py"

if [[ ! -x "$componentize_py" ]]; then
    echo "error: $componentize_py not found; run scripts/setup.sh first" >&2
    exit 1
fi

cd "$here"
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest --quiet test_policy >&2
mkdir -p "$(dirname "$out")"
"$componentize_py" --wit-path "$plugins/wit/v0.1.0" --world admission \
    componentize --stub-wasi --python-path . app --output "$out" >&2
