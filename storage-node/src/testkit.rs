//! Test and benchmark support shared by every crate: runs the real `logdb-storage` binary on a
//! free loopback port, reads the address it announces, and kills it when dropped (also when a
//! test fails); scrapes Prometheus endpoints; percentiles and a self-removing temp dir for the
//! benchmark programs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use logdb_types::proto::storage_service_client::StorageServiceClient;

/// The `logdb-storage` binary of this build (built on first use).
pub fn storage_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| workspace_binary("logdb-storage", "logdb-storage"))
        .clone()
}

/// Builds binary `bin` of workspace package `package` in the profile and target dir of the
/// running test, and returns its path (a test may need another crate's binary, which cargo does
/// not build for it).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cargo build {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    dir.join(bin)
}

pub struct StorageProcess {
    child: Option<Child>,
    bin: PathBuf,
    pub data_dir: PathBuf,
    pub node_id: String,
    pub zone: String,
    pub grpc: String,
    pub metrics: String,
    extra: Vec<String>,
}

impl StorageProcess {
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        node_id: &str,
        zone: &str,
        extra: &[&str],
    ) -> StorageProcess {
        let mut p = StorageProcess {
            child: None,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            node_id: node_id.into(),
            zone: zone.into(),
            grpc: String::new(),
            metrics: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        p.spawn(None);
        p
    }

    /// Starts the process; `listen` keeps a previous address (a restarted node keeps its port).
    fn spawn(&mut self, listen: Option<String>) {
        let listen = listen.unwrap_or_else(|| "127.0.0.1:0".into());
        let mut child = Command::new(&self.bin)
            .args([
                "--listen",
                &listen,
                "--node-id",
                &self.node_id,
                "--zone",
                &self.zone,
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            // Plaintext unless the test hands the node its certificate.
            .args((!self.extra.iter().any(|a| a == "--peer-ca")).then_some("--insecure"))
            .env(
                "RUST_LOG",
                std::env::var("LOGDB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start logdb-storage");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("logdb-storage did not announce itself ({e}): {line:?}"));
        self.grpc = v["grpc"].as_str().expect("grpc address").to_string();
        self.metrics = v["metrics"].as_str().expect("metrics address").to_string();
        self.child = Some(child);
    }

    /// kill -9, then start again on the same data dir and a new port.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.spawn(None);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM")
                .success();
            assert!(ok, "kill -TERM failed");
            let status = c.wait().expect("wait for logdb-storage");
            assert!(
                status.success(),
                "logdb-storage exited with {status} on SIGTERM"
            );
        }
    }

    /// Stops the node cleanly and starts it again on its data dir with `extra` as its further
    /// arguments (on a new port).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn(None);
    }

    /// Starts a stopped or killed node again on a new port.
    pub fn restart_after_kill(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        self.spawn(None);
    }

    /// Starts a stopped or killed node again on the port it had (clients keep their address).
    pub fn restart_same_port(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        let addr = self.grpc.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The old socket may linger briefly; wait until the port can be bound again.
            if std::net::TcpListener::bind(&addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        self.spawn(Some(addr));
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process: a paused node models a slow or hung one.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the node is running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn client(&self) -> StorageServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match StorageServiceClient::connect(format!("http://{}", self.grpc)).await {
                Ok(c) => {
                    return c
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20)
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.grpc),
            }
        }
    }

    /// The Prometheus text from /metrics.
    pub async fn scrape(&self) -> String {
        scrape(&self.metrics).await
    }
}

impl Drop for StorageProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub use logdb_common::test_pki::TestPki;

pub use logdb_common::metrics_http::scrape;
pub use logdb_common::stats::{percentile, TempDir};

/// A disk that fills: a tmpfs of `bytes` mounted on a fresh directory (needs root or
/// CAP_SYS_ADMIN, as the tests of a full disk do), grown or shrunk in place with `resize` (as a
/// volume expansion grows a PVC), unmounted when dropped.
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(bytes: u64) -> SmallDisk {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("logdb-small-disk-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs on {} failed (the full-disk tests need root or \
             CAP_SYS_ADMIN): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Gives the disk a new size (what is stored stays).
    pub fn resize(&self, bytes: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "resizing {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
