"""Checks an `electra export` against HuggingFace transformers (run by scripts/check-hf-export.sh).

    python check_hf_export.py batch   EXPORT_DIR TEXT_FILE OUT.safetensors
        tokenizes sentences of TEXT_FILE with the exported tokenizer (AutoTokenizer) and writes a
        batch file in the layout of `electra loss` (chosen positions and [MASK]s drawn with a
        fixed seed; no replacements: the engine's generator picks them with argmax).
    python check_hf_export.py compare EXPORT_DIR BATCH.safetensors ENGINE_LOGITS.safetensors LOSS.json
        loads both networks with transformers (no missing or unexpected keys allowed), runs them
        on the batch (the discriminator on the engine's replaced ids) and prints the max abs
        differences of the logits against the engine's `electra loss --logits` output. Exits 1
        if a difference exceeds 1e-4.
"""

import json
import re
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
    ElectraForMaskedLM,
    ElectraForPreTraining,
)

TOLERANCE = 1e-4
BATCH, SEQ = 4, 64


def make_batch(export, text_file, out):
    tok = AutoTokenizer.from_pretrained(f"{export}/discriminator")
    text = open(text_file, encoding="utf-8").read()
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) > 4]
    words = lambda s, n: " ".join(s.split()[:n])  # noqa: E731
    # Row 0 a single segment that fills the row, row 1 a pair that fills it, rows 2 and 3 short
    # (padded) single and pair rows.
    rows = [
        tok(" ".join(sentences[0:6]), truncation=True, max_length=SEQ),
        tok(sentences[6], sentences[7], truncation=True, max_length=SEQ),
        tok(words(sentences[8], 8), truncation=True, max_length=SEQ),
        tok(words(sentences[9], 6), words(sentences[10], 9), truncation=True, max_length=SEQ),
    ]
    ids = torch.zeros(BATCH, SEQ, dtype=torch.int64)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for b, enc in enumerate(rows):
        n = len(enc["input_ids"])
        ids[b, :n] = torch.tensor(enc["input_ids"])
        types[b, :n] = torch.tensor(enc["token_type_ids"])
        mask[b, :n] = 1
    special = torch.tensor(tok.all_special_ids)
    candidates = (mask == 1) & ~torch.isin(ids, special)
    g = torch.Generator().manual_seed(0)
    chosen = (torch.rand(BATCH, SEQ, generator=g) < 0.15) & candidates
    for b in range(BATCH):  # at least one chosen position per row
        if not chosen[b].any():
            chosen[b, candidates[b].nonzero()[0, 0]] = True
    to_mask = chosen & (torch.rand(BATCH, SEQ, generator=g) < 0.85)
    masked = torch.where(to_mask, torch.full_like(ids, tok.mask_token_id), ids)
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "chosen": chosen.long(),
            "masked_input_ids": masked,
        },
        out,
    )
    print(
        f"batch: {BATCH}x{SEQ}, {int(mask.sum())} real tokens, {int(chosen.sum())} chosen, "
        f"tokenizer {type(tok).__name__}, [MASK]={tok.mask_token_id}"
    )


def load(auto, cls, path):
    model, info = auto.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"{path}: transformers reports {problems}")
    if type(model) is not cls:
        sys.exit(f"{path}: {auto.__name__} made a {type(model).__name__}, not a {cls.__name__}")
    return model.eval()


def compare(export, batch_file, logits_file, loss_file):
    disc = load(AutoModelForPreTraining, ElectraForPreTraining, f"{export}/discriminator")
    gen = load(AutoModelForMaskedLM, ElectraForMaskedLM, f"{export}/generator")
    print(
        f"loaded {export}/discriminator (ElectraForPreTraining) and {export}/generator "
        "(ElectraForMaskedLM) with the Auto classes: no missing or unexpected keys"
    )
    batch = load_file(batch_file)
    engine = load_file(logits_file)
    mask, types = batch["attention_mask"], batch["token_type_ids"]
    chosen = batch["chosen"].bool()
    with torch.no_grad():
        gen_logits = gen(
            input_ids=batch["masked_input_ids"], attention_mask=mask, token_type_ids=types
        ).logits[chosen]
        replaced = engine["replaced_input_ids"]
        disc_logits = disc(input_ids=replaced, attention_mask=mask, token_type_ids=types).logits

    gen_diff = (gen_logits - engine["gen_logits_at_chosen"]).abs().max().item()
    real = mask.bool()
    disc_diff = (disc_logits[real] - engine["disc_logits"][real]).abs().max().item()
    pad_diff = (disc_logits - engine["disc_logits"]).abs().max().item()
    # The engine's argmax replacements against transformers' argmax.
    hf_picks = gen_logits.argmax(-1)
    agree = (hf_picks == replaced[chosen]).float().mean().item()

    # The losses, from transformers' logits.
    targets = batch["input_ids"]
    gen_loss = torch.nn.functional.cross_entropy(gen_logits.double(), targets[chosen]).item()
    labels = (replaced != targets).double()
    disc_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        disc_logits.double()[real], labels[real]
    ).item()
    ours = json.load(open(loss_file))

    print(f"max |Δ| generator logits at the {int(chosen.sum())} chosen positions: {gen_diff:.3e}")
    print(f"max |Δ| discriminator logits, {int(real.sum())} real tokens: {disc_diff:.3e}")
    print(f"max |Δ| discriminator logits, padding included: {pad_diff:.3e}")
    print(f"argmax replacements that agree with transformers: {agree:.1%}")
    print(f"gen_loss: transformers {gen_loss:.6f}, engine {ours['gen_loss']:.6f}")
    print(f"disc_loss: transformers {disc_loss:.6f}, engine {ours['disc_loss']:.6f}")
    failed = [
        name
        for name, d in [("generator logits", gen_diff), ("discriminator logits", disc_diff)]
        if not d <= TOLERANCE
    ]
    if failed:
        sys.exit(f"FAILED: {', '.join(failed)} differ by more than {TOLERANCE}")
    print(f"OK: every difference is within {TOLERANCE}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "batch":
        make_batch(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "compare":
        compare(*sys.argv[2:])
    else:
        sys.exit(__doc__)
