//! Helpers for benchmark programs: percentiles and a temp dir that removes itself.

use std::path::PathBuf;

/// The `p` quantile (0..=1) of sorted samples; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A directory under the system temp dir, removed when dropped; each one of its own (two made
/// by one process never share a path).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same id is not reused.
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_temp_dirs_of_one_process_are_apart() {
        let a = super::TempDir::new("logdb-stats-test").unwrap();
        let b = super::TempDir::new("logdb-stats-test").unwrap();
        assert_ne!(a.0, b.0);
        std::fs::write(a.0.join("f"), b"x").unwrap();
        drop(b);
        assert!(a.0.join("f").exists(), "dropping one leaves the other");
    }
}
