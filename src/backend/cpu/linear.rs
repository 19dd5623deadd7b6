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

/// `y = x·wᵀ + b`, rows of `y` `y_stride` values apart (the rest of each row is left as it was);
/// with `pre`, the affine result goes to `pre` and `y = gelu(pre)` (then `y_stride` is `out`).
pub fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    pre: Option<&mut [f32]>,
    d: LinearDims,
    y_stride: usize,
) {
    assert!(
        pre.is_none() || y_stride == d.out,
        "linear: a GELU layer's output is not padded"
    );
    let y_layout = MatLayout {
        row_stride: y_stride,
        ..MatLayout::row_major(d.rows, d.out)
    };
    let n = d.rows * d.out;
    let affine = |out: &mut [f32]| {
        matmul(
            out,
            y_layout,
            (x, MatLayout::row_major(d.rows, d.inp)),
            (w, MatLayout::row_major(d.out, d.inp).t()),
            false,
            Threads::Pool,
        );
        if let Some(b) = b {
            out.par_chunks_mut(y_stride)
                .take(d.rows)
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

/// `dx += dy·w`, `dw += dyᵀ·x`, `db += Σ_rows dy`, with `dy` given as its values and the
/// distance between its rows (the forward's `y_stride`).
pub fn backward(
    x: &[f32],
    w: &[f32],
    (dy, y_stride): (&[f32], usize),
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    d: LinearDims,
) {
    let dy_layout = MatLayout {
        row_stride: y_stride,
        ..MatLayout::row_major(d.rows, d.out)
    };
    matmul(
        dx,
        MatLayout::row_major(d.rows, d.inp),
        (dy, dy_layout),
        (w, MatLayout::row_major(d.out, d.inp)),
        true,
        Threads::Pool,
    );
    matmul(
        dw,
        MatLayout::row_major(d.out, d.inp),
        (dy, dy_layout.t()),
        (x, MatLayout::row_major(d.rows, d.inp)),
        true,
        Threads::Pool,
    );
    if let Some(db) = db {
        // Column sums in row order, so the result does not depend on the thread count.
        for row in dy.chunks(y_stride).take(d.rows) {
            db.iter_mut().zip(row).for_each(|(acc, g)| *acc += g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin()).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// `rows` rows of `width` values from `v`, `stride` apart, the padding NaN.
    fn pad(v: &[f32], width: usize, stride: usize) -> Vec<f32> {
        v.chunks(width)
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(f32::NAN, stride - width))
            })
            .collect()
    }

    /// The generator's logits have rows padded to 16 bytes: a padded output holds the dense
    /// result's bits and its padding is never written, and the padding of a padded gradient (NaN
    /// here) reaches neither dx, dw nor db.
    #[test]
    fn padded_output_rows_give_the_dense_results_bit_for_bit() {
        let d = LinearDims {
            rows: 5,
            inp: 7,
            out: 11,
        };
        let (x, w, b) = (values(35, 0.37), values(77, 0.11), values(11, 0.7));
        let mut dense = vec![0.0; 55];
        forward(&x, &w, Some(&b), &mut dense, None, d, 11);
        let mut padded = vec![f32::NAN; 5 * 16];
        forward(&x, &w, Some(&b), &mut padded, None, d, 16);
        assert_eq!(bits(&padded), bits(&pad(&dense, 11, 16)));

        let dy = values(55, 0.23);
        let grads = |dy: &[f32], stride| {
            let (mut dx, mut dw, mut db) = (vec![0.0; 35], vec![0.0; 77], vec![0.0; 11]);
            backward(&x, &w, (dy, stride), &mut dx, &mut dw, Some(&mut db), d);
            [dx, dw, db].map(|g| bits(&g))
        };
        assert_eq!(grads(&dy, 11), grads(&pad(&dy, 11, 16), 16));
    }
}
