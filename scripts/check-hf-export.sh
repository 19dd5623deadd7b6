#!/usr/bin/env bash
# Checks `electra export` against the real HuggingFace transformers (not part of CI): pretrains a
# `tiny` model briefly on two State of the Union addresses, exports it, loads both directories
# with transformers (ElectraForPreTraining, ElectraForMaskedLM; no missing or unexpected keys),
# and compares their logits on one batch with the engine's `electra loss --logits`
# (max abs difference <= 1e-4). The batch is tokenized with the exported tokenizer files.
#
#   PYTHON=/path/to/venv/bin/python bash scripts/check-hf-export.sh [WORK_DIR]
#
# PYTHON must have torch and transformers (e.g. `python3 -m venv v && v/bin/pip install torch
# transformers`); it defaults to python3. WORK_DIR (default: a temporary folder, removed
# afterwards) receives the data, the run, the export, the batch and the logits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if ! "$python" -c 'import torch, transformers, safetensors' >/dev/null 2>&1; then
    echo "check-hf-export: $python cannot import torch, transformers and safetensors; set PYTHON to" \
        "a Python that has them (e.g. a venv with 'pip install torch transformers')" >&2
    exit 1
fi
if [[ $# -ge 1 ]]; then
    work="$1"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi

bash "$root/scripts/fetch-data.sh" >/dev/null
(cd "$root" && cargo build --release --quiet)
electra="$root/target/release/electra"
sotu="$root/data/sotu"

echo "check-hf-export: transformers $("$python" -c 'import transformers; print(transformers.__version__)')," \
    "torch $("$python" -c 'import torch; print(torch.__version__)')"
rm -rf "$work/data" "$work/run" "$work/hf"
"$electra" prepare --input "$sotu/2015_barack_obama_d.txt" --input "$sotu/2016_barack_obama_d.txt" \
    --train-vocab 1000 --seq-len 64 --out "$work/data"
"$electra" pretrain --preset tiny --data "$work/data" --out "$work/run" --steps 20 --batch 8 2>&1 |
    tail -n 1
"$electra" export "$work/run" --out "$work/hf"

"$python" "$root/scripts/check_hf_export.py" batch "$work/hf" "$sotu/2014_barack_obama_d.txt" \
    "$work/batch.safetensors"
"$electra" loss --generator "$work/hf/generator" --discriminator "$work/hf/discriminator" \
    --batch "$work/batch.safetensors" --replacement argmax \
    --logits "$work/engine-logits.safetensors" >"$work/loss.json"
echo "check-hf-export: electra loss: $(cat "$work/loss.json")"
"$python" "$root/scripts/check_hf_export.py" compare "$work/hf" "$work/batch.safetensors" \
    "$work/engine-logits.safetensors" "$work/loss.json"
