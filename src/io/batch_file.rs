//! Batch files for `electra loss`: the layout of the HF fixture's `batch.safetensors`.
//!
//! Integer tensors of shape `[batch, seq]`: `input_ids`, `attention_mask`, `token_type_ids`,
//! `chosen` (1 at the positions to predict), `masked_input_ids` (the generator's input), and
//! optionally `replaced_input_ids` (the discriminator's input, for `--replacement given`).

use super::tensors::read_tensors;
use super::IoError;
use crate::data::Batch;
use crate::train::Masking;
use std::path::Path;

/// A batch, its masking, and the given replacements if the file has them.
pub struct BatchFile {
    /// `input_ids`, `token_type_ids` and `attention_mask`, checked to agree in shape.
    pub batch: Batch,
    /// The positions where `chosen` is 1 (never padding, at least one) and `masked_input_ids`.
    pub masking: Masking,
    /// `replaced_input_ids`, `[batch·seq]` row-major, when the file has it; ids are not yet
    /// checked against a vocabulary.
    pub replaced: Option<Vec<u32>>,
}

/// Reads and checks a batch file.
pub fn read_batch_file(path: &Path) -> Result<BatchFile, IoError> {
    let mut tensors = read_tensors(path)?;
    let mut shape: Option<Vec<usize>> = None;
    let mut take = |name: &str, required: bool| -> Result<Option<Vec<u32>>, IoError> {
        let Some(t) = tensors.remove(name) else {
            return if required {
                Err(IoError::format(path, format!("missing tensor `{name}`")))
            } else {
                Ok(None)
            };
        };
        if t.shape.len() != 2 {
            return Err(IoError::format(
                path,
                format!("`{name}` has shape {:?}, expected [batch, seq]", t.shape),
            ));
        }
        match &shape {
            Some(s) if *s != t.shape => {
                return Err(IoError::format(
                    path,
                    format!(
                        "`{name}` has shape {:?}, expected {s:?} like the others",
                        t.shape
                    ),
                ))
            }
            _ => shape = Some(t.shape.clone()),
        }
        let Some(ints) = t.as_ints() else {
            return Err(IoError::format(
                path,
                format!("`{name}` must hold integers (I64 or I32)"),
            ));
        };
        let out: Result<Vec<u32>, _> = ints.iter().map(|&v| u32::try_from(v)).collect();
        out.map(Some).map_err(|_| {
            IoError::format(
                path,
                format!("`{name}` holds a negative or too large value"),
            )
        })
    };
    let input_ids = take("input_ids", true)?.unwrap_or_default();
    let attention_mask = take("attention_mask", true)?.unwrap_or_default();
    let token_types = take("token_type_ids", true)?.unwrap_or_default();
    let chosen = take("chosen", true)?.unwrap_or_default();
    let masked_ids = take("masked_input_ids", true)?.unwrap_or_default();
    let replaced = take("replaced_input_ids", false)?;
    let dims = shape.unwrap_or_default();
    let batch = Batch {
        batch: dims[0],
        seq: dims[1],
        input_ids,
        token_types,
        attention_mask,
    };
    batch.validate().map_err(|m| IoError::format(path, m))?;
    if chosen.iter().any(|&c| c > 1) {
        return Err(IoError::format(path, "`chosen` must hold only 0 and 1"));
    }
    let positions: Vec<u32> = (0..chosen.len() as u32)
        .filter(|&i| chosen[i as usize] == 1)
        .collect();
    if positions.is_empty() {
        return Err(IoError::format(path, "`chosen` selects no position"));
    }
    if let Some(&p) = positions
        .iter()
        .find(|&&p| batch.attention_mask[p as usize] == 0)
    {
        return Err(IoError::format(
            path,
            format!("`chosen` selects padding at flat position {p}"),
        ));
    }
    Ok(BatchFile {
        batch,
        masking: Masking {
            positions,
            masked_ids,
        },
        replaced,
    })
}
