//! A six-node storage cluster (three zones × two) on loopback for the compute node's tests, and
//! the layout file that points the writer at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::sync::Mutex;

use logdb_compute::layout::{Layout, Member, ProtectionGroup};
use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;
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
            max_pages: 0,
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

/// A running `logdb-compute` process (writer or replica); killed when dropped. Its stdout is
/// read to the end, so announcements after a change of role are seen too.
pub struct Writer {
    child: Option<std::process::Child>,
    pub pg: String,
    pub metrics: String,
    pub port: u16,
    pub epoch: u64,
    pub role: String,
    announces: Mutex<std::sync::mpsc::Receiver<serde_json::Value>>,
}

pub const PASSWORD: &str = "s3cret";

/// Runs psql on a connection string with `-c sql`; returns stdout, or stderr as the error.
pub fn psql_at(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

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
            // Plaintext unless the test gives certificates.
            .args(
                (!volume_args.contains(&"--tls-cert") && !volume_args.contains(&"--peer-ca"))
                    .then_some("--insecure"),
            )
            .env(
                "RUST_LOG",
                std::env::var("LOGDB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start logdb-compute");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<serde_json::Value>(line.trim()) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("logdb-compute printed something else ({e}): {line:?}"),
                }
            }
        });
        let mut w = Writer {
            child: Some(child),
            pg: String::new(),
            metrics: String::new(),
            port: 0,
            epoch: 0,
            role: String::new(),
            announces: Mutex::new(rx),
        };
        w.await_announce(std::time::Duration::from_secs(120))
            .expect("logdb-compute did not announce itself");
        w
    }

    /// Waits for the next announcement (a start, or a restart in a new role) and takes its
    /// addresses; `None` if none came in time.
    pub fn await_announce(&mut self, timeout: std::time::Duration) -> Option<()> {
        let v = self.announces.lock().unwrap().recv_timeout(timeout).ok()?;
        self.pg = v["pg"].as_str().unwrap().to_string();
        self.port = self.pg.rsplit(':').next().unwrap().parse().unwrap();
        self.metrics = v["metrics"].as_str().unwrap().to_string();
        self.epoch = v["epoch"].as_u64().unwrap();
        self.role = v["role"].as_str().unwrap_or("writer").to_string();
        Some(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=logdb password={PASSWORD} dbname=vol1 connect_timeout=10",
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
        psql_at(
            &format!("host=127.0.0.1 port={} user=logdb dbname=vol1", self.port),
            PASSWORD,
            sql,
        )
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

/// A one-member config store, six storage nodes that register with it, and a volume `name`
/// placed on them (placement succeeds once all six have registered).
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub member: logdb_config_store::member::Member,
    pub client: ConfigClient,
    pub cluster: Cluster,
    pub volume: proto::Volume,
}

pub async fn setup(name: &str, segment_size: u64, max_size: u64) -> Setup {
    setup_with(name, segment_size, max_size, 3600, &[]).await
}

/// `setup` with a retention window and storage node arguments of the test's own.
pub async fn setup_with(
    name: &str,
    segment_size: u64,
    max_size: u64,
    retention_seconds: u64,
    storage_args: &[&str],
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = logdb_config_store::member::Member::start(1, dir.path(), listener)
        .await
        .unwrap();
    member
        .initialize(&BTreeMap::from([(1, member.addr.clone())]))
        .await
        .unwrap();
    let client = ConfigClient::new(vec![member.addr.clone()]);
    let cluster = Cluster::start_opts(
        1,
        64,
        8192,
        &[&["--config-store", member.addr.as_str()], storage_args].concat(),
    );
    let spec = proto::VolumeSpec {
        page_size: 8192,
        segment_size,
        max_size,
        replicas: 0,
        retention_seconds,
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        pool: String::new(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let volume = loop {
        let req = proto::CreateVolumeRequest {
            name: name.into(),
            spec: Some(spec.clone()),
        };
        match client
            .call(|mut c| {
                let r = req.clone();
                async move { c.create_volume(r).await }
            })
            .await
        {
            Ok(v) => break v,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "storage nodes never registered: {}",
                    e.message()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    Setup {
        _dir: dir,
        member,
        client,
        cluster,
        volume,
    }
}

/// A `--role auto` compute node of volume `vol1` (the config store decides who writes), with
/// `extra` arguments.
pub fn auto_compute(member: &str, id: &str, extra: &[&str]) -> Writer {
    let base = [
        "--config-store",
        member,
        "--volume",
        "vol1",
        "--writer-id",
        id,
        "--role",
        "auto",
    ];
    Writer::start_with(&[&base[..], extra].concat())
}

/// Asks the config store to make `target` the writer of `vol1`.
pub async fn failover(s: &Setup, target: &str) -> proto::Volume {
    let req = proto::FailoverRequest {
        volume: "vol1".into(),
        target: target.into(),
    };
    s.client
        .call(|mut c| {
            let r = req.clone();
            async move { c.failover(r).await }
        })
        .await
        .unwrap()
}
