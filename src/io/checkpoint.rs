//! Checkpoints: `checkpoints/step-N/` with `model.safetensors` (HF names, prefixed by network),
//! `optimizer.safetensors` (Adam moments) and `state.json` (step and data cursor).
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place only once every
//! file is on disk, so a crash or a kill mid-write leaves the previous checkpoints untouched and
//! never a half-written `step-N`. `state.json` records the checksum of each tensor file as
//! written; a file that no longer matches it (a flipped byte on disk, a torn copy) is refused on
//! resume and export, and so is a checkpoint holding a value that is not finite, naming the
//! newest earlier checkpoint that is intact.

use super::tensors::{checksum, parse_tensors, write_f32_tensors};
use super::IoError;
use crate::model::config::zeroed_values;
use crate::model::params::ParamLayout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights file of a checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// The Adam moments file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

/// `state.json`: the training state and the checksum of each tensor file of the checkpoint.
#[derive(Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: TrainingState,
    /// CRC-32 of each file as written, by file name; empty in checkpoints written before they
    /// were recorded, whose files are then read unchecked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    checksums: BTreeMap<String, u32>,
}

/// The tensors of a checkpoint, as flat buffers in the layout's order.
#[derive(Clone, Debug, PartialEq)]
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

/// Reads `prefixes.len()` flat buffers from one file, which must hold exactly those tensors;
/// `bytes` are the file's, checked against its recorded checksum.
fn unnamed<const N: usize>(
    layout: &ParamLayout,
    prefixes: [&str; N],
    file: &Path,
    bytes: &[u8],
) -> Result<[Vec<f32>; N], IoError> {
    let tensors = parse_tensors(file, bytes)?;
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
    let mut flat = zeroed_values(layout.len())?;
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
                        "`{name}` is {}, expected a float tensor of {:?}",
                        t.describe(),
                        p.shape
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
    let params = named(layout, "", &data.params);
    let model_sum = write_f32_tensors(&tmp.join(MODEL_FILE), &params, None)?;
    let mut moments = named(layout, "adam_m.", &data.adam_m);
    moments.extend(named(layout, "adam_v.", &data.adam_v));
    let optimizer_sum = write_f32_tensors(&tmp.join(OPTIMIZER_FILE), &moments, None)?;
    let state = StateFile {
        state: data.state.clone(),
        checksums: BTreeMap::from([
            (MODEL_FILE.to_string(), model_sum),
            (OPTIMIZER_FILE.to_string(), optimizer_sum),
        ]),
    };
    let state = serde_json::to_vec_pretty(&state).expect("state serialises");
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

fn read_state(dir: &Path) -> Result<StateFile, IoError> {
    let state_file = dir.join("state.json");
    let text = std::fs::read(&state_file).map_err(|e| IoError::io(&state_file, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| IoError::format(&state_file, format!("not a valid state file: {e}")))
}

/// The bytes of the file `name` of the checkpoint in `dir`, checked against the checksum its
/// `state.json` recorded (when there is one that recorded one: a folder holding only weights is
/// read unchecked, as checkpoints of older builds are).
pub fn read_checked(dir: &Path, name: &str) -> Result<Vec<u8>, IoError> {
    let expected = match read_state(dir) {
        Ok(state) => state.checksums.get(name).copied(),
        Err(IoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    read_against(dir, name, expected)
}

/// The bytes of the file `name` in `dir`, checked against `expected` when there is one.
fn read_against(dir: &Path, name: &str, expected: Option<u32>) -> Result<Vec<u8>, IoError> {
    let file = dir.join(name);
    let bytes = std::fs::read(&file).map_err(|e| IoError::io(&file, e))?;
    if let Some(sum) = expected {
        let found = checksum(&bytes);
        if found != sum {
            return Err(IoError::format(
                &file,
                format!(
                    "its checksum {found:08x} is not the {sum:08x} recorded when it was written: \
                     the file is corrupt"
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Reads the checkpoint at `step`, checking its files against their checksums and every tensor
/// against the layout, and that every value is finite. A corrupt checkpoint's error names the
/// newest earlier one that is intact.
pub fn load(run_dir: &Path, layout: &ParamLayout, step: u64) -> Result<CheckpointData, IoError> {
    read_step(run_dir, layout, step).map_err(|e| {
        let intact = list(run_dir).unwrap_or_default().into_iter().rev();
        match intact
            .filter(|&s| s < step)
            .find(|&s| read_step(run_dir, layout, s).is_ok())
        {
            Some(s) => IoError::Corrupt {
                error: Box::new(e),
                advice: format!(
                    "step-{s} is the newest intact checkpoint: move {} aside to resume from it",
                    step_dir(run_dir, step).display()
                ),
            },
            None => IoError::Corrupt {
                error: Box::new(e),
                advice: "no earlier checkpoint of this run is intact".into(),
            },
        }
    })
}

fn read_step(run_dir: &Path, layout: &ParamLayout, step: u64) -> Result<CheckpointData, IoError> {
    let dir = step_dir(run_dir, step);
    let StateFile { state, checksums } = read_state(&dir)?;
    if state.step != step {
        return Err(IoError::format(
            &dir.join("state.json"),
            format!("records step {}, but the folder is step-{step}", state.step),
        ));
    }
    let (model, optimizer) = (dir.join(MODEL_FILE), dir.join(OPTIMIZER_FILE));
    let expected = |name: &str| checksums.get(name).copied();
    let bytes = read_against(&dir, MODEL_FILE, expected(MODEL_FILE))?;
    let [params] = unnamed(layout, [""], &model, &bytes)?;
    let bytes = read_against(&dir, OPTIMIZER_FILE, expected(OPTIMIZER_FILE))?;
    let [adam_m, adam_v] = unnamed(layout, ["adam_m.", "adam_v."], &optimizer, &bytes)?;
    for (file, prefix, values) in [
        (&model, "", &params),
        (&optimizer, "adam_m.", &adam_m),
        (&optimizer, "adam_v.", &adam_v),
    ] {
        require_finite(layout, file, prefix, values)?;
    }
    Ok(CheckpointData {
        params,
        adam_m,
        adam_v,
        state,
    })
}

/// An error naming the first tensor of `values` that holds a NaN or an infinity: no training
/// step writes one (a step whose loss is not finite changes nothing), so it is corruption.
fn require_finite(
    layout: &ParamLayout,
    file: &Path,
    prefix: &str,
    values: &[f32],
) -> Result<(), IoError> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let p = layout
        .params
        .iter()
        .find(|p| (p.buf.offset..p.buf.end()).contains(&i))
        .expect("the layout covers every value");
    Err(IoError::format(
        file,
        format!(
            "`{prefix}{}` holds {} at element {}: the checkpoint is corrupt",
            p.name,
            values[i],
            i - p.buf.offset
        ),
    ))
}
