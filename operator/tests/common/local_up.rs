//! Drives the built `logdb` binary the way a user does: `logdb up` in the background (stopped,
//! with every child, when dropped), `logdb status|node|down`, and psql against its endpoints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use logdb_storage::testkit::workspace_binary;

/// Where `logdb-storage` and `logdb-compute` of this build are.
pub fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        workspace_binary("logdb-compute", "logdb-compute");
        let storage = workspace_binary("logdb-storage", "logdb-storage");
        storage.parent().unwrap().to_path_buf()
    })
    .clone()
}

pub fn logdb(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logdb"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run logdb")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "logdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn refused(out: Output) -> String {
    assert!(!out.status.success(), "logdb should have refused");
    String::from_utf8(out.stderr).unwrap()
}

/// A running `logdb up`; stopped (SIGTERM, then SIGKILL) when dropped. Its children stop with it:
/// they are told to on their parent's death.
pub struct Up {
    child: Option<Child>,
    pub ready: serde_json::Value,
}

impl Up {
    pub fn start(dir: &Path, extra: &[&str]) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logdb"))
            .arg("--data-dir")
            .arg(dir)
            .args(["up", "-o", "json", "--bin-dir"])
            .arg(bin_dir())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start logdb up");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut up = Up {
            child: Some(child),
            ready: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "logdb up never became ready; the ends of its logs:\n{}",
                    log_tails(dir)
                )
            });
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("logdb up -o json printed {line:?}: {e}"));
            if v["event"] == "ready" {
                up.ready = v;
                return up;
            }
        }
    }

    /// The ends of the volume's process logs (for a failure message).
    pub fn logs(&self, dir: &Path) -> String {
        log_tails(dir)
    }

    pub fn psql_url(&self) -> String {
        self.ready["psql"].as_str().unwrap().to_string()
    }

    /// Waits for `logdb up` to exit by itself (after `logdb down`).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "logdb up did not exit after `logdb down`"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs SQL through psql; Err carries psql's stderr.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-w",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql is installed");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(logdb(dir, &["status", "-o", "json"]))).unwrap()
}

/// Waits until `check` holds for `logdb status`.
pub fn await_status(
    dir: &Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(dir);
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port of `host:port` or of a `postgresql://user@host:port/db` URL.
pub fn port_of(address: &str) -> Option<u16> {
    let rest = address.rsplit('@').next()?;
    let hostport = rest.split('/').find(|p| p.contains(':'))?;
    hostport.rsplit(':').next()?.parse().ok()
}

/// Every port the volume's processes listen on, as `logdb status -o json` reports them: the
/// endpoints, the config store, each compute node's PostgreSQL and metrics ports, each running
/// storage node.
pub fn listening_ports(s: &serde_json::Value) -> Vec<u16> {
    let mut addresses = vec![
        s["writer"]["psql"].clone(),
        s["read_only_psql"].clone(),
        s["config_store"].clone(),
        s["writer"]["address"].clone(),
        s["writer"]["metrics"].clone(),
    ];
    for r in s["replicas"].as_array().into_iter().flatten() {
        addresses.push(r["address"].clone());
        addresses.push(r["metrics"].clone());
    }
    for n in s["nodes"].as_array().into_iter().flatten() {
        if n["process"] == "running" {
            addresses.push(n["address"].clone());
        }
    }
    let mut ports: Vec<u16> = addresses
        .iter()
        .filter_map(|a| port_of(a.as_str()?))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Nothing listens on `port` of loopback.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The last lines of every process log of the data dir `dir`.
pub fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return "(no logs)".into();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {}\n", p.display()));
        for l in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
