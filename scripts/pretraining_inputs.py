"""What the Python diagnostics share with `electra pretrain`: reading a shard, the special ids of a
vocabulary, and the dynamic masking of ../shared/DESIGN.md. Imported by peer_pretrain.py and probe_rtd_signal.py
(run from any directory: Python puts a script's own folder on the import path)."""
import struct

import numpy as np


def read_shard(path):
    """The token ids of a shard, [examples, seq] int64, and the vocabulary size of its header."""
    raw = open(path, "rb").read()
    vocab, = struct.unpack("<I", raw[12:16])
    seq, = struct.unpack("<I", raw[24:28])
    count, = struct.unpack("<Q", raw[32:40])
    return np.frombuffer(raw[64:], dtype=np.uint16).reshape(count, seq).astype(np.int64), vocab


def special_ids(vocab_txt):
    """The ids of [CLS], [SEP] and [MASK] in a vocab.txt."""
    words = [line.rstrip("\n") for line in open(vocab_txt, encoding="utf-8")]
    return tuple(words.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))


def mask_like_pretraining(ids, rng, cls_id, sep_id, mask_id):
    """One step's masking of a batch as the engine does it: per sequence
    k = max(1, min(int(0.155·seq), round(0.15·n_real))) positions among the real tokens other than
    [CLS], [SEP] and [MASK], 85% of them [MASK]ed. Token types are 1 after the first [SEP].
    Returns the masked ids, the chosen positions, the real-token mask and the token types."""
    real = ids != 0
    types = (np.cumsum(ids == sep_id, axis=1) - (ids == sep_id)) >= 1
    chosen = np.zeros_like(real)
    masked = ids.copy()
    max_pred = int((0.15 + 0.005) * ids.shape[1])
    for b in range(len(ids)):
        cand = np.flatnonzero(real[b] & ~np.isin(ids[b], [cls_id, sep_id, mask_id]))
        k = min(max(1, round(0.15 * real[b].sum())), max_pred, len(cand))
        pick = rng.choice(cand, k, replace=False)
        chosen[b, pick] = True
        masked[b, pick[rng.random(k) < 0.85]] = mask_id
    return masked, chosen, real, types
