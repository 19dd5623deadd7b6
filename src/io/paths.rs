//! Outputs against inputs: no command writes over what it reads, and no command replaces a folder
//! that holds a run, a checkpoint or prepared data.
//!
//! Paths are compared after resolving links and `..`, so `runs/a/../a` and a link to `runs/a`
//! are `runs/a`. An output that does not exist yet is resolved through its nearest existing
//! ancestor.

use std::path::{Component, Path, PathBuf};

/// An output that would overwrite or delete what a command reads or what a run needs.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The output is, contains or lies inside one of the command's inputs.
    #[error(
        "{}: the output {relation} {what} {}; nothing was written: choose an output apart from it",
        output.display(),
        input.display()
    )]
    Overlap {
        /// The output, as given.
        output: PathBuf,
        /// The input, as given.
        input: PathBuf,
        /// What the input is ("the run being exported").
        what: String,
        /// "is", "lies inside" or "contains".
        relation: &'static str,
    },
    /// A folder to be replaced or written into is (or holds) a run, a checkpoint or a data folder.
    #[error(
        "{}: holds {what} ({}), which no command replaces or writes over; choose another output, \
         or move it away yourself",
        dir.display(),
        found.display()
    )]
    Protected {
        /// The folder that is one.
        dir: PathBuf,
        /// The file that marks what it holds.
        found: PathBuf,
        /// "a run", "a checkpoint", "a data folder".
        what: &'static str,
    },
}

/// `path` as an absolute path with links and `..` resolved. A path that does not exist yet is
/// its nearest existing ancestor, resolved, followed by the rest of it.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = vec![];
    let mut base = absolute.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(p) => out.push(p),
                    _ => {}
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an `output` that is, contains or lies inside one of `inputs` (each named by what it
/// is, e.g. "the run being exported"). Of several, the error names the closest: an input the
/// output is, else the nearest one it lies inside, else the nearest one it contains.
pub fn check_apart(output: &Path, inputs: &[(&str, &Path)]) -> Result<(), PathError> {
    let out = resolve(output);
    let depth = |p: &PathBuf| p.components().count();
    // (relation, distance in folders, index of the input): the smallest wins.
    let mut found: Option<(usize, usize, usize)> = None;
    for (i, (_, input)) in inputs.iter().enumerate() {
        let inp = resolve(input);
        let candidate = if out == inp {
            (0, 0, i)
        } else if out.starts_with(&inp) {
            (1, depth(&out) - depth(&inp), i)
        } else if inp.starts_with(&out) {
            (2, depth(&inp) - depth(&out), i)
        } else {
            continue;
        };
        found = Some(found.map_or(candidate, |f| f.min(candidate)));
    }
    let Some((rank, _, i)) = found else {
        return Ok(());
    };
    Err(PathError::Overlap {
        output: output.to_path_buf(),
        input: inputs[i].1.to_path_buf(),
        what: inputs[i].0.to_string(),
        relation: ["is", "lies inside", "contains"][rank],
    })
}

/// What `dir` itself is, if it is something no command may replace: a run (it has `run.json`
/// or `checkpoints/`), a checkpoint (`state.json`), or a data folder (`vocab.txt` beside
/// `shard-*.bin` files). Returns the marking file and a name for it.
pub fn protected_kind(dir: &Path) -> Option<(PathBuf, &'static str)> {
    for (marker, what) in [
        ("run.json", "a run"),
        ("checkpoints", "a run's checkpoints"),
        ("state.json", "a checkpoint"),
    ] {
        let p = dir.join(marker);
        if p.exists() {
            return Some((p, what));
        }
    }
    let vocab = dir.join("vocab.txt");
    if vocab.is_file() {
        if let Ok(Some(shard)) = crate::data::shard::shard_paths(dir).map(|s| s.into_iter().next())
        {
            return Some((shard, "a data folder"));
        }
    }
    None
}

/// Refuses `dir` as an output when it is a run, a checkpoint or a data folder
/// ([`protected_kind`]).
pub fn check_not_protected(dir: &Path) -> Result<(), PathError> {
    match protected_kind(dir) {
        Some((found, what)) => Err(PathError::Protected {
            dir: dir.to_path_buf(),
            found,
            what,
        }),
        None => Ok(()),
    }
}

/// Refuses to replace `dir` when it, or any folder under it, is a run, a checkpoint or a data
/// folder ([`protected_kind`]). Links are not followed: what they point to is not deleted.
pub fn check_replaceable(dir: &Path) -> Result<(), PathError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        check_not_protected(&d)?;
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("electra-paths-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn outputs_that_are_contain_or_lie_inside_an_input_are_refused() {
        let root = scratch("apart");
        let run = root.join("run");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let input = [("the run", run.as_path())];
        for (out, relation) in [
            (run.clone(), "is"),
            (run.join("x/../."), "is"),
            (run.join("checkpoints/new/deeper"), "lies inside"),
            (root.clone(), "contains"),
        ] {
            match check_apart(&out, &input) {
                Err(PathError::Overlap { relation: r, .. }) => assert_eq!(r, relation, "{out:?}"),
                other => panic!("{out:?}: {other:?}"),
            }
        }
        std::os::unix::fs::symlink(&run, root.join("link")).unwrap();
        let err = check_apart(&root.join("link/sub"), &input).unwrap_err();
        assert!(
            err.to_string().contains("lies inside the run") && err.to_string().contains("run"),
            "{err}"
        );
        assert!(check_apart(&root.join("export"), &input).is_ok());
        assert!(check_apart(&root.join("runner"), &input).is_ok());
    }

    #[test]
    fn runs_checkpoints_and_data_folders_are_never_replaceable() {
        let root = scratch("protected");
        std::fs::create_dir_all(root.join("export/discriminator")).unwrap();
        std::fs::write(root.join("export/discriminator/vocab.txt"), "[PAD]\n").unwrap();
        assert!(check_replaceable(&root.join("export")).is_ok());
        let data = root.join("export/old/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("vocab.txt"), "[PAD]\n").unwrap();
        std::fs::write(data.join("shard-00000.bin"), "").unwrap();
        let err = check_replaceable(&root.join("export")).unwrap_err();
        assert!(err.to_string().contains("a data folder"), "{err}");
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::write(root.join("export/old/run.json"), "{}").unwrap();
        let err = check_replaceable(&root.join("export")).unwrap_err();
        assert!(err.to_string().contains("old/run.json"), "{err}");
        assert!(check_not_protected(&root.join("export")).is_ok());
        assert!(check_not_protected(&root.join("export/old")).is_err());
    }
}
