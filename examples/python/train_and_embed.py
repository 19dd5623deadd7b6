"""Trains the `tiny` preset a few steps and embeds sentences through electra's C ABI, with ctypes
and numpy only (no compiled extension).

    cargo build --release          # target/release/libelectra.so
    electra prepare --input TEXT --train-vocab 2000 --seq-len 64 --out SHARDS
    python3 examples/python/train_and_embed.py target/release/libelectra.so SHARDS OUT_DIR [DEVICE]

DEVICE is `cpu` (the default) or `cuda:N` with a library built with `--features cuda`.

The shards are read directly (a 64-byte header, then uint16 ids [examples, seq_len]); the attention
mask and token types are derived as the engine derives them: padding is 0, and type 1 starts after
the first [SEP].
"""

import ctypes as C
import os
import sys

import numpy as np


class TrainerOptions(C.Structure):
    _fields_ = [
        ("struct_size", C.c_size_t),
        ("preset", C.c_char_p),
        ("model_json", C.c_char_p),
        ("init_from", C.c_char_p),
        ("train_json", C.c_char_p),
        ("device", C.c_char_p),
        ("seed", C.c_uint64),
        ("vocab_size", C.c_uint32),
        ("vocab_file", C.c_char_p),
        ("total_steps", C.c_uint64),
        ("warmup_steps", C.c_uint64),
    ]


class StepMetrics(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("step", C.c_uint64)] + [
        (name, C.c_float)
        for name in ("gen_loss", "disc_loss", "total_loss", "mlm_accuracy", "disc_accuracy",
                     "replaced_fraction", "disc_gain", "lr", "grad_norm")
    ] + [("masked", C.c_uint64), ("real_tokens", C.c_uint64)]


def load(path):
    lib = C.CDLL(path)
    lib.electra_version.restype = C.c_char_p
    lib.electra_last_error.restype = C.c_char_p
    return lib


def check(lib, status):
    """Raises with the library's message when a call fails."""
    if status != 0:
        raise RuntimeError(f"electra status {status}: {lib.electra_last_error().decode()}")


def u32p(a):
    return a.ctypes.data_as(C.POINTER(C.c_uint32))


def read_shards(folder, sep_id):
    """All examples of a shard folder as (ids, mask, types), each uint32 [examples, seq]."""
    rows = []
    for name in sorted(os.listdir(folder)):
        if not name.startswith("shard-"):
            continue
        raw = open(os.path.join(folder, name), "rb").read()
        seq_len = int.from_bytes(raw[24:28], "little")
        count = int.from_bytes(raw[32:40], "little")
        rows.append(np.frombuffer(raw, dtype="<u2", count=count * seq_len, offset=64).reshape(count, seq_len))
    ids = np.concatenate(rows).astype(np.uint32)
    mask = (ids != 0).astype(np.uint32)
    after_first_sep = np.cumsum(ids == sep_id, axis=1) - (ids == sep_id)
    types = ((after_first_sep >= 1) & (mask == 1)).astype(np.uint32)
    return ids, mask, types


def main(lib_path, shards, out, device="cpu"):
    lib = load(lib_path)
    print("electra", lib.electra_version().decode())
    vocab = open(os.path.join(shards, "vocab.txt"), encoding="utf-8").read().splitlines()
    ids, mask, types = read_shards(shards, vocab.index("[SEP]"))

    options = TrainerOptions()
    check(lib, lib.electra_trainer_options_default(C.byref(options)))
    options.vocab_file = os.path.join(shards, "vocab.txt").encode()
    options.seed = 1
    options.device = device.encode()
    options.total_steps, options.warmup_steps = 20, 2
    options.train_json = b'{"peak_lr": 0.001}'
    trainer = C.c_void_p()
    check(lib, lib.electra_trainer_create(C.byref(options), C.byref(trainer)))
    metrics = StepMetrics(struct_size=C.sizeof(StepMetrics))
    batch = 8
    rng = np.random.default_rng(0)
    for _ in range(5):
        pick = rng.choice(len(ids), size=batch, replace=False)
        b_ids, b_mask, b_types = (np.ascontiguousarray(a[pick]) for a in (ids, mask, types))
        seq = b_ids.shape[1]
        check(lib, lib.electra_trainer_step(trainer, u32p(b_ids), u32p(b_mask), u32p(b_types),
                                            C.c_size_t(batch), C.c_size_t(seq), C.byref(metrics)))
        print(f"step {metrics.step}: generator {metrics.gen_loss:.4f}, discriminator "
              f"{metrics.disc_loss:.4f}, lr {metrics.lr:.2e}, grad norm {metrics.grad_norm:.3f}")
    export = os.path.join(out, "hf")
    check(lib, lib.electra_trainer_export(trainer, export.encode(),
                                          os.path.join(shards, "vocab.txt").encode()))
    lib.electra_trainer_destroy(trainer)

    tokenizer, encoder = C.c_void_p(), C.c_void_p()
    check(lib, lib.electra_tokenizer_load(os.path.join(export, "discriminator").encode(), C.byref(tokenizer)))
    check(lib, lib.electra_encoder_load(export.encode(), device.encode(), C.byref(encoder)))
    sentences = ["The state of the union is strong.", "We will work together.", "Peace and prosperity."]
    seq = 16
    e_ids, e_mask, e_types = (np.zeros((len(sentences), seq), np.uint32) for _ in range(3))
    for i, text in enumerate(sentences):
        check(lib, lib.electra_tokenizer_encode(tokenizer, text.encode(), None, C.c_size_t(seq),
                                                u32p(e_ids[i]), u32p(e_mask[i]), u32p(e_types[i]), None))
    hidden_size, max_seq = C.c_size_t(), C.c_size_t()
    check(lib, lib.electra_encoder_sizes(encoder, C.byref(hidden_size), C.byref(max_seq)))
    hidden = np.zeros((len(sentences), seq, hidden_size.value), np.float32)
    logits = np.zeros((len(sentences), seq), np.float32)
    fp = C.POINTER(C.c_float)
    check(lib, lib.electra_encoder_forward(
        encoder, u32p(e_ids), u32p(e_mask), u32p(e_types), C.c_size_t(len(sentences)), C.c_size_t(seq),
        hidden.ctypes.data_as(fp), C.c_size_t(hidden.size), logits.ctypes.data_as(fp), C.c_size_t(logits.size)))
    # Mean of the real tokens' hidden states: one feature vector per sentence.
    features = (hidden * e_mask[..., None]).sum(1) / e_mask.sum(1, keepdims=True)
    print("hidden states", hidden.shape, "features", features.shape, "logits", logits.shape)
    assert np.isfinite(hidden).all() and np.isfinite(logits).all()
    lib.electra_encoder_destroy(encoder)
    lib.electra_tokenizer_destroy(tokenizer)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
