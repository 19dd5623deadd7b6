#!/usr/bin/env bash
# Writes include/electra.h from src/capi with the pinned cbindgen; `--check` instead fails when
# the committed header differs from a fresh generation (CI runs that).
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.0
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    cargo install cbindgen --locked --version "$CBINDGEN_VERSION"
fi
if [ "${1:-}" = "--check" ]; then
    fresh=$(mktemp)
    trap 'rm -f "$fresh"' EXIT
    cbindgen --quiet --config cbindgen.toml --output "$fresh" .
    if ! diff -u include/electra.h "$fresh"; then
        echo "include/electra.h is stale: run scripts/gen-header.sh and commit it" >&2
        exit 1
    fi
else
    cbindgen --quiet --config cbindgen.toml --output include/electra.h .
fi
