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
//!   The model only ever uses whole bf16 buffers and prefixes; the attention's f32 saved values
//!   hold the log-sum-exp and, after it ([`Buf::range`](crate::backend::Buf::range)), the
//!   dropout mask as u32 bits. The price is that activations take
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

use cudarc::driver::{result, sys, CudaSlice, CudaStream, DevicePtr, DriverError};
use half::bf16;

use super::optim::params_to_bf16;
use super::{act_index, CudaBackend};
use crate::backend::{Buf, IBuf, Space};

/// The element type of an activation buffer.
pub use super::launch_args::Dtype;

/// Where the first value of `b`, read as `dtype`, lies from the start of the allocation that
/// holds it, in bytes: `2·offset` in the bf16 copy of the parameters, `4·offset` everywhere else
/// (f32 values, and the 4-byte slots of activations of either type). Allocations start at
/// multiples of 256 bytes (cuMemAlloc's guarantee), so this decides each operand's alignment.
pub fn byte_offset(b: Buf, dtype: Dtype) -> u64 {
    match (b.space, dtype) {
        (Space::Param, Dtype::Bf16) => 2 * b.offset as u64,
        _ => 4 * b.offset as u64,
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

    /// The type of the buffer recorded at `offset` if that record covers `len` values.
    pub fn covering(&self, offset: usize, len: usize) -> Option<Dtype> {
        self.map
            .get(&offset)
            .and_then(|&(have, d)| (have >= len).then_some(d))
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

/// Addresses of buffers, the element types of activations, and copies between host and device.
impl CudaBackend {
    pub(super) fn space_len(&self, space: Space) -> usize {
        match space {
            Space::Act | Space::ActGrad => self.sizes.acts,
            Space::GradSum => self.sizes.grad_sum,
            _ => self.sizes.params,
        }
    }

    /// The address of value 0 of `b` (4-byte values or slots).
    pub(super) fn addr(&self, b: Buf) -> u64 {
        assert!(
            b.end() <= self.space_len(b.space),
            "{b:?} is out of its space"
        );
        self.spaces[b.space.index()].ptr + byte_offset(b, Dtype::F32)
    }

    pub(super) fn iaddr(&self, b: IBuf) -> u64 {
        assert!(
            b.offset + b.len <= self.sizes.ints,
            "{b:?} is out of the int space"
        );
        self.ints.ptr + 4 * b.offset as u64
    }

    /// The bf16 copy of a parameter buffer.
    pub(super) fn bf16_param(&self, b: Buf) -> u64 {
        assert_eq!(b.space, Space::Param, "{b:?} is not a parameter");
        assert!(b.end() <= self.sizes.params, "{b:?} is out of its space");
        self.params_bf16.ptr + byte_offset(b, Dtype::Bf16)
    }

    pub(super) fn tag_of(&self, b: Buf) -> Option<Dtype> {
        act_index(b.space).and_then(|i| self.tags[i].get(b.offset))
    }

    /// An input a kernel reads as `want`: an activation (converted in place, through the host,
    /// if it holds the other type), a parameter (its bf16 copy for a bf16 input), or an f32
    /// gradient or moment.
    pub(super) fn input(&mut self, b: Buf, want: Dtype) -> u64 {
        match (b.space, want) {
            (Space::Act | Space::ActGrad, _) => {
                self.conform(b, want);
                self.addr(b)
            }
            (Space::Param, Dtype::Bf16) => self.bf16_param(b),
            (_, Dtype::F32) => self.addr(b),
            (space, Dtype::Bf16) => {
                panic!("{b:?}: the CUDA backend has no bf16 view of {space:?} buffers")
            }
        }
    }

    /// An output a kernel writes as `dtype`, overwriting or (`accumulate`) adding to it.
    pub(super) fn output(&mut self, b: Buf, dtype: Dtype, accumulate: bool) -> u64 {
        match (act_index(b.space), dtype, b.space) {
            (Some(i), _, _) => {
                if accumulate {
                    self.conform(b, dtype);
                }
                let addr = self.addr(b);
                self.tags[i].set(b.offset, b.len, dtype);
                addr
            }
            (None, Dtype::F32, Space::Grad | Space::AdamM | Space::AdamV | Space::GradSum) => {
                self.addr(b)
            }
            _ => panic!(
                "{b:?}: the CUDA kernels write {dtype:?} activations or f32 gradients, not this \
                 buffer"
            ),
        }
    }

    /// Makes the activation `b` hold `want`, converting what it holds through the host.
    pub(super) fn conform(&mut self, b: Buf, want: Dtype) {
        let Some(i) = act_index(b.space) else { return };
        match self.tags[i].get(b.offset) {
            Some(have) if have != want => {
                let mut v = vec![0.0f32; b.len];
                self.read_as(b, have, &mut v);
                self.write_as(b, want, &v);
                self.tags[i].set(b.offset, b.len, want);
            }
            _ => {}
        }
    }

    pub(super) fn read_as(&self, b: Buf, dtype: Dtype, dst: &mut [f32]) {
        let addr = self.addr(b);
        match dtype {
            // SAFETY: `b` is in bounds.
            Dtype::F32 => unsafe { self.read_back(addr, dst, format_args!("{b:?}")) },
            Dtype::Bf16 => {
                let mut raw = vec![0u16; dst.len()];
                // SAFETY: as above, bf16 values in the first half of the buffer's slots.
                unsafe { self.read_back(addr, &mut raw, format_args!("{b:?}")) };
                for (d, r) in dst.iter_mut().zip(raw) {
                    *d = bf16::from_bits(r).to_f32();
                }
            }
        }
    }

    pub(super) fn write_as(&mut self, b: Buf, dtype: Dtype, src: &[f32]) {
        let addr = self.addr(b);
        let cu = self.stream.cu_stream();
        // Copies from pageable memory return once the data is staged, so the host buffers may be
        // reused at once.
        match dtype {
            Dtype::F32 => unsafe { result::memcpy_htod_async(addr, src, cu) },
            Dtype::Bf16 => {
                self.host16.clear();
                self.host16
                    .extend(src.iter().map(|&v| bf16::from_f32(v).to_bits()));
                // SAFETY: `b` is in bounds and has room for its values in either type.
                unsafe { result::memcpy_htod_async(addr, &self.host16, cu) }
            }
        }
        .unwrap_or_else(|e| panic!("CUDA: writing {b:?}: {e}"));
    }

    /// Refreshes the bf16 copy of the parameters `b`.
    pub(super) fn refresh_bf16(&mut self, b: Buf) {
        if b.len == 0 {
            return;
        }
        let (src, dst) = (self.addr(b), self.bf16_param(b));
        // SAFETY: `b` is in the parameter space and its bf16 copy.
        Self::launched(unsafe { params_to_bf16(&self.launcher(), src, dst, b.len) });
    }

    pub(super) fn memset32(&self, addr: u64, bits: u32, count: usize) {
        if count == 0 {
            return;
        }
        // SAFETY: the callers pass in-bounds, 4-byte aligned ranges.
        unsafe { sys::cuMemsetD32Async(addr, bits, count, self.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA: cuMemsetD32Async: {e}"));
    }

    pub(super) fn memset16(&self, addr: u64, bits: u16, count: usize) {
        if count == 0 {
            return;
        }
        // SAFETY: the callers pass in-bounds, 2-byte aligned ranges.
        unsafe { sys::cuMemsetD16Async(addr, bits, count, self.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA: cuMemsetD16Async: {e}"));
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
        // What a zero fill may take as one buffer's type: a record at its start, long enough.
        assert_eq!(t.covering(0, 4), Some(Dtype::Bf16));
        assert_eq!(t.covering(0, 5), None);
        assert_eq!(t.covering(1, 2), None);
    }
}
