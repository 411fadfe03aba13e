//! Finding the programs `logdb up` runs: next to the `logdb` binary itself (a cargo build puts
//! them all in one directory), in `--bin-dir`, or on PATH.

use std::path::{Path, PathBuf};

use super::LocalError;

/// The two programs a local volume runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub storage: PathBuf,
    pub compute: PathBuf,
}

impl Binaries {
    /// Looks in `bin_dir` when given, else beside the running executable, then on PATH.
    pub fn find(bin_dir: Option<&Path>) -> Result<Binaries, LocalError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = bin_dir {
            dirs.push(d.to_path_buf());
        } else {
            if let Some(d) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf))
            {
                dirs.push(d);
            }
            if let Some(path) = std::env::var_os("PATH") {
                dirs.extend(std::env::split_paths(&path));
            }
        }
        Ok(Binaries {
            storage: find_in("logdb-storage", &dirs)?,
            compute: find_in("logdb-compute", &dirs)?,
        })
    }
}

fn find_in(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, LocalError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().take(3).map(|d| d.display().to_string()).collect();
            LocalError::Refused(format!(
                "binary {name} not found (looked in {}{}): build it with `cargo build --release`, or pass --bin-dir",
                looked.join(", "),
                if dirs.len() > 3 { ", and the rest of PATH" } else { "" }
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(err.starts_with("binary logdb-storage not found"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        std::fs::write(dir.path().join("logdb-storage"), "").unwrap();
        let err = Binaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(err.starts_with("binary logdb-compute not found"), "{err}");
    }
}
