# Emulation of how apply_dropout_rows in kernels/attention.cu shares Philox words between lanes
# (its path for T % 4 == 0), for checking its index math without a GPU: the 32 lanes of a warp
# with the C-fragment layout (lane = 4g + t holds rows qa = q0 + 16w + g and qa + 8, columns
# k = k0 + 8j + 2t and k + 1), each lane's Philox block and the two __shfl_xor_sync(.., 1) copied
# literally, Philox words stood for by their (block, word) labels. Compared with the CPU's
# definition (DropoutMask::scales): element e of the probabilities [batch, heads, T, T], e =
# ((b * heads + h) * T + q) * T + k, reads word (offset + e) % 4 of block (offset + e) / 4.
# Run: python3 attention_dropout_words.py; exit 1 on the first element of a valid (q < T, k < T)
# position that reads another word.
import itertools
import sys


def words(block):
    """Philox4 of a block, as labels: x, y, z, w."""
    return [(block, 0), (block, 1), (block, 2), (block, 3)]


def shfl_xor(values, mask):
    return [values[lane ^ mask] for lane in range(32)]


def warp_tile(offset, b, h, heads, T, q0, w, k0, j):
    """(lane, element index, label read) for every valid element of column group j."""
    base = (b * heads + h) * T
    g = [lane >> 2 for lane in range(32)]
    t = [lane & 3 for lane in range(32)]
    qa = [q0 + 16 * w + g[lane] for lane in range(32)]
    qb = [qa[lane] + 8 for lane in range(32)]
    odd = [bool(t[lane] & 1) for lane in range(32)]
    row = [(base + (qb[lane] if odd[lane] else qa[lane])) * T for lane in range(32)]
    k = [k0 + 8 * j + 2 * t[lane] for lane in range(32)]
    r = [words((offset + row[lane] + (k[lane] & ~3)) >> 2) for lane in range(32)]
    give0 = [r[lane][0] if odd[lane] else r[lane][2] for lane in range(32)]
    give1 = [r[lane][1] if odd[lane] else r[lane][3] for lane in range(32)]
    got0, got1 = shfl_xor(give0, 1), shfl_xor(give1, 1)
    out = []
    for lane in range(32):
        a0 = got0[lane] if odd[lane] else r[lane][0]
        a1 = got1[lane] if odd[lane] else r[lane][1]
        b0 = r[lane][2] if odd[lane] else got0[lane]
        b1 = r[lane][3] if odd[lane] else got1[lane]
        if k[lane] >= T:
            continue
        if qa[lane] < T:
            out.append((lane, (base + qa[lane]) * T + k[lane], a0))
            out.append((lane, (base + qa[lane]) * T + k[lane] + 1, a1))
        if qb[lane] < T:
            out.append((lane, (base + qb[lane]) * T + k[lane], b0))
            out.append((lane, (base + qb[lane]) * T + k[lane] + 1, b1))
    return out


def main():
    cases = bad = 0
    for T, heads in [(4, 1), (36, 2), (128, 4), (68, 3)]:
        for offset in [0, 4 * heads * T * T, 3 * heads * T * T, (1 << 34) + 4 * heads * T * T]:
            for b, h in itertools.product(range(2), range(heads)):
                for q0 in range(0, T, 64):
                    for k0, w, j in itertools.product(range(0, T, 64), range(4), range(8)):
                        for lane, e, label in warp_tile(offset, b, h, heads, T, q0, w, k0, j):
                            cases += 1
                            want = ((offset + e) >> 2, (offset + e) & 3)
                            if label != want:
                                bad += 1
                                if bad <= 5:
                                    print(f"T {T}, offset {offset}, b {b}, h {h}, q0 {q0}, "
                                          f"k0 {k0}, warp {w}, j {j}, lane {lane}: element {e} "
                                          f"reads {label}, the CPU's is {want}")
    print(f"attention dropout words: {cases - bad} of {cases} elements as the CPU draws them")
    sys.exit(1 if bad or cases == 0 else 0)


main()
