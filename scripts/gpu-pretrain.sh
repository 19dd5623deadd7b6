#!/usr/bin/env bash
# Pretrains the `tiny` preset on the SOTU shards on a lent GPU and brings back its HF export,
# whose discriminator is fine-tuned on the CPU against random initialisation ("Pretraining helps
# downstream" in BENCHMARKS.md). Build and carry as for gpu-checks.sh: carry [".device",
# "data/sotu-shards"], command `bash scripts/gpu-pretrain.sh`.
# STEPS, BATCH, LR, WARMUP, GEN_FRACTION and REPLACEMENT set the recipe (default: the tiny preset's,
# ELECTRA-Small's batch of 128; lr 2e-3 kills the discriminator, BENCHMARKS.md); DEADLINE (seconds,
# default 420) stops the run early with its newest checkpoint, which is then exported. The default
# 15,000 steps (246M tokens) is about what an H200 does before the deadline.
# Back under $OUT: hf-export.tar (generator/ and discriminator/ as `electra export` writes them; a
# device call returns at most 8 files), metrics.jsonl, pretrain.log.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-420}
STEPS=${STEPS:-15000}
BATCH=${BATCH:-128}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-1000}
GEN_FRACTION=${GEN_FRACTION:-0.25}
REPLACEMENT=${REPLACEMENT:-sample}
bin=.device/bin/electra
# shellcheck source=scripts/gpu-env.sh
. "$(dirname "$0")/gpu-env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

run=/tmp/gpu-pretrain
rm -rf "$run" /tmp/gpu-export
# Keep 40 s for the export and the copy; a run cut short keeps the checkpoints written so far.
timeout $((DEADLINE - 40)) "$bin" pretrain --device cuda --preset tiny --data data/sotu-shards \
  --steps "$STEPS" --batch "$BATCH" --lr "$LR" --warmup "$WARMUP" --gen-fraction "$GEN_FRACTION" \
  --replacement "$REPLACEMENT" --seed 0 --log-every 100 --checkpoint-every 1000 --keep 1 \
  --out "$run" >"$OUT/pretrain.log" 2>&1
echo "pretrain exit status $? after $SECONDS s"
cp "$run/metrics.jsonl" "$OUT/"
tail -n 1 "$OUT/metrics.jsonl"
"$bin" export "$run" --out /tmp/gpu-export >>"$OUT/pretrain.log" 2>&1 \
  && tar -C /tmp/gpu-export -cf "$OUT/hf-export.tar" generator discriminator && tar -tvf "$OUT/hf-export.tar"
