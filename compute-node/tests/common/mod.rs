//! A six-node storage cluster (three zones × two) on loopback for the compute node's tests, and
//! the layout file that points the writer at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use logdb_compute::layout::{Layout, Member, ProtectionGroup};
use logdb_storage::testkit::{storage_binary, StorageProcess};

pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<StorageProcess>,
    pub layout_path: PathBuf,
    pub page_size: u32,
}

impl Cluster {
    /// Six storage nodes named a1 a2 b1 b2 c1 c2, and a layout of `pgs` PGs over them.
    pub fn start(pgs: usize, pages_per_pg: u64) -> Cluster {
        Self::start_with_page_size(pgs, pages_per_pg, 8192)
    }

    pub fn start_with_page_size(pgs: usize, pages_per_pg: u64, page_size: u32) -> Cluster {
        Self::start_opts(pgs, pages_per_pg, page_size, &[])
    }

    /// Storage nodes started with `extra` arguments too (e.g. `--config-store ADDR`).
    pub fn start_opts(pgs: usize, pages_per_pg: u64, page_size: u32, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = storage_binary();
        let mut nodes = Vec::new();
        for zone in ZONES {
            for n in 1..=2 {
                let id = format!("{}{n}", &zone[5..]);
                nodes.push(StorageProcess::start(
                    &bin,
                    &dir.path().join(&id),
                    &id,
                    zone,
                    &[&["--coalesce-interval-ms", "50"], extra].concat(),
                ));
            }
        }
        let layout_path = dir.path().join("layout.json");
        let mut c = Cluster {
            dir,
            nodes,
            layout_path,
            page_size,
        };
        c.write_layout(pgs, pages_per_pg);
        c
    }

    pub fn layout(&self, pgs: usize, pages_per_pg: u64) -> Layout {
        Layout {
            volume: "vol1".into(),
            page_size: self.page_size,
            pages_per_pg,
            retention_seconds: 3600,
            pgs: (0..pgs)
                .map(|k| ProtectionGroup {
                    members: self
                        .nodes
                        .iter()
                        .map(|n| Member {
                            segment: format!("pg{k}-{}", n.node_id),
                            address: n.grpc.clone(),
                            zone: n.zone.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// (Re)writes the layout file with the nodes' current addresses.
    pub fn write_layout(&mut self, pgs: usize, pages_per_pg: u64) {
        let layout = self.layout(pgs, pages_per_pg);
        std::fs::write(
            &self.layout_path,
            serde_json::to_vec_pretty(&layout).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A running `logdb-compute` writer process; killed when dropped.
pub struct Writer {
    child: Option<std::process::Child>,
    pub pg: String,
    pub metrics: String,
    pub port: u16,
    pub epoch: u64,
}

pub const PASSWORD: &str = "s3cret";

impl Writer {
    pub fn start(layout: &Path) -> Writer {
        Self::start_with(&["--layout", layout.to_str().expect("utf-8 path")])
    }

    /// Starts a writer with these volume arguments (`--layout F`, or `--config-store A --volume V`).
    pub fn start_with(volume_args: &[&str]) -> Writer {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_logdb-compute"))
            .args(volume_args)
            .args(["--listen", "127.0.0.1:0", "--password", PASSWORD])
            .env(
                "RUST_LOG",
                std::env::var("LOGDB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start logdb-compute");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("logdb-compute did not announce itself ({e}): {line:?}"));
        let pg = v["pg"].as_str().unwrap().to_string();
        let port = pg.rsplit(':').next().unwrap().parse().unwrap();
        Writer {
            child: Some(child),
            pg,
            metrics: v["metrics"].as_str().unwrap().to_string(),
            port,
            epoch: v["epoch"].as_u64().unwrap(),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=logdb password={PASSWORD} dbname=vol1",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to logdb-compute");
        tokio::spawn(conn);
        client
    }

    /// Runs psql with `-c sql`; returns stdout, or stderr as the error.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "logdb",
                "-d",
                "vol1",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The writer's Prometheus text.
    pub async fn scrape(&self) -> String {
        logdb_storage::testkit::scrape(&self.metrics).await
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.kill9();
    }
}
