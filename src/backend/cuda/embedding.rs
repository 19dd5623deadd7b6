//! Launchers of `kernels/embedding.cu`: the embedding block's forward pass (gather and LayerNorm
//! in one kernel), and its backward pass in four phases: the LayerNorm's backward into the f32
//! gradient of the sum, a radix sort of the token ids, the word table's gradient summed over runs
//! of equal ids in token order (deterministic, no atomics), and the position and token-type
//! gradients.

use super::kernels::Arg;
use super::layernorm::{layernorm_bwd_scratch, ln_fwd_grid, sum_norm_partials, LN_THREADS};
use super::memory::Dtype;
use super::{int, width_kernel, CudaBackend, MAX_GRID_YZ};
use crate::backend::{EmbeddingOp, IBuf};

/// Tokens per tile of the sort's histogram and scatter kernels.
pub(super) const SORT_TILE: usize = 1024;
/// Threads of the sort's histogram and scatter kernels.
const SORT_THREADS: u32 = 256;
/// Values of one sort digit (8 bits a pass).
pub(super) const SORT_RADIX: usize = 256;
/// Sorted tokens per chunk of the word-gradient kernels.
pub(super) const EMB_CHUNK: usize = 16;
/// The most token types the position/type kernel handles.
const MAX_TYPES: usize = 4;

/// What the phases of the backward pass share: the f32 gradient of the embedding sum, `[rows,
/// width]`, and its sizes.
#[derive(Clone, Copy)]
struct SumGrad {
    dsum: u64,
    rows: usize,
    width: usize,
}

impl CudaBackend {
    pub(super) fn launch_embedding_fwd(&mut self, op: &EmbeddingOp) {
        let EmbeddingOp {
            ids,
            token_types,
            seq,
            out,
            saved,
            ..
        } = *op;
        let p = &op.params;
        let (rows, width) = (ids.len, p.norm.gain.len);
        let k = width_kernel(
            self.kernels.embedding_fwd_w256,
            self.kernels.embedding_fwd_w1024,
            width,
            "embedding_fwd",
        );
        if rows == 0 {
            return;
        }
        assert!(seq > 0 && token_types.len >= rows);
        assert!(out.len >= rows * width && saved.xhat.len >= rows * width);
        assert!(saved.rstd.len >= rows && p.norm.bias.len >= width);
        assert!(p.word.len.is_multiple_of(width) && p.token_type.len >= width);
        assert!(p.position.len >= seq.min(rows) * width, "too few positions");
        int(rows * width, "rows·width");
        let args = [
            Arg::Ptr(self.iaddr(ids)),
            Arg::Ptr(self.iaddr(token_types)),
            Arg::I32(int(seq, "seq")),
            Arg::Ptr(self.input(p.word, Dtype::F32)),
            Arg::Ptr(self.input(p.position, Dtype::F32)),
            Arg::Ptr(self.input(p.token_type, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.gain, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.bias, Dtype::F32)),
            Arg::Ptr(self.output(out, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.xhat, Dtype::Bf16, false)),
            Arg::Ptr(self.output(saved.rstd, Dtype::F32, false)),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(width, "width")),
            Arg::F32(p.norm.eps),
        ];
        self.run(k, (ln_fwd_grid(rows), 1, 1), LN_THREADS, &args);
    }

    pub(super) fn launch_embedding_bwd(&mut self, op: &EmbeddingOp) {
        let EmbeddingOp {
            ids,
            token_types,
            seq,
            saved,
            ..
        } = *op;
        let (p, dout) = (&op.params, op.out.grad());
        let (rows, width) = (ids.len, p.norm.gain.len);
        let ln = width_kernel(
            self.kernels.embedding_bwd_layernorm_w256,
            self.kernels.embedding_bwd_layernorm_w1024,
            width,
            "embedding_bwd",
        );
        if rows == 0 {
            return;
        }
        assert!(p.word.len.is_multiple_of(width), "word table width");
        let vocab = p.word.len / width;
        assert!(
            vocab <= 1 << 16,
            "embedding_bwd: the CUDA sort handles vocabularies up to 65536 ids, not {vocab}"
        );
        let types = p.token_type.len / width;
        assert!(
            (1..=MAX_TYPES).contains(&types) && p.token_type.len == types * width,
            "embedding_bwd: 1 to {MAX_TYPES} token types"
        );
        assert!(
            seq > 0 && p.position.len >= seq * width,
            "too few positions"
        );
        assert!(token_types.len >= rows && dout.len >= rows * width);
        assert!(saved.xhat.len >= rows * width && saved.rstd.len >= rows);
        let (n, w) = (int(rows, "rows"), int(width, "width"));

        // Phase 1, the LayerNorm backward into the f32 sum's gradient, dsum, and the partial
        // sums of the gain's and bias's gradients, then their sums.
        let grid = self.ln_grid(rows);
        ensure!(self, partials)(layernorm_bwd_scratch(self.sms, rows, width));
        let dsum = self.output(saved.xhat.grad().prefix(rows * width), Dtype::F32, false);
        let partials = self.scratch.partials.ptr;
        let args = [
            Arg::Ptr(self.input(dout, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.xhat, Dtype::Bf16)),
            Arg::Ptr(self.input(saved.rstd, Dtype::F32)),
            Arg::Ptr(self.input(p.norm.gain, Dtype::F32)),
            Arg::Ptr(dsum),
            Arg::Ptr(partials),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(ln, (grid, 1, 1), LN_THREADS, &args);
        let dgain = self.output(p.norm.gain.grad(), Dtype::F32, true);
        let dbias = self.output(p.norm.bias.grad(), Dtype::F32, true);
        // SAFETY: the partials hold `grid` rows of 2·width (sized above); the gain's and bias's
        // gradients `width` floats each.
        Self::launched(unsafe {
            sum_norm_partials(&self.launcher(), partials, grid, width, (dgain, dbias))
        });

        let sum = SumGrad { dsum, rows, width };
        let (keys, tokens) = self.sort_ids(ids, vocab);
        let dword = self.output(p.word.grad(), Dtype::F32, true);
        self.word_grads(sum, keys, tokens, dword);
        let dposition = self.output(p.position.grad(), Dtype::F32, true);
        let partials = self.position_grads(sum, token_types, seq, types, dposition);
        let dtype = self.output(p.token_type.grad(), Dtype::F32, true);
        self.type_grads(sum, partials, seq, types, dtype);
    }

    /// Phase 2, a stable radix sort of (id, token), one 8-bit digit a pass: returns where the
    /// sorted ids and their token indices are.
    fn sort_ids(&mut self, ids: IBuf, vocab: usize) -> (u64, u64) {
        let rows = ids.len;
        let n = int(rows, "rows");
        let tiles = rows.div_ceil(SORT_TILE);
        for i in 0..4 {
            ensure!(self, sort[i])(4 * rows);
        }
        ensure!(self, tile_hist)(4 * SORT_RADIX * tiles);
        let hist = self.scratch.tile_hist.ptr;
        let passes = if vocab <= SORT_RADIX { 1 } else { 2 };
        let (mut keys, mut vals) = (self.iaddr(ids), 0u64);
        for pass in 0..passes {
            let (ko, vo) = (
                self.scratch.sort[2 * pass].ptr,
                self.scratch.sort[2 * pass + 1].ptr,
            );
            let shift = Arg::I32(8 * pass as i32);
            let args = [Arg::Ptr(keys), Arg::I32(n), shift, Arg::Ptr(hist)];
            self.run(
                self.kernels.embedding_sort_hist,
                (tiles, 1, 1),
                SORT_THREADS,
                &args,
            );
            let len = int(SORT_RADIX * tiles, "sort histogram");
            let args = [Arg::Ptr(hist), Arg::I32(len)];
            self.run(self.kernels.embedding_sort_scan, (1, 1, 1), 1024, &args);
            let args = [
                Arg::Ptr(keys),
                Arg::Ptr(vals),
                Arg::Ptr(ko),
                Arg::Ptr(vo),
                Arg::I32(n),
                shift,
                Arg::Ptr(hist),
            ];
            self.run(
                self.kernels.embedding_sort_scatter,
                (tiles, 1, 1),
                SORT_THREADS,
                &args,
            );
            (keys, vals) = (ko, vo);
        }
        (keys, vals)
    }

    /// Phase 3, the word table: runs of equal ids summed in token order, into `dword`.
    fn word_grads(&mut self, sum: SumGrad, keys: u64, tokens: u64, dword: u64) {
        let SumGrad { dsum, rows, width } = sum;
        let (n, w) = (int(rows, "rows"), int(width, "width"));
        let chunks = rows.div_ceil(EMB_CHUNK);
        ensure!(self, pieces[0])(4 * chunks * width);
        ensure!(self, pieces[1])(4 * chunks * width);
        let (heads, conts) = (self.scratch.pieces[0].ptr, self.scratch.pieces[1].ptr);
        let blocks = chunks.div_ceil(4);
        let args = [
            Arg::Ptr(keys),
            Arg::Ptr(tokens),
            Arg::Ptr(dsum),
            Arg::Ptr(dword),
            Arg::Ptr(heads),
            Arg::Ptr(conts),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(
            self.kernels.embedding_bwd_word_pieces,
            (blocks, 1, 1),
            128,
            &args,
        );
        let args = [
            Arg::Ptr(keys),
            Arg::Ptr(dword),
            Arg::Ptr(heads),
            Arg::Ptr(conts),
            Arg::I32(n),
            Arg::I32(w),
        ];
        self.run(
            self.kernels.embedding_bwd_word_combine,
            (blocks, 1, 1),
            128,
            &args,
        );
    }

    /// Phase 4a, the position table's gradient into `dposition`, and per-position sums by token
    /// type for [`CudaBackend::type_grads`]; returns where those sums are.
    fn position_grads(
        &mut self,
        sum: SumGrad,
        token_types: IBuf,
        seq: usize,
        types: usize,
        dposition: u64,
    ) -> u64 {
        let SumGrad { dsum, rows, width } = sum;
        assert!(seq <= MAX_GRID_YZ, "seq {seq} exceeds a grid dimension");
        ensure!(self, type_partials)(4 * seq * types * width);
        let partials = self.scratch.type_partials.ptr;
        let args = [
            Arg::Ptr(dsum),
            Arg::Ptr(self.iaddr(token_types)),
            Arg::Ptr(dposition),
            Arg::Ptr(partials),
            Arg::I32(int(rows, "rows")),
            Arg::I32(int(seq, "seq")),
            Arg::I32(int(width, "width")),
            Arg::I32(types as i32),
        ];
        let grid = (width.div_ceil(128), seq, 1);
        self.run(self.kernels.embedding_bwd_pos_type, grid, 128, &args);
        partials
    }

    /// Phase 4b, the token-type table's gradient into `dtype`, from the per-position sums.
    fn type_grads(&mut self, sum: SumGrad, partials: u64, seq: usize, types: usize, dtype: u64) {
        let width = sum.width;
        let args = [
            Arg::Ptr(partials),
            Arg::Ptr(dtype),
            Arg::I32(int(seq, "seq")),
            Arg::I32(int(width, "width")),
            Arg::I32(types as i32),
        ];
        let grid = ((types * width).div_ceil(128), 1, 1);
        self.run(self.kernels.embedding_bwd_type_reduce, grid, 128, &args);
    }
}
