#!/usr/bin/env bash
# One-time setup of a development machine, safe to run again.
#
#   scripts/setup.sh
#
# - adds the Rust target wasm32-wasip2, which plugins are built for;
# - creates plugins/.venv with the pinned tools of plugins/requirements.txt:
#   componentize-py (builds the Python example plugin) and wasm-tools
#   (validates components and prints their WIT).
#
# Needs rustup, and python3 with the venv module. Downloads the target's
# standard library through rustup and the tools from PyPI through pip;
# takes a few seconds when they are cached, well under a minute when not.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/plugins/.venv"

step() { printf '==> %s\n' "$*"; }

step "rustup target add wasm32-wasip2"
rustup target add wasm32-wasip2

if [[ ! -x "$venv/bin/python" ]]; then
    step "python3 -m venv plugins/.venv"
    if ! python3 -m venv "$venv"; then
        echo "error: python3 -m venv failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi

step "pip install -r plugins/requirements.txt (into plugins/.venv)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/plugins/requirements.txt"

step "installed: $("$venv/bin/componentize-py" --version), $("$venv/bin/wasm-tools" --version)"
step "done: build the example plugins with plugins/build.sh"
