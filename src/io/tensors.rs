//! Reading and writing named tensors in safetensors files.

use super::{write_atomic, IoError};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// A tensor read from a file, widened to f64 (floats) or i64 (integers).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// F32, F64, F16 or BF16 values, converted exactly to f64.
    Float(Vec<f64>),
    /// I64 or I32 values.
    Int(Vec<i64>),
}

/// A named tensor's shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The element type in the file (the values are widened from it).
    pub dtype: Dtype,
    /// Dimensions, outermost first; the values are row-major in this shape.
    pub shape: Vec<usize>,
    /// The elements, as many as the product of `shape`.
    pub values: Values,
}

impl Tensor {
    /// The values as f32, if the tensor holds floats.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.values {
            Values::Float(v) => Some(v.iter().map(|&x| x as f32).collect()),
            Values::Int(_) => None,
        }
    }

    /// Its element type and shape, as an error message shows what a file holds: `I32 [64, 32]`.
    pub fn describe(&self) -> String {
        format!("{:?} {:?}", self.dtype, self.shape)
    }

    /// The values as i64, if the tensor holds integers.
    pub fn as_ints(&self) -> Option<&[i64]> {
        match &self.values {
            Values::Int(v) => Some(v),
            Values::Float(_) => None,
        }
    }
}

fn widen<T: bytemuck::Pod, U>(bytes: &[u8], f: impl Fn(T) -> U) -> Vec<U> {
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        .map(|c| f(bytemuck::pod_read_unaligned::<T>(c)))
        .collect()
}

/// Every tensor of a safetensors file, by name.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    parse_tensors(path, &bytes)
}

/// Every tensor of the safetensors `bytes` read from `path`, by name.
pub fn parse_tensors(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, IoError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| IoError::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Values::Float(widen::<f32, f64>(data, f64::from)),
            Dtype::F64 => Values::Float(widen::<f64, f64>(data, |x| x)),
            Dtype::F16 => Values::Float(widen::<u16, f64>(data, |b| {
                half::f16::from_bits(b).to_f64()
            })),
            Dtype::BF16 => Values::Float(widen::<u16, f64>(data, |b| {
                half::bf16::from_bits(b).to_f64()
            })),
            Dtype::I64 => Values::Int(widen::<i64, i64>(data, |x| x)),
            Dtype::I32 => Values::Int(widen::<i32, i64>(data, i64::from)),
            other => {
                return Err(IoError::format(
                    path,
                    format!(
                    "tensor `{name}` has dtype {other:?}; expected F32, F64, F16, BF16, I64 or I32"
                ),
                ))
            }
        };
        out.insert(
            name,
            Tensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Writes f32 tensors to a safetensors file atomically; returns the [`checksum`] of the bytes
/// written, for a record that can tell later whether the file is still what was written.
pub fn write_f32_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<u32, IoError> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| IoError::format(path, format!("tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_, IoError>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| IoError::format(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(checksum(&bytes))
}

/// The CRC-32 of a file's bytes: what the engine records of the files it writes and later
/// trusts, to tell a flipped byte (a bad disk, a torn copy) from the file it wrote.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
