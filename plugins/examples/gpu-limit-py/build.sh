#!/usr/bin/env bash
# Builds the gpu-limit admission plugin (Python) into a WebAssembly component.
#
#   examples/gpu-limit-py/build.sh [OUT.wasm]
#
# OUT defaults to target/wasm32-wasip2/release/gpu_limit_py.wasm under
# plugins/. See ../componentize.sh for the steps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../componentize.sh" "$here" admission "${1:-$here/../../target/wasm32-wasip2/release/gpu_limit_py.wasm}"
