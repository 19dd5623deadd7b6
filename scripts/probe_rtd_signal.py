"""How much of the replaced-token-detection signal an exported discriminator has learned, against what
the token alone gives away. Not in CI; needs torch and transformers:

  python3 scripts/probe_rtd_signal.py EXPORT data/sotu-shards/shard-00000.bin [SEQUENCES]

EXPORT holds generator/ and discriminator/ as `electra export` writes them. The shard's examples are
split in two halves. On each, positions are chosen and masked as in pretraining (15%, 85% [MASK]) and the
generator's softmax q at the chosen positions is computed. The first half estimates, from the exact
masses (no sampling), the share of each corrupted token w that is a replacement, r(w). On the second
half replacements are sampled from q and three predictors of "replaced" are scored by their BCE over
every real token:
  - the label prior (one rate for every token): the label entropy;
  - the best context-free predictor, r(w) (smoothed towards the prior): what the token's identity
    alone gives away; a generator whose samples follow the data's unigram distribution gives nothing;
  - the discriminator itself.
A discriminator at the context-free line has learned the token-identity signal and no context.
It also prints how much the generator uses context: its cross-entropy at the [MASK]ed positions of
the second half, against a unigram model counted on the first half.
"""
import math
import sys

import numpy as np
import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from pretraining_inputs import mask_like_pretraining, read_shard, special_ids

torch.set_num_threads(2)
torch.manual_seed(0)
rng = np.random.default_rng(0)
export, shard = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 2048

ids, vocab = read_shard(shard)
ids = ids[rng.permutation(len(ids))[:count]]
CLS, SEP, MASK = special_ids(f"{export}/discriminator/vocab.txt")
gen = ElectraForMaskedLM.from_pretrained(f"{export}/generator").eval()
disc = ElectraForPreTraining.from_pretrained(f"{export}/discriminator").eval()


def mask_and_predict(batch):
    """Chosen positions (bool [n, seq]), the generator's softmax there, which of them are [MASK]ed,
    the real-token mask and the token types."""
    masked, chosen, real, types = mask_like_pretraining(batch, rng, CLS, SEP, MASK)
    with torch.no_grad():
        logits = gen(input_ids=torch.tensor(masked), attention_mask=torch.tensor(real.astype(np.int64)),
                     token_type_ids=torch.tensor(types.astype(np.int64))).logits
    q = torch.softmax(logits[torch.tensor(chosen)], -1).numpy().astype(np.float64)
    return chosen, q, masked[chosen] == MASK, real, types


def halves():
    for part in (ids[: count // 2], ids[count // 2:]):
        out = [mask_and_predict(part[i:i + 128]) + (part[i:i + 128],) for i in range(0, len(part), 128)]
        yield out


first, second = halves()
# r(w) from exact masses: a chosen position with original x puts q(w) on "w, replaced" for w != x
# and q(x) on "x, original"; an unchosen real position puts 1 on "x, original".
rep_mass, all_mass = np.zeros(vocab), np.zeros(vocab)
for chosen, q, _, real, _, batch in first:
    orig_chosen = batch[chosen]
    np.add.at(all_mass, batch[real & ~chosen], 1.0)
    all_mass += q.sum(0)
    rep = q.copy()
    rep[np.arange(len(rep)), orig_chosen] = 0.0
    rep_mass += rep.sum(0)
prior = rep_mass.sum() / all_mass.sum()
r = (rep_mass + 5.0 * prior) / (all_mass + 5.0)


def bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


labels, prior_p, context_free_p, disc_p = [], [], [], []
unigram = np.bincount(np.concatenate([b[c] for c, _, _, _, _, b in first]), minlength=vocab) + 1.0
unigram /= unigram.sum()
gen_nll, unigram_nll = [], []
for chosen, q, is_masked, real, types, batch in second:
    originals = batch[chosen][is_masked]
    gen_nll.append(-np.log(q[is_masked][np.arange(len(originals)), originals]))
    unigram_nll.append(-np.log(unigram[originals]))
    picks = np.array([rng.choice(vocab, p=row / row.sum()) for row in q])
    corrupted = batch.copy()
    corrupted[chosen] = picks
    replaced = (corrupted != batch).astype(np.float64)
    with torch.no_grad():
        logits = disc(input_ids=torch.tensor(corrupted), attention_mask=torch.tensor(real.astype(np.int64)),
                      token_type_ids=torch.tensor(types.astype(np.int64))).logits.numpy()
    labels.append(replaced[real])
    prior_p.append(np.full(real.sum(), prior))
    context_free_p.append(r[corrupted[real]])
    disc_p.append(1 / (1 + np.exp(-logits[real].astype(np.float64))))
y = np.concatenate(labels)
print(f"{export}: {len(y)} real tokens scored, replaced share {y.mean():.4f}")
print(f"cross-entropy at the [MASK]ed positions: generator {np.concatenate(gen_nll).mean():.3f} nats, "
      f"unigram {np.concatenate(unigram_nll).mean():.3f} nats")
for name, p in [("label prior", prior_p), ("context-free r(w)", context_free_p), ("discriminator", disc_p)]:
    p = np.concatenate(p)
    print(f"{name:<18} BCE {bce(p, y):.4f}  accuracy {np.mean((p > 0.5) == (y > 0.5)):.4f}")
