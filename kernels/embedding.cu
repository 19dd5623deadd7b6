// The embedding block: word + position + token-type lookup, summed, then LayerNorm (forward); and
// its backward: the LayerNorm backward, then a deterministic scatter-add into the three tables.
//
// Forward fuses the three gathers, the sum and the LayerNorm: one warp per token reads its three
// f32 table rows (master weights: the sum is formed in f32 before the only rounding, to bf16 on
// output) and writes y and the saved xhat (bf16) and rstd (f32), as layernorm_residual_fwd does.
// Token r has position r % seq.
//
// Backward, in launches the Rust side issues in this order:
//   1. embedding_bwd_layernorm_w{256,1024}: dsum = LN'(dy) in f32 [rows, width] (overwritten), with
//      dgain/dbias reduced deterministically (layernorm.cuh).
//   2. The word table, by a stable sort-then-reduce, because several tokens share an id and f32
//      atomics would add their rows in a different order every run. A stable LSD radix sort of
//      (id, token) pairs, 8 bits a pass (2 passes for vocabularies up to 65536; 1 up to 256):
//        embedding_sort_hist -> embedding_sort_scan -> embedding_sort_scatter   (per pass)
//      leaves the tokens of each id contiguous and in token order. The sort reads only the ids, so it
//      can run any time after they are known (e.g. during the forward pass).
//      embedding_bwd_word_pieces: one warp per chunk of EMB_CHUNK sorted entries sums the rows of
//      each run of equal ids in sorted order. A run wholly inside the chunk is added straight into
//      dword[id] (no other warp touches that id); a run crossing chunk edges leaves its pieces in
//      scratch, and embedding_bwd_word_combine adds them chunk by chunk, in order, into dword.
//      Every sum is in token order, fixed by the data alone: bitwise reproducible, and one
//      read-modify-write of each touched dword row.
//   3. embedding_bwd_pos_type: one thread per (position, column) sums its tokens in order into
//      dposition, and leaves per-position partial sums per token type;
//      embedding_bwd_type_reduce adds those over positions, in order, into dtype.
// All table gradients are f32 and accumulated (+=), like every parameter gradient. The sort and the
// pieces/combine logic are emulated (and checked against np.add.at) by emulate/embedding_sort.py.
//
// Preconditions (checked by the Rust side, not here): ids < vocab <= 65536, types < n_types <= 4,
// rows = tokens < 2^31, width <= 256 (`_w256`) or <= 1024 (`_w1024`).
#include "layernorm.cuh"

#define EMB_CHUNK 16       // sorted entries per warp in embedding_bwd_word_pieces
#define SORT_TILE 1024     // keys per block in the radix sort kernels
#define SORT_THREADS 256   // threads per block in embedding_sort_hist / _scatter
#define SORT_WARPS (SORT_THREADS / 32)
#define SORT_RADIX 256     // 8-bit digits
#define MAX_TYPES 4

// ---------------------------------------------------------------------------------------------
// Forward

// y = LN(word[ids[r]] + position[r % seq] + token_type[types[r]]) * gain + bias.
// Tables f32 row-major [vocab|positions|types, width]; y, xhat bf16 [rows, width]; rstd f32 [rows].
// Launch: LN_THREADS (256) threads, one token per warp per step, any grid.
template <int CH>
__device__ __forceinline__ void embedding_fwd_body(
    const unsigned* __restrict__ ids, const unsigned* __restrict__ types, int seq,
    const float* __restrict__ word, const float* __restrict__ position,
    const float* __restrict__ token_type, const float* __restrict__ gain,
    const float* __restrict__ bias, bf16* __restrict__ y, bf16* __restrict__ xhat,
    float* __restrict__ rstd, int rows, int width, float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = (width % 8) == 0 && aligned16(y) && aligned16(xhat);
    const bool vecf = (width % 8) == 0 && aligned16(word) && aligned16(position) &&
                      aligned16(token_type) && aligned16(gain) && aligned16(bias);
    const int stride = gridDim.x * LN_WARPS;
    for (int r = blockIdx.x * LN_WARPS + warp; r < rows; r += stride) {
        const float* w = word + (size_t)ids[r] * width;
        const float* p = position + (size_t)(r % seq) * width;
        const float* t = token_type + (size_t)types[r] * width;
        float v[CH][8];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const int col0 = c * 256 + lane * 8;
            const int n = width - col0;
            if (n > 0) {
                float a[8], b[8], e[8];
                load8f(w + col0, n, vecf, a);
                load8f(p + col0, n, vecf, b);
                load8f(t + col0, n, vecf, e);
                // (word + position) + type, the CPU's order.
#pragma unroll
                for (int i = 0; i < 8; ++i) v[c][i] = (a[i] + b[i]) + e[i];
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) v[c][i] = 0.f;
            }
        }
        float mu;
        const float rs = ln_normalize<CH>(v, lane, width, eps, &mu);
        const size_t base = (size_t)r * width;
        ln_store_row<CH>(v, lane, width, gain, bias, y + base, xhat ? xhat + base : nullptr, vec,
                         vecf);
        if (lane == 0) rstd[r] = rs;
    }
}

#define EMB_FWD(NAME, CH)                                                                       \
    extern "C" __global__ void __launch_bounds__(LN_THREADS)                                    \
        NAME(const unsigned* __restrict__ ids, const unsigned* __restrict__ types, int seq,     \
             const float* __restrict__ word, const float* __restrict__ position,                \
             const float* __restrict__ token_type, const float* __restrict__ gain,              \
             const float* __restrict__ bias, bf16* __restrict__ y, bf16* __restrict__ xhat,     \
             float* __restrict__ rstd, int rows, int width, float eps) {                        \
        embedding_fwd_body<CH>(ids, types, seq, word, position, token_type, gain, bias, y, xhat, \
                               rstd, rows, width, eps);                                         \
    }
EMB_FWD(embedding_fwd_w256, 1)
EMB_FWD(embedding_fwd_w1024, 4)

// ---------------------------------------------------------------------------------------------
// Backward 1: the LayerNorm, into an f32 dsum [rows, width] (overwritten), and each block's
// gain and bias sums into its row of `partials` (gridDim.x * 2 * width floats), which
// sum_partial_rows then adds into the gain's and bias's gradients.
// Launch: LN_THREADS threads, any grid.

#define EMB_BWD_LN(NAME, CH)                                                                     \
    extern "C" __global__ void __launch_bounds__(LN_THREADS)                                     \
        NAME(const bf16* __restrict__ dy, const bf16* __restrict__ xhat,                         \
             const float* __restrict__ rstd, const float* __restrict__ gain, float* dsum,        \
             float* __restrict__ partials, int rows, int width) {                                \
        ln_backward<CH, float>(dy, xhat, rstd, gain, dsum, (float*)nullptr, partials, rows,      \
                               width, false, false, DropoutSite{});                              \
    }
EMB_BWD_LN(embedding_bwd_layernorm_w256, 1)
EMB_BWD_LN(embedding_bwd_layernorm_w1024, 4)

// ---------------------------------------------------------------------------------------------
// Backward 2a: stable LSD radix sort of (id, token) pairs, one 8-bit digit per pass.
//
// Pass with digit d(k) = (k >> shift) & 255, over T = ceil(n / SORT_TILE) tiles:
//   embedding_sort_hist    grid T, SORT_THREADS: tile_hist[d * T + tile] = count of digit d in tile
//   embedding_sort_scan    grid 1, 1024 threads: exclusive prefix sum of tile_hist (256 * T values)
//                          in place, so tile_hist[d * T + tile] is where the tile's first key of
//                          digit d goes
//   embedding_sort_scatter grid T, SORT_THREADS: each key to tile_hist[d * T + tile] + its stable
//                          rank among the tile's keys of digit d
// First pass: keys_in = ids, vals_in = null (the token index itself); then ping-pong buffers.
// Scratch: tile_hist 256 * T u32; keys/vals: two pairs of n u32.

extern "C" __global__ void __launch_bounds__(SORT_THREADS)
embedding_sort_hist(const unsigned* __restrict__ keys, int n, int shift,
                    unsigned* __restrict__ tile_hist) {
    __shared__ unsigned hist[SORT_RADIX];
    hist[threadIdx.x] = 0;  // SORT_THREADS == SORT_RADIX
    __syncthreads();
    const int start = blockIdx.x * SORT_TILE;
    for (int i = threadIdx.x; i < SORT_TILE; i += SORT_THREADS) {
        const int k = start + i;
        if (k < n) atomicAdd(&hist[(keys[k] >> shift) & 255u], 1u);  // integer: order-free
    }
    __syncthreads();
    tile_hist[threadIdx.x * gridDim.x + blockIdx.x] = hist[threadIdx.x];
}

extern "C" __global__ void __launch_bounds__(1024)
embedding_sort_scan(unsigned* __restrict__ data, int len) {
    __shared__ unsigned sums[1024];
    const int per = (len + 1023) / 1024;
    const int lo = min(len, (int)threadIdx.x * per), hi = min(len, lo + per);
    unsigned s = 0;
    for (int i = lo; i < hi; ++i) s += data[i];
    sums[threadIdx.x] = s;
    __syncthreads();
    // Hillis-Steele inclusive scan of the 1024 thread sums.
    for (int off = 1; off < 1024; off <<= 1) {
        const unsigned v = threadIdx.x >= off ? sums[threadIdx.x - off] : 0u;
        __syncthreads();
        sums[threadIdx.x] += v;
        __syncthreads();
    }
    unsigned run = threadIdx.x == 0 ? 0u : sums[threadIdx.x - 1];
    for (int i = lo; i < hi; ++i) {
        const unsigned v = data[i];
        data[i] = run;
        run += v;
    }
}

extern "C" __global__ void __launch_bounds__(SORT_THREADS)
embedding_sort_scatter(const unsigned* __restrict__ keys_in, const unsigned* __restrict__ vals_in,
                       unsigned* __restrict__ keys_out, unsigned* __restrict__ vals_out, int n,
                       int shift, const unsigned* __restrict__ tile_offsets) {
    // cnt[w][d]: keys of digit d that warp w holds this round, turned into the count of earlier
    // keys of digit d in the round (warps before w). run[d]: keys of digit d placed so far.
    __shared__ unsigned cnt[SORT_WARPS][SORT_RADIX];
    __shared__ unsigned run[SORT_RADIX];
    const int warp = threadIdx.x >> 5;
    const int tile = blockIdx.x;
    run[threadIdx.x] = tile_offsets[threadIdx.x * gridDim.x + tile];
    for (int round = 0; round < SORT_TILE / SORT_THREADS; ++round) {
#pragma unroll
        for (int w = 0; w < SORT_WARPS; ++w) cnt[w][threadIdx.x] = 0;
        __syncthreads();
        // Key order inside the tile: round, then warp, then lane. That order is the input order.
        const int k = tile * SORT_TILE + round * SORT_THREADS + threadIdx.x;
        const bool valid = k < n;
        const unsigned valid_lanes = __ballot_sync(FULL_MASK, valid);
        unsigned key = 0, val = 0, digit = 0, rank = 0;
        if (valid) {
            key = keys_in[k];
            val = vals_in ? vals_in[k] : (unsigned)k;
            digit = (key >> shift) & 255u;
            const unsigned peers = __match_any_sync(valid_lanes, digit);
            rank = __popc(peers & lanemask_lt());
            if (rank == 0) cnt[warp][digit] = __popc(peers);  // the lowest lane of each digit
        }
        __syncthreads();
        // One thread per digit: exclusive scan over the warps; s = this round's total.
        const int d = threadIdx.x;
        unsigned s = 0;
#pragma unroll
        for (int w = 0; w < SORT_WARPS; ++w) {
            const unsigned c = cnt[w][d];
            cnt[w][d] = s;
            s += c;
        }
        __syncthreads();
        if (valid) {
            const unsigned pos = run[digit] + cnt[warp][digit] + rank;
            keys_out[pos] = key;
            vals_out[pos] = val;
        }
        __syncthreads();
        run[d] += s;  // read next round only after two more barriers
    }
}

// ---------------------------------------------------------------------------------------------
// Backward 2b: the word table from the sorted pairs.

// Sums dsum rows over [first, last] (sorted entries, in order) for the columns of column group
// `g` (lane owns 4 consecutive columns of each group of 128).
__device__ __forceinline__ void emb_add_rows(const float* __restrict__ dsum,
                                             const unsigned* __restrict__ tokens, int first,
                                             int last, int col0, int width, bool vec, float acc[4]) {
    for (int e = first; e <= last; ++e) {
        const float* row = dsum + (size_t)tokens[e] * width + col0;
        if (vec) {
            const float4 v = *reinterpret_cast<const float4*>(row);
            acc[0] += v.x; acc[1] += v.y; acc[2] += v.z; acc[3] += v.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
                if (col0 + i < width) acc[i] += row[i];
        }
    }
}

__device__ __forceinline__ void emb_store4(float* dst, int col0, int width, bool vec,
                                           const float acc[4], bool add) {
    if (vec) {
        float4* p = reinterpret_cast<float4*>(dst + col0);
        float4 v = make_float4(acc[0], acc[1], acc[2], acc[3]);
        if (add) {
            const float4 o = *p;
            v.x += o.x; v.y += o.y; v.z += o.z; v.w += o.w;
        }
        *p = v;
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
            if (col0 + i < width) dst[col0 + i] = add ? dst[col0 + i] + acc[i] : acc[i];
    }
}

// One warp per chunk of EMB_CHUNK sorted entries; launch 128 threads (4 warps) per block,
// grid = ceil(ceil(n / EMB_CHUNK) / 4). `keys` are the sorted ids, `tokens` the matching token
// indices; dsum f32 [rows, width]; dword f32 [vocab, width] (+=); heads, conts f32 scratch
// [ceil(n / EMB_CHUNK), width] each (no initialisation needed).
extern "C" __global__ void __launch_bounds__(128)
embedding_bwd_word_pieces(const unsigned* __restrict__ keys, const unsigned* __restrict__ tokens,
                          const float* __restrict__ dsum, float* __restrict__ dword,
                          float* __restrict__ heads, float* __restrict__ conts, int n, int width) {
    const int lane = threadIdx.x & 31;
    const int chunk = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int begin = chunk * EMB_CHUNK;
    if (begin >= n) return;
    const int end = min(n, begin + EMB_CHUNK);  // exclusive
    const bool vec = (width % 4) == 0 && aligned16(dsum) && aligned16(dword) &&
                     aligned16(heads) && aligned16(conts);
    // The runs of equal ids inside the chunk, walked in order (warp-uniform control flow).
    int first = begin;
    while (first < end) {
        const unsigned id = keys[first];
        int last = first;
        while (last + 1 < end && keys[last + 1] == id) ++last;
        const bool head_here = first > begin || begin == 0 || keys[begin - 1] != id;
        const bool ends_here = last + 1 < end || end == n || keys[end] != id;
        float* dst;
        bool add;
        if (head_here && ends_here) {
            dst = dword + (size_t)id * width;
            add = true;
        } else if (head_here) {
            dst = heads + (size_t)chunk * width;  // the chunk's last run, continuing
            add = false;
        } else {
            dst = conts + (size_t)chunk * width;  // the chunk's first run, continued
            add = false;
        }
        for (int col0 = lane * 4; col0 < width; col0 += 128) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            emb_add_rows(dsum, tokens, first, last, col0, width, vec, acc);
            emb_store4(dst, col0, width, vec, acc, add);
        }
        first = last + 1;
    }
}

// One warp per chunk; the warps whose chunk ends in a run that continues past it add that run's
// pieces, chunk by chunk in order, into dword. Same launch shape and arguments as _pieces.
extern "C" __global__ void __launch_bounds__(128)
embedding_bwd_word_combine(const unsigned* __restrict__ keys, float* __restrict__ dword,
                           const float* __restrict__ heads, const float* __restrict__ conts, int n,
                           int width) {
    const int lane = threadIdx.x & 31;
    const int chunk = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int begin = chunk * EMB_CHUNK;
    if (begin >= n) return;
    const int end = min(n, begin + EMB_CHUNK);
    const unsigned id = keys[end - 1];
    const bool continues = end < n && keys[end] == id;
    const bool head_here = keys[begin] != id || begin == 0 || keys[begin - 1] != id;
    if (!(continues && head_here)) return;
    const bool vec = (width % 4) == 0 && aligned16(dword) && aligned16(heads) && aligned16(conts);
    for (int col0 = lane * 4; col0 < width; col0 += 128) {
        float acc[4];
        const float* h = heads + (size_t)chunk * width;
        if (vec) {
            const float4 v = *reinterpret_cast<const float4*>(h + col0);
            acc[0] = v.x; acc[1] = v.y; acc[2] = v.z; acc[3] = v.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i] = col0 + i < width ? h[col0 + i] : 0.f;
        }
        for (int c = chunk + 1;; ++c) {
            const float* piece = conts + (size_t)c * width + col0;
            if (vec) {
                const float4 v = *reinterpret_cast<const float4*>(piece);
                acc[0] += v.x; acc[1] += v.y; acc[2] += v.z; acc[3] += v.w;
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (col0 + i < width) acc[i] += piece[i];
            }
            const int c_end = min(n, (c + 1) * EMB_CHUNK);
            if (c_end == n || keys[c_end] != id) break;  // the run ends inside chunk c
        }
        emb_store4(dword + (size_t)id * width, col0, width, vec, acc, true);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward 3: position and token-type tables.

// dposition[t] += sum over tokens r = t, t + seq, ... < rows of dsum[r] (in that order), and
// type_partials[t][ty] = the same sum restricted to tokens of type ty (ty < n_types <= 4).
// One thread per (position, column): grid (ceil(width / 128), seq), 128 threads.
// type_partials: f32 scratch [seq, n_types, width].
extern "C" __global__ void __launch_bounds__(128)
embedding_bwd_pos_type(const float* __restrict__ dsum, const unsigned* __restrict__ types,
                       float* __restrict__ dposition, float* __restrict__ type_partials, int rows,
                       int seq, int width, int n_types) {
    const int col = blockIdx.x * 128 + threadIdx.x;
    const int t = blockIdx.y;
    if (col >= width) return;
    float pos = 0.f, typ[MAX_TYPES] = {0.f, 0.f, 0.f, 0.f};
    for (int r = t; r < rows; r += seq) {
        const float v = dsum[(size_t)r * width + col];
        pos += v;
        const unsigned ty = types[r];
#pragma unroll
        for (int k = 0; k < MAX_TYPES; ++k)
            if (ty == (unsigned)k) typ[k] += v;
    }
    dposition[(size_t)t * width + col] += pos;
#pragma unroll
    for (int k = 0; k < MAX_TYPES; ++k)
        if (k < n_types) type_partials[((size_t)t * n_types + k) * width + col] = typ[k];
}

// dtype[ty][col] += sum over positions t (in order) of type_partials[t][ty][col].
// One thread per (type, column): grid ceil(n_types * width / 128), 128 threads.
extern "C" __global__ void __launch_bounds__(128)
embedding_bwd_type_reduce(const float* __restrict__ type_partials, float* __restrict__ dtype,
                          int seq, int width, int n_types) {
    const int i = blockIdx.x * 128 + threadIdx.x;  // = ty * width + col
    if (i >= n_types * width) return;
    float s = 0.f;
#pragma unroll 8
    for (int t = 0; t < seq; ++t) s += type_partials[(size_t)t * n_types * width + i];
    dtype[i] += s;
}
