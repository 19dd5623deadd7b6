# Emulation of how kernels/layernorm_residual.cu draws the branch's dropout mask, for checking its
# index math without a GPU: the warp-per-row layout of layernorm.cuh (lane l holds columns
# c*256 + 8l .. +7 of its row, for chunks c < CH) and the word selection of dropout_scales8 in
# common.cuh (two or three Philox blocks, each element's word picked by j = off + i), copied
# literally; compared with the CPU's definition (backend::DropoutMask::scales: element e of the
# tensor draws word (offset + e) % 4 of block (offset + e) / 4). Philox itself is the one
# dropout.cu and the attention kernels already use; only which word each element reads is checked.
# Widths below and above 256 (w256 and w1024 kernels), multiples of 8 and not, offsets at every
# residue mod 4. Run: python3 layernorm_dropout.py; exit 1 on the first element that reads
# another word than the CPU's, or that no lane covers or two lanes cover.
import sys


def scales8_words(offset, index, n):
    """The (block, word) each of the eight elements at `index` reads in dropout_scales8, None past n."""
    g = offset + index
    off = g & 3
    blocks = [g >> 2, (g >> 2) + 1, (g >> 2) + 2 if off != 0 else g >> 2]
    out = []
    for i in range(8):
        j = off + i
        if j < 4:
            w = (blocks[0], j)
        elif j < 8:
            w = (blocks[1], j - 4)
        else:
            w = (blocks[2], j - 8)
        out.append(w if i < n else None)
    return out


def check(rows, width, offset):
    ch = 1 if width <= 256 else 4
    seen = {}
    for r in range(rows):
        base = r * width
        for lane in range(32):
            for c in range(ch):
                col0 = c * 256 + lane * 8
                n = width - col0
                if n <= 0:
                    break
                for i, w in enumerate(scales8_words(offset, base + col0, n)):
                    if w is None:
                        continue
                    e = base + col0 + i
                    want = ((offset + e) >> 2, (offset + e) & 3)
                    if w != want:
                        return f"element {e} reads {w}, the CPU's is {want}"
                    if e in seen:
                        return f"element {e} covered twice"
                    seen[e] = w
    if len(seen) != rows * width:
        return f"{rows * width - len(seen)} elements not covered"
    return None


def main():
    failures = 0
    cases = 0
    for width in [8, 64, 90, 100, 256, 257, 768, 1000, 1024]:
        for rows in [1, 3]:
            for offset in [0, 1, 2, 3, 270, 3700 * 3, (1 << 34) - 6]:
                cases += 1
                err = check(rows, width, offset)
                if err:
                    failures += 1
                    print(f"width {width}, rows {rows}, offset {offset}: {err}")
    print(f"layernorm dropout words: {cases - failures} of {cases} cases as the CPU draws them")
    sys.exit(1 if failures else 0)


main()
