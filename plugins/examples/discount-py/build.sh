#!/usr/bin/env bash
# Builds the discount pricing plugin (Python) into a WebAssembly component.
#
#   examples/discount-py/build.sh [OUT.wasm]
#
# OUT defaults to target/wasm32-wasip2/release/discount_py.wasm under
# plugins/. See ../componentize.sh for the steps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../componentize.sh" "$here" pricing "${1:-$here/../../target/wasm32-wasip2/release/discount_py.wasm}"
