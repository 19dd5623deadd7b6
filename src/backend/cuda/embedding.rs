//! Launchers of `kernels/embedding.cu`: the embedding block's forward pass (gather and LayerNorm
//! in one kernel), and its backward pass in four phases: the LayerNorm's backward into the f32
//! gradient of the sum, a radix sort of the token ids, the word table's gradient summed over runs
//! of equal ids in token order (deterministic, no atomics), and the position and token-type
//! gradients.

use super::kernels::{Arg, Launcher};
use super::launch_args::checked_int;
use super::layernorm::{
    layernorm_bwd_scratch, ln_fwd_grid, ln_grid, sum_norm_partials, LN_THREADS,
};
use super::memory::Dtype;
use super::{try_width_kernel, CudaBackend, CudaError, MAX_GRID_YZ};
use crate::backend::EmbeddingOp;

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

/// `embedding_fwd_w*`: u32 `ids` and `token_types [rows]` (sequences of `seq` tokens); f32 tables
/// `word [vocab, width]`, `position [≥ min(seq, rows), width]`, `token_type [types, width]` and
/// the LayerNorm's `gain`, `bias [width]`; writes bf16 `out` and `xhat [rows, width]`, f32
/// `rstd [rows]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct EmbeddingFwdArgs {
    pub ids: u64,
    pub token_types: u64,
    pub seq: usize,
    pub word: u64,
    pub position: u64,
    pub token_type: u64,
    pub gain: u64,
    pub bias: u64,
    pub out: u64,
    pub xhat: u64,
    pub rstd: u64,
    pub rows: usize,
    pub width: usize,
    pub eps: f32,
}

/// Launches the embedding forward (gather, sum and LayerNorm) on `l`'s stream, one warp a row.
///
/// # Safety
/// The addresses hold what [`EmbeddingFwdArgs`] describes, every id a row of `word`.
pub(super) unsafe fn embedding_fwd(l: &Launcher, a: &EmbeddingFwdArgs) -> Result<(), CudaError> {
    let k = try_width_kernel(
        l.kernels.embedding_fwd_w256,
        l.kernels.embedding_fwd_w1024,
        a.width,
        "embedding_fwd",
    )?;
    if a.rows == 0 {
        return Ok(());
    }
    if a.seq == 0 {
        return Err(CudaError::Argument(
            "embedding_fwd: seq is 0 (positions are row % seq)".into(),
        ));
    }
    checked_int(a.rows.saturating_mul(a.width), "rows·width")?;
    let args = [
        Arg::Ptr(a.ids),
        Arg::Ptr(a.token_types),
        Arg::I32(checked_int(a.seq, "seq")?),
        Arg::Ptr(a.word),
        Arg::Ptr(a.position),
        Arg::Ptr(a.token_type),
        Arg::Ptr(a.gain),
        Arg::Ptr(a.bias),
        Arg::Ptr(a.out),
        Arg::Ptr(a.xhat),
        Arg::Ptr(a.rstd),
        Arg::I32(checked_int(a.rows, "rows")?),
        Arg::I32(checked_int(a.width, "width")?),
        Arg::F32(a.eps),
    ];
    l.run(k, (ln_fwd_grid(a.rows), 1, 1), LN_THREADS, &args)
}

/// The embedding backward: bf16 `dout`, `xhat [rows, width]`, f32 `rstd [rows]` and `gain`, the
/// u32 `ids` and `token_types`; writes the f32 gradient of the sum `dsum [rows, width]` and
/// accumulates the f32 gradients of the gain, bias and three tables. `vocab` and `types` are
/// the tables' rows.
#[derive(Clone, Copy, Debug)]
pub(super) struct EmbeddingBwdArgs {
    pub dout: u64,
    pub xhat: u64,
    pub rstd: u64,
    pub gain: u64,
    pub ids: u64,
    pub token_types: u64,
    pub dsum: u64,
    pub dgain: u64,
    pub dbias: u64,
    pub dword: u64,
    pub dposition: u64,
    pub dtype: u64,
    pub rows: usize,
    pub width: usize,
    pub seq: usize,
    pub vocab: usize,
    pub types: usize,
    pub scratch: EmbeddingScratch,
}

/// The backward's scratch memory, each at least [`EmbeddingScratch::bytes`] of its place.
#[derive(Clone, Copy, Debug)]
pub(super) struct EmbeddingScratch {
    /// The LayerNorm's partial sums of the gain's and bias's gradients.
    pub partials: u64,
    /// The sort's keys and values of its two passes.
    pub sort: [u64; 4],
    /// The sort's histogram per tile.
    pub tile_hist: u64,
    /// The word-gradient chunks' first and continuing runs.
    pub pieces: [u64; 2],
    /// The per-position sums by token type.
    pub type_partials: u64,
}

impl EmbeddingScratch {
    /// The bytes each place needs: `partials`, each `sort` buffer, `tile_hist`, each of
    /// `pieces` and `type_partials`, in that order.
    pub fn bytes(sms: usize, a: &EmbeddingBwdArgs) -> [usize; 5] {
        let (rows, width) = (a.rows, a.width);
        [
            layernorm_bwd_scratch(sms, rows, width),
            4 * rows,
            4 * SORT_RADIX * rows.div_ceil(SORT_TILE),
            4 * rows.div_ceil(EMB_CHUNK) * width,
            4 * a.seq * a.types * width,
        ]
    }
}

impl EmbeddingBwdArgs {
    /// What the phases' kernels hold: ids sorted in at most two 8-bit passes, 1 to
    /// [`MAX_TYPES`] token types, a sequence per grid row, sizes within 32-bit indexing.
    fn check(&self) -> Result<(), CudaError> {
        let fail = |what: String| Err(CudaError::Argument(format!("embedding_bwd: {what}")));
        if self.vocab > 1 << 16 {
            return fail(format!(
                "the CUDA sort handles vocabularies up to 65536 ids, not {}",
                self.vocab
            ));
        }
        if !(1..=MAX_TYPES).contains(&self.types) {
            return fail(format!("1 to {MAX_TYPES} token types, not {}", self.types));
        }
        if self.seq == 0 || self.seq > MAX_GRID_YZ {
            return fail(format!("seq {} is 0 or exceeds a grid dimension", self.seq));
        }
        checked_int(self.rows.saturating_mul(self.width), "rows·width")?;
        Ok(())
    }
}

/// Launches the embedding backward's phases on `l`'s stream: the LayerNorm's backward into
/// `dsum` (and the gain's and bias's gradients), a radix sort of the ids, the word table's
/// gradient summed over runs of equal ids in token order, then the position and token-type
/// gradients.
///
/// # Safety
/// The addresses hold what [`EmbeddingBwdArgs`] describes, the scratch
/// [`EmbeddingScratch::bytes`].
pub(super) unsafe fn embedding_bwd(l: &Launcher, a: &EmbeddingBwdArgs) -> Result<(), CudaError> {
    let ln = try_width_kernel(
        l.kernels.embedding_bwd_layernorm_w256,
        l.kernels.embedding_bwd_layernorm_w1024,
        a.width,
        "embedding_bwd",
    )?;
    if a.rows == 0 {
        return Ok(());
    }
    a.check()?;
    let (n, w) = (checked_int(a.rows, "rows")?, checked_int(a.width, "width")?);
    let grid = ln_grid(l.sms, a.rows);
    let partials = a.scratch.partials;
    let args = [
        Arg::Ptr(a.dout),
        Arg::Ptr(a.xhat),
        Arg::Ptr(a.rstd),
        Arg::Ptr(a.gain),
        Arg::Ptr(a.dsum),
        Arg::Ptr(partials),
        Arg::I32(n),
        Arg::I32(w),
    ];
    l.run(ln, (grid, 1, 1), LN_THREADS, &args)?;
    sum_norm_partials(l, partials, grid, a.width, (a.dgain, a.dbias))?;
    let (keys, tokens) = sort_ids(l, a)?;
    word_grads(l, a, keys, tokens)?;
    position_grads(l, a)?;
    type_grads(l, a)
}

/// Phase 2, a stable radix sort of (id, token), one 8-bit digit a pass: returns where the
/// sorted ids and their token indices are.
unsafe fn sort_ids(l: &Launcher, a: &EmbeddingBwdArgs) -> Result<(u64, u64), CudaError> {
    let n = checked_int(a.rows, "rows")?;
    let tiles = a.rows.div_ceil(SORT_TILE);
    let hist = a.scratch.tile_hist;
    let sort = a.scratch.sort;
    let passes = if a.vocab <= SORT_RADIX { 1 } else { 2 };
    let (mut keys, mut vals) = (a.ids, 0u64);
    for pass in 0..passes {
        let (ko, vo) = (sort[2 * pass], sort[2 * pass + 1]);
        let shift = Arg::I32(8 * pass as i32);
        let args = [Arg::Ptr(keys), Arg::I32(n), shift, Arg::Ptr(hist)];
        l.run(
            l.kernels.embedding_sort_hist,
            (tiles, 1, 1),
            SORT_THREADS,
            &args,
        )?;
        let len = checked_int(SORT_RADIX * tiles, "sort histogram")?;
        let args = [Arg::Ptr(hist), Arg::I32(len)];
        l.run(l.kernels.embedding_sort_scan, (1, 1, 1), 1024, &args)?;
        let args = [
            Arg::Ptr(keys),
            Arg::Ptr(vals),
            Arg::Ptr(ko),
            Arg::Ptr(vo),
            Arg::I32(n),
            shift,
            Arg::Ptr(hist),
        ];
        l.run(
            l.kernels.embedding_sort_scatter,
            (tiles, 1, 1),
            SORT_THREADS,
            &args,
        )?;
        (keys, vals) = (ko, vo);
    }
    Ok((keys, vals))
}

/// Phase 3, the word table: runs of equal ids summed in token order, into `dword`.
unsafe fn word_grads(
    l: &Launcher,
    a: &EmbeddingBwdArgs,
    keys: u64,
    tokens: u64,
) -> Result<(), CudaError> {
    let (n, w) = (checked_int(a.rows, "rows")?, checked_int(a.width, "width")?);
    let [heads, conts] = a.scratch.pieces;
    let blocks = a.rows.div_ceil(EMB_CHUNK).div_ceil(4);
    let args = [
        Arg::Ptr(keys),
        Arg::Ptr(tokens),
        Arg::Ptr(a.dsum),
        Arg::Ptr(a.dword),
        Arg::Ptr(heads),
        Arg::Ptr(conts),
        Arg::I32(n),
        Arg::I32(w),
    ];
    l.run(
        l.kernels.embedding_bwd_word_pieces,
        (blocks, 1, 1),
        128,
        &args,
    )?;
    let args = [
        Arg::Ptr(keys),
        Arg::Ptr(a.dword),
        Arg::Ptr(heads),
        Arg::Ptr(conts),
        Arg::I32(n),
        Arg::I32(w),
    ];
    l.run(
        l.kernels.embedding_bwd_word_combine,
        (blocks, 1, 1),
        128,
        &args,
    )
}

/// Phase 4a, the position table's gradient into `dposition`, and per-position sums by token
/// type into the scratch for [`type_grads`].
unsafe fn position_grads(l: &Launcher, a: &EmbeddingBwdArgs) -> Result<(), CudaError> {
    let args = [
        Arg::Ptr(a.dsum),
        Arg::Ptr(a.token_types),
        Arg::Ptr(a.dposition),
        Arg::Ptr(a.scratch.type_partials),
        Arg::I32(checked_int(a.rows, "rows")?),
        Arg::I32(checked_int(a.seq, "seq")?),
        Arg::I32(checked_int(a.width, "width")?),
        Arg::I32(a.types as i32),
    ];
    let grid = (a.width.div_ceil(128), a.seq, 1);
    l.run(l.kernels.embedding_bwd_pos_type, grid, 128, &args)
}

/// Phase 4b, the token-type table's gradient into `dtype`, from the per-position sums.
unsafe fn type_grads(l: &Launcher, a: &EmbeddingBwdArgs) -> Result<(), CudaError> {
    let args = [
        Arg::Ptr(a.scratch.type_partials),
        Arg::Ptr(a.dtype),
        Arg::I32(checked_int(a.seq, "seq")?),
        Arg::I32(checked_int(a.width, "width")?),
        Arg::I32(a.types as i32),
    ];
    let grid = ((a.types * a.width).div_ceil(128), 1, 1);
    l.run(l.kernels.embedding_bwd_type_reduce, grid, 128, &args)
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
        if rows == 0 {
            return;
        }
        assert!(seq > 0 && token_types.len >= rows);
        assert!(out.len >= rows * width && saved.xhat.len >= rows * width);
        assert!(saved.rstd.len >= rows && p.norm.bias.len >= width);
        assert!(p.word.len.is_multiple_of(width) && p.token_type.len >= width);
        assert!(p.position.len >= seq.min(rows) * width, "too few positions");
        let args = EmbeddingFwdArgs {
            ids: self.iaddr(ids),
            token_types: self.iaddr(token_types),
            seq,
            word: self.input(p.word, Dtype::F32),
            position: self.input(p.position, Dtype::F32),
            token_type: self.input(p.token_type, Dtype::F32),
            gain: self.input(p.norm.gain, Dtype::F32),
            bias: self.input(p.norm.bias, Dtype::F32),
            out: self.output(out, Dtype::Bf16, false),
            xhat: self.output(saved.xhat, Dtype::Bf16, false),
            rstd: self.output(saved.rstd, Dtype::F32, false),
            rows,
            width,
            eps: p.norm.eps,
        };
        // SAFETY: the buffers hold the shapes checked above.
        Self::launched(unsafe { embedding_fwd(&self.launcher(), &args) });
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
        if rows == 0 {
            return;
        }
        assert!(
            width > 0 && p.word.len.is_multiple_of(width),
            "word table width"
        );
        let types = p.token_type.len / width;
        assert_eq!(p.token_type.len, types * width, "token-type table width");
        assert!(p.position.len >= seq * width, "too few positions");
        assert!(token_types.len >= rows && dout.len >= rows * width);
        assert!(saved.xhat.len >= rows * width && saved.rstd.len >= rows);
        let mut args = EmbeddingBwdArgs {
            dout: self.input(dout, Dtype::Bf16),
            xhat: self.input(saved.xhat, Dtype::Bf16),
            rstd: self.input(saved.rstd, Dtype::F32),
            gain: self.input(p.norm.gain, Dtype::F32),
            ids: self.iaddr(ids),
            token_types: self.iaddr(token_types),
            dsum: self.output(saved.xhat.grad().prefix(rows * width), Dtype::F32, false),
            dgain: self.output(p.norm.gain.grad(), Dtype::F32, true),
            dbias: self.output(p.norm.bias.grad(), Dtype::F32, true),
            dword: self.output(p.word.grad(), Dtype::F32, true),
            dposition: self.output(p.position.grad(), Dtype::F32, true),
            dtype: self.output(p.token_type.grad(), Dtype::F32, true),
            rows,
            width,
            seq,
            vocab: p.word.len / width,
            types,
            scratch: EmbeddingScratch {
                partials: 0,
                sort: [0; 4],
                tile_hist: 0,
                pieces: [0; 2],
                type_partials: 0,
            },
        };
        let [partials, sort, tile_hist, pieces, type_partials] =
            EmbeddingScratch::bytes(self.sms, &args);
        ensure!(self, partials)(partials);
        for i in 0..4 {
            ensure!(self, sort[i])(sort);
        }
        ensure!(self, tile_hist)(tile_hist);
        ensure!(self, pieces[0])(pieces);
        ensure!(self, pieces[1])(pieces);
        ensure!(self, type_partials)(type_partials);
        let s = &self.scratch;
        args.scratch = EmbeddingScratch {
            partials: s.partials.ptr,
            sort: s.sort.each_ref().map(|b| b.ptr),
            tile_hist: s.tile_hist.ptr,
            pieces: s.pieces.each_ref().map(|b| b.ptr),
            type_partials: s.type_partials.ptr,
        };
        // SAFETY: the buffers hold the shapes checked above, the scratch its sizes.
        Self::launched(unsafe { embedding_bwd(&self.launcher(), &args) });
    }
}
