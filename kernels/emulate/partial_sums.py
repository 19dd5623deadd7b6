# Emulation of kernels/partial_sums.cu (sum_partial_rows), for checking its index math without a
# GPU: the grid of ceil(cols / 32) blocks of 8 warps, lane l of block b on column 32b + l, warp w
# over the partial rows w, w + 8, ..., the warps' sums added in warp order, columns below `split`
# into out_a and the rest into out_b, all copied literally from the kernel and done in float32 as
# the kernel does. Checked against a float64 sum of each column: every partial row of every column
# read once, the right output, and the outputs' other values untouched. Needs numpy.
# Run: python3 partial_sums.py SEED; exit 1 on the first case that differs.
import sys
import numpy as np

PS_WARPS = 8


def sum_partial_rows(partials, parts, ld, cols, split, out_a, out_b):
    """The kernel, one block and lane at a time; partials is the flat f32 array of [parts, ld]."""
    reads = np.zeros(partials.shape, np.int64)
    for block in range((cols + 31) // 32):
        warp_sums = np.zeros((PS_WARPS, 32), np.float32)
        for warp in range(PS_WARPS):
            for lane in range(32):
                c = block * 32 + lane
                s = np.float32(0)
                if c < cols:
                    for p in range(warp, parts, PS_WARPS):
                        s = np.float32(s + partials[p * ld + c])
                        reads[p * ld + c] += 1
                warp_sums[warp][lane] = s
        for lane in range(32):
            c = block * 32 + lane
            if c < cols:
                t = np.float32(0)
                for w in range(PS_WARPS):
                    t = np.float32(t + warp_sums[w][lane])
                if c < split:
                    out_a[c] = np.float32(out_a[c] + t)
                else:
                    out_b[c - split] = np.float32(out_b[c - split] + t)
    return reads


def check(rng, parts, ld, cols, split):
    partials = rng.uniform(-1, 1, parts * ld).astype(np.float32)
    out_a = rng.uniform(-1, 1, split + 3).astype(np.float32)
    out_b = rng.uniform(-1, 1, cols - split + 3).astype(np.float32)
    a0, b0 = out_a.copy(), out_b.copy()
    reads = sum_partial_rows(partials, parts, ld, cols, split, out_a, out_b)
    grid = reads.reshape(parts, ld)
    if (grid[:, :cols] != 1).any() or (grid[:, cols:] != 0).any():
        return "a partial value was read other than once, or past `cols`"
    want = partials.reshape(parts, ld)[:, :cols].astype(np.float64).sum(axis=0)
    got = np.concatenate([out_a[:split] - a0[:split], out_b[:cols - split] - b0[:cols - split]])
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    if err > 1e-5:
        return f"sums off by {err:.2e}"
    if (out_a[split:] != a0[split:]).any() or (out_b[cols - split:] != b0[cols - split:]).any():
        return "a value past the outputs was written"
    return None


def main():
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    # The LayerNorm's [gain | bias] rows (split at the width), the bias kernels' rows (one
    # output), column counts that end inside a block, and fewer partial rows than warps.
    cases = [(264, 512, 512, 256), (264, 128, 128, 64), (37, 1000, 1000, 1000),
             (5, 70, 61, 61), (3, 64, 64, 32), (17, 33, 33, 0)]
    bad = 0
    for parts, ld, cols, split in cases:
        err = check(rng, parts, ld, cols, split)
        if err:
            bad += 1
            print(f"parts {parts}, ld {ld}, cols {cols}, split {split}: {err}")
    print(f"sum_partial_rows: {len(cases) - bad} of {len(cases)} cases as the float64 sums")
    sys.exit(1 if bad else 0)


main()
