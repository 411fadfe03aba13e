//! What the whole-volume benchmarks share: a volume started with `logdb up` on a temp dir
//! (stopped and removed when dropped), and the processes it runs as seen from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// `logdb up` of `manifest` on a temp dir; a SIGTERM (its own `down`) when dropped.
pub struct Volume {
    child: Child,
    pub dir: PathBuf,
    pub ready: serde_json::Value,
}

impl Drop for Volume {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Volume {
    /// Starts `logdb up` from `bin_dir`, with the volume's processes from there too, on a fresh
    /// temp dir named after `name`, and waits for its ready line.
    pub fn up(bin_dir: &Path, name: &str, manifest: &str) -> anyhow::Result<Volume> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("bench.yaml");
        std::fs::write(&path, manifest)?;
        let mut child = Command::new(bin_dir.join("logdb"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["up", "--insecure", "--port", "0", "-o", "json", "--bin-dir"])
            .arg(bin_dir)
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting logdb up")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        loop {
            let line = lines
                .next()
                .context("logdb up ended before it was ready")??;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v["event"] == "ready" {
                std::thread::spawn(move || for _ in lines {});
                return Ok(Volume {
                    child,
                    dir,
                    ready: v,
                });
            }
        }
    }

    /// The volume's data dir (what `logdb --data-dir` names).
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The port of one of the ready line's endpoints (`psql`, `read_only_psql`).
    pub fn port(&self, endpoint: &str) -> anyhow::Result<u16> {
        let url = self.ready[endpoint]
            .as_str()
            .with_context(|| format!("no {endpoint} endpoint"))?;
        url.rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .context("port")?
            .parse()
            .context("port")
    }

    /// Pids of the running processes whose command line names `binary` and this volume's dir.
    pub fn pids_of(&self, binary: &str) -> Vec<u32> {
        let dir = self.dir.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.first()
                        .is_some_and(|a| a.ends_with(format!("/{binary}").as_bytes()))
                        && String::from_utf8_lossy(&c).contains(&dir)
                })
            })
            .collect();
        pids.sort_unstable();
        pids
    }
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Resident set size of a process in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes on disk (allocated blocks) of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => file_bytes(&e.path()),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes on disk (allocated blocks) of one file.
pub fn file_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
