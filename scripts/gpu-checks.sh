#!/usr/bin/env bash
# Every GPU check of the CUDA backend in one call, for a lent GPU machine (no Rust, no network),
# ordered so that what matters most runs first and a short lease still returns it:
#   1. each test of tests/cuda_parity.rs on its own (a hang or crash costs one test, not all);
#      a failing test runs again synchronously (ELECTRA_CUDA_SYNC=1, which names the kernel) and,
#      for the first two, under compute-sanitizer's memcheck;
#   1b. the C ABI's device ops (electra_cuda_*) against its host ops, on the caller's device
#      memory and stream (tests/c/capi_cuda_test.c, bundled by scripts/bundle-capi-cuda-test.sh);
#   1c. the linear layers' parity tests again with cuBLASLt's algorithms chosen by timing
#      (ELECTRA_GEMM_TUNE=1), which then run candidates other than the heuristic's first, and
#      with the bias gradients folded into the weight-gradient products (ELECTRA_FOLD_BIAS_GRADS=1);
#   2. `electra bench --device cuda --preset small --batch 128 --seq 128`, recorded steps and
#      issued launch by launch (ELECTRA_CUDA_GRAPH=0), each with its table of device time per
#      kernel (CUDA events around every launch of one issued step), whose slowest rows go into
#      the summary, with how many algorithms cuBLASLt offers for each layer's weight gradient
#      with the bias gradient folded in (BGRADB); then recorded with the products' algorithms
#      tuned (ELECTRA_GEMM_TUNE=1), with the table of what the timing chose; then recorded with
#      the bias gradients folded (ELECTRA_FOLD_BIAS_GRADS=1), if the peer keeps its time;
#   3. the HF peer on the same card, eager;
#   4. 300-step `tiny` pretrainings on the GPU, argmax and sampled replacement, each compared with
#      the same run on the CPU (means over 50-step windows within 5%); the CPU curves are read from
#      data/curve-cpu-{argmax,sample}.jsonl when present (make them here, where CPU time is free),
#      else computed there;
#   4c. the same tiny run as two micro-batches of 16 (--accumulate 2), against the CPU's curve,
#       and again with the gradient sum over NCCL (ELECTRA_NCCL=1), which must match it bit for bit;
#   4b. ELECTRA-Small on the SOTU shards for 150 steps, recorded and issued: tokens/s on real
#      batches (whose counts vary, so recordings may not be reused);
#   5. the time of every kernel over the steps of a 3-step bench (warm-up and profiled steps
#      included), by ncu (gpu__time_duration, clocks unlocked), if the deadline leaves room;
#   6. the HF peer with torch.compile, if the deadline leaves room.
# Build here with ../shared/tools/device-bundle and then scripts/bundle-capi-cuda-test.sh, then one device call with carry [".device",
# "data/sotu-shards", "data/curve-cpu-argmax.jsonl", "data/curve-cpu-sample.jsonl"] and command
# `bash scripts/gpu-checks.sh` (BENCHMARKS.md, "GPU", says how to make the CPU curves).
# DEADLINE (seconds, default 480) bounds the whole run.
# Logs go to $OUT (at most 8 files come back from a device call); the summary is printed last.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-480}
bin=.device/bin/electra
peer=.device/hf_electra_step.py
summary=""
note() { summary+="$*"$'\n'; echo "$*"; }
left() { echo $((DEADLINE - SECONDS)); }

# shellcheck source=scripts/gpu-env.sh
. "$(dirname "$0")/gpu-env.sh"
export ELECTRA_COMMIT=${ELECTRA_COMMIT:-$(cat .device/commit 2>/dev/null || echo unknown)}
note "commit: $ELECTRA_COMMIT"
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader 2>&1)"
note "driver: $driver; libcuda.so elsewhere: $(find ${libs//:/ } /usr/local/cuda*/lib64/stubs -maxdepth 1 \
  -name 'libcuda.so*' 2>/dev/null | tr '\n' ' ')"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)

echo "=== 1. kernels against the CPU"
parity=$(ls .device/bin/test-test-cuda_parity* | head -n 1)
failed=()
for name in $("$parity" --list --format terse 2>/dev/null | sed -n 's/: test$//p'); do
  if timeout 60 "$parity" --exact "$name" --test-threads=1 --nocapture >"$OUT/one.log" 2>&1 \
    && ! grep -q "skipped: no CUDA device" "$OUT/one.log"; then
    r=ok
  else
    r=FAILED
    failed+=("$name")
  fi
  { echo "=== $name: $r"; cat "$OUT/one.log"; } >>"$OUT/parity.log"
  echo "$r $name"
done
rm -f "$OUT/one.log"
note "parity: $(( $(grep -c ': ok$' "$OUT/parity.log") )) ok, ${#failed[@]} failed ${failed[*]}"
checked=0
for name in "${failed[@]}"; do
  [ "$(left)" -gt 180 ] || break
  { echo "=== $name, synchronous"; ELECTRA_CUDA_SYNC=1 timeout 60 "$parity" --exact "$name" \
      --test-threads=1 --nocapture 2>&1 | tail -n 25; } >>"$OUT/failures.log"
  if [ -n "$sanitizer" ] && [ $checked -lt 2 ]; then
    checked=$((checked + 1))
    { echo "=== $name, memcheck"; ELECTRA_CUDA_GRAPH=0 timeout 60 "$sanitizer" --tool memcheck \
        --print-limit 8 "$parity" --exact "$name" --test-threads=1 2>&1 | tail -n 60; } >>"$OUT/failures.log"
  fi
done

echo "=== 1b. the C ABI's device ops against its host ops"
# Its log goes into parity.log: at most 8 files come back.
if [ -x .device/bin/capi_cuda_test ]; then
  timeout 60 .device/bin/capi_cuda_test >"$OUT/one.log" 2>&1
  rc=$?
  { echo "=== capi_cuda_test (rc $rc)"; cat "$OUT/one.log"; } >>"$OUT/parity.log"
  if [ $rc -eq 0 ] && grep -q "all device op checks passed" "$OUT/one.log"; then
    note "capi device ops: ok ($(grep -c 'rel err' "$OUT/one.log") outputs compared)"
  else
    note "capi device ops: FAILED (rc $rc): $(grep -E 'FAILED|skipped' "$OUT/one.log" | head -n 3 | tr '\n' ' ')"
  fi
  rm -f "$OUT/one.log"
else
  note "capi device ops: not bundled (run scripts/bundle-capi-cuda-test.sh after device-bundle)"
fi

echo "=== 1c. the linear layers with tuned cuBLASLt algorithms, then with folded bias gradients"
for flag in ELECTRA_GEMM_TUNE ELECTRA_FOLD_BIAS_GRADS; do
  [ "$(left)" -gt 240 ] || { note "linear parity, $flag=1: skipped, deadline"; continue; }
  env "$flag=1" timeout 60 "$parity" linear --test-threads=1 >"$OUT/one.log" 2>&1
  rc=$?
  { echo "=== linear tests, $flag=1 (rc $rc)"; cat "$OUT/one.log"; } >>"$OUT/parity.log"
  note "linear parity, $flag=1: rc $rc, $(grep -E '^test result' "$OUT/one.log" | head -n 1)"
  rm -f "$OUT/one.log"
done

echo "=== 2. electra bench, small, 128 x 128"
for mode in recorded issued tuned folded; do
  # The folded bench (an experiment) leaves the HF peer its time.
  need=120; [ $mode = folded ] && need=220
  [ "$(left)" -gt $need ] || { note "bench $mode: skipped, deadline"; continue; }
  graph=1; [ $mode = issued ] && graph=0
  tune=0; [ $mode = tuned ] && tune=1
  fold=0; [ $mode = folded ] && fold=1
  ELECTRA_CUDA_GRAPH=$graph ELECTRA_GEMM_TUNE=$tune ELECTRA_FOLD_BIAS_GRADS=$fold timeout 90 \
    "$bin" bench --device cuda --preset small \
    --batch 128 --seq 128 --steps 30 >"$OUT/one.log" 2>&1 || note "bench $mode: FAILED (rc $?)"
  note "bench $mode: $(grep -E 'median|tokens/s' "$OUT/one.log" | head -n 2 | tr '\n' ' ')"
  [ $mode = recorded ] && note "slowest kernels:"$'\n'"$(sed -n '/^per kernel/,/^$/p' "$OUT/one.log" | head -n 14)"
  [ $mode = recorded ] && note "BGRADB probe:"$'\n'"$(sed -n '/^weight gradients with the bias/,/^$/p' "$OUT/one.log" | head -n 12)"
  [ $mode = tuned ] && note "tuned products:"$'\n'"$(sed -n '/^matrix products/,/^$/p' "$OUT/one.log" | head -n 30)"
  [ $mode = folded ] && note "$(grep -E 'fold in their bias gradient' "$OUT/one.log")"
  { echo "=== $mode"; cat "$OUT/one.log"; } >>"$OUT/bench.log"
done
rm -f "$OUT/one.log"

echo "=== 3. the HF peer, eager"
if [ -f "$peer" ] && [ "$(left)" -gt 100 ]; then
  timeout 100 python3 "$peer" --device cuda --batch 128 --seq 128 --steps 30 --bf16 --gather \
    >"$OUT/peer.log" 2>&1 || note "peer eager: FAILED"
  note "peer eager: $(tail -n 1 "$OUT/peer.log" | cut -c1-300)"
fi

# Compares two metrics.jsonl files (GPU, CPU) by means over windows of five lines, into curve.log.
compare_curves() {
  python3 - "$1" "$2" >>"$OUT/curve.log" 2>&1 <<'PY'
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
print(f"worst window difference {worst:.3f}: " + ("ok" if worst < 0.05 else "FAILED, over 5%"))
PY
}

echo "=== 4. 300 tiny steps, GPU against CPU, with each replacement"
for mode in argmax sample; do
  [ "$(left)" -gt 90 ] || { note "curve $mode: skipped, deadline"; continue; }
  rm -rf /tmp/curve-cuda
  timeout 80 "$bin" pretrain --device cuda --data data/sotu-shards --preset tiny --steps 300 \
    --batch 32 --seed 0 --log-every 10 --checkpoint-every 300 --replacement $mode --out /tmp/curve-cuda \
    >>"$OUT/curve.log" 2>&1 || note "pretrain on cuda: FAILED ($(tail -n 2 "$OUT/curve.log"))"
  cp /tmp/curve-cuda/metrics.jsonl "$OUT/curve-$mode.jsonl" 2>/dev/null || : >"$OUT/curve-$mode.jsonl"
  cpu=data/curve-cpu-$mode.jsonl
  # Computed here only as a fallback, and within the deadline: carry the CPU curves instead.
  if [ ! -f $cpu ] && [ "$(left)" -ge 220 ]; then
    rm -rf /tmp/curve-cpu
    timeout 200 "$bin" pretrain --device cpu --data data/sotu-shards --preset tiny --steps 300 \
      --batch 32 --seed 0 --log-every 10 --checkpoint-every 300 --replacement $mode \
      --out /tmp/curve-cpu >/dev/null 2>&1
    cpu=/tmp/curve-cpu/metrics.jsonl
  fi
  echo "=== $mode" >>"$OUT/curve.log"
  if [ -f $cpu ]; then
    compare_curves "$OUT/curve-$mode.jsonl" "$cpu"
    note "curve $mode: $(tail -n 1 "$OUT/curve.log")"
  else
    note "curve $mode: no CPU curve to compare (carry $cpu; too little time left to make one)"
  fi
  note "curve $mode speed, last window: $(tail -n 1 "$OUT/curve-$mode.jsonl" | grep -o '"tokens_per_s":[0-9.]*')"
  # The GPU's metrics lines go into the log too: at most 8 files come back.
  { echo "=== $mode, the GPU's metrics.jsonl"; cat "$OUT/curve-$mode.jsonl"; } >>"$OUT/curve.log"
  rm -f "$OUT/curve-$mode.jsonl"
done

echo "=== 4c. the split step on the GPU: --accumulate 2 of batch 16 against the CPU's batch 32"
# Dropout, masking and the loss means are keyed by the global batch, so two micro-batches of 16
# follow the curve of one batch of 32; this runs the accumulate kernel and the kernels' offsets.
# Then the same with the gradient sum over NCCL on one rank (ELECTRA_NCCL=1): the same losses
# bit for bit, and what the sum costs per step.
for nccl in 0 1; do
  [ "$(left)" -gt 90 ] || { note "curve accumulate 2 (nccl=$nccl): skipped, deadline"; continue; }
  rm -rf /tmp/curve-acc-$nccl
  ELECTRA_NCCL=$nccl timeout 80 "$bin" pretrain --device cuda --data data/sotu-shards --preset tiny \
    --steps 300 --batch 16 --accumulate 2 --seed 0 --log-every 10 --checkpoint-every 300 \
    --out /tmp/curve-acc-$nccl >>"$OUT/curve.log" 2>&1 \
    || note "accumulate on cuda (nccl=$nccl): FAILED ($(tail -n 2 "$OUT/curve.log"))"
  note "accumulate 2 (nccl=$nccl) tokens/s of the windows: $(grep -o '"tokens_per_s":[0-9]*' \
    /tmp/curve-acc-$nccl/metrics.jsonl 2>/dev/null | cut -d: -f2 | tr '\n' ' ')"
done
cpu=data/curve-cpu-argmax.jsonl
[ -f $cpu ] || cpu=/tmp/curve-cpu/metrics.jsonl
echo "=== accumulate 2" >>"$OUT/curve.log"
compare_curves /tmp/curve-acc-0/metrics.jsonl "$cpu"
note "curve accumulate 2: $(tail -n 1 "$OUT/curve.log")"
same() { grep -o '"gen_loss":[^,]*,"disc_loss":[^,]*' "$1" 2>/dev/null; }
if [ -s /tmp/curve-acc-1/metrics.jsonl ] && [ "$(same /tmp/curve-acc-0/metrics.jsonl)" = \
  "$(same /tmp/curve-acc-1/metrics.jsonl)" ]; then
  note "nccl at world size 1: the same losses as the plain path, bit for bit"
else
  note "nccl at world size 1: FAILED, the losses differ from the plain path (or a run failed)"
fi

echo "=== 4b. ELECTRA-Small on the SOTU shards, batch 128: recorded against issued steps"
# Real batches differ in their masked and real-token counts, which are part of a recording's
# fingerprint: this shows whether recording still pays when the batches vary.
for graph in 1 0; do
  [ "$(left)" -gt 120 ] || { note "small on SOTU (graph=$graph): skipped, deadline"; continue; }
  rm -rf /tmp/small-sotu
  ELECTRA_CUDA_GRAPH=$graph timeout 60 "$bin" pretrain --device cuda --data data/sotu-shards --preset small \
    --steps 150 --batch 128 --seed 0 --log-every 50 --checkpoint-every 150 --out /tmp/small-sotu \
    >>"$OUT/curve.log" 2>&1 || note "small on SOTU (graph=$graph): FAILED"
  note "small on SOTU (graph=$graph), tokens/s of the windows: $(grep -o '"tokens_per_s":[0-9]*' \
    /tmp/small-sotu/metrics.jsonl 2>/dev/null | cut -d: -f2 | tr '\n' ' ')"
done

echo "=== 5. time per kernel (ncu), 3 steps of the small bench"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -n "$ncu" ] && [ "$(left)" -gt 150 ]; then
  # At the clocks the bench runs at (ncu locks them to base by default: session 21's profile
  # summed 13.8 ms a step against the 11 ms recorded step), caches as the step leaves them.
  ELECTRA_CUDA_GRAPH=0 timeout 100 "$ncu" --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$bin" bench --device cuda --preset small --batch 128 --seq 128 --steps 3 >"$OUT/ncu.log" 2>&1 \
    || note "ncu: FAILED or out of time (rc $?)"
  note "ncu: $(grep -c 'gpu__time_duration' "$OUT/ncu.log") kernels summarised in ncu.log"
else
  note "ncu: skipped (${ncu:-not found}, $(left) s left)"
fi

echo "=== 6. the HF peer, torch.compile"
if [ -f "$peer" ] && [ "$(left)" -gt 150 ]; then
  timeout $(( $(left) - 20 )) python3 "$peer" --device cuda --batch 128 --seq 128 --steps 30 --bf16 \
    --gather --compile >>"$OUT/peer.log" 2>&1 || note "peer compile: FAILED or out of time"
  note "peer compile: $(tail -n 1 "$OUT/peer.log" | cut -c1-300)"
else
  note "peer compile: skipped, deadline"
fi

echo "--- summary ($SECONDS s)"
printf '%s' "$summary" | tee "$OUT/summary.txt"
grep -E 'panicked|error' "$OUT/parity.log" | sort | uniq -c | sort -rn | head -n 15
