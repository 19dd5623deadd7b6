#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md, measured in one run on one machine:
#   1. the criterion bench, then `electra bench` (ELECTRA-Small, batch 8 x 128) interleaved with
#      the HF + PyTorch peer,
#   2. `electra prepare` throughput on the State of the Union corpus with 1 and 2 threads,
#   3. pretraining tokens/s of `tiny` and `small` from their metrics.
# Needs scripts/fetch-data.sh to have run, and a Python with torch + transformers for the peer:
#   PEER_PYTHON=/path/to/venv/bin/python bash scripts/bench-cpu.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
peer_python="${PEER_PYTHON:-python3}"
rounds="${ROUNDS:-3}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo build --release -q
electra="$root/target/release/electra"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; commit $(git rev-parse --short HEAD)"

echo "== criterion: one training step, ELECTRA-Small, batch 8 x 128"
cargo bench -q --bench train_step -- --noplot 2>/dev/null | grep -E "time:|thrpt:"

echo "== train step, ELECTRA-Small, batch 8 x 128 (rounds alternate engine and peer)"
for round in $(seq "$rounds"); do
    "$electra" bench --preset small --batch 8 --seq 128 --steps 10 | tail -1 | sed "s/^/engine round $round: /"
    "$peer_python" ../shared/anchors/hf_electra_step.py --device cpu --batch 8 --seq 128 --steps 10 --gather \
        | tail -1 | sed "s/^/peer   round $round: /"
done

echo "== prepare, State of the Union (10.8 MB), BERT vocabulary"
for threads in 1 2; do
    rm -rf "$scratch/shards"
    RAYON_NUM_THREADS=$threads "$electra" prepare --input data/sotu --vocab data/vocab.txt --out "$scratch/shards" 2>&1 \
        | tail -1 | sed "s/^/$threads thread(s): /"
done

echo "== pretraining tokens/s"
"$electra" prepare --input data/sotu --train-vocab 8192 --out "$scratch/sotu-8k" 2>/dev/null
"$electra" pretrain --preset tiny --data "$scratch/sotu-8k" --out "$scratch/tiny" --steps 40 --batch 32 --log-every 10 2>/dev/null
echo "tiny, batch 32 x 128, vocab 8192: $(tail -1 "$scratch/tiny/metrics.jsonl")"
"$electra" pretrain --preset small --data "$scratch/shards" --out "$scratch/small" --steps 12 --batch 8 --log-every 4 2>/dev/null
echo "small, batch 8 x 128, vocab 30522: $(tail -1 "$scratch/small/metrics.jsonl")"
