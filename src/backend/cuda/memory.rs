//! Device memory of the CUDA backend: one allocation per space, the element type of each
//! activation buffer, and the scratch that reductions and the embedding sort need.
//!
//! # Layout
//! - `Param`, `Grad`, `AdamM`, `AdamV`: f32, value `i` at byte `4·i` of the space's allocation.
//!   Beside them, a bf16 copy of the parameters (value `i` at byte `2·i`) that the matrix products
//!   read; every write of the parameters (host writes, fills, AdamW) refreshes it.
//! - `Act`, `ActGrad`: one 4-byte slot per value, so a [`Buf`](crate::backend::Buf)'s offset and
//!   length keep their meaning, and each buffer holds either element type in its own slots:
//!   - f32 buffers (LayerNorm `rstd`, the attention log-sum-exp and `delta`, losses, labels, the
//!     one-column discriminator logits and their gradient, the embedding backward's f32 scratch)
//!     put value `i` at byte `4·(offset + i)`;
//!   - bf16 buffers (every other activation and activation gradient) put value `i` at byte
//!     `4·offset + 2·i`, the first half of the buffer's slots.
//!
//!   A bf16 buffer is therefore addressed from its own start: it may be used whole or through
//!   [`Buf::prefix`](crate::backend::Buf::prefix), never through a view that starts inside it.
//!   The model only ever uses whole buffers and prefixes. The price is that activations take
//!   4 bytes a value instead of 2; the arena aligns every buffer to 16 bytes
//!   ([`ACT_ALIGN`](crate::tape::ACT_ALIGN)).
//! - Integers: u32, value `i` at byte `4·i`.
//!
//! # Element types of activation buffers
//! Which type a buffer holds is decided by the operation that writes it, and recorded by offset
//! in [`Tags`]. Host reads convert from the recorded type; host writes use it (f32 for a buffer
//! nothing has written yet). An operation that finds an input recorded with the other type (a
//! host-written f32 buffer that a kernel reads as bf16, in tests) converts it in place through
//! the host once; training never does.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};

/// The element type of an activation buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F32,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// One device allocation, zeroed when made, with its raw address.
pub struct DeviceBuf {
    // Keeps the allocation alive; freed (stream-ordered) on drop.
    _slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceBuf {
    /// Allocates `bytes` (at least 256, so that no allocation is empty) and zeroes them.
    pub fn zeroed(stream: &Arc<CudaStream>, bytes: usize) -> Result<Self, DriverError> {
        let slice = stream.alloc_zeros::<u8>(bytes.max(256))?;
        // Event tracking is off (the backend turns it off before allocating), so the guard that
        // `device_ptr` returns records nothing.
        let ptr = slice.device_ptr(stream).0;
        Ok(DeviceBuf {
            _slice: slice,
            ptr,
            bytes,
        })
    }
}

/// The recorded element type of each written activation buffer, keyed by its offset.
#[derive(Debug, Default)]
pub struct Tags {
    map: BTreeMap<usize, (usize, Dtype)>,
}

impl Tags {
    /// The type of the buffer that starts at `offset`, if an operation or a host write recorded
    /// one.
    pub fn get(&self, offset: usize) -> Option<Dtype> {
        self.map.get(&offset).map(|&(_, d)| d)
    }

    /// Records that `[offset, offset + len)` now holds `dtype`, forgetting what overlapped it.
    /// Re-recording a buffer already known (every step after the first) allocates nothing.
    pub fn set(&mut self, offset: usize, len: usize, dtype: Dtype) {
        if let Some((&start, entry)) = self.map.range_mut(..offset).next_back() {
            if start + entry.0 > offset {
                entry.0 = offset - start;
            }
        }
        if len > 1 {
            while let Some((&start, _)) = self.map.range(offset + 1..offset + len).next() {
                self.map.remove(&start);
            }
        }
        self.map.insert(offset, (len, dtype));
    }

    /// Forgets every buffer that starts at or past `len` (the space shrank).
    pub fn truncate(&mut self, len: usize) {
        self.map.retain(|&start, _| start < len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_latest_write() {
        let mut t = Tags::default();
        t.set(0, 8, Dtype::Bf16);
        t.set(8, 4, Dtype::F32);
        assert_eq!(t.get(0), Some(Dtype::Bf16));
        assert_eq!(t.get(8), Some(Dtype::F32));
        // A prefix write keeps the key; a longer buffer over both replaces them.
        t.set(0, 2, Dtype::F32);
        assert_eq!(t.get(0), Some(Dtype::F32));
        t.set(0, 12, Dtype::Bf16);
        assert_eq!(t.get(8), None);
        // A buffer starting inside another shortens it.
        t.set(4, 4, Dtype::F32);
        assert_eq!(t.map[&0].0, 4);
        t.truncate(4);
        assert_eq!(t.get(4), None);
        assert_eq!(t.get(0), Some(Dtype::Bf16));
    }
}
