//! Storage failures under a running workload, with real processes: kill any two storage nodes and
//! commits go on; kill a third and commits wait — no errors — until a node returns; afterwards
//! every commit the client saw acknowledged is in the database.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Writer};

struct Workload {
    acked: Arc<Mutex<Vec<i64>>>,
    errors: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    async fn start(writer: &Writer) -> Workload {
        let client = writer.client().await;
        let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e) = (Arc::clone(&acked), Arc::clone(&errors));
        let (n, s) = (Arc::clone(&count), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let stmt = client
                .prepare_typed(
                    "INSERT INTO t (id, v) VALUES ($1, $2)",
                    &[
                        tokio_postgres::types::Type::INT8,
                        tokio_postgres::types::Type::TEXT,
                    ],
                )
                .await
                .unwrap();
            let mut id = 1i64;
            while !s.load(Ordering::SeqCst) {
                match client.execute(&stmt, &[&id, &format!("row {id}")]).await {
                    Ok(_) => {
                        a.lock().unwrap().push(id);
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(err) => e.lock().unwrap().push(format!("{id}: {err:?}")),
                }
                id += 1;
            }
        });
        Workload {
            acked,
            errors,
            count,
            stop,
            task,
        }
    }

    async fn wait_for(&self, n: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} commits",
                self.count.load(Ordering::SeqCst)
            );
            assert!(
                self.errors.lock().unwrap().is_empty(),
                "{what}: errors {:?}",
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dead_nodes_never_stop_commits_a_third_makes_them_wait() {
    let mut cluster = Cluster::start(2, 256);
    let writer = Writer::start(&cluster.layout_path);
    writer
        .psql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .unwrap();
    let w = Workload::start(&writer).await;
    w.wait_for(30, "healthy").await;

    // A whole zone plus nothing else: a1 and a2 — then b1 instead of a2 to vary it.
    cluster.nodes[0].kill9(); // a1
    cluster.nodes[2].kill9(); // b1
    let n = w.count.load(Ordering::SeqCst);
    w.wait_for(n + 50, "two storage nodes dead").await;

    // A third: only 3 of 6 remain, no write quorum. Commits wait; nobody gets an error.
    cluster.nodes[4].kill9(); // c1
                              // Let in-flight commits settle (they may still have reached 4 before the kill).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = w.count.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        w.count.load(Ordering::SeqCst),
        stalled_at,
        "a commit was acknowledged without a write quorum"
    );
    assert!(
        w.errors.lock().unwrap().is_empty(),
        "waiting commits must not fail: {:?}",
        w.errors.lock().unwrap()
    );

    // The writer says which segments it cannot reach.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = writer.scrape().await;
        let up = |seg: &str| {
            m.lines()
                .any(|l| l == format!("logdb_compute_segment_up{{segment=\"{seg}\"}} 1"))
        };
        let down = |seg: &str| {
            m.lines()
                .any(|l| l == format!("logdb_compute_segment_up{{segment=\"{seg}\"}} 0"))
        };
        if ["pg0-a1", "pg0-b1", "pg0-c1"].iter().all(|s| down(s))
            && ["pg0-a2", "pg0-b2", "pg0-c2"].iter().all(|s| up(s))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment status never showed a1, b1, c1 down:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // c1 returns (same address): it receives what it missed and commits resume.
    cluster.nodes[4].restart_same_port();
    w.wait_for(stalled_at + 50, "third node back").await;

    w.stop.store(true, Ordering::SeqCst);
    w.task.await.unwrap();
    assert!(
        w.errors.lock().unwrap().is_empty(),
        "{:?}",
        w.errors.lock().unwrap()
    );
    let acked = w.acked.lock().unwrap().clone();
    let client = writer.client().await;
    let rows = client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let ids: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = acked
        .iter()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    assert!(missing.is_empty(), "acknowledged commits lost: {missing:?}");
    assert!(acked.len() >= 130, "{} commits", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_paused_nodes_do_not_slow_commits_and_catch_up_when_resumed() {
    let cluster = Cluster::start(1, 512);
    let writer = Writer::start(&cluster.layout_path);
    writer
        .psql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .unwrap();
    let w = Workload::start(&writer).await;
    w.wait_for(20, "healthy").await;

    // SIGSTOP: alive, connected, silent — the slowest two of six.
    cluster.nodes[1].signal("STOP"); // a2
    cluster.nodes[5].signal("STOP"); // c2
    let n = w.count.load(Ordering::SeqCst);
    w.wait_for(n + 100, "two nodes paused").await;

    cluster.nodes[1].signal("CONT");
    cluster.nodes[5].signal("CONT");
    let n = w.count.load(Ordering::SeqCst);
    w.wait_for(n + 20, "nodes resumed").await;
    w.stop.store(true, Ordering::SeqCst);
    w.task.await.unwrap();

    // The paused segments received everything they missed: their SCL reaches the others'.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = writer.scrape().await;
        let scl = |seg: &str| -> u64 {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "logdb_compute_segment_acked_scl{{segment=\"{seg}\"}} "
                    ))
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let top = scl("pg0-a1");
        if top > 0 && scl("pg0-a2") == top && scl("pg0-c2") == top {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "paused segments did not catch up:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        w.errors.lock().unwrap().is_empty(),
        "{:?}",
        w.errors.lock().unwrap()
    );
}
