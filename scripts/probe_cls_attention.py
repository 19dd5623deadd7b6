"""What [CLS] sees in an exported discriminator, against a random model of the same config.

Diagnoses fine-tuning that stalls on [CLS]: how much the final [CLS] state varies across sentences, and
how the last layer's [CLS] attention spreads (entropy, by position, on itself and on [SEP]). Not in CI;
needs torch and transformers:

  python3 scripts/probe_cls_attention.py EXPORT/discriminator data/polarity/dev.tsv
"""
import sys
import torch
from transformers import AutoTokenizer, ElectraConfig, ElectraModel

model_dir, tsv = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
lines = [l.split("\t")[0] for l in open(tsv, encoding="utf-8").read().splitlines()[1:201]]
enc = tok(lines, padding=True, truncation=True, max_length=64, return_tensors="pt")
torch.manual_seed(0)
config = ElectraConfig.from_pretrained(model_dir, attn_implementation="eager")
for name, model in [("pretrained", ElectraModel.from_pretrained(model_dir, attn_implementation="eager")),
                    ("random", ElectraModel(config))]:
    model.eval()
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    h = out.last_hidden_state
    rel = h[:, 0].std(0).mean() / h[enc["attention_mask"].bool()].std(0).mean()
    a = out.attentions[-1][:, :, 0]  # [batch, heads, keys]: the last layer's [CLS] row
    entropy = -(a.clamp_min(1e-12).log() * a).sum(-1).mean()
    sep = (enc["input_ids"] == tok.sep_token_id).float()
    print(f"{name}: [CLS] std / token std {rel:.3f}; [CLS] attention entropy {entropy:.2f} nats, "
          f"on itself {a[:, :, 0].mean():.3f}, on [SEP] {(a.mean(1) * sep).sum(-1).mean():.3f}; "
          f"mean length {enc['attention_mask'].sum(1).float().mean():.1f}")
    print("  by position:", " ".join(f"{x:.3f}" for x in a.mean(1).mean(0)[:12].tolist()))
