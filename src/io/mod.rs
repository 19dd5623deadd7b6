//! Files: safetensors reading and atomic writing, HF ELECTRA directories (import and export),
//! batch files.

pub mod batch_file;
pub mod checkpoint;
pub mod export;
pub mod hf;
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
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
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
