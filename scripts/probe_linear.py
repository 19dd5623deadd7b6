"""Linear probes of an exported discriminator's frozen features, against a random model of the same config.

Asks whether pretraining put task information into the encoder at all, apart from how fine-tuning moves it:
a logistic regression (L-BFGS, the best of three L2 strengths by dev accuracy, features standardised on
train) on the final [CLS] state, the mean of the final token states, the mean of the embedding-layer
states, and the means of every layer concatenated. Not in CI; needs torch and transformers:

  python3 scripts/probe_linear.py EXPORT/discriminator data/polarity

where the folder holds SST-2-style train.tsv and dev.tsv (sentence, label).
"""
import sys
import torch
from transformers import AutoTokenizer, ElectraConfig, ElectraModel

torch.set_num_threads(2)
model_dir, data = sys.argv[1], sys.argv[2]


def read(path):
    rows = [l.split("\t") for l in open(path, encoding="utf-8").read().splitlines()[1:]]
    return [r[0] for r in rows], torch.tensor([int(r[1]) for r in rows])


train_x, train_y = read(f"{data}/train.tsv")
dev_x, dev_y = read(f"{data}/dev.tsv")
tok = AutoTokenizer.from_pretrained(model_dir)


def features(model, texts):
    """Final [CLS] states and, per layer, the mean over real tokens: [n, H] and [n, (L+1)·H]."""
    cls, means = [], []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            enc = tok(texts[i:i + 256], padding=True, truncation=True, max_length=64, return_tensors="pt")
            states = model(**enc, output_hidden_states=True).hidden_states
            real = enc["attention_mask"].unsqueeze(-1).float()
            cls.append(states[-1][:, 0])
            means.append(torch.cat([(h * real).sum(1) / real.sum(1) for h in states], -1))
    return torch.cat(cls), torch.cat(means)


def probe(x_train, x_dev):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_dev = (x_train - mu) / sd, (x_dev - mu) / sd
    best = 0.0
    for l2 in (1e-4, 1e-3, 1e-2):
        w = torch.zeros(x_train.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x_train @ w + b, train_y.float())
            loss = loss + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        accuracy = (((x_dev @ w + b) > 0).long() == dev_y).float().mean().item()
        best = max(best, accuracy)
    return best


torch.manual_seed(0)
config = ElectraConfig.from_pretrained(model_dir)
for name, model in [("pretrained", ElectraModel.from_pretrained(model_dir)), ("random", ElectraModel(config))]:
    model.eval()
    (cls_train, mean_train), (cls_dev, mean_dev) = features(model, train_x), features(model, dev_x)
    h = cls_train.shape[1]
    print(f"{name}: dev accuracy of a linear probe on [CLS] {probe(cls_train, cls_dev):.4f}, "
          f"last-layer mean {probe(mean_train[:, -h:], mean_dev[:, -h:]):.4f}, "
          f"embedding mean {probe(mean_train[:, :h], mean_dev[:, :h]):.4f}, "
          f"all layers' means {probe(mean_train, mean_dev):.4f}", flush=True)
