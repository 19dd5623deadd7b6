#!/usr/bin/env bash
# Makes the fuzz targets' seed inputs (fuzz/seeds/) from real files that the engine writes: a
# prepared shard folder, a one-step run of a micro model (run.json, metrics.jsonl, a checkpoint)
# and its HF export, plus GLUE-layout files. The seeds are committed (about 60 KB); run this again
# after a change of a file format, then commit what changed.
#
#   bash fuzz/make-seeds.sh [PATH/TO/electra]   (default: target/debug/electra, built if absent)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
electra="${1:-${CARGO_TARGET_DIR:-$root/target}/debug/electra}"
[[ -x "$electra" ]] || cargo build --bin electra
seeds="$root/fuzz/seeds"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Text of our own, so that the seeds do not depend on a downloaded corpus.
cat > "$work/text.txt" <<'TEXT'
The engine reads text, one sentence or paragraph per line.
A blank line ends a document, and the end of a file ends one too.
Tokens are packed into examples of a fixed length, with the separators in place.

Every shard starts with a header that names its vocabulary, its sequence length and its size.
The ids follow, two bytes each, and a checksum of them sits in the header.
Readers check every field before they trust a single id.

Checkpoints hold the weights, the moments of the optimizer and the state of the data.
A resumed run continues bit for bit, as if it had never stopped.
TEXT

"$electra" prepare --input "$work/text.txt" --train-vocab 80 --seq-len 16 --out "$work/shards" 2>/dev/null
# A micro model: every kind of tensor (the generator's width differs from the embeddings', so it
# has embeddings_project), each a few values.
cat > "$work/micro.json" <<'JSON'
{
  "vocab_size": 80, "embedding_size": 8, "max_position_embeddings": 16, "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "discriminator": {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "intermediate_size": 16},
  "generator": {"hidden_size": 4, "num_layers": 1, "num_heads": 1, "intermediate_size": 8},
  "special_tokens": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
}
JSON
"$electra" pretrain --config "$work/micro.json" --data "$work/shards" --out "$work/run" \
    --steps 1 --batch 2 --log-every 1 --checkpoint-every 1 2>/dev/null
"$electra" export "$work/run" --out "$work/hf" 2>/dev/null

rm -rf "$seeds"
mkdir -p "$seeds"/{common,shard,vocab,checkpoint,hf_dir,run_dir,model_config,glue_tsv,batch_file}
mkdir -p "$seeds"/{prepare_text,tokenizer_json,capi}
sep=$'\n==electra-fuzz-next-file==\n'
# join OUT FILE...: the files of one input, separated as fuzz/src/lib.rs splits them.
join() {
    local out="$1" first=1
    shift
    : > "$out"
    for f in "$@"; do
        [[ $first == 1 ]] || printf '%s' "$sep" >> "$out"
        cat "$f" >> "$out"
        first=0
    done
}
shard="$work/shards/shard-00000.bin"
cp "$work/shards/vocab.txt" "$seeds/common/vocab.txt"
python3 - "$work/run/run.json" "$seeds/common/model.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
json.dump(run["model"], open(sys.argv[2], "w"), indent=1)
PY

cp "$shard" "$seeds/shard/one"
join "$seeds/shard/two" "$shard" "$shard"
# Version 1 (no checksum): the fuzzer's mutations of the ids then reach the range check.
python3 - "$shard" "$seeds/shard/version1" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[8:12] = (1).to_bytes(4, "little")
b[28:32] = bytes(4)
open(sys.argv[2], "wb").write(b)
PY

cp "$work/shards/vocab.txt" "$seeds/vocab/trained"
cp "$work/shards/tokenizer.json" "$seeds/tokenizer_json/prepared"
cp "$work/hf/discriminator/tokenizer.json" "$seeds/tokenizer_json/exported"
cp "$work/text.txt" "$seeds/prepare_text/documents"
printf 'one line without a break, \xff\xfe not UTF-8, tab\there' > "$seeds/prepare_text/odd"
printf '[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n##s\nunion\n' > "$seeds/vocab/minimal"

step="$work/run/checkpoints/step-1"
join "$seeds/checkpoint/checked" "$step/state.json" "$step/model.safetensors" "$step/optimizer.safetensors"
# Without recorded checksums (an older build's checkpoint): mutations of the tensor files then
# reach the safetensors parser and the layout checks.
python3 - "$step/state.json" "$work/state-unchecked.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s.pop("checksums", None)
json.dump(s, open(sys.argv[2], "w"), indent=2)
PY
join "$seeds/checkpoint/unchecked" "$work/state-unchecked.json" "$step/model.safetensors" "$step/optimizer.safetensors"

g="$work/hf/generator" d="$work/hf/discriminator"
join "$seeds/hf_dir/pair" "$g/config.json" "$g/model.safetensors" "$d/config.json" "$d/model.safetensors" "$d/vocab.txt"
join "$seeds/hf_dir/no-vocab" "$g/config.json" "$g/model.safetensors" "$d/config.json" "$d/model.safetensors"

join "$seeds/run_dir/run" "$work/run/run.json" "$work/run/metrics.jsonl"

join "$seeds/model_config/engine" "$seeds/common/model.json" "$d/config.json"
join "$seeds/model_config/hf" "$g/config.json" "$d/config.json"

# The C ABI: a model and a recipe as JSON text, a vocabulary, a text to encode.
printf '{"peak_lr": 0.001, "replacement": "sample"}' > "$work/train.json"
printf 'the union of these states' > "$work/text-short.txt"
join "$seeds/capi/micro" "$seeds/common/model.json" "$work/train.json" "$work/shards/vocab.txt" \
    "$work/text-short.txt"

cp tests/fixtures/hf-tiny/batch.safetensors "$seeds/batch_file/fixture"

# GLUE layouts: the first byte picks the layout (its index in GLUE_TASKS, then a custom TSV and a
# custom CSV, fuzz/fuzz_targets/glue_tsv.rs); each file holds two rows in that layout.
glue() { { printf "\\x$(printf %02x "$1")"; printf '%b' "$3"; } > "$seeds/glue_tsv/$2"; }
glue 0 cola 'gj04\t1\t\tOur friends will fight.\ngj04\t0\t*\tThey drank the pub.\n'
glue 1 sst2 'sentence\tlabel\nit is a charming film \t1\na dull mess \t0\n'
glue 2 mrpc 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said so.\tSo he said.\n0\t3\t4\tA cat.\tA dog.\n'
glue 3 qqp 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\tHow?\t0\n1\t3\t4\tWhat is it?\tWhat is this?\t1\n'
glue 4 stsb 'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tmain\tf\t2012\t1\tnone\tnone\tA plane takes off.\tAn air plane is taking off.\t5.000\n'
glue 5 mnli 'index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n0\t1\t2\tfiction\tx\ty\tx\ty\tThe cat sat.\tA cat sat.\tentailment\tentailment\n'
glue 6 qnli 'index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n1\tWhen?\tNever here.\tnot_entailment\n'
glue 7 rte 'index\tsentence1\tsentence2\tlabel\n0\tA man runs.\tA person moves.\tentailment\n'
glue 8 wnli 'index\tsentence1\tsentence2\tlabel\n0\tThe trophy did not fit.\tIt was big.\t1\n'
glue 9 custom-tsv 'a\tb\tlabel\nfirst text\tsecond text\tyes\nthird\tfourth\tno\n'
glue 10 custom-csv 'good,"a ""quoted"", text"\r\nbad,plain text\n'
du -sb "$seeds"
