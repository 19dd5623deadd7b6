//! Putting parameters on a backend for training: one path for pretraining's
//! [`Trainer`](super::Trainer) and fine-tuning's classifier.

use crate::backend::{Backend, Buf, OutOfMemory, Sizes, Space};

/// Reserves room for `values.len()` parameters on `backend` (no activations yet), writes `values`
/// into [`Space::Param`] and zeroes their gradients and Adam moments, so the first optimizer step
/// starts from nothing. Fails only when the backend has no room for them.
pub fn place_parameters<B: Backend>(backend: &mut B, values: &[f32]) -> Result<(), OutOfMemory> {
    backend.reserve(Sizes {
        params: values.len(),
        ..Sizes::default()
    })?;
    let all = Buf {
        space: Space::Param,
        offset: 0,
        len: values.len(),
    };
    backend.write(all, values);
    for space in [Space::Grad, Space::AdamM, Space::AdamV] {
        backend.fill(all.in_space(space), 0.0);
    }
    Ok(())
}
