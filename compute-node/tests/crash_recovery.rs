//! A writer killed (-9) in the middle of one large transaction, with real processes: after the
//! restart the transaction is wholly there or wholly absent, `PRAGMA integrity_check` says ok,
//! and every commit acknowledged before it is there. Killed while SQLite runs the statement,
//! while its records are being shipped (some on a write quorum, the commit record not), and
//! after its commit record reached a minority; with one protection group, and with small ones so
//! the transaction spans several; and with a replica taking over (a failover through the config
//! store) instead of a restart.

mod common;

use std::time::{Duration, Instant};

use common::{auto_compute, failover, setup, Cluster, Setup, Writer};
use logdb_config_store::api::proto;

/// Rows the large transaction inserts (about 10 MB of redo).
const BIG: u64 = 100_000;
/// Committed rows before it.
const BEFORE: u64 = 50;

#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// While SQLite executes the statement: nothing shipped yet.
    Executing,
    /// Some of its records on a write quorum of a PG, its commit record not.
    MidShipping,
    /// Everything shipped, commit record included, but only three segments up: no quorum.
    CommitOnMinority,
}

fn sum_metric(text: &str, name: &str, label: Option<&str>) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && label.is_none_or(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// The 4th-highest acknowledged SCL of each PG of the writer: records at or below it are on a
/// write quorum.
fn quorum_scls(text: &str, pgs: usize) -> Vec<f64> {
    (0..pgs)
        .map(|k| {
            let mut v = sum_metric(
                text,
                "logdb_compute_segment_acked_scl",
                Some(&format!("segment=\"pg{k}-")),
            );
            v.sort_by(|a, b| b.partial_cmp(a).unwrap());
            v.get(3).copied().unwrap_or(0.0)
        })
        .collect()
}

/// psql running `sql` against the writer on `port` in a thread (it may wait for ever: the test
/// kills the writer under it).
fn psql_in_background(port: u16, sql: String) -> std::thread::JoinHandle<std::process::Output> {
    std::thread::spawn(move || {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "logdb"])
            .args(["-d", "vol1", "-X", "-q", "-c", &sql])
            .env("PGPASSWORD", common::PASSWORD)
            .output()
            .expect("psql")
    })
}

/// The table, and `BEFORE` acknowledged commits before the large transaction.
fn load_before(writer: &Writer) {
    writer
        .psql("CREATE TABLE big (id INTEGER PRIMARY KEY, filler TEXT)")
        .unwrap();
    for i in 1..=BEFORE {
        writer
            .psql(&format!("INSERT INTO big VALUES ({i}, 'acknowledged {i}')"))
            .unwrap();
    }
}

/// The large transaction: one statement inserting `BIG` rows.
fn big_insert() -> String {
    format!(
        "WITH RECURSIVE x(n) AS (SELECT {} UNION ALL SELECT n + 1 FROM x WHERE n < {}) \
         INSERT INTO big SELECT n, printf('%84d', n) FROM x",
        BEFORE + 1,
        BEFORE + BIG
    )
}

/// After recovery (`what`): the large transaction wholly there or wholly absent, the database
/// intact, every commit acknowledged before it there.
fn assert_whole_or_absent(writer: &Writer, what: &str) {
    let count: u64 = writer
        .psql("SELECT count(*) FROM big")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        count == BEFORE || count == BEFORE + BIG,
        "{what}: {count} rows: the transaction is neither whole nor absent"
    );
    assert_eq!(
        writer.psql("PRAGMA integrity_check").unwrap().trim(),
        "ok",
        "{what}"
    );
    assert_eq!(
        writer
            .psql(&format!("SELECT count(*) FROM big WHERE id <= {BEFORE}"))
            .unwrap()
            .trim(),
        BEFORE.to_string(),
        "{what}: every acknowledged commit is there"
    );
}

async fn crash_in_big_transaction(pgs: usize, pages_per_pg: u64, at: KillPoint) {
    let cluster = Cluster::start(pgs, pages_per_pg);
    let extra = ["--max-batch-bytes", "65536"];
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let args = [&["--layout", layout.as_str()][..], &extra[..]].concat();
    let mut writer = Writer::start_with(&args);
    load_before(&writer);
    let vdl_before = sum_metric(&writer.scrape().await, "logdb_compute_vdl ", None)[0];
    let stopped: Vec<usize> = match at {
        KillPoint::CommitOnMinority => vec![3, 4, 5],
        _ => vec![],
    };
    for &i in &stopped {
        cluster.nodes[i].signal("STOP");
    }

    let shipped_before = sum_metric(
        &writer.scrape().await,
        "logdb_compute_records_shipped",
        None,
    )
    .first()
    .copied()
    .unwrap_or(0.0);
    let started = Instant::now();
    let port = writer.port;
    let client = psql_in_background(port, big_insert());

    // Wait for the kill point.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "kill point {at:?} never reached");
        let text = writer.scrape().await;
        let shipped = sum_metric(&text, "logdb_compute_records_shipped", None)
            .first()
            .copied()
            .unwrap_or(0.0);
        let vdl = sum_metric(&text, "logdb_compute_vdl ", None)[0];
        assert_eq!(
            vdl, vdl_before,
            "the large transaction committed before {at:?}"
        );
        let ready = match at {
            // SQLite is still running the statement (it takes seconds): nothing of it shipped.
            KillPoint::Executing => {
                started.elapsed() > Duration::from_millis(150) && shipped == shipped_before
            }
            KillPoint::MidShipping => quorum_scls(&text, pgs).iter().any(|q| *q > vdl_before),
            KillPoint::CommitOnMinority => {
                let queued = sum_metric(&text, "logdb_compute_segment_queued_records", None);
                // Shipped, and the three running segments of every PG have it all.
                shipped > 0.0 && queued.iter().filter(|q| **q == 0.0).count() >= 3 * pgs
            }
        };
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    writer.kill9();
    let out = client.join().unwrap();
    assert!(
        !out.status.success(),
        "the large transaction was not acknowledged"
    );
    for &i in &stopped {
        cluster.nodes[i].signal("CONT");
    }

    let writer = Writer::start_with(&args);
    assert_whole_or_absent(&writer, &format!("{at:?}"));
    // The volume goes on: a new commit, then all six segments agree after another restart.
    writer
        .psql("INSERT INTO big VALUES (-1, 'after recovery')")
        .unwrap();
    drop(writer);
    let writer = Writer::start_with(&args);
    assert_eq!(
        writer
            .psql("SELECT count(*) FROM big WHERE id = -1")
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(writer.psql("PRAGMA integrity_check").unwrap().trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_while_executing_a_large_transaction() {
    crash_in_big_transaction(1, 1 << 20, KillPoint::Executing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_shipping_one_pg() {
    crash_in_big_transaction(1, 1 << 20, KillPoint::MidShipping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_shipping_across_pgs() {
    crash_in_big_transaction(8, 512, KillPoint::MidShipping).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_with_the_commit_record_on_a_minority() {
    crash_in_big_transaction(8, 512, KillPoint::CommitOnMinority).await;
}

/// Acknowledged SCL the writer's metrics show for `segment`.
fn acked_scl(text: &str, segment: &str) -> f64 {
    sum_metric(
        text,
        "logdb_compute_segment_acked_scl",
        Some(&format!("segment=\"{segment}\"")),
    )
    .first()
    .copied()
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_away_through_two_failovers_drops_the_old_tail_and_converges() {
    let cluster = Cluster::start(1, 1 << 16);
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let args = ["--layout", layout.as_str()];
    let mut w1 = Writer::start_with(&args);
    w1.psql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    w1.psql("INSERT INTO t VALUES (1, 'one')").unwrap();
    let vdl = sum_metric(&w1.scrape().await, "logdb_compute_vdl ", None)[0];

    // Only a1 runs: writer 1's next transaction reaches a1 alone and is never acknowledged.
    for n in &cluster.nodes[1..] {
        n.signal("STOP");
    }
    let port = w1.port;
    let client = psql_in_background(port, "INSERT INTO t VALUES (2, 'old tail')".to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_scl(&w1.scrape().await, "pg0-a1") <= vdl {
        assert!(Instant::now() < deadline, "a1 never got the old tail");
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.nodes[0].signal("STOP");
    w1.kill9();
    assert!(!client.join().unwrap().status.success());
    for n in &cluster.nodes[1..] {
        n.signal("CONT");
    }

    // Two recoveries while a1 is away: each writer commits, the first one then dies.
    let w2 = Writer::start_with(&args);
    w2.psql("INSERT INTO t VALUES (3, 'writer 2')").unwrap();
    drop(w2);
    let w3 = Writer::start_with(&args);
    w3.psql("INSERT INTO t VALUES (4, 'writer 3')").unwrap();

    // a1 returns holding writer 1's tail: it adopts the decisions, drops the tail, catches up.
    cluster.nodes[0].signal("CONT");
    w3.psql("INSERT INTO t VALUES (5, 'after a1 returned')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = w3.scrape().await;
        let vdl = sum_metric(&text, "logdb_compute_vdl ", None)[0];
        let scls: Vec<f64> = cluster
            .nodes
            .iter()
            .map(|n| acked_scl(&text, &format!("pg0-{}", n.node_id)))
            .collect();
        if scls.iter().all(|s| *s >= vdl) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segments never converged: {scls:?} (VDL {vdl})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        w3.psql("SELECT group_concat(k) FROM t").unwrap().trim(),
        "1,3,4,5",
        "the unacknowledged row is gone, every acknowledged one is there"
    );

    // All six segments serve identical pages.
    let pages: u64 = w3
        .psql("PRAGMA page_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut clients = Vec::new();
    for n in &cluster.nodes {
        clients.push((n.node_id.clone(), n.client().await));
    }
    for page in 0..pages {
        let mut images = Vec::new();
        for (id, c) in clients.iter_mut() {
            let r = c
                .read_page(logdb_types::proto::ReadPageRequest {
                    volume_id: "vol1".into(),
                    page_id: page,
                    requested_lsn: 0,
                    segment_id: format!("pg0-{id}"),
                })
                .await
                .unwrap()
                .into_inner();
            images.push((id.clone(), r.page_data));
        }
        for (id, img) in &images[1..] {
            assert!(
                img == &images[0].1,
                "page {page}: {id} differs from {}",
                images[0].0
            );
        }
    }
}

fn compute(s: &Setup, id: &str) -> Writer {
    auto_compute(&s.member.addr, id, &["--max-batch-bytes", "65536"])
}

async fn get_volume(s: &Setup) -> proto::Volume {
    let req = proto::VolumeRef {
        name: "vol1".into(),
    };
    s.client
        .call(|mut c| {
            let r = req.clone();
            async move { c.get_volume(r).await }
        })
        .await
        .unwrap()
}

/// The writer is killed (-9) mid-shipping a large transaction and the config store promotes a
/// replica (no restart of the old writer): the new writer's volume holds the transaction whole
/// or not at all, every acknowledged commit, and passes `PRAGMA integrity_check`.
async fn takeover_in_big_transaction(segment_size: u64, pgs: usize) {
    let s = setup("vol1", segment_size, 1 << 30).await;
    // Grow the volume to `pgs` protection groups first, so the transaction spans them.
    let mut volume = get_volume(&s).await;
    while volume.pgs.len() < pgs {
        let req = proto::ReportUsageRequest {
            volume: "vol1".into(),
            used_bytes: volume.pgs.len() as u64 * segment_size,
        };
        s.client
            .call(|mut c| {
                let r = req.clone();
                async move { c.report_usage(r).await }
            })
            .await
            .unwrap();
        volume = get_volume(&s).await;
    }
    let mut writer = compute(&s, "c0");
    let replica = compute(&s, "c1");
    assert_eq!(
        (writer.role.as_str(), replica.role.as_str()),
        ("writer", "replica")
    );
    load_before(&writer);
    let vdl_before = sum_metric(&writer.scrape().await, "logdb_compute_vdl ", None)[0];
    let client = psql_in_background(writer.port, big_insert());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the transaction never shipped");
        let text = writer.scrape().await;
        let vdl = sum_metric(&text, "logdb_compute_vdl ", None)[0];
        assert_eq!(vdl, vdl_before, "the large transaction committed too soon");
        if quorum_scls(&text, pgs).iter().any(|q| *q > vdl_before) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.kill9();
    assert!(
        !client.join().unwrap().status.success(),
        "the large transaction was not acknowledged"
    );

    let v = failover(&s, "c1").await;
    assert_eq!(v.writer, "c1");
    let mut replica = replica;
    let replica = tokio::task::spawn_blocking(move || {
        replica
            .await_announce(Duration::from_secs(60))
            .expect("the replica never restarted as the writer");
        replica
    })
    .await
    .unwrap();
    assert_eq!(replica.role, "writer");
    assert_whole_or_absent(&replica, "after the takeover");
    replica
        .psql("INSERT INTO big VALUES (-1, 'after the takeover')")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_takes_over_from_a_writer_killed_mid_shipping_one_pg() {
    takeover_in_big_transaction(1 << 30, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_takes_over_from_a_writer_killed_mid_shipping_across_pgs() {
    takeover_in_big_transaction(4 << 20, 6).await;
}
