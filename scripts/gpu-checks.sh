#!/usr/bin/env bash
# The GPU checks of the CUDA backend that the test executables do not cover, for a lent GPU
# machine (no Rust, no network). Build here with ../shared/tools/device-bundle, then make one
# device call with carry [".device", "data"] (data/ holds the prepared SOTU shards) and
#   bash .device/run.sh bash scripts/gpu-checks.sh
# It runs, after the runner's tests and default bench:
#   1. a 300-step `tiny` pretraining on the GPU and on the CPU from the same seed, and compares
#      the loss curves (means over 50-step windows);
#   2. `electra bench --device cuda --preset small --batch 128 --seq 128`, recorded steps and,
#      for comparison, issued launch by launch (ELECTRA_CUDA_GRAPH=0);
#   3. the HF peer on the same card, eager and torch.compile.
# Logs go to $OUT (curve-*.jsonl, bench-*.log, peer-*.log).
set -u
OUT=${OUT:-$(mktemp -d)}
bin=.device/bin/electra
peer=.device/hf_electra_step.py
status=0

echo "=== 1. 300 tiny steps, GPU against CPU"
for dev in cuda cpu; do
  rm -rf "/tmp/curve-$dev"
  timeout 240 "$bin" pretrain --device "$dev" --data data/sotu-shards --preset tiny --steps 300 \
    --batch 32 --seed 0 --log-every 10 --checkpoint-every 300 --out "/tmp/curve-$dev" \
    >"$OUT/curve-$dev.log" 2>&1 || { echo "pretrain on $dev failed"; tail -n 5 "$OUT/curve-$dev.log"; status=1; }
  cp "/tmp/curve-$dev/metrics.jsonl" "$OUT/curve-$dev.jsonl" 2>/dev/null
done
python3 - "$OUT/curve-cuda.jsonl" "$OUT/curve-cpu.jsonl" <<'PY' || status=1
import json, sys
gpu, cpu = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(gpu) == len(cpu) and gpu, "the runs logged different numbers of lines"
worst = 0.0
for w in range(0, len(cpu), 5):
    for key in ("gen_loss", "disc_loss"):
        g = sum(r[key] for r in gpu[w:w + 5]) / len(gpu[w:w + 5])
        c = sum(r[key] for r in cpu[w:w + 5]) / len(cpu[w:w + 5])
        rel = abs(g - c) / abs(c)
        worst = max(worst, rel)
        print(f"steps {cpu[w]['step']:>3}-{cpu[min(w + 4, len(cpu) - 1)]['step']:>3} {key:<9} "
              f"gpu {g:.4f} cpu {c:.4f} rel {rel:.3f}")
print(f"worst window difference {worst:.3f}")
assert worst < 0.05, "the GPU curve leaves the CPU's by more than 5%"
PY

echo "=== 2. electra bench, small, 128 x 128"
timeout 150 "$bin" bench --device cuda --preset small --batch 128 --seq 128 --steps 30 \
  >"$OUT/bench-recorded.log" 2>&1 || status=1
ELECTRA_CUDA_GRAPH=0 timeout 150 "$bin" bench --device cuda --preset small --batch 128 --seq 128 \
  --steps 30 >"$OUT/bench-issued.log" 2>&1 || status=1
grep -E "median|tokens/s|MFU|matrix peak" "$OUT/bench-recorded.log" "$OUT/bench-issued.log"

echo "=== 3. the HF peer"
if [ -f "$peer" ]; then
  timeout 150 python3 "$peer" --device cuda --batch 128 --seq 128 --steps 30 --bf16 --gather \
    >"$OUT/peer-eager.log" 2>&1 || status=1
  timeout 240 python3 "$peer" --device cuda --batch 128 --seq 128 --steps 30 --bf16 --gather \
    --compile >"$OUT/peer-compile.log" 2>&1 || status=1
  tail -n 3 "$OUT/peer-eager.log" "$OUT/peer-compile.log"
fi
exit $status
