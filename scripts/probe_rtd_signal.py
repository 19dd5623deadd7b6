"""How much of the replaced-token-detection signal an exported discriminator has learned, against what
the token alone gives away. Not in CI; needs torch and transformers:

  python3 scripts/probe_rtd_signal.py EXPORT data/sotu-shards/shard-00000.bin [SEQUENCES]

EXPORT holds generator/ and discriminator/ as `electra export` writes them. The shard's examples are
split in two halves. On each, positions are chosen and masked as in pretraining (15%, 85% [MASK]) and the
generator's softmax q at the chosen positions is computed. The first half estimates, from the exact
masses (no sampling), the share of each corrupted token w that is a replacement, r(w). On the second
half replacements are sampled from q and four predictors of "replaced" are scored by their BCE over
every real token:
  - the label prior (one rate for every token): the label entropy;
  - the best context-free predictor, r(w) (smoothed towards the prior): what the token's identity
    alone gives away; a generator whose samples follow the data's unigram distribution gives nothing;
  - a neighbour-bigram predictor: a logistic regression on logit r(w) and the pointwise mutual
    information of (left neighbour, w) and (w, right neighbour), with bigrams counted on the shard's
    sequences that are not probed, fitted on replacements sampled on the first half: a floor on what
    local context gives away, which a discriminator that learns anything of the language passes;
  - the discriminator itself, and the spread of its logits over the real tokens (near 0: its output
    no longer depends on the input).
Last, for each network, the largest mean attention weight that any head puts on the previous or the next
token (1/seq for uniform attention): whether word order is used at all, which every bigram needs; and
the mean cosine of adjacent position embeddings (rows 0..seq-1, centred): near 0 while the positions are
noise, rising as they take on an order (the synthetic run in BENCHMARKS.md went 0.32 → 0.57 as it left
its plateau; compare runs over the same number of rows), and the effective rank of the discriminator's
embedding projection (E -> H, when E < H): the context-free stage narrows it (49 at init for `tiny`, about
22 by step 2000 in BENCHMARKS.md's session 8), which weakens most directions of the word vectors for
fine-tuning; it widens again as the discriminator takes on context.
A discriminator at the context-free line has learned the token-identity signal and no context.
It also prints how much the generator uses context: its cross-entropy at the [MASK]ed positions of
the second half, against a unigram model counted on the first half.
"""
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

all_ids, vocab = read_shard(shard)
order = rng.permutation(len(all_ids))
ids, unprobed = all_ids[order[:count]], all_ids[order[count:]]
CLS, SEP, MASK = special_ids(f"{export}/discriminator/vocab.txt")
# Eager attention, so that the attention weights can be read (see neighbour_attention).
gen = ElectraForMaskedLM.from_pretrained(f"{export}/generator", attn_implementation="eager").eval()
disc = ElectraForPreTraining.from_pretrained(f"{export}/discriminator", attn_implementation="eager").eval()


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


def corrupt(batch, chosen, q, sampler):
    """The discriminator's input with replacements sampled from q at the chosen positions, and its labels."""
    corrupted = batch.copy()
    corrupted[chosen] = [sampler.choice(vocab, p=row / row.sum()) for row in q]
    return corrupted, (corrupted != batch).astype(np.float64)


# Neighbour bigrams, counted on the shard's sequences that the probe does not score.
pair_keys, pair_counts = np.unique((unprobed[:, :-1] * vocab + unprobed[:, 1:]).ravel(), return_counts=True)
token_counts = np.bincount(unprobed.ravel(), minlength=vocab).astype(np.float64)


def neighbour_features(corrupted, real):
    """[real tokens, 4]: logit r(w), the PMI of (left neighbour, w) and of (w, right neighbour), 1.
    A missing neighbour (sequence edge, padding) contributes 0."""
    keys = corrupted[:, :-1] * vocab + corrupted[:, 1:]
    at = np.clip(np.searchsorted(pair_keys, keys), 0, len(pair_keys) - 1)
    together = np.where(pair_keys[at] == keys, pair_counts[at], 0)
    expected = token_counts[corrupted[:, :-1]] * token_counts[corrupted[:, 1:]] / token_counts.sum()
    pair_pmi = np.where(real[:, :-1] & real[:, 1:], np.log((together + 0.1) / (expected + 0.1)), 0.0)
    left, right = np.zeros(corrupted.shape), np.zeros(corrupted.shape)
    left[:, 1:], right[:, :-1] = pair_pmi, pair_pmi
    rw = r[corrupted]
    return np.stack([np.log(rw / (1 - rw)), left, right, np.ones(corrupted.shape)], -1)[real]


# Fit the neighbour-bigram predictor on the first half, with its own sampler so that the second half's
# replacements stay those of the earlier versions of this probe.
fit_sampler = np.random.default_rng(1)
features, targets = [], []
for chosen, q, _, real, _, batch in first:
    corrupted, replaced = corrupt(batch, chosen, q, fit_sampler)
    features.append(neighbour_features(corrupted, real))
    targets.append(replaced[real])
features, targets = np.concatenate(features), np.concatenate(targets)
weights = np.zeros(features.shape[1])
for _ in range(25):  # Newton's method on the logistic log-likelihood
    p = 1 / (1 + np.exp(-features @ weights))
    hessian = (features * (p * (1 - p))[:, None]).T @ features / len(p) + 1e-6 * np.eye(len(weights))
    weights -= np.linalg.solve(hessian, features.T @ (p - targets) / len(p))

labels, prior_p, context_free_p, bigram_p, disc_logits = [], [], [], [], []
unigram = np.bincount(np.concatenate([b[c] for c, _, _, _, _, b in first]), minlength=vocab) + 1.0
unigram /= unigram.sum()
gen_nll, unigram_nll = [], []
for chosen, q, is_masked, real, types, batch in second:
    originals = batch[chosen][is_masked]
    gen_nll.append(-np.log(q[is_masked][np.arange(len(originals)), originals]))
    unigram_nll.append(-np.log(unigram[originals]))
    corrupted, replaced = corrupt(batch, chosen, q, rng)
    with torch.no_grad():
        logits = disc(input_ids=torch.tensor(corrupted), attention_mask=torch.tensor(real.astype(np.int64)),
                      token_type_ids=torch.tensor(types.astype(np.int64))).logits.numpy()
    labels.append(replaced[real])
    prior_p.append(np.full(real.sum(), prior))
    context_free_p.append(r[corrupted[real]])
    bigram_p.append(1 / (1 + np.exp(-neighbour_features(corrupted, real) @ weights)))
    disc_logits.append(logits[real].astype(np.float64))
y = np.concatenate(labels)
disc_logits = np.concatenate(disc_logits)
print(f"{export}: {len(y)} real tokens scored, replaced share {y.mean():.4f}")
print(f"cross-entropy at the [MASK]ed positions: generator {np.concatenate(gen_nll).mean():.3f} nats, "
      f"unigram {np.concatenate(unigram_nll).mean():.3f} nats")
for name, p in [("label prior", np.concatenate(prior_p)), ("context-free r(w)", np.concatenate(context_free_p)),
                ("neighbour bigrams", np.concatenate(bigram_p)), ("discriminator", 1 / (1 + np.exp(-disc_logits)))]:
    print(f"{name:<18} BCE {bce(p, y):.4f}  accuracy {np.mean((p > 0.5) == (y > 0.5)):.4f}")
print(f"discriminator logits over the real tokens: mean {disc_logits.mean():.3f}, std {disc_logits.std():.4f}")


def neighbour_attention(model, batch):
    """The largest mean attention weight that any layer's head puts on the token at offset -1 or +1."""
    with torch.no_grad():
        maps = model(input_ids=torch.tensor(batch), output_attentions=True).attentions
    return max(float(torch.diagonal(m.mean(0), offset=k, dim1=-2, dim2=-1).mean(-1).max())
               for m in maps for k in (-1, 1))


sample = ids[:16]
print(f"largest mean attention on a neighbour (uniform {1 / ids.shape[1]:.4f}): discriminator "
      f"{neighbour_attention(disc, sample):.4f}, generator {neighbour_attention(gen, sample):.4f}")


positions = disc.electra.embeddings.position_embeddings.weight.detach()[: ids.shape[1]].double()
positions = positions - positions.mean(0)
positions = positions / positions.norm(dim=1, keepdim=True)
print(f"position embeddings, mean cosine of adjacent rows (centred): "
      f"{float((positions[1:] * positions[:-1]).sum(1).mean()):.3f}")

if hasattr(disc.electra, "embeddings_project"):
    singular = torch.linalg.svdvals(disc.electra.embeddings_project.weight.detach().double())
    energy = singular**2 / (singular**2).sum()
    print(f"embedding projection: effective rank {float(torch.exp(-(energy * energy.log()).sum())):.1f} of "
          f"{len(singular)} (exp of the entropy of its normalised squared singular values); the top 8 hold "
          f"{float(energy[:8].sum()):.0%} of its energy")
