//! What timing the heuristic's candidate algorithms of a matrix product found
//! (`ELECTRA_GEMM_TUNE=1`), shared with the stub that stands in for the CUDA backend in builds
//! without the `cuda` feature.

/// One product shape's timing: each of cuBLASLt's candidates run on the product's operands, the
/// fastest kept for the rest of the process.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmTuning {
    /// The product as the kernel table names it (with the β of its first call, which the
    /// timing used).
    pub label: String,
    /// How many of the heuristic's candidates were timed: those it named (up to 8) that can run
    /// here.
    pub candidates: usize,
    /// The fastest one's place in the heuristic's order (0: the heuristic's own first choice,
    /// which an untuned process takes).
    pub chosen: usize,
    /// Seconds per product of the heuristic's first choice (NaN if it failed to run).
    pub first_s: f64,
    /// Seconds per product of the fastest.
    pub chosen_s: f64,
}
