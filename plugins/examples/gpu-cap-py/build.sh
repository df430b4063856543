#!/usr/bin/env bash
# Builds the gpu-cap quota plugin (Python) into a WebAssembly component.
#
#   examples/gpu-cap-py/build.sh [OUT.wasm]
#
# OUT defaults to target/wasm32-wasip2/release/gpu_cap_py.wasm under
# plugins/. See ../componentize.sh for the steps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../componentize.sh" "$here" quota "${1:-$here/../../target/wasm32-wasip2/release/gpu_cap_py.wasm}"
