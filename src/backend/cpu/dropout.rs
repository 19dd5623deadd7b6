//! Inverted dropout with a recomputed mask (see [`crate::backend::DropoutMask`]).

use crate::backend::DropoutMask;
use rayon::prelude::*;

/// Elements per rayon task: whole Philox blocks of four, and enough work to amortise a task.
const CHUNK: usize = 4096;

/// `out[i] = a[i] · scale(i)`, or `out[i] += …` with `accumulate`.
fn masked(a: &[f32], out: &mut [f32], d: DropoutMask, accumulate: bool) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut scales = [0.0f32; CHUNK];
        let scales = &mut scales[..out.len()];
        d.scales(c * CHUNK, scales);
        let a = &a[c * CHUNK..c * CHUNK + out.len()];
        for ((o, &x), &s) in out.iter_mut().zip(a).zip(scales.iter()) {
            *o = if accumulate { *o + x * s } else { x * s };
        }
    });
}

/// `y = x · scale(i)`: each element is zeroed with probability `p` or scaled by 1/(1−p).
/// `x` and `y` have the same length; the mask at `i` is a pure function of `(seed, site, i)`.
pub fn forward(x: &[f32], y: &mut [f32], d: DropoutMask) {
    masked(x, y, d, false);
}

/// `dx += dy · scale(i)`, with the mask [`forward`] used for the same `d` (recomputed, not stored).
pub fn backward(dy: &[f32], dx: &mut [f32], d: DropoutMask) {
    masked(dy, dx, d, true);
}

#[cfg(test)]
mod tests {
    use crate::backend::Dropout;

    #[test]
    fn a_slice_of_a_batch_draws_its_part_of_the_whole_batch_mask() {
        let d = Dropout { p: 0.5, site: 3 };
        let mut whole = vec![0.0; 4096];
        d.mask(77, 0).scales(0, &mut whole);
        // A slice whose first element is element 1234 of the whole (not a multiple of 4).
        let mut part = vec![0.0; 1000];
        d.mask(77, 1234).scales(0, &mut part);
        assert_eq!(part, whole[1234..2234]);
        // Blocks past 2^32 (elements past 2^34) are new blocks, not the first ones again.
        let mut far = vec![0.0; 64];
        d.mask(77, 1 << 34).scales(0, &mut far);
        assert_ne!(far, whole[..64]);
    }
}
