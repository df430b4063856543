#!/usr/bin/env bash
# Builds every example plugin into a WebAssembly component.
#
#   plugins/build.sh            # all examples (needs scripts/setup.sh run once)
#   plugins/build.sh --rust     # the Rust examples only (needs only the wasm32-wasip2 target)
#
# Outputs, all under plugins/target/wasm32-wasip2/release/:
#   require_cost_center.wasm  admission  (Rust)
#   project_caps.wasm         quota      (Rust)
#   time_of_day.wasm          pricing    (Rust)
#   gpu_limit_py.wasm         admission  (Python, componentize-py)
#
# Progress goes to stderr; stdout gets the absolute path of each component,
# one per line, so that tests can read them. Each output is checked to be a
# component (not a core module), and validated by wasm-tools when
# scripts/setup.sh has installed it. Rust builds use --locked, so the
# committed Cargo.lock decides every dependency.
set -euo pipefail

plugins="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$plugins/target/wasm32-wasip2/release"
rust_only=false
case "${1:-}" in
    "") ;;
    --rust) rust_only=true ;;
    *) echo "usage: $0 [--rust]" >&2; exit 2 ;;
esac

cd "$plugins"
echo "building the Rust examples (cargo build --release --target wasm32-wasip2)" >&2
cargo build --locked --release --target wasm32-wasip2 \
    -p require-cost-center -p project-caps -p time-of-day >&2
components=("$out/require_cost_center.wasm" "$out/project_caps.wasm" "$out/time_of_day.wasm")

if ! $rust_only; then
    echo "building examples/gpu-limit-py (componentize-py)" >&2
    examples/gpu-limit-py/build.sh "$out/gpu_limit_py.wasm"
    components+=("$out/gpu_limit_py.wasm")
fi

# A component starts with the magic `\0asm` and the component layer's
# version: 0d 00 01 00 (a core module has 01 00 00 00).
component_header="0061736d0d000100"
wasm_tools="$plugins/.venv/bin/wasm-tools"
for component in "${components[@]}"; do
    header="$(od -An -tx1 -N8 "$component" | tr -d ' \n')"
    if [[ "$header" != "$component_header" ]]; then
        echo "error: $component is not a WebAssembly component (header $header)" >&2
        exit 1
    fi
    if [[ -x "$wasm_tools" ]]; then
        "$wasm_tools" validate "$component"
    fi
    echo "$(stat -c %s "$component") bytes  $component" >&2
    echo "$component"
done
