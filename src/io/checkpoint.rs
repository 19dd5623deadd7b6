//! Checkpoints: `checkpoints/step-N/` with `model.safetensors` (HF names, prefixed by network),
//! `optimizer.safetensors` (Adam moments) and `state.json` (step and data cursor).
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place only once every
//! file is on disk, so a crash or a kill mid-write leaves the previous checkpoints untouched and
//! never a half-written `step-N`.

use super::tensors::{read_tensors, write_f32_tensors};
use super::IoError;
use crate::model::params::ParamLayout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What, besides the tensors, a resumed run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the batcher stands (its serialised cursor).
    pub data_cursor: serde_json::Value,
    /// Training time so far, in seconds, so that resumed metrics continue the clock.
    pub elapsed_s: f64,
}

/// The tensors of a checkpoint, as flat buffers in the layout's order.
pub struct CheckpointData {
    /// Parameter values, `layout.len()` long (`model.safetensors`).
    pub params: Vec<f32>,
    /// Adam's first moments, in the same layout (`adam_m.<name>` in `optimizer.safetensors`).
    pub adam_m: Vec<f32>,
    /// Adam's second moments, in the same layout (`adam_v.<name>` in `optimizer.safetensors`).
    pub adam_v: Vec<f32>,
    /// `state.json`; its `step` names the folder.
    pub state: TrainingState,
}

fn named(layout: &ParamLayout, prefix: &str, flat: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    layout
        .params
        .iter()
        .map(|p| {
            let name = format!("{prefix}{}", p.name);
            (
                name,
                p.shape.clone(),
                flat[p.buf.offset..p.buf.end()].to_vec(),
            )
        })
        .collect()
}

/// Reads `prefixes.len()` flat buffers from one file, which must hold exactly those tensors.
fn unnamed<const N: usize>(
    layout: &ParamLayout,
    prefixes: [&str; N],
    file: &Path,
) -> Result<[Vec<f32>; N], IoError> {
    let tensors = read_tensors(file)?;
    let expected = N * layout.params.len();
    if tensors.len() != expected {
        return Err(IoError::format(
            file,
            format!(
                "holds {} tensors, expected {expected} for this model",
                tensors.len()
            ),
        ));
    }
    let mut out = [(); N].map(|_| vec![]);
    for (flat, prefix) in out.iter_mut().zip(prefixes) {
        *flat = read_flat(layout, prefix, &tensors, file)?;
    }
    Ok(out)
}

fn read_flat(
    layout: &ParamLayout,
    prefix: &str,
    tensors: &std::collections::BTreeMap<String, super::tensors::Tensor>,
    file: &Path,
) -> Result<Vec<f32>, IoError> {
    let mut flat = vec![0.0f32; layout.len()];
    for p in &layout.params {
        let name = format!("{prefix}{}", p.name);
        let t = tensors
            .get(&name)
            .ok_or_else(|| IoError::format(file, format!("missing tensor `{name}`")))?;
        match t.to_f32() {
            Some(v) if t.shape == p.shape => flat[p.buf.offset..p.buf.end()].copy_from_slice(&v),
            _ => {
                return Err(IoError::format(
                    file,
                    format!(
                        "`{name}` is {:?}, expected a float tensor of {:?}",
                        t.shape, p.shape
                    ),
                ))
            }
        }
    }
    Ok(flat)
}

/// The folder of the checkpoint at `step`.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step}"))
}

/// Writes a checkpoint atomically, then deletes all but the newest `keep` checkpoints.
pub fn save(
    run_dir: &Path,
    layout: &ParamLayout,
    data: &CheckpointData,
    keep: usize,
) -> Result<PathBuf, IoError> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| IoError::io(&root, e))?;
    let final_dir = step_dir(run_dir, data.state.step);
    let tmp = root.join(super::tmp_name(&format!("step-{}", data.state.step)));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| IoError::io(&tmp, e))?;
    write_f32_tensors(
        &tmp.join("model.safetensors"),
        &named(layout, "", &data.params),
        None,
    )?;
    let mut moments = named(layout, "adam_m.", &data.adam_m);
    moments.extend(named(layout, "adam_v.", &data.adam_v));
    write_f32_tensors(&tmp.join("optimizer.safetensors"), &moments, None)?;
    let state = serde_json::to_vec_pretty(&data.state).expect("state serialises");
    super::write_atomic(&tmp.join("state.json"), &state)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| IoError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| IoError::io(&final_dir, e))?;
    // Make the rename itself durable before older checkpoints go.
    if let Ok(d) = std::fs::File::open(&root) {
        let _ = d.sync_all();
    }
    let steps = list(run_dir)?;
    for &old in steps.iter().take(steps.len().saturating_sub(keep.max(1))) {
        let dir = step_dir(run_dir, old);
        std::fs::remove_dir_all(&dir).map_err(|e| IoError::io(&dir, e))?;
    }
    Ok(final_dir)
}

/// The steps of the complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<u64>, IoError> {
    let root = run_dir.join("checkpoints");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(IoError::io(&root, e)),
    };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Reads the checkpoint at `step`, checking every tensor against the layout.
pub fn load(run_dir: &Path, layout: &ParamLayout, step: u64) -> Result<CheckpointData, IoError> {
    let dir = step_dir(run_dir, step);
    let state_file = dir.join("state.json");
    let text = std::fs::read(&state_file).map_err(|e| IoError::io(&state_file, e))?;
    let state: TrainingState = serde_json::from_slice(&text)
        .map_err(|e| IoError::format(&state_file, format!("not a valid state file: {e}")))?;
    if state.step != step {
        return Err(IoError::format(
            &state_file,
            format!("records step {}, but the folder is step-{step}", state.step),
        ));
    }
    let [params] = unnamed(layout, [""], &dir.join("model.safetensors"))?;
    let [adam_m, adam_v] = unnamed(
        layout,
        ["adam_m.", "adam_v."],
        &dir.join("optimizer.safetensors"),
    )?;
    Ok(CheckpointData {
        params,
        adam_m,
        adam_v,
        state,
    })
}
