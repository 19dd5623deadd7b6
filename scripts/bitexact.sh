#!/usr/bin/env bash
# Fingerprints what a build computes, so that a refactor can prove it changed nothing: run it with the
# binary from before and the binary from after on the same machine, then diff the two hash lists.
#
#   bash scripts/bitexact.sh BINARY OUT_DIR       # writes OUT_DIR/hashes.txt (and the runs beside it)
#   diff before/hashes.txt after/hashes.txt       # empty: byte-identical
#
# What it covers (a few minutes on two cores): a 40-step `tiny` pretrain on SOTU (model and optimizer
# safetensors, metrics values without the timing fields); the same run stopped at step 20 and resumed;
# its export, fine-tuned for one epoch on 2,000 polarity sentences (the best model); `electra loss
# --grads --logits` on the HF fixture, with argmax replacement and with the given one. It needs
# data/sotu and data/polarity (scripts/fetch-data.sh). DATA_DIR reuses a prepared shard folder.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY OUT_DIR" >&2; exit 2; }
bin=$(realpath "$1")
out=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
rm -rf "${out:?}"/{run,run-resumed,hf,ft,loss-*,polarity,hashes.txt}

data=${DATA_DIR:-$out/data}
if [ ! -f "$data/vocab.txt" ]; then
    "$bin" prepare --input "$repo/data/sotu" --train-vocab 8192 --out "$data" --seed 1 >/dev/null
fi

"$bin" pretrain --preset tiny --data "$data" --out "$out/run" --steps 40 --batch 8 \
    --warmup 10 --seed 7 --log-every 5 --checkpoint-every 20 >/dev/null 2>&1
"$bin" pretrain --preset tiny --data "$data" --out "$out/run-resumed" --steps 40 --batch 8 \
    --warmup 10 --seed 7 --log-every 5 --checkpoint-every 20 --stop-at 20 >/dev/null 2>&1
"$bin" pretrain --resume "$out/run-resumed" >/dev/null 2>&1

"$bin" export "$out/run" --out "$out/hf" >/dev/null
mkdir -p "$out/polarity"
head -n 2001 "$repo/data/polarity/train.tsv" >"$out/polarity/train.tsv"
head -n 301 "$repo/data/polarity/dev.tsv" >"$out/polarity/dev.tsv"
"$bin" finetune --task sst2 --data "$out/polarity" --model "$out/hf" --out "$out/ft" --epochs 1 \
    --batch 16 --seed 3 --max-seq 64 >/dev/null 2>&1

fixture=$repo/tests/fixtures/hf-tiny
for replacement in given argmax; do
    "$bin" loss --generator "$fixture/generator" --discriminator "$fixture/discriminator" \
        --batch "$fixture/batch.safetensors" --replacement "$replacement" \
        --grads "$out/loss-$replacement-grads.safetensors" \
        --logits "$out/loss-$replacement-logits.safetensors" >"$out/loss-$replacement.json"
done

# Metrics without the wall-clock fields, which differ from run to run.
values() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    m.pop("tokens_per_s", None); m.pop("elapsed_s", None)
    print(json.dumps(m, sort_keys=True))' "$1" | sha256sum | cut -d" " -f1; }

cd "$out"
{
    sha256sum run/checkpoints/step-40/*.safetensors run-resumed/checkpoints/step-40/*.safetensors \
        hf/*/model.safetensors ft/best/model.safetensors loss-*.safetensors loss-*.json
    echo "$(values run/metrics.jsonl)  run/metrics.jsonl (values)"
    echo "$(values run-resumed/metrics.jsonl)  run-resumed/metrics.jsonl (values)"
} >hashes.txt
cat hashes.txt
