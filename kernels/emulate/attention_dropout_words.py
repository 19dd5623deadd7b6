# Emulation of the attention kernels' dropout mask (kernels/attention.cu), for checking its index
# math without a GPU: how the forward draws each lane's Philox words (draw_keep_bits, whose
# T % 4 == 0 path shares a Philox block between lanes t and t ^ 1 through __shfl_xor_sync), packs
# them into keep bits, ORs them over a quad (quad_or) and stores them (store_keep_words); how the
# forward and dq apply them (load_keep_words, apply_keep_bits); and how dkdv stages them in shared
# memory and picks the bits of its transposed tiles. The 32 lanes of a warp have the C-fragment
# layout (lane = 4g + t holds rows qa = q0 + 16w + g and qa + 8, columns k = k0 + 8j + 2t and
# k + 1; dkdv's lanes hold keys ka = k0 + 16w + g and ka + 8, queries q0 + 8j + 2t and + 1).
#
# A Philox word is stood for by its (block, word) label, and a word of keep bits by a dict from
# bit to the label it was drawn from, so a bit set twice, stored twice or read from the wrong place
# is seen. Compared with the CPU's definition (DropoutMask::scales): element e of the probabilities
# [batch, heads, T, T], e = ((b * heads + h) * T + q) * T + k, reads word (offset + e) % 4 of
# block (offset + e) / 4.
# Run: python3 attention_dropout_words.py; exit 1 on the first disagreement.
import itertools
import sys

TILE = 64


class Mismatch(Exception):
    pass


def cpu_label(offset, e):
    return ((offset + e) >> 2, (offset + e) & 3)


def words(block):
    """Philox4 of a block, as labels: x, y, z, w."""
    return [(block, 0), (block, 1), (block, 2), (block, 3)]


def pair_words(offset, index):
    """pair_words in kernels/common.cuh: the labels of elements index and index + 1."""
    g = offset + index
    off = g & 3
    r = words(g >> 2)
    return r[off], (r[off + 1] if off < 3 else words((g >> 2) + 1)[0])


def set_bit(word, bit, label, where):
    if bit in word:
        raise Mismatch(f"{where}: bit {bit} set twice")
    word[bit] = label


def draw_keep_bits(offset, b, h, heads, T, q0, w, k0):
    """Each lane's kw[4] (dicts) as draw_keep_bits leaves them."""
    base = (b * heads + h) * T
    shared = T % 4 == 0 and offset % 4 == 0
    kw = [[{}, {}, {}, {}] for _ in range(32)]
    for j in range(8):
        lanes = []
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            qa = q0 + 16 * w + g
            qb, odd, k = qa + 8, bool(t & 1), k0 + 8 * j + 2 * t
            lanes.append((qa, qb, odd, k, t))
        if shared:
            r = [words((offset + (base + (qb if odd else qa)) * T + (k & ~3)) >> 2)
                 for qa, qb, odd, k, t in lanes]
            give0 = [r[l][0] if lanes[l][2] else r[l][2] for l in range(32)]
            give1 = [r[l][1] if lanes[l][2] else r[l][3] for l in range(32)]
            got0 = [give0[l ^ 1] for l in range(32)]
            got1 = [give1[l ^ 1] for l in range(32)]
        for lane, (qa, qb, odd, k, t) in enumerate(lanes):
            if shared:
                a0 = got0[lane] if odd else r[lane][0]
                a1 = got1[lane] if odd else r[lane][1]
                b0 = r[lane][2] if odd else got0[lane]
                b1 = r[lane][3] if odd else got1[lane]
            else:
                a0 = a1 = b0 = b1 = None
                if k < T and qa < T:
                    a0, a1 = pair_words(offset, (base + qa) * T + k)
                if k < T and qb < T:
                    b0, b1 = pair_words(offset, (base + qb) * T + k)
            if k >= T:
                continue
            bit = 8 * (j & 3) + 2 * t
            where = f"lane {lane}, j {j}"
            if qa < T:
                set_bit(kw[lane][j >> 2], bit, a0, where)
                set_bit(kw[lane][j >> 2], bit + 1, a1, where)
            if qb < T:
                set_bit(kw[lane][2 + (j >> 2)], bit, b0, where)
                set_bit(kw[lane][2 + (j >> 2)], bit + 1, b1, where)
    return kw


def quad_or(kw):
    """kw[i] |= shfl_xor(kw[i], 1); kw[i] |= shfl_xor(kw[i], 2): an OR of disjoint bits."""
    for mask in (1, 2):
        before = [[dict(x) for x in lane] for lane in kw]
        for lane in range(32):
            for i in range(4):
                other = before[lane ^ mask][i]
                if set(other) & set(before[lane][i]):
                    raise Mismatch(f"quad_or: lanes {lane} and {lane ^ mask} share bits of word {i}")
                kw[lane][i].update(other)
    return kw


def apply_keep_bits(kw, T, q0, w, k0):
    """(q, k, label) of every element apply_keep_bits multiplies."""
    out = []
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        qa = q0 + 16 * w + g
        qb = qa + 8
        for j in range(8):
            k = k0 + 8 * j + 2 * t
            if k >= T:
                continue
            bit = 8 * (j & 3) + 2 * t
            wa, wb = kw[lane][j >> 2], kw[lane][2 + (j >> 2)]
            if qa < T:
                out += [(qa, k, wa.get(bit)), (qa, k + 1, wa.get(bit + 1))]
            if qb < T:
                out += [(qb, k, wb.get(bit)), (qb, k + 1, wb.get(bit + 1))]
    return out


def check_elements(elements, offset, base, T, where):
    """Every element inside the sequence reads the CPU's word."""
    n = 0
    for q, k, label in elements:
        if q < T and k < T:
            want = cpu_label(offset, (base + q) * T + k)
            if label != want:
                raise Mismatch(f"{where}: element ({q}, {k}) reads {label}, the CPU's is {want}")
            n += 1
    return n


def one_head(offset, b, h, heads, T):
    """The forward over every tile, then dq and dkdv reading what it stored. Returns the number
    of elements checked."""
    base, W = (b * heads + h) * T, (T + 31) >> 5
    memory, checked = {}, 0
    tiles = range(0, T, TILE)
    for q0, k0, w in itertools.product(tiles, tiles, range(4)):
        kw = quad_or(draw_keep_bits(offset, b, h, heads, T, q0, w, k0))
        where = f"forward q0 {q0} k0 {k0} warp {w}"
        checked += check_elements(apply_keep_bits(kw, T, q0, w, k0), offset, base, T, where)
        for lane in range(32):  # store_keep_words
            g, t = lane >> 2, lane & 3
            qa = q0 + 16 * w + g
            row, word = (qa if t < 2 else qa + 8), (k0 >> 5) + (t & 1)
            if row < T and word < W:
                if (row, word) in memory:
                    raise Mismatch(f"{where}: lane {lane} stores ({row}, {word}) again")
                memory[(row, word)] = kw[lane][t]
    missing = [(r, wd) for r in range(T) for wd in range(W) if (r, wd) not in memory]
    if missing:
        raise Mismatch(f"the forward never stores words {missing[:4]}")
    for (row, word), bits in memory.items():
        for bit, label in bits.items():
            if 32 * word + bit < T and label != cpu_label(offset, (base + row) * T + 32 * word + bit):
                raise Mismatch(f"stored word ({row}, {word}) bit {bit} holds {label}")

    for q0, k0, w in itertools.product(tiles, tiles, range(4)):  # dq: load_keep_words
        word = k0 >> 5
        kw = []
        for lane in range(32):
            qa = q0 + 16 * w + (lane >> 2)
            qb = qa + 8
            kw.append([memory[(qa, word)] if qa < T else {},
                       memory[(qa, word + 1)] if qa < T and word + 1 < W else {},
                       memory[(qb, word)] if qb < T else {},
                       memory[(qb, word + 1)] if qb < T and word + 1 < W else {}])
        where = f"dq q0 {q0} k0 {k0} warp {w}"
        checked += check_elements(apply_keep_bits(kw, T, q0, w, k0), offset, base, T, where)

    for k0, q0 in itertools.product(tiles, tiles):  # dkdv: one block's keys k0, query tile q0
        word = k0 >> 5
        keeps = [[{}] * TILE, [{}] * TILE]
        for i in range(TILE):
            q = q0 + i
            keeps[0][i] = memory[(q, word)] if q < T else {}
            keeps[1][i] = memory[(q, word + 1)] if q < T and word + 1 < W else {}
        for w, lane, j in itertools.product(range(4), range(32), range(8)):
            g, t = lane >> 2, lane & 3
            ka = k0 + 16 * w + g
            kb = ka + 8
            bit_a = 16 * (w & 1) + g
            bit_b = bit_a + 8
            qc = 8 * j + 2 * t
            q = q0 + qc
            wq, wq1 = keeps[w >> 1][qc], keeps[w >> 1][qc + 1]
            got = []
            if q < T:
                got += [(q, ka, wq.get(bit_a))] if ka < T else []
                got += [(q, kb, wq.get(bit_b))] if kb < T else []
            if q + 1 < T:
                got += [(q + 1, ka, wq1.get(bit_a))] if ka < T else []
                got += [(q + 1, kb, wq1.get(bit_b))] if kb < T else []
            checked += check_elements(got, offset, base, T, f"dkdv k0 {k0} q0 {q0} warp {w} lane {lane}")
    return checked


def main():
    checked = 0
    # T % 4 == 0 takes the shared-word path; 37 and 20 the per-lane one. W = ceil(T / 32) of 1
    # to 4 words a row, with the second word of a tile outside the row (20, 68).
    for T, heads in [(4, 1), (20, 1), (36, 2), (37, 2), (68, 3), (128, 4)]:
        for offset in [0, 4 * heads * T * T, 3 * heads * T * T, (1 << 34) + 4 * heads * T * T]:
            for b, h in itertools.product(range(2), range(heads)):
                try:
                    checked += one_head(offset, b, h, heads, T)
                except Mismatch as e:
                    print(f"T {T}, heads {heads}, offset {offset}, b {b}, h {h}: {e}")
                    sys.exit(1)
    print(f"attention dropout bits: {checked} element reads (forward, dq, dkdv) as the CPU draws "
          "them; every word stored once")
    sys.exit(0 if checked else 1)


main()
