# Emulation of kernels/embedding.cu's word-table backward, for checking it without a GPU: the
# stable LSD radix sort (hist / scan / scatter, with __match_any_sync ranks per warp) and the
# pieces/combine segmented reduction, compared with np.add.at, with long runs of one id.
# Needs numpy. Run: python3 embedding_sort.py SEED
import numpy as np, sys

TILE, THREADS, WARPS, CHUNK = 1024, 256, 8, 16

def sort_hist(keys, n, shift, tiles):
    th = np.zeros(256 * tiles, np.uint64)
    for t in range(tiles):
        for i in range(TILE):
            k = t * TILE + i
            if k < n:
                th[((int(keys[k]) >> shift) & 255) * tiles + t] += 1
    return th

def sort_scan(data):
    L = len(data); per = (L + 1023) // 1024
    sums = [int(sum(data[min(L, i*per):min(L, i*per+per)])) for i in range(1024)]
    incl = np.cumsum(sums)
    out = data.copy()
    for i in range(1024):
        lo = min(L, i*per); hi = min(L, lo + per)
        run = 0 if i == 0 else int(incl[i-1])
        for j in range(lo, hi):
            v = int(data[j]); out[j] = run; run += v
    return out

def sort_scatter(keys_in, vals_in, n, shift, offs, tiles):
    ko = np.full(n, 0xFFFFFFFF, np.uint64); vo = np.full(n, 0xFFFFFFFF, np.uint64)
    for tile in range(tiles):
        run = np.array([int(offs[d * tiles + tile]) for d in range(256)], np.int64)
        for rnd in range(TILE // THREADS):
            cnt = np.zeros((WARPS, 256), np.int64)
            info = []
            for w in range(WARPS):
                lanes = []
                for lane in range(32):
                    k = tile*TILE + rnd*THREADS + w*32 + lane
                    if k < n:
                        key = int(keys_in[k]); val = int(vals_in[k]) if vals_in is not None else k
                        lanes.append((lane, key, val, (key >> shift) & 255))
                for (lane, key, val, d) in lanes:
                    peers = [l for (l, _, _, dd) in lanes if dd == d]
                    rank = sum(1 for l in peers if l < lane)
                    if rank == 0: cnt[w, d] = len(peers)
                    info.append((w, key, val, d, rank))
            s = np.zeros(256, np.int64)
            for w in range(WARPS):
                c = cnt[w].copy(); cnt[w] = s; s = s + c
            for (w, key, val, d, rank) in info:
                pos = run[d] + cnt[w, d] + rank
                ko[pos] = key; vo[pos] = val
            run += s
    return ko, vo

def radix_sort(ids, vocab):
    n = len(ids); tiles = (n + TILE - 1) // TILE
    passes = 1 if vocab <= 256 else 2
    k, v = ids.astype(np.uint64), None
    for p in range(passes):
        th = sort_hist(k, n, 8*p, tiles)
        offs = sort_scan(th)
        k, v = sort_scatter(k, v, n, 8*p, offs, tiles)
    return k.astype(np.int64), v.astype(np.int64)

def pieces(keys, tokens, dsum, dword, n, width):
    nch = (n + CHUNK - 1) // CHUNK
    heads = np.full((nch, width), np.nan, np.float32); conts = np.full((nch, width), np.nan, np.float32)
    for chunk in range(nch):
        begin = chunk * CHUNK; end = min(n, begin + CHUNK)
        first = begin
        while first < end:
            id_ = keys[first]; last = first
            while last + 1 < end and keys[last+1] == id_: last += 1
            head_here = first > begin or begin == 0 or keys[begin-1] != id_
            ends_here = last + 1 < end or end == n or keys[end] != id_
            acc = np.zeros(width, np.float32)
            for e in range(first, last+1): acc = acc + dsum[tokens[e]]
            if head_here and ends_here: dword[id_] = dword[id_] + acc
            elif head_here: heads[chunk] = acc
            else: conts[chunk] = acc
            first = last + 1
    return heads, conts

def combine(keys, dword, heads, conts, n, width):
    nch = (n + CHUNK - 1) // CHUNK
    for chunk in range(nch):
        begin = chunk * CHUNK; end = min(n, begin + CHUNK)
        id_ = keys[end-1]
        continues = end < n and keys[end] == id_
        head_here = keys[begin] != id_ or begin == 0 or keys[begin-1] != id_
        if not (continues and head_here): continue
        acc = heads[chunk].copy()
        c = chunk + 1
        while True:
            acc = acc + conts[c]
            c_end = min(n, (c+1)*CHUNK)
            if c_end == n or keys[c_end] != id_: break
            c += 1
        dword[id_] = dword[id_] + acc

if __name__ == "__main__":
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for (n, vocab, width) in [(3000, 30522, 8), (2500, 50, 5), (1100, 200, 4), (4100, 65536, 3)]:
        # Zipf-ish ids with long runs: a [PAD]-like id covering ~30% of tokens.
        ids = np.minimum(rng.zipf(1.3, n) - 1, vocab - 1)
        ids[rng.random(n) < 0.3] = 0
        k, v = radix_sort(ids, vocab)
        order = np.argsort(ids, kind='stable')
        assert (k == ids[order]).all() and (v == order).all(), "sort wrong / unstable"
        dsum = rng.standard_normal((n, width)).astype(np.float32)
        dword0 = rng.standard_normal((vocab, width)).astype(np.float32)
        dword = dword0.copy()
        h, c = pieces(k, v, dsum, dword, n, width)
        combine(k, dword, h, c, n, width)
        ref = dword0.astype(np.float64); np.add.at(ref, ids, dsum.astype(np.float64))
        err = np.abs(dword - ref).max()
        assert not np.isnan(dword).any()
        assert err < 1e-4, f"n={n} vocab={vocab} width={width}: max |dword - ref| = {err:.2e}"
        print(f"n={n} vocab={vocab} width={width}: sort stable ok, max |dword - ref| = {err:.2e}, longest run {np.bincount(ids).max()}")
