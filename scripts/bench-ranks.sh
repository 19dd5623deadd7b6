#!/usr/bin/env bash
# Two CPU ranks (one thread each) against one process with two threads, on the same global batch:
# the tokens/s (and so steps/s) that each reaches, from metrics.jsonl, alternating the two twice.
#
#   bash scripts/bench-ranks.sh SHARD_DIR [PRESET] [GLOBAL_BATCH] [STEPS]
#
# Needs an electra built with `--features mpi` (BIN, default target/release/electra) and mpirun.
set -euo pipefail
data=$1 preset=${2:-tiny} global=${3:-32} steps=${4:-30}
bin=${BIN:-target/release/electra}
every=$((steps / 3))
tmp=$(mktemp -d)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The median tokens/s of a run's metrics windows after the first (which holds the warm-up).
rate() {
  python3 - "$1/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print(f"{statistics.median(r['tokens_per_s'] for r in rows):.0f}")
PY
}
common=(pretrain --preset "$preset" --data "$data" --steps "$steps" --log-every "$every"
        --checkpoint-every "$steps" --warmup 1)
for round in 1 2; do
  RAYON_NUM_THREADS=2 "$bin" "${common[@]}" --out "$tmp/one-$round" --batch "$global" >/dev/null 2>&1
  mpirun --oversubscribe -np 2 -x RAYON_NUM_THREADS=1 "$bin" "${common[@]}" --out "$tmp/two-$round" \
    --batch $((global / 2)) >/dev/null 2>&1
  one=$(rate "$tmp/one-$round") two=$(rate "$tmp/two-$round")
  echo "round $round, $preset, global batch $global: 1 process × 2 threads $one tokens/s;" \
    "2 ranks × 1 thread $two tokens/s; ratio $(python3 -c "print(f'{$two / $one:.3f}')")"
done
rm -rf "$tmp"
