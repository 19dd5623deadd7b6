//! Matrix products through cuBLASLt: bf16 operands, f32 accumulation, bf16 or f32 results, and
//! optionally the bias epilogue. The descriptors, layouts and the chosen algorithm are built once
//! per shape (and per operand alignment) and cached, so a step after the first only sets the bias
//! pointer and calls `cublasLtMatmul`.
//!
//! The algorithm is the heuristic's first choice, unless the backend tunes (`ELECTRA_GEMM_TUNE=1`):
//! then a product's first call times up to [`CANDIDATES`] of the heuristic's algorithms on its own
//! operands and keeps the fastest. Timing decides, so two tuned processes may choose differently
//! and their results differ in the last bits; untuned, every process makes the same choice.
//!
//! With `ELECTRA_FOLD_BIAS_GRADS=1` a linear layer's weight-gradient product also gives its bias
//! gradient (the BGRADB epilogue, [`Fold::BiasGrad`]) where cuBLASLt offers an algorithm for it,
//! instead of the bias-gradient kernels: an experiment, off by default until a GPU run has
//! checked and timed it.
//!
//! cuBLASLt is column-major. A row-major `[r, c]` matrix is a column-major `c × r` one with the
//! same leading dimension, so the backend states its row-major products transposed (see
//! `linear.rs`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use cudarc::driver::{result as driver, sys as driver_sys};
use half::bf16;

use super::clock::KernelClock;
use super::kernels::Launcher;
use super::memory::Dtype;
use super::{driver_err, CudaBackend, CudaError, GemmTuning};

/// How many of the heuristic's algorithms a tuned product times.
const CANDIDATES: usize = 8;
/// Products timed per candidate, after one untimed run.
const TIMED_RUNS: usize = 5;

/// What a product folds in besides `A·B`, through a vector whose address each call gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fold {
    /// Nothing.
    None,
    /// A bias vector of length `m`, D's type, added to every column of D
    /// (CUBLASLT_EPILOGUE_BIAS).
    Bias,
    /// The f32 sums of `op(B)` over k, one per column of D, written to the vector
    /// (CUBLASLT_EPILOGUE_BGRADB): how a weight gradient's product gives the bias gradient.
    BiasGrad,
}

/// `D[m × n] = op(A)·op(B) + beta·D` (and what it folds in), all column-major, A and B bf16, D
/// f32 or bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// `op(A) = Aᵀ`: A is stored `k × m` (else `m × k`).
    pub trans_a: bool,
    /// `op(B) = Bᵀ`: B is stored `n × k` (else `k × n`).
    pub trans_b: bool,
    pub lda: u64,
    pub ldb: u64,
    pub ldd: u64,
    /// The type of D (and of C, which is D itself).
    pub out: Dtype,
    /// What the product folds in.
    pub fold: Fold,
}

impl Gemm {
    /// The product as the kernel table names it: `cublasLt m×n×k`, the transposed operands, D's
    /// type, what it folds in, and `+=` when it adds to D.
    pub fn label(&self, beta: f32) -> String {
        let op = |t| if t { "T" } else { "N" };
        format!(
            "cublasLt {}×{}×{} {}{} {:?}{}{}",
            self.m,
            self.n,
            self.k,
            op(self.trans_a),
            op(self.trans_b),
            self.out,
            match self.fold {
                Fold::None => "",
                Fold::Bias => " +bias",
                Fold::BiasGrad => " +dbias",
            },
            if beta != 0.0 { " +=" } else { "" },
        )
    }
}

/// What a plan depends on besides the shape: the operands' alignment, which decides which
/// algorithms may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    gemm: Gemm,
    align: [u32; 3],
}

impl PlanKey {
    /// The key of `g` on operands at these addresses.
    fn new(g: Gemm, (a, b, d): (u64, u64, u64)) -> Self {
        PlanKey {
            gemm: g,
            align: [
                alignment(a, g.lda, 2),
                alignment(b, g.ldb, 2),
                alignment(d, g.ldd, g.out.bytes()),
            ],
        }
    }

    /// The key of `g` folding in the bias gradient of B ([`Fold::BiasGrad`]).
    fn bias_grad(g: Gemm, abd: (u64, u64, u64)) -> Self {
        let fold = Fold::BiasGrad;
        PlanKey::new(Gemm { fold, ..g }, abd)
    }
}

/// One of the heuristic's algorithms for a product, and its place in the heuristic's order.
#[derive(Clone, Copy)]
struct Candidate {
    rank: usize,
    algo: sys::cublasLtMatmulAlgo_t,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle, its workspace and the cached plans.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    workspace_bytes: usize,
    plans: HashMap<PlanKey, Plan>,
    /// Time the heuristic's candidates when a product is planned (see the module's comment).
    tune: bool,
    /// Fold bias gradients into weight-gradient products where an algorithm is offered.
    fold_bias_grads: bool,
    /// Whether cuBLASLt offers an algorithm for each [`Fold::BiasGrad`] product asked about.
    bias_grad_offers: HashMap<PlanKey, bool>,
    /// What each tuned plan's timing found, in the order the plans were made.
    tunings: Vec<GemmTuning>,
}

fn blas_err(what: &str, e: lt::CublasError) -> CudaError {
    CudaError::Blas {
        what: what.to_string(),
        message: format!("{e:?}"),
    }
}

fn dtype(d: Dtype) -> sys::cudaDataType {
    match d {
        Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
    }
}

/// The largest power of two (at most 256) that divides the address of every column of a matrix
/// at `ptr` with leading dimension `ld` elements of `bytes` bytes.
pub(super) fn alignment(ptr: u64, ld: u64, bytes: usize) -> u32 {
    let a = (1u64 << ptr.trailing_zeros().min(8)) as u32;
    let l = (1u64 << (ld * bytes as u64).trailing_zeros().min(8)) as u32;
    a.min(l)
}

unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<(), lt::CublasError> {
    lt::set_matmul_desc_attribute(desc, attr, v as *const T as *const c_void, size_of::<T>())
}

unsafe fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    v: &T,
) -> Result<(), lt::CublasError> {
    lt::set_matmul_pref_attribute(pref, attr, v as *const T as *const c_void, size_of::<T>())
}

impl Blas {
    /// A handle for the current context; `workspace` is `workspace_bytes` of device memory the
    /// caller keeps alive as long as this. `tune` times the heuristic's candidates of each new
    /// product shape and keeps the fastest; `fold_bias_grads` lets
    /// [`Blas::folds_bias_grad`] answer yes.
    pub fn new(
        workspace: u64,
        workspace_bytes: usize,
        (tune, fold_bias_grads): (bool, bool),
    ) -> Result<Self, CudaError> {
        let handle = lt::create_handle().map_err(|e| blas_err("cublasLtCreate", e))?;
        Ok(Blas {
            handle,
            workspace,
            workspace_bytes,
            plans: HashMap::new(),
            tune,
            fold_bias_grads,
            bias_grad_offers: HashMap::new(),
            tunings: Vec::new(),
        })
    }

    /// How many distinct weight-gradient products (shape and alignment) fold their bias
    /// gradient in (0 unless `ELECTRA_FOLD_BIAS_GRADS=1`).
    pub fn folded_bias_grads(&self) -> usize {
        self.bias_grad_offers.values().filter(|&&f| f).count()
    }

    /// Whether the product `g` (a weight gradient's, folding nothing) on these operands is to
    /// fold in the bias gradient of B: the backend was asked to and cuBLASLt offers an algorithm
    /// for `g` with [`Fold::BiasGrad`] (asked once per shape and alignment).
    pub fn folds_bias_grad(&mut self, g: Gemm, abd: (u64, u64, u64)) -> Result<bool, CudaError> {
        if !self.fold_bias_grads {
            return Ok(false);
        }
        let key = PlanKey::bias_grad(g, abd);
        if let Some(&offered) = self.bias_grad_offers.get(&key) {
            return Ok(offered);
        }
        let offered = self.bias_grad_algorithms(key)? > 0;
        self.bias_grad_offers.insert(key, offered);
        Ok(offered)
    }

    /// What the tuned plans' timing found (empty untuned).
    pub fn tunings(&self) -> &[GemmTuning] {
        &self.tunings
    }

    /// Runs `g` on `stream`: `D = A·B + beta·D` with C = D, and what `g` folds in: `vector` is
    /// the address of the bias (16-byte aligned, D's type) or of the bias gradient (f32).
    ///
    /// # Safety
    /// The addresses must hold the matrices `g` describes, on the handle's device.
    pub unsafe fn matmul(
        &mut self,
        stream: cudarc::driver::sys::CUstream,
        g: Gemm,
        (a, b, d): (u64, u64, u64),
        beta: f32,
        vector: Option<u64>,
    ) -> Result<(), CudaError> {
        if (g.fold != Fold::None) != vector.is_some() {
            return Err(CudaError::Argument(format!(
                "cublasLtMatmul {g:?}: a fold and its vector go together (given {vector:?})"
            )));
        }
        let key = PlanKey::new(g, (a, b, d));
        if !self.plans.contains_key(&key) {
            let count = if self.tune { CANDIDATES } else { 1 };
            let (mut plan, candidates) = self.plan(key, vector.unwrap_or(0), count)?;
            if candidates.len() > 1 {
                let tuned = self.time_candidates(stream, &plan, &candidates, g, (a, b), beta)?;
                if let Some((algo, t)) = tuned {
                    plan.algo = algo;
                    self.tunings.push(t);
                }
            }
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        if let Some(vector) = vector {
            set_desc(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &vector,
            )
            .map_err(|e| blas_err("setting the bias pointer", e))?;
        }
        self.launch(stream, plan, &plan.algo, (a, b, d), beta)
            .map_err(|e| blas_err(&format!("cublasLtMatmul {g:?}"), e))
    }

    /// Enqueues `D = A·B (+ bias) + beta·D` with `algo` (C = D).
    unsafe fn launch(
        &self,
        stream: cudarc::driver::sys::CUstream,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        (a, b, d): (u64, u64, u64),
        beta: f32,
    ) -> Result<(), lt::CublasError> {
        let alpha = 1.0f32;
        lt::matmul(
            self.handle,
            plan.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            a as *const c_void,
            plan.layouts[0],
            b as *const c_void,
            plan.layouts[1],
            d as *const c_void,
            plan.layouts[2],
            d as *mut c_void,
            plan.layouts[2],
            algo,
            self.workspace as *mut c_void,
            self.workspace_bytes,
            stream as sys::cudaStream_t,
        )
    }

    /// Times each of `candidates` on the call's operands A and B (and bias, set in the plan's
    /// descriptor) with the call's `beta`, writing into scratch memory of D's size so that D
    /// keeps its values, and returns the fastest and what the timing found. None on a stream
    /// that is being captured, where nothing may be timed, or when no candidate ran.
    unsafe fn time_candidates(
        &self,
        stream: cudarc::driver::sys::CUstream,
        plan: &Plan,
        candidates: &[Candidate],
        g: Gemm,
        (a, b): (u64, u64),
        beta: f32,
    ) -> Result<Option<(sys::cublasLtMatmulAlgo_t, GemmTuning)>, CudaError> {
        let what = |doing: &str| format!("{doing} while tuning {}", g.label(beta));
        let status = driver::stream::is_capturing(stream)
            .map_err(|e| driver_err(&what("asking for the capture status"), e))?;
        if status != driver_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(None);
        }
        let bytes = (g.ldd * g.n) as usize * g.out.bytes();
        let scratch = driver::malloc_async(stream, bytes)
            .map_err(|e| driver_err(&what("allocating scratch memory"), e))?;
        let timed = (|| {
            driver::memset_d8_async(scratch, 0, bytes, stream)
                .map_err(|e| driver_err(&what("zeroing scratch memory"), e))?;
            let mut times = Vec::with_capacity(candidates.len());
            for c in candidates {
                times.push(self.time_one(stream, plan, &c.algo, (a, b, scratch), beta)?);
            }
            Ok::<_, CudaError>(times)
        })();
        let _ = driver::free_async(scratch, stream);
        let times = timed?;
        let fastest = times
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by(|x, y| x.1.total_cmp(&y.1));
        // The first candidate is the heuristic's first choice (`plan` refuses a product whose
        // first choice cannot run here).
        Ok(fastest.map(|(i, chosen_s)| {
            let tuning = GemmTuning {
                label: g.label(beta),
                candidates: candidates.len(),
                chosen: candidates[i].rank,
                first_s: times[0].unwrap_or(f64::NAN),
                chosen_s,
            };
            (candidates[i].algo, tuning)
        }))
    }

    /// Seconds per product of `algo` over [`TIMED_RUNS`] runs after an untimed one (between two
    /// events of a [`KernelClock`]); None if cuBLASLt refuses to run it.
    unsafe fn time_one(
        &self,
        stream: cudarc::driver::sys::CUstream,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        abd: (u64, u64, u64),
        beta: f32,
    ) -> Result<Option<f64>, CudaError> {
        let run = || self.launch(stream, plan, algo, abd, beta).is_ok();
        if !run() {
            return Ok(None);
        }
        let clock = KernelClock::new();
        let ran = clock.time(stream, String::new, || Ok((0..TIMED_RUNS).all(|_| run())))?;
        let seconds = clock.read()?[0].2;
        Ok(ran.then_some(seconds / TIMED_RUNS as f64))
    }

    /// How many algorithms (of the first [`CANDIDATES`] the heuristic names) can run `g` with
    /// the bias gradient of B folded into the product (CUBLASLT_EPILOGUE_BGRADB into an f32
    /// vector, as a linear layer's weight gradient `dwᵀ = xᵀ·dy` could give `dbias` with it),
    /// the operands aligned as 256-byte aligned bases with `g`'s leading dimensions make them: 0
    /// where it offers none. Plans and runs nothing; `electra bench` reports it, whatever
    /// `ELECTRA_FOLD_BIAS_GRADS` says.
    pub fn bias_grad_epilogue_algorithms(&self, g: Gemm) -> Result<usize, CudaError> {
        self.bias_grad_algorithms(PlanKey::bias_grad(g, (256, 256, 256)))
    }

    /// How many of the first [`CANDIDATES`] algorithms can run `key`'s [`Fold::BiasGrad`]
    /// product; 0 where the heuristic offers none.
    fn bias_grad_algorithms(&self, key: PlanKey) -> Result<usize, CudaError> {
        // SAFETY: builds descriptors and asks the heuristic; the vector's address (256, aligned)
        // is only read for its alignment.
        unsafe {
            let plan = self.describe(key, 256)?;
            match self.ask(&plan, key, CANDIDATES) {
                Ok(found) => Ok(self.runnable(&found).len()),
                Err(lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => Ok(0),
                Err(e) => Err(blas_err(&format!("probing BGRADB for {:?}", key.gemm), e)),
            }
        }
    }

    /// Builds the descriptors of `key` (its fold's vector at `vector`) and asks the heuristic
    /// for up to `count` algorithms in its order. Returns the plan, holding the first, and the
    /// algorithms that can run (the heuristic succeeded for them and their workspace fits), the
    /// first among them.
    unsafe fn plan(
        &self,
        key: PlanKey,
        vector: u64,
        count: usize,
    ) -> Result<(Plan, Vec<Candidate>), CudaError> {
        let mut plan = self.describe(key, vector)?;
        let what = format!("planning {:?}", key.gemm);
        let found = self
            .ask(&plan, key, count)
            .map_err(|e| blas_err(&what, e))?;
        let heuristic = found[0];
        if heuristic.workspaceSize > self.workspace_bytes {
            return Err(CudaError::Blas {
                what,
                message: format!(
                    "the chosen algorithm wants {} bytes of workspace, {} are reserved",
                    heuristic.workspaceSize, self.workspace_bytes
                ),
            });
        }
        plan.algo = heuristic.algo;
        Ok((plan, self.runnable(&found)))
    }

    /// The heuristic's results that can run here, with their place in its order.
    fn runnable(&self, found: &[sys::cublasLtMatmulHeuristicResult_t]) -> Vec<Candidate> {
        let fits = |h: &sys::cublasLtMatmulHeuristicResult_t| {
            h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && h.workspaceSize <= self.workspace_bytes
        };
        let ranked = found.iter().enumerate().filter(|(_, h)| fits(h));
        ranked
            .map(|(rank, h)| Candidate { rank, algo: h.algo })
            .collect()
    }

    /// The descriptor and layouts of `key`'s product, its fold's vector at `vector` (no
    /// algorithm yet).
    unsafe fn describe(&self, key: PlanKey, vector: u64) -> Result<Plan, CudaError> {
        let g = key.gemm;
        let what = format!("planning {g:?}");
        let err = |e| blas_err(&what, e);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(err)?;
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // From here on `plan` owns what was made, and its drop frees it if a later call fails.
        use sys::cublasLtMatmulDescAttributes_t as A;
        let (ta, tb) = (i32::from(g.trans_a), i32::from(g.trans_b));
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &ta).map_err(err)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &tb).map_err(err)?;
        use sys::cublasLtEpilogue_t as E;
        let epi = match g.fold {
            Fold::None => None,
            Fold::Bias => Some(E::CUBLASLT_EPILOGUE_BIAS),
            Fold::BiasGrad => {
                let f32 = sys::cudaDataType::CUDA_R_32F;
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &f32).map_err(err)?;
                Some(E::CUBLASLT_EPILOGUE_BGRADB)
            }
        };
        if let Some(epi) = epi {
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi).map_err(err)?;
            // The heuristic reads the pointer's alignment.
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vector).map_err(err)?;
        }
        let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        plan.layouts[0] =
            lt::create_matrix_layout(bf16, a_rows, a_cols, g.lda as i64).map_err(err)?;
        plan.layouts[1] =
            lt::create_matrix_layout(bf16, b_rows, b_cols, g.ldb as i64).map_err(err)?;
        plan.layouts[2] =
            lt::create_matrix_layout(dtype(g.out), g.m, g.n, g.ldd as i64).map_err(err)?;
        Ok(plan)
    }

    /// Up to `count` of the heuristic's algorithms for `plan`'s product, for operands aligned as
    /// `key` says and the reserved workspace.
    unsafe fn ask(
        &self,
        plan: &Plan,
        key: PlanKey,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, lt::CublasError> {
        let pref = lt::create_matmul_pref()?;
        let found = (|| {
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let ws = self.workspace_bytes as u64;
            set_pref(pref, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws)?;
            let [a, b, d] = &key.align;
            set_pref(pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a)?;
            set_pref(pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b)?;
            set_pref(pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, d)?;
            set_pref(pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, d)?;
            heuristics(self.handle, plan.desc, &plan.layouts, pref, count)
        })();
        let _ = lt::destroy_matmul_pref(pref);
        found
    }
}

/// Up to `count` of the heuristic's algorithms for a product, best first by its estimate; the
/// first has succeeded (an error otherwise, as with none).
unsafe fn heuristics(
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: &[sys::cublasLtMatrixLayout_t; 3],
    pref: sys::cublasLtMatmulPreference_t,
    count: usize,
) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, lt::CublasError> {
    let mut found = vec![std::mem::zeroed::<sys::cublasLtMatmulHeuristicResult_t>(); count];
    let mut returned = 0;
    sys::cublasLtMatmulAlgoGetHeuristic(
        handle,
        desc,
        layouts[0],
        layouts[1],
        layouts[2],
        layouts[2],
        pref,
        count as i32,
        found.as_mut_ptr(),
        &mut returned,
    )
    .result()?;
    found.truncate(returned.max(0) as usize);
    match found.first() {
        None => Err(lt::CublasError(
            sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
        )),
        Some(first) => first.state.result().map(|()| found),
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: every handle was made by `Blas::describe` for this plan alone and is destroyed once,
        // here; a null handle was never made.
        unsafe {
            for &l in self.layouts.iter().filter(|l| !l.is_null()) {
                let _ = lt::destroy_matrix_layout(l);
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // The plans' descriptors go before the handle.
        self.plans.clear();
        // SAFETY: made by `new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Launcher<'_> {
    /// Runs `g` through `blas` on the launcher's stream (see [`Blas::matmul`]).
    ///
    /// # Safety
    /// As for [`Blas::matmul`].
    pub unsafe fn gemm(
        &self,
        blas: &mut Blas,
        g: Gemm,
        abd: (u64, u64, u64),
        beta: f32,
        vector: Option<u64>,
    ) -> Result<(), CudaError> {
        self.last_kernel.set("cublasLtMatmul");
        let mut product = || blas.matmul(self.stream, g, abd, beta, vector);
        match self.clock {
            Some(clock) => clock.time(self.stream, || g.label(beta), product)?,
            None => product()?,
        }
        if self.sync_each_launch {
            driver::stream::synchronize(self.stream)
                .map_err(|e| driver_err(&format!("cublasLtMatmul {g:?}"), e))?;
        }
        Ok(())
    }
}

impl CudaBackend {
    /// The bf16 matrix rate of this device in FLOP/s, and the size N it was measured at: the
    /// median of 10 timed N³ cuBLASLt products (bf16 in, f32 accumulate, bf16 out) on random
    /// operands, after 3 untimed ones. N is the first of 1024, 2048, 4096 and 8192 whose second
    /// product takes at least 5 ms, or 8192: an H200 takes ~1.4 ms for 8192³, so it is measured
    /// there, and a slow device (the host device) stops before its products take minutes. The
    /// first product of a process also loads cuBLASLt's kernels (over 5 ms at 1024³ on an H200,
    /// which then measured a tenth of its rate), so the size is judged by the second.
    /// Allocates up to 384 MiB for the call.
    pub fn matrix_rate(&mut self) -> Result<(f64, usize), CudaError> {
        const SIZES: [usize; 4] = [1024, 2048, 4096, 8192];
        const LONG_ENOUGH_S: f64 = 5e-3;
        for n in SIZES {
            let last = n == SIZES[SIZES.len() - 1];
            if let Some(rate) =
                self.square_product_rate(n, |first_s| last || first_s >= LONG_ENOUGH_S)?
            {
                return Ok((rate, n));
            }
        }
        unreachable!("the last size returns")
    }

    /// The rate of n³ products as [`CudaBackend::matrix_rate`] measures it, each product between
    /// two events, on operands uploaded once; None, after the second (untimed) product, when
    /// `enough` says its seconds are too few to measure at this size.
    fn square_product_rate(
        &mut self,
        n: usize,
        enough: impl Fn(f64) -> bool,
    ) -> Result<Option<f64>, CudaError> {
        const UNTIMED: usize = 3;
        const TIMED: usize = 10;
        self.bind();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let host: Vec<u16> = (0..n * n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bf16::from_f32((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_bits()
            })
            .collect();
        let mut bufs = Vec::new();
        for _ in 0..3 {
            bufs.push(self.alloc(n * n * 2)?);
        }
        let cu = self.stream.cu_stream();
        for b in &bufs[..2] {
            // SAFETY: `b` holds n² bf16; the host vector outlives the (staged) copy.
            unsafe { driver::memcpy_htod_async(b.ptr, &host, cu) }
                .map_err(|e| driver_err("uploading the operands", e))?;
        }
        let g = Gemm {
            m: n as u64,
            n: n as u64,
            k: n as u64,
            trans_a: false,
            trans_b: false,
            lda: n as u64,
            ldb: n as u64,
            ldd: n as u64,
            out: Dtype::Bf16,
            fold: Fold::None,
        };
        let (a, b, d) = (bufs[0].ptr, bufs[1].ptr, bufs[2].ptr);
        let mut times = Vec::with_capacity(UNTIMED + TIMED);
        for i in 0..UNTIMED + TIMED {
            let start = self
                .stream
                .record_event(Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_err("recording an event", e))?;
            // SAFETY: three n × n bf16 matrices.
            unsafe { self.blas.matmul(cu, g, (a, b, d), 0.0, None)? };
            let end = self
                .stream
                .record_event(Some(driver_sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_err("recording an event", e))?;
            end.synchronize()
                .map_err(|e| driver_err("timing the product", e))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| driver_err("timing the product", e))?;
            times.push(ms as f64 * 1e-3);
            if i == 1 && !enough(times[1]) {
                return Ok(None);
            }
        }
        let mut times = times.split_off(UNTIMED);
        times.sort_by(f64::total_cmp);
        Ok(Some(2.0 * (n as f64).powi(3) / times[times.len() / 2]))
    }
}
