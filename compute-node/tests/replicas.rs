//! Read replicas and failover with real processes (DESIGN.md §6, §7): a config store member, six
//! storage nodes, and `logdb-compute --role auto` processes — the config store decides who
//! writes. Replicas follow the writer's feed, read at one read point per transaction, never go
//! backwards, reject writes, and serve read-your-writes through `logdb_wait_lsn`. Failover moves
//! the writer while a workload runs and loses no acknowledged commit; a paused old writer that
//! wakes up after it cannot write anything.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{auto_compute, failover, setup, Writer};

fn compute(member: &str, id: &str) -> Writer {
    auto_compute(member, id, &[])
}

async fn lsn(c: &tokio_postgres::Client, sql: &str) -> u64 {
    let row = c.query_one(sql, &[]).await.unwrap();
    row.get::<_, i64>(0) as u64
}

/// Inserts rows `ids` with value `v`, one autocommit statement each (each must succeed).
async fn insert(c: &tokio_postgres::Client, ids: std::ops::Range<i64>, v: &str) {
    for i in ids {
        c.execute(&format!("INSERT INTO t VALUES ({i}, '{v}')"), &[])
            .await
            .unwrap();
    }
}

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits (on a blocking thread) for `w`'s next announcement and checks its role.
async fn await_role(mut w: Writer, role: &str) -> Writer {
    let w2 = tokio::task::spawn_blocking(move || {
        w.await_announce(Duration::from_secs(60))
            .expect("no restart in the new role");
        w
    })
    .await
    .unwrap();
    assert_eq!(w2.role, role);
    w2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_read_your_writes_and_never_go_back() {
    let s = setup("vol1", 8 << 20, 64 << 20).await;
    let writer = compute(&s.member.addr, "c0");
    assert_eq!(writer.role, "writer");
    let mut replica = compute(&s.member.addr, "c1");
    assert_eq!(replica.role, "replica");
    assert_eq!(replica.epoch, writer.epoch);

    let w = writer.client().await;
    w.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    insert(&w, 0..50, "x").await;
    let committed = lsn(&w, "SELECT logdb_commit_lsn()").await;
    assert!(committed > 0);

    // Read your writes: wait for the commit LSN, then the rows are there.
    let r = replica.client().await;
    let rp = lsn(&r, &format!("SELECT logdb_wait_lsn({committed})")).await;
    assert!(rp >= committed);
    assert_eq!(count(&r).await, 50);

    // Writes are refused with SQLSTATE 25006 and a message that says why.
    let err = r
        .execute("INSERT INTO t VALUES (1000, 'no')", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "25006");
    assert!(db.message().contains("read replica"), "{}", db.message());
    // A wait that cannot be met ends with a clear error.
    let err = r
        .query_one(
            &format!("SELECT logdb_wait_lsn({}, 200)", committed + 1_000_000),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");

    // One read point per transaction: a transaction open on the replica keeps seeing 50 rows
    // while the writer commits more; the next one sees them.
    r.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&r).await, 50);
    insert(&w, 50..60, "y").await;
    let committed = lsn(&w, "SELECT logdb_commit_lsn()").await;
    assert_eq!(
        count(&r).await,
        50,
        "the read point holds inside a transaction"
    );
    r.batch_execute("COMMIT").await.unwrap();
    lsn(&r, &format!("SELECT logdb_wait_lsn({committed})")).await;
    assert_eq!(count(&r).await, 60);

    // Lag is measured.
    let text = replica.scrape().await;
    assert!(
        logdb_common::metrics_http::sum(&text, "logdb_compute_replica_lag_seconds_count") > 0.0,
        "{text}"
    );

    // Monotonic reads across a replica restart: the new process starts at or past the old
    // read point.
    let before = lsn(&r, "SELECT logdb_read_point()").await;
    drop(r);
    replica.kill9();
    let replica = compute(&s.member.addr, "c1");
    assert_eq!(replica.role, "replica");
    let r = replica.client().await;
    let after = lsn(&r, "SELECT logdb_read_point()").await;
    assert!(after >= before, "read point went back: {before} -> {after}");
    assert_eq!(count(&r).await, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_mid_workload_loses_no_acknowledged_commit() {
    let s = setup("vol1", 8 << 20, 64 << 20).await;
    let writer = compute(&s.member.addr, "c0");
    let c1 = compute(&s.member.addr, "c1");
    let c2 = compute(&s.member.addr, "c2");
    assert_eq!((c1.role.as_str(), c2.role.as_str()), ("replica", "replica"));
    writer
        .client()
        .await
        .batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();

    // The workload: inserts on the old writer, recording what was acknowledged.
    let w = writer.client().await;
    let workload = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000i64 {
            match w
                .execute(&format!("INSERT INTO t VALUES ({}, 'w')", i), &[])
                .await
            {
                Ok(_) => acked.push(i),
                Err(_) => break,
            }
        }
        acked
    });
    // Fail over once the workload is well under way.
    let probe = writer.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&probe).await < 20 {
        assert!(Instant::now() < deadline, "the workload did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let v = failover(&s, "c1").await;
    assert_eq!(v.writer, "c1");
    let c1 = await_role(c1, "writer").await;
    // The old writer's clients get an error, not a hang.
    let acked = tokio::time::timeout(Duration::from_secs(30), workload)
        .await
        .expect("the old writer's client hung")
        .unwrap();
    assert!(acked.len() > 5, "the workload ran before the failover");
    let nw = c1.client().await;
    nw.execute("INSERT INTO t VALUES (-1, 'new writer')", &[])
        .await
        .unwrap();
    eprintln!(
        "failover to the first accepted write: {:?}",
        started.elapsed()
    );

    let ids: BTreeSet<i64> = nw
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &acked {
        assert!(
            ids.contains(id),
            "acknowledged row {id} lost in the failover"
        );
    }
    // The other replica follows the new writer; the old writer comes back as a replica.
    let committed = lsn(&nw, "SELECT logdb_commit_lsn()").await;
    let r2 = c2.client().await;
    lsn(&r2, &format!("SELECT logdb_wait_lsn({committed})")).await;
    let seen: i64 = r2
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen as usize, ids.len());
    let old = await_role(writer, "replica").await;
    let r0 = old.client().await;
    lsn(&r0, &format!("SELECT logdb_wait_lsn({committed})")).await;
    assert_eq!(count(&r0).await as usize, ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_writer_cannot_write_after_a_failover() {
    let s = setup("vol1", 8 << 20, 64 << 20).await;
    let writer = compute(&s.member.addr, "c0");
    let c1 = compute(&s.member.addr, "c1");
    let old = writer.client().await;
    old.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    old.execute("INSERT INTO t VALUES (1, 'before')", &[])
        .await
        .unwrap();

    writer.signal("STOP");
    failover(&s, "c1").await;
    let c1 = await_role(c1, "writer").await;
    let nw = c1.client().await;
    insert(&nw, 2..21, "new").await;
    writer.signal("CONT");
    // Every write the old writer then tries fails: storage refuses its epoch (or it has
    // already stepped down); nothing it does becomes durable.
    for i in 100..110i64 {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            old.execute(&format!("INSERT INTO t VALUES ({}, 'old')", i), &[]),
        )
        .await
        .expect("the old writer's client hung");
        assert!(r.is_err(), "the old writer acknowledged write {i}");
    }
    let rows: Vec<(i64, String)> = nw
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|(id, v)| *id < 100 && v != "old"));
    // The old process comes back as a replica of the new writer.
    let old_proc = await_role(writer, "replica").await;
    assert!(old_proc.epoch >= c1.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_loss_keeps_writing_and_zone_plus_one_keeps_reading() {
    let mut s = setup("vol1", 8 << 20, 64 << 20).await;
    let writer = compute(&s.member.addr, "c0");
    let replica = compute(&s.member.addr, "c1");
    let w = writer.client().await;
    w.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    let mut acked: Vec<i64> = (0..20).collect();
    insert(&w, 0..20, "a").await;
    // Zone a gone (a1, a2): writes go on.
    s.cluster.nodes[0].kill9();
    s.cluster.nodes[1].kill9();
    insert(&w, 20..40, "b").await;
    acked.extend(20..40);
    // Zone + 1 (b1 too): no write quorum — a commit waits; the replica keeps reading.
    s.cluster.nodes[2].kill9();
    let w2 = writer.client().await;
    let pending =
        tokio::spawn(async move { w2.execute("INSERT INTO t VALUES (1000, 'c')", &[]).await });
    let r = replica.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if count(&r).await == 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never saw the 40 rows"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pending.is_finished(),
        "a commit finished without a write quorum"
    );
    // b1 comes back: the waiting commit completes, nothing acknowledged is lost.
    s.cluster.nodes[2].restart_same_port();
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the commit did not resume")
        .unwrap()
        .unwrap();
    let ids: BTreeSet<i64> = w
        .query("SELECT id FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(acked.iter().all(|i| ids.contains(i)));
    assert!(ids.contains(&1000));
}

/// The lowest horizon over the volume's segments, and the newest.
async fn horizons(s: &common::Setup) -> (u64, u64) {
    use logdb_types::proto::{storage_service_client::StorageServiceClient, SegmentRef};
    let mut lowest = u64::MAX;
    let mut highest = 0;
    for m in &s.volume.pgs[0].members {
        let mut c = StorageServiceClient::connect(format!("http://{}", m.address))
            .await
            .unwrap();
        let st = c
            .get_segment_state(SegmentRef {
                volume_id: "vol1".into(),
                segment_id: m.segment.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        lowest = lowest.min(st.horizon_lsn);
        highest = highest.max(st.horizon_lsn);
    }
    (lowest, highest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_read_point_holds_the_retention_horizon() {
    // A 2 s retention window, GC every 100 ms: without the replica's leases the horizon would
    // pass its read point while a transaction there is still open.
    let s = common::setup_with("vol1", 8 << 20, 64 << 20, 2, &["--gc-interval-ms", "100"]).await;
    let writer = compute(&s.member.addr, "c0");
    // A small pool and page cache: the replica's reads go to storage at its read point.
    let replica = auto_compute(
        &s.member.addr,
        "c1",
        &[
            "--pool-pages",
            "16",
            "--cache-pages",
            "8",
            // Held however long the transaction below takes (the default: twice the window).
            "--max-hold-history-secs",
            "3600",
        ],
    );
    assert_eq!(replica.role, "replica");
    let w = writer.client().await;
    w.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    w.batch_execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 399) \
         INSERT INTO t SELECT i, printf('%0900d', i) FROM n",
    )
    .await
    .unwrap();
    let committed = lsn(&w, "SELECT logdb_commit_lsn()").await;

    let r = replica.client().await;
    lsn(&r, &format!("SELECT logdb_wait_lsn({committed})")).await;
    r.batch_execute("BEGIN").await.unwrap();
    let sum = "SELECT count(*), max(v) FROM t";
    let before = r.query_one(sum, &[]).await.unwrap();
    let read_point = lsn(&r, "SELECT logdb_read_point()").await;
    assert_eq!(before.get::<_, i64>(0), 400);

    // The writer rewrites every row for longer than the window, until the segments' GC has
    // moved a horizon (it may, up to the replica's lease).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        round += 1;
        w.batch_execute(&format!("UPDATE t SET v = printf('%0900d', id + {round})"))
            .await
            .unwrap();
        let (_, highest) = horizons(&s).await;
        if highest > 0 && round >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "GC never moved a horizon");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, highest) = horizons(&s).await;
    assert!(
        highest < read_point,
        "a horizon ({highest}) passed the replica's read point ({read_point})"
    );
    // The transaction still reads its snapshot, from storage.
    let again = r.query_one(sum, &[]).await.unwrap();
    assert_eq!(again.get::<_, i64>(0), 400);
    assert_eq!(again.get::<_, String>(1), before.get::<_, String>(1));
    assert_eq!(again.get::<_, String>(1), format!("{:0900}", 399));
    assert_eq!(
        r.query_one("SELECT min(v) FROM t", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        format!("{:0900}", 0),
        "the rows as of the read point"
    );
    r.batch_execute("COMMIT").await.unwrap();

    // Its read point moves on, and so do the leases: the horizon passes the old read point.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.batch_execute("UPDATE t SET v = v WHERE id = 0")
            .await
            .unwrap();
        let (lowest, _) = horizons(&s).await;
        if lowest > read_point {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the horizon stayed at {lowest}, below the released read point {read_point}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = replica.scrape().await;
    assert!(
        logdb_common::metrics_http::sum(&text, "logdb_compute_history_leases_total") > 0.0,
        "{text}"
    );
}
