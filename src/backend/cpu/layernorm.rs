//! LayerNorm over rows, optionally of a residual sum, saving the normalised input and 1/σ.

use rayon::prelude::*;

/// A LayerNorm's parameters as host slices: gain and bias, `[width]` each (their length is the
/// width), and the eps added to the variance.
pub struct Norm<'a> {
    /// The per-feature scale.
    pub gain: &'a [f32],
    /// The per-feature shift.
    pub bias: &'a [f32],
    /// 1e-12 in ELECTRA.
    pub eps: f32,
}

/// What [`forward`] saved: the normalised input `[rows, width]` and 1/σ of each row.
pub struct Saved<'a> {
    /// `(x − mean)·rstd`.
    pub xhat: &'a [f32],
    /// One value per row; its length is the row count.
    pub rstd: &'a [f32],
}

/// Where the backward pass accumulates the parameters' gradients, `[width]` each.
pub struct NormGrads<'a> {
    /// The gain's gradient.
    pub gain: &'a mut [f32],
    /// The bias's gradient.
    pub bias: &'a mut [f32],
}

/// `y = LN(x + residual)·gain + bias` over `rstd.len()` rows, saving `xhat` and `rstd`.
pub fn forward(
    x: &[f32],
    residual: Option<&[f32]>,
    norm: &Norm,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let Norm { gain, bias, eps } = *norm;
    let (rows, width) = (rstd.len(), gain.len());
    y[..rows * width]
        .par_chunks_mut(width)
        .zip(xhat[..rows * width].par_chunks_mut(width))
        .zip(rstd.par_iter_mut())
        .enumerate()
        .for_each(|(r, ((y, xh), rs))| {
            let xr = &x[r * width..(r + 1) * width];
            for (i, v) in xh.iter_mut().enumerate() {
                *v = xr[i] + residual.map_or(0.0, |res| res[r * width + i]);
            }
            normalize_row(xh, rs, eps);
            for i in 0..width {
                y[i] = xh[i] * gain[i] + bias[i];
            }
        });
}

/// Normalises `row` in place to zero mean and unit variance (biased, as torch does) and stores 1/σ.
pub fn normalize_row(row: &mut [f32], rstd: &mut f32, eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    *rstd = 1.0 / (var + eps).sqrt();
    row.iter_mut().for_each(|v| *v = (*v - mean) * *rstd);
}

/// `dx += LN'ᵀ·dy` (and the same into `dresidual`), `dgain += Σ dy·xhat`, `dbias += Σ dy`.
pub fn backward(
    dy: &[f32],
    gain: &[f32],
    saved: Saved,
    dx: &mut [f32],
    dresidual: Option<&mut [f32]>,
    grads: NormGrads,
) {
    let Saved { xhat, rstd } = saved;
    let (rows, width) = (rstd.len(), gain.len());
    let n = width as f32;
    // The residual's gradient equals the input's, so one row computation feeds both.
    let row_grad = |r: usize, dx: &mut [f32], dres: Option<&mut [f32]>| {
        let dy = &dy[r * width..(r + 1) * width];
        let xh = &xhat[r * width..(r + 1) * width];
        let (mut mean_g, mut mean_gx) = (0.0f32, 0.0f32);
        for i in 0..width {
            let g = dy[i] * gain[i];
            mean_g += g;
            mean_gx += g * xh[i];
        }
        mean_g /= n;
        mean_gx /= n;
        let mut dres = dres;
        for i in 0..width {
            let g = rstd[r] * (dy[i] * gain[i] - mean_g - xh[i] * mean_gx);
            dx[i] += g;
            if let Some(dres) = dres.as_deref_mut() {
                dres[i] += g;
            }
        }
    };
    let dx = dx[..rows * width].par_chunks_mut(width);
    match dresidual {
        Some(dres) => dx
            .zip(dres[..rows * width].par_chunks_mut(width))
            .enumerate()
            .for_each(|(r, (dx, dres))| row_grad(r, dx, Some(dres))),
        None => dx.enumerate().for_each(|(r, dx)| row_grad(r, dx, None)),
    }
    for r in 0..rows {
        let dy = &dy[r * width..(r + 1) * width];
        let xh = &xhat[r * width..(r + 1) * width];
        for i in 0..width {
            grads.gain[i] += dy[i] * xh[i];
            grads.bias[i] += dy[i];
        }
    }
}
