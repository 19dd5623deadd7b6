//! Files: safetensors reading and atomic writing, HF ELECTRA directories (import and export),
//! batch files, and the rule that no output overwrites an input.

pub mod batch_file;
pub mod checkpoint;
pub mod export;
pub mod hf;
pub mod paths;
pub mod run_dir;
pub mod tensors;

use std::path::{Path, PathBuf};

/// A problem with a file, naming the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system could not read or write the file.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file was read but does not hold what was expected.
    #[error("{path}: {message}")]
    Format {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A checkpoint is corrupt; the advice names the newest earlier one that is intact.
    #[error("{error}; {advice}")]
    Corrupt {
        /// What is wrong with it.
        error: Box<IoError>,
        /// Which checkpoint to resume from instead.
        advice: String,
    },
    /// The weights of several files do not fit the model; each line names its file.
    #[error("the weights do not fit the model of their config.json files:\n{0}")]
    Weights(String),
    /// A configuration (model sizes, HF `config.json`) does not fit.
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    /// An output would overwrite an input, or replace a run, a checkpoint or a data folder.
    #[error(transparent)]
    Paths(#[from] paths::PathError),
}

impl IoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        IoError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The temporary file or folder, `.NAME.tmp-PID`, that this process writes beside `name` before
/// renaming it into place.
pub(crate) fn tmp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// Whether `name` is a [`tmp_name`], of any process.
pub(crate) fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes a file atomically: into a temporary file beside it, flushed to disk, then renamed over
/// the destination, so a reader sees the old file or the new one and never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(tmp_name(&name));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| IoError::io(path, e))
}
