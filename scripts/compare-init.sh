#!/usr/bin/env bash
# Does pretraining help downstream? Fine-tunes an export's discriminator on the polarity task and, with
# the same budget, seeds and data order, the same architecture from random initialisation; prints each
# arm's best-epoch dev accuracy as mean ± sample std over seeds 1-3 (BENCHMARKS.md, "Pretraining helps
# downstream"). Two runs at a time, one thread each, so that a 2-core machine is used fully.
#
#   bash scripts/compare-init.sh EXPORT OUT
#
# EXPORT is what `electra export` wrote; OUT receives pretrained-sN/, random-sN/, their logs and
# summary.txt. ELECTRA names the binary (default: target/release/electra); EPOCHS (default 5, the
# protocol's since session 9: with 2, the earlier protocol, both arms are still improving when it ends) can
# be lowered for a quick check; LAYER_DECAY (default 0.8, the protocol's) is passed to both arms. Needs
# data/polarity (`bash scripts/fetch-data.sh polarity`).
set -euo pipefail
if [ $# -ne 2 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
export_dir=$1 out=$2
electra=${ELECTRA:-target/release/electra}
for f in "$export_dir/discriminator/config.json" data/polarity/train.tsv data/polarity/dev.tsv "$electra"; do
    [ -e "$f" ] || { echo "compare-init: $f is missing" >&2; exit 1; }
done
mkdir -p "$out"
for seed in 1 2 3; do
    pids=()
    for arm in pretrained random; do
        extra=()
        [ "$arm" = random ] && extra=(--init-from-scratch)
        RAYON_NUM_THREADS=1 "$electra" finetune --task sst2 --data data/polarity --model "$export_dir" \
            --out "$out/$arm-s$seed" --epochs "${EPOCHS:-5}" --max-seq 64 --batch 32 --lr 3e-4 --seed "$seed" \
            --layer-decay "${LAYER_DECAY:-0.8}" --log-every 100 "${extra[@]}" >"$out/$arm-s$seed.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "compare-init: a run of seed $seed failed; see $out/*-s$seed.log" >&2; exit 1; }
    done
done
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
out = sys.argv[1]
for arm in ("pretrained", "random"):
    best, epochs = [], []
    for seed in (1, 2, 3):
        lines = [json.loads(l) for l in open(f"{out}/{arm}-s{seed}/metrics.jsonl")]
        best.append(max(l["dev"]["accuracy"] for l in lines))
        epochs.append(" ".join(f"{l['dev']['accuracy']:.4f}" for l in lines))
    print(f"{arm:<10} best-epoch dev accuracy {statistics.mean(best):.4f} ± {statistics.stdev(best):.4f} "
          f"(seeds 1, 2, 3: {', '.join(f'{b:.4f}' for b in best)}; per epoch: {' | '.join(epochs)})")
PY
