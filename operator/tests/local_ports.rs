//! `logdb up` never fails because of a port: no port is picked ahead for a child (each binds
//! port 0 and announces where it listens), a storage node is known by its id and data dir and
//! is followed wherever it lands, and only the two user-facing endpoints have fixed ports.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::local_up::{
    await_status, bin_dir, listening_ports, logdb, ok, port_of, psql, refused, status, Up,
};

/// Holds ephemeral ports the way a busy machine does while it runs: a rotating set of
/// listeners on port 0 and outgoing connections to them, churned until dropped.
struct PortHog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl PortHog {
    fn start() -> PortHog {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held: std::collections::VecDeque<(TcpListener, Option<TcpStream>)> =
                Default::default();
            let mut taken = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(l) = TcpListener::bind("127.0.0.1:0") {
                    let out = l
                        .local_addr()
                        .ok()
                        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok());
                    held.push_back((l, out));
                    taken += 1;
                }
                if held.len() > 400 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            taken
        });
        PortHog {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops churning; answers how many ports it took meanwhile.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for PortHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn manifest(dir: &Path, replicas: u32) -> String {
    let path = dir.join(format!("ports-{replicas}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: logdb.io/v1alpha1\nkind: LogVolume\nmetadata:\n  name: ports\nspec:\n  segmentSize: 64Mi\n  replicas: {replicas}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A pair of free ports below the ephemeral range for the two endpoints (`--port P` takes P and
/// P+1): a user-facing port is fixed once chosen, so the tests name one no port hog can take.
fn user_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 4;
    loop {
        let p = base + NEXT.fetch_add(2, Ordering::Relaxed) % 4_000;
        if common::local_up::port_free(p) && common::local_up::port_free(p + 1) {
            return p;
        }
    }
}

fn down(dir: &Path, mut up: Up) {
    assert!(ok(logdb(dir, &["down"])).contains("stopped"));
    assert!(up.wait_exit().success());
}

#[test]
fn fifty_starts_in_a_row_while_other_processes_take_ephemeral_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let file = manifest(tmp.path(), 0);
    let hog = PortHog::start();
    let mut dir = tmp.path().join("unused");
    for i in 0..50 {
        // A new volume every tenth start, resumed in between.
        let fresh = i % 10 == 0;
        if fresh {
            dir = tmp.path().join(format!("data-{i}"));
        }
        let up = if fresh {
            let port = user_port().to_string();
            Up::start(&dir, &[file.as_str(), "--port", &port])
        } else {
            Up::start(&dir, &[])
        };
        let url = up.psql_url();
        if fresh {
            psql(&url, "CREATE TABLE starts (n INTEGER)").unwrap();
        }
        psql(&url, &format!("INSERT INTO starts VALUES ({i})")).unwrap();
        let expected = (i % 10 + 1).to_string();
        assert_eq!(
            psql(&url, "SELECT count(*) FROM starts").unwrap(),
            expected,
            "start {i}"
        );
        down(&dir, up);
    }
    assert!(hog.stop() > 50, "the port hog held ports meanwhile");
}

#[test]
fn resumes_when_every_old_port_is_taken_and_follows_a_node_that_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = user_port().to_string();
    let up = Up::start(&dir, &[manifest(tmp.path(), 1).as_str(), "--port", &port]);
    let url = up.psql_url();
    let ro = up.ready["read_only_psql"].as_str().unwrap().to_string();
    assert_ne!(port_of(&url), port_of(&ro), "the two endpoints differ");
    psql(&url, "CREATE TABLE t (k INTEGER PRIMARY KEY)").unwrap();
    psql(&url, "INSERT INTO t VALUES (1), (2)").unwrap();
    let before = await_status(&dir, "six healthy nodes", |s| s["healthy_nodes"] == 6);
    let (rw_port, ro_port) = (port_of(&url).unwrap(), port_of(&ro).unwrap());
    let old: Vec<u16> = listening_ports(&before)
        .into_iter()
        .filter(|p| *p != rw_port && *p != ro_port)
        .collect();
    assert!(old.len() >= 1 + 2 * 2 + 6, "{old:?}");
    down(&dir, up);

    // Every port the config store, the storage nodes and the compute nodes had is taken now
    // (by this test, or by whatever else took it since).
    let squatters: Vec<TcpListener> = old
        .iter()
        .filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
        .collect();
    let up = Up::start(&dir, &[]);
    assert_eq!(up.psql_url(), url, "the user-facing endpoint stays");
    assert_eq!(psql(&url, "SELECT count(*) FROM t").unwrap(), "2");
    let now = await_status(&dir, "six healthy nodes after resume", |s| {
        s["healthy_nodes"] == 6
    });
    let moved = listening_ports(&now);
    assert!(
        moved.iter().all(|p| !old.contains(p)),
        "nothing listens on a taken port: old {old:?}, now {moved:?}"
    );

    // A storage node that comes back on another address is followed: with two others away,
    // commits need it.
    let a1_before = now["nodes"][0]["address"].as_str().unwrap().to_string();
    ok(logdb(&dir, &["node", "stop", "a1"]));
    let held = TcpListener::bind(a1_before.as_str()).ok();
    ok(logdb(&dir, &["node", "start", "a1"]));
    let s = await_status(&dir, "a1 back elsewhere", |s| s["healthy_nodes"] == 6);
    let a1_after = s["nodes"][0]["address"].as_str().unwrap().to_string();
    assert_ne!(a1_after, a1_before);
    ok(logdb(&dir, &["node", "stop", "b1"]));
    ok(logdb(&dir, &["node", "stop", "c1"]));
    psql(&url, "INSERT INTO t VALUES (3)").unwrap();
    let s = await_status(&dir, "a1 acknowledging at its new address", |s| {
        s["nodes"][0]["segments"][0]["scl"] == s["nodes"][1]["segments"][0]["scl"]
            && s["nodes"][0]["healthy"] == true
    });
    assert_eq!(s["nodes"][0]["address"], a1_after.as_str());
    // The replica reads the new row too.
    let vdl = psql(&url, "SELECT logdb_read_point()").unwrap();
    psql(&ro, &format!("SELECT logdb_wait_lsn({vdl})")).unwrap();
    assert_eq!(psql(&ro, "SELECT count(*) FROM t").unwrap(), "3");
    ok(logdb(&dir, &["node", "start", "b1"]));
    ok(logdb(&dir, &["node", "start", "c1"]));
    down(&dir, up);
    drop(held);
    drop(squatters);

    // The user-facing ports are the only fixed ones: taken, the error names which and who.
    let rw_taken = TcpListener::bind(("127.0.0.1", rw_port)).unwrap();
    let err = refused(logdb(
        &dir,
        &["up", "--bin-dir", bin_dir().to_str().unwrap()],
    ));
    assert!(
        err.contains(&format!(
            "port {rw_port} on 127.0.0.1 (the read-write PostgreSQL endpoint) is taken"
        )),
        "{err}"
    );
    drop(rw_taken);
    let ro_taken = TcpListener::bind(("127.0.0.1", ro_port)).unwrap();
    let err = refused(logdb(
        &dir,
        &["up", "--bin-dir", bin_dir().to_str().unwrap()],
    ));
    assert!(
        err.contains(&format!(
            "port {ro_port} on 127.0.0.1 (the read-only PostgreSQL endpoint) is taken"
        )),
        "{err}"
    );
    drop(ro_taken);
    let up = Up::start(&dir, &[]);
    assert_eq!(psql(&up.psql_url(), "SELECT count(*) FROM t").unwrap(), "3");
    let s = status(&dir);
    assert_eq!(s["phase"], "Ready");
    down(&dir, up);
}
