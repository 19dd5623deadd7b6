//! Linear layers with a fused bias and optional exact (erf) GELU.

use super::matmul::{matmul, MatLayout, Threads};
use crate::backend::LinearDims;
use rayon::prelude::*;

const SQRT_2: f32 = std::f32::consts::SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The exact GELU, `x·Φ(x)`, as BERT and ELECTRA use it.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / SQRT_2))
}

/// `d gelu / dx = Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x / SQRT_2));
    cdf + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

/// `y = x·wᵀ + b`; with `pre`, the affine result goes to `pre` and `y = gelu(pre)`.
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    pre: Option<&mut [f32]>,
    d: LinearDims,
) {
    let n = d.rows * d.out;
    let affine = |out: &mut [f32]| {
        matmul(
            out,
            MatLayout::row_major(d.rows, d.out),
            (x, MatLayout::row_major(d.rows, d.inp)),
            (w, MatLayout::row_major(d.out, d.inp).t()),
            false,
            Threads::Pool,
        );
        if let Some(b) = b {
            out[..n]
                .par_chunks_mut(d.out)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(v, bias)| *v += bias));
        }
    };
    match pre {
        Some(pre) => {
            affine(pre);
            y[..n]
                .par_iter_mut()
                .zip(&pre[..n])
                .for_each(|(y, &p)| *y = gelu(p));
        }
        None => affine(y),
    }
}

/// Turns `dy` into the pre-activation's gradient: `dpre = dy · gelu'(pre)`.
pub fn gelu_backward(pre: &[f32], dy: &[f32], dpre: &mut [f32]) {
    dpre.par_iter_mut()
        .zip(dy.par_iter().zip(pre))
        .for_each(|(d, (&g, &p))| *d = g * gelu_grad(p));
}

/// `dx += dy·w`, `dw += dyᵀ·x`, `db += Σ_rows dy`.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    d: LinearDims,
) {
    matmul(
        dx,
        MatLayout::row_major(d.rows, d.inp),
        (dy, MatLayout::row_major(d.rows, d.out)),
        (w, MatLayout::row_major(d.out, d.inp)),
        true,
        Threads::Pool,
    );
    matmul(
        dw,
        MatLayout::row_major(d.out, d.inp),
        (dy, MatLayout::row_major(d.rows, d.out).t()),
        (x, MatLayout::row_major(d.rows, d.inp)),
        true,
        Threads::Pool,
    );
    if let Some(db) = db {
        // Column sums in row order, so the result does not depend on the thread count.
        for row in dy[..d.rows * d.out].chunks(d.out) {
            db.iter_mut().zip(row).for_each(|(acc, g)| *acc += g);
        }
    }
}
