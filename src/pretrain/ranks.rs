//! The ranks of a data-parallel run: who writes, and the check that all of them were started on
//! the same run.

use super::PretrainError;
use crate::comm::{Collective, Solo};
use crate::io::run_dir::{RunConfig, TrainingLock};
use serde_json::Value;
use std::rc::Rc;

/// This process's place among the ranks that train a run together.
pub struct Ranks {
    /// The collectives of the run's ranks ([`Solo`] for a run of one process).
    pub comm: Rc<dyn Collective>,
    /// The run directory's lock, held by rank 0 alone: it writes `metrics.jsonl` and the
    /// checkpoints, and repairs what a killed process left; the other ranks only train.
    pub lock: Option<TrainingLock>,
}

impl Ranks {
    /// A run of one process, which holds `lock`.
    pub fn solo(lock: TrainingLock) -> Self {
        Ranks {
            comm: Rc::new(Solo),
            lock: Some(lock),
        }
    }
}

/// Refuses to train unless every rank holds the same run configuration as rank 0: the same
/// data folder, data checksum, model, recipe, batch, accumulation and world size. Every rank
/// calls it; on a difference each differing rank says what differs (this rank's stderr) and all
/// return the same error, so no rank trains on its own.
pub fn check_ranks_agree(comm: &dyn Collective, config: &RunConfig) -> Result<(), PretrainError> {
    if comm.world() == 1 {
        return Ok(());
    }
    // Both sides are compared as parsed from text, since parsing does not always give back
    // the last bit of a float that was printed.
    let text = serde_json::to_vec(config).expect("a run config serialises");
    let mine: Value = serde_json::from_slice(&text).expect("JSON parses");
    let mut theirs = text;
    comm.broadcast(&mut theirs);
    let theirs: Value = serde_json::from_slice(&theirs).expect("rank 0 sent JSON");
    let mut differences = vec![];
    differ("", &theirs, &mine, &mut differences);
    for d in &differences {
        eprintln!("rank {}: {d}", comm.rank());
    }
    let mut differing = [f64::from(u8::from(!differences.is_empty()))];
    comm.all_reduce_sum_f64(&mut differing);
    match differing[0] as usize {
        0 => Ok(()),
        n => Err(PretrainError::Ranks(format!(
            "{n} of the {} ranks were started with other settings or data than rank 0 (each \
             said what differs above); start every rank with the same flags and data",
            comm.world()
        ))),
    }
}

/// Appends to `out` each leaf where `mine` differs from rank 0's `theirs`, named by its
/// path in `run.json` (`data`, `model.hidden_size`, `data_checksum`).
fn differ(path: &str, theirs: &Value, mine: &Value, out: &mut Vec<String>) {
    match (theirs, mine) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let (x, y) = (a.get(key), b.get(key));
                differ(
                    &sub,
                    x.unwrap_or(&Value::Null),
                    y.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path} is {b} here but {a} on rank 0")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::differ;
    use serde_json::json;

    #[test]
    fn differences_are_named_by_their_path_in_run_json() {
        let rank0 =
            json!({"data": "/a", "model": {"hidden_size": 256, "layers": 12}, "batch_size": 8});
        let mine =
            json!({"data": "/b", "model": {"hidden_size": 256, "layers": 6}, "batch_size": 8});
        let mut out = vec![];
        differ("", &rank0, &mine, &mut out);
        assert_eq!(
            out,
            [
                "data is \"/b\" here but \"/a\" on rank 0",
                "model.layers is 6 here but 12 on rank 0"
            ]
        );
        let mut none = vec![];
        differ("", &rank0, &rank0, &mut none);
        assert!(none.is_empty());
    }
}
