//! One supervised logdb process: started in its own process group (Ctrl-C reaches only
//! `logdb up`, which then stops everything in order), told to stop when `logdb up` dies, its
//! stderr and the rest of its stdout appended to one log file, and ready once it prints the JSON
//! line every logdb binary announces itself with. The addresses a process listens on are learned
//! from that line (every process binds port 0), and again from any later one: a compute node that
//! changes role restarts in place on new ports and announces them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::LocalError;

pub struct Child {
    pub name: String,
    process: tokio::process::Child,
    /// The last JSON line the process announced itself with.
    announce: Arc<Mutex<serde_json::Value>>,
    pub log: PathBuf,
}

/// How long a process may take to announce itself (a writer runs recovery first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Child {
    /// Starts `bin args`, logging to `log`, and waits for its announcement.
    pub async fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Child, LocalError> {
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(LocalError::io(format!("opening {}", log.display())))
        };
        let mut header = open_log()?;
        use std::io::Write;
        let _ = writeln!(
            header,
            "--- logdb up: starting {} {}",
            bin.display(),
            args.join(" ")
        );
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(open_log()?)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut process = cmd.spawn().map_err(LocalError::io(format!(
            "starting {} ({})",
            name,
            bin.display()
        )))?;
        let stdout = process.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let announce = match first {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).ok(),
            _ => None,
        };
        let Some(announce) = announce else {
            let _ = process.start_kill();
            let status = process.wait().await.ok();
            return Err(LocalError::Refused(format!(
                "{name} did not start ({}): {}; its log is {}",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into()),
                last_error_line(log),
                log.display()
            )));
        };
        let announce = Arc::new(Mutex::new(announce));
        let mut rest = tokio::fs::File::from_std(open_log()?);
        let latest = Arc::clone(&announce);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["event"] == "listening" {
                        *latest.lock().expect("announce") = v;
                    }
                }
                let _ = rest.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Ok(Child {
            name: name.to_string(),
            process,
            announce,
            log: log.to_path_buf(),
        })
    }

    /// The field `key` of the process's latest announcement (`grpc`, `pg`, `metrics`, ...).
    pub fn announced(&self, key: &str) -> Option<String> {
        self.announce.lock().expect("announce")[key]
            .as_str()
            .map(str::to_string)
    }

    /// The process's latest announcement.
    pub fn announcement(&self) -> serde_json::Value {
        self.announce.lock().expect("announce").clone()
    }

    /// `None` while running, else how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.process.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGTERM, then SIGKILL if it has not stopped in time.
    pub async fn stop(mut self) {
        if let Some(pid) = self.process.id() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.process.wait())
            .await
            .is_err()
        {
            tracing::warn!(name = %self.name, "did not stop after SIGTERM; killing it");
            let _ = self.process.kill().await;
        }
    }
}

/// The last line of `log` that looks like an error, else its last line.
fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("ERROR") || l.starts_with("Error"))
        .or(lines.last())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "it wrote nothing".into())
}
