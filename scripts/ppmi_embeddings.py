"""Puts count-based word vectors from the pretraining corpus into a model's word embeddings: a yardstick
for what the corpus's word-level knowledge is worth to a downstream task, without a transformer's
pretraining (BENCHMARKS.md, "Pretraining helps downstream"). Not in CI; needs numpy, torch and safetensors.

  python3 scripts/reinit_tensors.py EXPORT OUT '.'     # a copy with every tensor drawn afresh
  python3 scripts/ppmi_embeddings.py SHARD OUT          # then its word embeddings from SHARD

The vectors are the classic positive-PMI factorisation: co-occurrences within two tokens of each other
(within one example, [PAD]/[CLS]/[SEP] left out), context counts smoothed by the power 0.75, the PPMI
matrix's top E left singular vectors scaled by the square roots of their singular values (randomised
SVD, seeded). They are centred and scaled to the standard deviation `electra` draws embeddings with
(the config's `initializer_range`), so that only their directions differ from a random initialisation;
tokens the shard never holds keep their random draw. OUT's discriminator/model.safetensors is replaced
atomically.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from pretraining_inputs import read_shard, special_ids

WINDOW = 2
CONTEXT_POWER = 0.75
NAME = "electra.embeddings.word_embeddings.weight"

if len(sys.argv) != 3:
    sys.exit(__doc__)
shard, out = sys.argv[1:]
path = f"{out}/discriminator/model.safetensors"
init_std = json.load(open(f"{out}/discriminator/config.json"))["initializer_range"]
cls_id, sep_id, _ = special_ids(f"{out}/discriminator/vocab.txt")
tensors = load_file(path)
vocab_size, width = tensors[NAME].shape
ids, shard_vocab = read_shard(shard)
if shard_vocab != vocab_size:
    sys.exit(f"{shard}: vocabulary of {shard_vocab} tokens, but {path} has {vocab_size} word embeddings")

left_out = np.isin(ids, [0, cls_id, sep_id])  # [PAD] is 0 in every shard
pairs = np.zeros(vocab_size * vocab_size, dtype=np.int64)
for offset in range(1, WINDOW + 1):
    keep = ~(left_out[:, :-offset] | left_out[:, offset:])
    forward = np.bincount(ids[:, :-offset][keep] * vocab_size + ids[:, offset:][keep],
                          minlength=vocab_size * vocab_size)
    pairs += forward + forward.reshape(vocab_size, vocab_size).T.ravel()
counts = torch.from_numpy(pairs.reshape(vocab_size, vocab_size).astype(np.float32))
total = counts.sum()
word_p = counts.sum(1) / total
context_p = counts.sum(0) ** CONTEXT_POWER
context_p = context_p / context_p.sum()
pmi = torch.log((counts / total).clamp_min(1e-30) / (word_p[:, None] * context_p[None, :]).clamp_min(1e-30))
ppmi = torch.where(counts > 0, pmi.clamp_min(0), torch.zeros_like(pmi))

torch.manual_seed(0)
u, s, _ = torch.svd_lowrank(ppmi, q=width + 16, niter=4)
vectors = (u[:, :width] * s[:width].sqrt()).numpy().astype(np.float64)
vectors -= vectors.mean(0)
vectors *= init_std / vectors.std()
seen = counts.sum(1).numpy() > 0
vectors[~seen] = tensors[NAME][~seen]
tensors[NAME] = vectors.astype(np.float32)

save_file(tensors, path + ".tmp", metadata={"format": "pt"})
os.replace(path + ".tmp", path)
print(f"{out}: word embeddings of the {seen.sum()} tokens seen in {shard} replaced by PPMI-SVD vectors "
      f"(window {WINDOW}, {width} dims; top singular values {', '.join(f'{v:.1f}' for v in s[:4])})")
