"""Copies an export's discriminator with some of its tensors drawn afresh, to find which pretrained part
helps or hinders fine-tuning (BENCHMARKS.md, "Pretraining helps downstream"): fine-tune the copy with
`electra finetune --model OUT` and compare it with the intact export and with random initialisation.

  python3 scripts/reinit_tensors.py EXPORT OUT REGEX

Every discriminator tensor whose HF name matches REGEX (Python `re.search`) is re-initialised the way
`electra` initialises a model: weights from N(0, σ²) truncated at 2σ (σ: the config's
`initializer_range`), biases 0, LayerNorm gains 1. The replaced-token head (`discriminator_predictions.*`)
is left alone, since fine-tuning drops it. Examples:
`embeddings_project` (the 64→128 projection), `word_embeddings`, `attention\\.self\\.(query|key)`,
`LayerNorm`, `^electra\\.(?!embeddings\\.)` (everything but the embedding block). Needs numpy and
safetensors; not in CI.
"""
import json
import re
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

if len(sys.argv) != 4:
    sys.exit(__doc__)
export, out, pattern = sys.argv[1:]
source = f"{export}/discriminator/model.safetensors"
tensors = load_file(source)
redrawn = [
    name
    for name in tensors
    if not name.startswith("discriminator_predictions.") and re.search(pattern, name)
]
if not redrawn:
    sys.exit(f"reinit_tensors: no tensor of {source} matches {pattern!r}")
init_std = json.load(open(f"{export}/discriminator/config.json"))["initializer_range"]
rng = np.random.default_rng(7)


def truncated_normal(shape):
    z = rng.standard_normal(shape)
    while (outside := np.abs(z) > 2).any():
        z[outside] = rng.standard_normal(outside.sum())
    return (init_std * z).astype(np.float32)


for name in redrawn:
    value = tensors[name]
    if name.endswith("LayerNorm.weight"):
        tensors[name] = np.ones_like(value)
    elif name.endswith(".bias"):
        tensors[name] = np.zeros_like(value)
    else:
        tensors[name] = truncated_normal(value.shape)
shutil.copytree(f"{export}/discriminator", f"{out}/discriminator")
save_file(tensors, f"{out}/discriminator/model.safetensors", metadata={"format": "pt"})
print(f"{out}: {len(redrawn)} tensors drawn afresh: {', '.join(redrawn)}")
