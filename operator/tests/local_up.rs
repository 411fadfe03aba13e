//! `logdb up` driven the way a user drives it: the built `logdb` binary starts a volume (config
//! store, six storage processes, writer), psql talks to it, `logdb status` reports it, `logdb node
//! stop` takes storage nodes away while writes go on, `logdb down` stops it, and `up` again
//! resumes the same volume with every row. Every process is stopped even when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use logdb_storage::testkit::workspace_binary;

/// Where `logdb-storage` and `logdb-compute` of this build are.
fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        workspace_binary("logdb-compute", "logdb-compute");
        let storage = workspace_binary("logdb-storage", "logdb-storage");
        storage.parent().unwrap().to_path_buf()
    })
    .clone()
}

fn logdb(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logdb"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run logdb")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "logdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(!out.status.success(), "logdb should have refused");
    String::from_utf8(out.stderr).unwrap()
}

/// A running `logdb up`; stopped (SIGTERM, then SIGKILL) when dropped. Its children stop with it:
/// they are told to on their parent's death.
struct Up {
    child: Option<Child>,
    ready: serde_json::Value,
}

impl Up {
    fn start(dir: &Path, extra: &[&str]) -> Up {
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
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("logdb up never became ready"));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("logdb up -o json printed {line:?}: {e}"));
            if v["event"] == "ready" {
                up.ready = v;
                return up;
            }
        }
    }

    fn psql_url(&self) -> String {
        self.ready["psql"].as_str().unwrap().to_string()
    }

    /// Waits for `logdb up` to exit by itself (after `logdb down`).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
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
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("psql is installed");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(logdb(dir, &["status", "-o", "json"]))).unwrap()
}

/// Waits until `check` holds for `logdb status`.
fn await_status(
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

/// Every port of the volume is free again (its processes are gone).
fn ports_free(dir: &Path) -> bool {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("volume.json")).unwrap()).unwrap();
    let mut ports = vec![
        state["config_port"].as_u64().unwrap(),
        state["rw_port"].as_u64().unwrap(),
        state["ro_port"].as_u64().unwrap(),
    ];
    ports.extend(
        state["computes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["port"].as_u64().unwrap()),
    );
    ports.extend(
        state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["port"].as_u64().unwrap()),
    );
    ports
        .into_iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok())
}

#[test]
fn up_write_stop_two_nodes_down_and_up_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut up = Up::start(&dir, &["--port", "0"]);
    let url = up.psql_url();
    assert_eq!(up.ready["volume"], "demo");

    psql(&url, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)").unwrap();
    psql(&url, "INSERT INTO kv VALUES (1, 'one'), (2, 'two')").unwrap();
    assert_eq!(psql(&url, "SELECT v FROM kv WHERE k = 2").unwrap(), "two");

    let s = await_status(&dir, "six healthy nodes with the writes", |s| {
        s["healthy_nodes"] == 6
            && s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["segments"][0]["scl"].as_u64() > Some(0))
    });
    assert_eq!(s["phase"], "Ready");
    assert_eq!(s["epoch"], up.ready["epoch"]);
    assert!(s["epoch"].as_u64().unwrap() >= 1);
    assert_eq!(s["writer"]["process"], "running");
    assert!(s["writer"]["vdl"].as_u64().unwrap() > 0);
    let zones: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap())
        .collect();
    assert_eq!(
        zones,
        ["zone-a", "zone-a", "zone-b", "zone-b", "zone-c", "zone-c"]
    );
    let table = ok(logdb(&dir, &["status"]));
    assert!(table.contains("storage nodes: 6/6 healthy"), "{table}");

    // A second `up` on the same data dir is refused while this one runs.
    let err = refused(logdb(
        &dir,
        &["up", "--bin-dir", bin_dir().to_str().unwrap()],
    ));
    assert!(err.contains("another `logdb up`"), "{err}");

    // Two storage nodes of two zones away: a write quorum (4/6) remains, writes commit.
    assert!(ok(logdb(&dir, &["node", "stop", "a1"])).contains("storage node a1 stopped"));
    ok(logdb(&dir, &["node", "stop", "b1"]));
    let err = refused(logdb(&dir, &["node", "stop", "b1"]));
    assert!(err.contains("storage node b1 is already stopped"), "{err}");
    let err = refused(logdb(&dir, &["node", "stop", "x9"]));
    assert!(err.contains("no storage node \"x9\""), "{err}");
    for k in 3..=12 {
        psql(&url, &format!("INSERT INTO kv VALUES ({k}, 'v{k}')")).unwrap();
    }
    let s = await_status(&dir, "two stopped nodes", |s| s["healthy_nodes"] == 4);
    assert_eq!(s["phase"], "Degraded");
    let a1 = &s["nodes"][0];
    assert_eq!(
        (
            a1["id"].as_str(),
            a1["process"].as_str(),
            a1["healthy"].as_bool()
        ),
        (Some("a1"), Some("stopped"), Some(false))
    );

    // One comes back and catches up.
    ok(logdb(&dir, &["node", "start", "a1"]));
    await_status(&dir, "a1 back", |s| s["healthy_nodes"] == 5);
    psql(&url, "INSERT INTO kv VALUES (13, 'v13')").unwrap();

    // The replica reads at the writer's VDL through the read-only endpoint.
    let ro = up.ready["read_only_psql"].as_str().unwrap().to_string();
    let vdl = psql(&url, "SELECT logdb_read_point()").unwrap();
    psql(&ro, &format!("SELECT logdb_wait_lsn({vdl})")).unwrap();
    assert_eq!(psql(&ro, "SELECT count(*) FROM kv").unwrap(), "13");
    let err = psql(&ro, "INSERT INTO kv VALUES (99, 'no')").unwrap_err();
    assert!(err.contains("read replica"), "{err}");

    // Failover: the replica becomes the writer; the read-write endpoint follows it.
    let out = ok(logdb(&dir, &["failover"]));
    assert!(out.starts_with("compute-1 is the writer"), "{out}");
    psql(&url, "INSERT INTO kv VALUES (14, 'after failover')").unwrap();
    assert_eq!(psql(&url, "SELECT count(*) FROM kv").unwrap(), "14");
    let s = await_status(&dir, "the old writer back as a replica", |s| {
        s["replicas"][0]["id"] == "compute-0" && s["replicas"][0]["read_point"].as_u64() > Some(0)
    });
    assert_eq!(s["writer"]["id"], "compute-1");
    let err = refused(logdb(&dir, &["failover", "--to", "compute-7"]));
    assert!(err.contains("no replica \"compute-7\""), "{err}");

    // `logdb down` stops everything and waits for it.
    assert!(ok(logdb(&dir, &["down"])).contains("stopped"));
    assert!(up.wait_exit().success());
    assert!(ports_free(&dir), "every process of the volume is gone");
    let err = refused(logdb(&dir, &["status"]));
    assert!(err.contains("no `logdb up` is running"), "{err}");
    drop(up);

    // Up again: the same volume, a new epoch, every row.
    let up = Up::start(&dir, &[]);
    assert_eq!(up.psql_url(), url, "the same address as before");
    assert!(
        up.ready["epoch"].as_u64() > s["epoch"].as_u64(),
        "recovery took a new epoch"
    );
    assert_eq!(
        psql(&url, "SELECT count(*), sum(k) FROM kv").unwrap(),
        "14|105"
    );
    let s = await_status(&dir, "six healthy nodes again", |s| s["healthy_nodes"] == 6);
    assert_eq!(s["phase"], "Ready");
}

#[test]
fn clear_errors_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let bins = bin_dir();
    let bins = bins.to_str().unwrap();

    // An invalid manifest: the file, the field and why.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: shop\nspec:\n  pageSize: 3000\n",
    )
    .unwrap();
    let err = refused(logdb(
        &dir,
        &["up", bad.to_str().unwrap(), "--bin-dir", bins],
    ));
    assert!(
        err.contains(&format!(
            "{}: spec.pageSize: 3000 is not a power of two between 4096 and 65536",
            bad.display()
        )),
        "{err}"
    );

    // The writer's port taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = refused(logdb(&dir, &["up", "--port", &port, "--bin-dir", bins]));
    assert!(
        err.contains(&format!(
            "port {port} on 127.0.0.1 (the read-write PostgreSQL endpoint) is taken"
        )),
        "{err}"
    );

    // The binaries missing.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = refused(logdb(
        &dir,
        &["up", "--port", "0", "--bin-dir", empty.to_str().unwrap()],
    ));
    assert!(err.contains("binary logdb-storage not found"), "{err}");

    // The data dir now holds volume "demo": a manifest of another volume is refused.
    let other = tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: shop\n",
    )
    .unwrap();
    let err = refused(logdb(
        &dir,
        &["up", other.to_str().unwrap(), "--bin-dir", bins],
    ));
    assert!(err.contains("holds volume \"demo\", not \"shop\""), "{err}");
}
