"""The peer's learning curve: ELECTRA pretraining with HuggingFace transformers + PyTorch on our shards,
with the recipe of ../shared/DESIGN.md, from the same initial weights as an `electra pretrain` run. Not in CI; needs
torch and transformers.

  # 1. initial weights of the sizes in CONFIGS (an export's generator/ and discriminator/ folders):
  python3 scripts/peer_pretrain.py init CONFIGS INIT
  # 2. both engines train from them, with the same recipe and budget:
  electra pretrain --data data/sotu-shards --init-from INIT --out RUN --steps 3000 --batch 32 \
      --lr 2e-3 --warmup 500 --replacement sample
  python3 scripts/peer_pretrain.py train INIT data/sotu-shards PEER.jsonl --steps 3000 --batch 32 \
      --lr 2e-3 --warmup 500

`train` writes metrics lines in the format of a run's metrics.jsonl (gen_loss, disc_loss, mlm_accuracy,
disc_accuracy, averaged over --log-every steps). The recipe, as ../shared/DESIGN.md states it: per sequence
k = max(1, min(int(0.155·seq), round(0.15·n_real))) positions chosen among the real tokens other than
[CLS], [SEP] and [MASK], 85% of them [MASK]ed; Gumbel-max sampling from the generator (a replacement
equal to the original is labelled original); loss = MLM + W·BCE over every real token; Adam without
bias correction (eps 1e-6), decoupled weight decay 0.01 except LayerNorm and bias tensors, global
gradient-norm clipping at 1; lr(t) = peak·(1 − t/T)·min(1, t/warmup). The random streams (data order,
masking, sampling, dropout) differ from the engine's, so curves agree in distribution, not bit for bit.
"""
import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from pretraining_inputs import mask_like_pretraining, read_shard, special_ids

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tie(gen, disc):
    """The generator reads and writes through the discriminator's embedding block."""
    gen.electra.embeddings = disc.electra.embeddings
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight


def init(args):
    torch.manual_seed(args.seed)
    configs, out = Path(args.configs), Path(args.out)
    disc = ElectraForPreTraining(ElectraConfig.from_pretrained(configs / "discriminator"))
    gen = ElectraForMaskedLM(ElectraConfig.from_pretrained(configs / "generator"))
    tie(gen, disc)
    for name, model in (("discriminator", disc), ("generator", gen)):
        model.save_pretrained(out / name)
        for f in TOKENIZER_FILES:
            if (configs / name / f).exists():
                shutil.copy(configs / name / f, out / name / f)
    print(f"wrote {out}/generator and {out}/discriminator")


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    init_dir = Path(args.init)
    disc = ElectraForPreTraining.from_pretrained(init_dir / "discriminator")
    gen = ElectraForMaskedLM.from_pretrained(init_dir / "generator")
    tie(gen, disc)
    disc.train(), gen.train()
    cls_id, sep_id, mask_id = special_ids(init_dir / "discriminator" / "vocab.txt")

    named = {}
    for prefix, model in (("disc", disc), ("gen", gen)):
        for n, p in model.named_parameters():
            named.setdefault(id(p), (f"{prefix}.{n}", p))
    params = [p for _, p in named.values()]
    decays = [not ("LayerNorm" in n or n.endswith("bias")) for n, _ in named.values()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]

    data = np.concatenate([read_shard(f)[0] for f in sorted(Path(args.data).glob("shard-*.bin"))])
    order, cursor = rng.permutation(len(data)), 0
    sums, count = np.zeros(4), 0
    out = open(args.out, "w")
    for step in range(args.steps):
        if cursor + args.batch > len(order):
            order, cursor = rng.permutation(len(data)), 0
        ids = data[order[cursor:cursor + args.batch]]
        cursor += args.batch
        masked, chosen, real, types = mask_like_pretraining(ids, rng, cls_id, sep_id, mask_id)
        ids_t, chosen_t, real_t = torch.tensor(ids), torch.tensor(chosen), torch.tensor(real)
        attn, types_t = real_t.long(), torch.tensor(types).long()

        hidden = gen.electra(input_ids=torch.tensor(masked), attention_mask=attn,
                             token_type_ids=types_t).last_hidden_state
        logits = gen.generator_lm_head(gen.generator_predictions(hidden[chosen_t]))
        gen_loss = F.cross_entropy(logits, ids_t[chosen_t])
        with torch.no_grad():
            u = torch.rand_like(logits)
            sampled = (logits - torch.log(-torch.log(u + 1e-9) + 1e-9)).argmax(-1)
            replaced = ids_t.clone()
            replaced[chosen_t] = sampled
            labels = (replaced != ids_t).float()
        d = disc(input_ids=replaced, attention_mask=attn, token_type_ids=types_t).logits
        disc_loss = F.binary_cross_entropy_with_logits(d[real_t], labels[real_t])
        loss = gen_loss + args.disc_weight * disc_loss
        for p in params:
            p.grad = None
        loss.backward()

        lr = args.lr * (1 - step / args.steps) * min(1.0, step / args.warmup if args.warmup else 1.0)
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
            scale = min(1.0, 1.0 / (norm + 1e-6)) if math.isfinite(norm) else 0.0
            for p, mo, ve, wd in zip(params, m, v, decays):
                g = p.grad * scale
                mo.mul_(0.9).add_(g, alpha=0.1)
                ve.mul_(0.999).addcmul_(g, g, value=0.001)
                update = mo / (ve.sqrt() + 1e-6)
                if wd:
                    update += 0.01 * p
                p.sub_(lr * update)
            mlm_acc = (logits.argmax(-1) == ids_t[chosen_t]).float().mean().item()
            disc_acc = ((d[real_t] > 0).float() == labels[real_t]).float().mean().item()
        sums += (gen_loss.item(), disc_loss.item(), mlm_acc, disc_acc)
        count += 1
        if (step + 1) % args.log_every == 0:
            g, dl, ma, da = sums / count
            out.write(json.dumps({"step": step + 1, "gen_loss": g, "disc_loss": dl, "mlm_accuracy": ma,
                                  "disc_accuracy": da, "lr": lr, "grad_norm": norm}) + "\n")
            out.flush()
            print(f"step {step + 1}: gen {g:.4f} disc {dl:.4f} mlm acc {ma:.3f} disc acc {da:.4f}", flush=True)
            sums, count = np.zeros(4), 0


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
sub = parser.add_subparsers(dest="command", required=True)
p = sub.add_parser("init", help="write initial weights as HF directories for --init-from")
p.add_argument("configs", help="a folder with generator/ and discriminator/ configs (an export)")
p.add_argument("out")
p.add_argument("--seed", type=int, default=0)
p = sub.add_parser("train", help="pretrain from INIT and write metrics lines")
p.add_argument("init")
p.add_argument("data", help="a prepared shard folder")
p.add_argument("out", help="the metrics file to write")
p.add_argument("--steps", type=int, required=True)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--warmup", type=int, required=True)
p.add_argument("--disc-weight", type=float, default=50.0)
p.add_argument("--log-every", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=2)
a = parser.parse_args()
init(a) if a.command == "init" else train(a)
