#!/usr/bin/env bash
# Builds every example plugin into a WebAssembly component.
#
#   plugins/build.sh            # all examples (needs scripts/setup.sh run once)
#   plugins/build.sh --rust     # the Rust examples only (needs only the wasm32-wasip2 target)
#   plugins/build.sh --python   # the Python examples only
#   plugins/build.sh --hostile  # also the hostile test plugins of tests/hostile/
#                               # (flags combine: --rust --hostile)
#
# Outputs, all under plugins/target/wasm32-wasip2/release/:
#   require_cost_center.wasm  admission  (Rust)
#   project_caps.wasm         quota      (Rust)
#   time_of_day.wasm          pricing    (Rust)
#   gpu_limit_py.wasm         admission  (Python, componentize-py)
#   gpu_cap_py.wasm           quota      (Python, componentize-py)
#   discount_py.wasm          pricing    (Python, componentize-py)
# and with --hostile, plugins that misbehave on purpose (the host's tests):
#   hostile_loop_forever.wasm, hostile_memory_bomb.wasm, hostile_panics.wasm,
#   hostile_deep_recursion.wasm, hostile_oversized.wasm, hostile_bad_modify.wasm,
#   hostile_wrong_world.wasm (a component of a world that is not allot's),
#   hostile_keeps_state.wasm (counts its calls in memory, which shows which calls
#   shared an instance), hostile_future_version.wasm (built for allot:plugin@9.0.0),
#   hostile_price_from_tag.wasm (prices a lease at its `price` tag: 0, max),
#   hostile_bad_utf8.wasm (rejects with a message that is not UTF-8),
#   and old_v0_1_0_pricing.wasm (built for allot:plugin@0.1.0, from tests/old/)
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
python_only=false
hostile=false
for arg in "$@"; do
    case "$arg" in
        --rust) rust_only=true ;;
        --python) python_only=true ;;
        --hostile) hostile=true ;;
        *) echo "usage: $0 [--rust | --python] [--hostile]" >&2; exit 2 ;;
    esac
done
if $rust_only && $python_only; then
    echo "usage: $0 [--rust | --python] [--hostile]: --rust and --python exclude each other" >&2
    exit 2
fi
hostile_crates=(loop-forever memory-bomb panics deep-recursion oversized bad-modify wrong-world keeps-state future-version price-from-tag bad-utf8 slow-start)

cd "$plugins"
packages=()
components=()
if ! $python_only; then
    packages+=(-p require-cost-center -p project-caps -p time-of-day)
    components+=("$out/require_cost_center.wasm" "$out/project_caps.wasm" "$out/time_of_day.wasm")
fi
if $hostile; then
    for crate in "${hostile_crates[@]}"; do packages+=(-p "hostile-$crate"); done
    packages+=(-p old-v0-1-0-pricing)
fi
if [[ ${#packages[@]} -gt 0 ]]; then
    echo "building the Rust plugins (cargo build --release --target wasm32-wasip2)" >&2
    # --target-dir: the outputs are where this script looks for them, whatever
    # CARGO_TARGET_DIR the caller has set.
    cargo build --locked --release --target wasm32-wasip2 --target-dir "$plugins/target" "${packages[@]}" >&2
fi

if ! $rust_only; then
    for example in gpu-limit-py gpu-cap-py discount-py; do
        echo "building examples/$example (componentize-py)" >&2
        file="$out/${example//-/_}.wasm"
        "examples/$example/build.sh" "$file"
        components+=("$file")
    done
fi
if $hostile; then
    for crate in "${hostile_crates[@]}"; do components+=("$out/hostile_${crate//-/_}.wasm"); done
    components+=("$out/old_v0_1_0_pricing.wasm")
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
