//! Session hygiene that recovery and every other writer depend on, with real processes: a
//! session idle inside a writing transaction is rolled back and ended (25P03) so the next writer
//! goes on; back-pressure refuses a transaction with a clear error after a bounded wait instead
//! of blocking the writer for ever.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_ended_and_the_next_writer_goes_on() {
    let cluster = Cluster::start(1, 1 << 16);
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let writer = Writer::start_with(&[
        "--layout",
        &layout,
        "--idle-in-transaction-timeout-ms",
        "500",
    ]);
    let a = writer.client().await;
    a.batch_execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    // A function call inside the transaction does not reset the watchdog for good.
    a.batch_execute("SELECT logdb_commit_lsn()").await.unwrap();
    // A stays idle holding the write turn; B's write waits for it, then goes on.
    let b = writer.client().await;
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        b.batch_execute("INSERT INTO t VALUES (2)"),
    )
    .await
    .expect("the second writer is not held back for ever")
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "B waited for A's turn"
    );
    let err = a
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "25P03", "{db:?}");
    assert!(
        db.message().contains("idle-in-transaction timeout"),
        "{}",
        db.message()
    );
    // A's transaction is gone; the session stays ended.
    assert!(a.batch_execute("SELECT 1").await.is_err());
    let rows = b.query("SELECT k FROM t ORDER BY k", &[]).await.unwrap();
    let ks: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ks, [2]);
    // A session that is busy, not idle, is left alone.
    b.batch_execute("BEGIN").await.unwrap();
    for k in 10..16 {
        b.batch_execute(&format!("INSERT INTO t VALUES ({k})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.batch_execute("COMMIT").await.unwrap();
    let n: i64 = b
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_refuses_after_a_bounded_wait_and_commits_resume() {
    let cluster = Cluster::start(1, 1 << 16);
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let writer = Writer::start_with(&[
        "--layout",
        &layout,
        "--lal",
        "30",
        "--backpressure-timeout-ms",
        "1000",
    ]);
    let c = writer.client().await;
    c.batch_execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    // No write quorum: nothing becomes durable, records pile up above VDL.
    for n in &cluster.nodes[3..] {
        n.signal("STOP");
    }
    let mut tasks = Vec::new();
    for k in 0..12 {
        let client = writer.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("INSERT INTO t VALUES ({k}, 'x')"))
                .await
                .map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                })
        }));
    }
    // Within a few seconds some are refused with the back-pressure error, the rest wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tasks.iter().filter(|t| t.is_finished()).count() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing was refused by back-pressure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in &cluster.nodes[3..] {
        n.signal("CONT");
    }
    let mut refused = 0;
    let mut committed = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap()
        {
            Ok(()) => committed.push(k as i64),
            Err(msg) => {
                assert!(msg.contains("back-pressure"), "{msg}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && !committed.is_empty(),
        "refused {refused}, committed {committed:?}"
    );
    let rows = c.query("SELECT k FROM t ORDER BY k", &[]).await.unwrap();
    let ks: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ks, committed, "exactly the acknowledged rows");
    c.batch_execute("INSERT INTO t VALUES (100, 'after')")
        .await
        .unwrap();
}

/// Redo records the writer has made so far (its commits' local apply).
async fn redo_made(w: &Writer) -> f64 {
    logdb_common::metrics_http::sum(&w.scrape().await, "logdb_compute_redo_records_total")
}

async fn count_rows(c: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .map(|r| r.get(0))
}

/// Starts another session's `count(*)` and checks, for `look` (a bounded look for something
/// that must not happen), that it is not answered: what it would read is not durable.
async fn read_held_back(
    writer: &Writer,
    look: Duration,
) -> tokio::task::JoinHandle<Result<i64, tokio_postgres::Error>> {
    let b = writer.client().await;
    let read = tokio::spawn(async move { count_rows(&b).await });
    tokio::time::sleep(look).await;
    assert!(
        !read.is_finished(),
        "a read was answered with a commit no quorum holds: {:?}",
        read.await
    );
    read
}

/// Lets the three stopped storage nodes go on: the write quorum is back.
fn resume(cluster: &Cluster) {
    for n in &cluster.nodes[..3] {
        n.signal("CONT");
    }
}

/// Stops three of the six storage nodes (no write quorum: nothing becomes durable), runs
/// `INSERT INTO t VALUES (id)` in a task, and returns once the writer has applied it locally
/// (its redo is made and its pages are in the buffer pool) — with the commit not answered.
async fn commit_locally_only(
    cluster: &Cluster,
    writer: &Writer,
    id: i64,
) -> tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>> {
    commit_sql_locally_only(cluster, writer, format!("INSERT INTO t VALUES ({id})")).await
}

async fn commit_sql_locally_only(
    cluster: &Cluster,
    writer: &Writer,
    sql: String,
) -> tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>> {
    for n in &cluster.nodes[..3] {
        n.signal("STOP");
    }
    let before = redo_made(writer).await;
    let a = writer.client().await;
    let insert = tokio::spawn(async move { a.execute(&sql, &[]).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while redo_made(writer).await <= before {
        assert!(
            Instant::now() < deadline,
            "the insert was never applied locally"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!insert.is_finished(), "answered without a write quorum");
    insert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_is_answered_with_a_commit_that_is_not_durable() {
    let cluster = Cluster::start(1, 256);
    let mut writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    c.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // A commit applied locally but not durable: another session's read is not answered...
    let insert = commit_locally_only(&cluster, &writer, 2).await;
    let read = read_held_back(&writer, Duration::from_secs(2)).await;
    // ...until the commit is durable; then with it.
    resume(&cluster);
    assert_eq!(insert.await.unwrap().unwrap(), 1);
    assert_eq!(read.await.unwrap().unwrap(), 2);

    // Again, and the writer crashes between the local apply and durability: the waiting read
    // ends with an error, never with the row.
    let insert = commit_locally_only(&cluster, &writer, 3).await;
    let read = read_held_back(&writer, Duration::from_secs(1)).await;
    writer.kill9();
    assert!(read.await.unwrap().is_err(), "the read was answered");
    assert!(
        insert.await.unwrap().is_err(),
        "the insert was acknowledged"
    );
    resume(&cluster);
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    // Row 3 was never acknowledged to anyone: recovery may keep it or not, whole.
    let n = count_rows(&c).await.unwrap();
    assert!(n == 2 || n == 3, "{n} rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_connection_is_refused_with_53300() {
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start(&cluster.layout_path);
    // A hundred sessions (the default max_connections); they cost no SQLite connection until
    // their first statement.
    let mut open = Vec::new();
    for _ in 0..100 {
        open.push(writer.client().await);
    }
    open[0].batch_execute("CREATE TABLE t (x)").await.unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=logdb password={} dbname=vol1",
        writer.port,
        common::PASSWORD
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("the 101st session is refused");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("too many clients"),
        "{}",
        db.message()
    );
    // psql says so too (it asks for SSL first, which is declined, then reads the refusal).
    let err = writer.psql("SELECT 1").unwrap_err();
    assert!(err.contains("too many clients already"), "{err}");

    // One leaves; a new session is served once its place is free.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                break c;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never served again: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    for s in &open[..3] {
        let n: i64 = s
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.simple_query(&format!("SHOW {name}"))
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_and_idle_timeouts_are_set_per_session() {
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    c.batch_execute("CREATE TABLE t (x)").await.unwrap();

    // statement_timeout cancels a statement that would run for ever, with 57014; the session
    // goes on.
    c.batch_execute("SET statement_timeout = 200")
        .await
        .unwrap();
    assert_eq!(show(&c, "statement_timeout").await, "200ms");
    let started = Instant::now();
    let err = c
        .query_one(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
            &[],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "57014", "{}", db.message());
    assert!(
        db.message().contains("statement timeout"),
        "{}",
        db.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    c.batch_execute("INSERT INTO t SELECT 0 WHERE 0")
        .await
        .unwrap();
    c.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&c, "statement_timeout").await, "0");
    let err = c
        .batch_execute("SET statement_timeout = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023");
    // What drivers set at connect time is taken and shown back.
    c.batch_execute("SET application_name = 'orders-api'")
        .await
        .unwrap();
    assert_eq!(show(&c, "application_name").await, "orders-api");

    // idle_in_transaction_session_timeout, set for this session only: it idles inside a
    // writing transaction, is rolled back, and the next writer goes on.
    c.batch_execute("SET idle_in_transaction_session_timeout = '300ms'")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let other = writer.client().await;
    tokio::time::timeout(
        Duration::from_secs(30),
        other.batch_execute("INSERT INTO t VALUES (2)"),
    )
    .await
    .expect("the idle session held the write turn")
    .unwrap();
    let err = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P03");
    let n: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the other session's row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_evicted_from_the_pool_before_it_is_durable_is_not_read_back_early() {
    // A buffer pool of 8 pages and a commit of many more: its first pages are evicted before
    // the commit is durable, and a read of them goes to storage — still not answered early.
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start_with(&[
        "--layout",
        cluster.layout_path.to_str().unwrap(),
        "--pool-pages",
        "8",
        "--cache-pages",
        "8",
    ]);
    let c = writer.client().await;
    c.batch_execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x')",
    )
    .await
    .unwrap();
    let insert = commit_sql_locally_only(
        &cluster,
        &writer,
        "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 201) \
         INSERT INTO t SELECT i, printf('%0900d', i) FROM n"
            .into(),
    )
    .await;
    let read = read_held_back(&writer, Duration::from_secs(2)).await;
    resume(&cluster);
    insert.await.unwrap().unwrap();
    assert_eq!(read.await.unwrap().unwrap(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_combined_with_other_statements_is_refused_whole() {
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    let err = c
        .batch_execute("SET statement_timeout = 0; CREATE TABLE lost (x)")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "0A000", "{}", db.message());
    assert!(db.message().contains("sent alone"), "{}", db.message());
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM sqlite_master WHERE name = 'lost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing after the SET ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_rolled_back_by_a_timeout_refuses_everything_until_it_ends() {
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    c.batch_execute("CREATE TABLE t (x)").await.unwrap();
    c.batch_execute("SET statement_timeout = 300")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // A write that never ends: cancelled, and SQLite rolls the whole transaction back.
    let err = c
        .batch_execute(
            "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
             SELECT i FROM n",
        )
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
    // The client still thinks it is inside BEGIN: nothing may now run outside it.
    let err = c
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "25P02", "{}", db.message());
    c.batch_execute("COMMIT").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "neither the rolled-back row nor the refused one");
    c.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_result_has_no_cap_and_a_gathered_one_past_max_result_bytes_is_refused_with_54000(
) {
    let cluster = Cluster::start(1, 1 << 12);
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let writer = Writer::start_with(&["--layout", &layout, "--max-result-bytes", "100000"]);
    let c = writer.client().await;
    c.batch_execute(
        "CREATE TABLE big (k INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO big SELECT value, hex(zeroblob(100)) FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < 1000) SELECT value FROM c)",
    )
    .await
    .unwrap();
    // One read on its own streams: its rows go out as they come, so it has no cap (about
    // 200 kB here, twice the limit).
    let rows = c.simple_query("SELECT * FROM big").await.unwrap();
    let n = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 1000);
    let rows = c
        .query("SELECT v FROM big WHERE k > $1", &[&"0"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    // A result that must be gathered first (one of several statements) is capped.
    let err = c
        .simple_query("SELECT * FROM big; SELECT 1")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "54000", "{db:?}");
    assert!(
        db.message().contains("--max-result-bytes") && db.message().contains("LIMIT"),
        "{}",
        db.message()
    );
    // So is one inside a write transaction (extended protocol), which stays usable.
    c.batch_execute("BEGIN").await.unwrap();
    let err = c
        .query("SELECT v FROM big WHERE k > $1", &[&"0"])
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("54000"),
        "{err:?}"
    );
    let rows = c
        .query("SELECT k FROM big ORDER BY k LIMIT 10", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    c.batch_execute("COMMIT").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_result_cut_by_the_statement_timeout_ends_with_57014_and_the_session_goes_on() {
    let cluster = Cluster::start(1, 256);
    let writer = Writer::start(&cluster.layout_path);
    let c = writer.client().await;
    c.batch_execute("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    // Rows come at once and keep coming: the first batches reach the client before the
    // timeout ends the statement.
    let sql = "SELECT x FROM (WITH RECURSIVE c(x) AS \
               (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT x FROM c)";
    let mut rows = 0usize;
    let stream = c.simple_query_raw(sql).await.unwrap();
    futures::pin_mut!(stream);
    let err = loop {
        match futures::StreamExt::next(&mut stream).await {
            Some(Ok(tokio_postgres::SimpleQueryMessage::Row(_))) => rows += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the statement ran to its end within the timeout ({rows} rows)"),
        }
    };
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{err:?}"
    );
    assert!(rows >= 256, "rows were streamed before the timeout: {rows}");
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    let rows = c.simple_query("SELECT 41 + 1").await.unwrap();
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(row.as_deref(), Some("42"));
}

/// A client that sends a query and then never reads: the server's writes to it stall.
fn stalled_reader(port: u16, sql: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut params = Vec::new();
    for kv in ["user", "logdb", "database", "vol1"] {
        params.extend_from_slice(kv.as_bytes());
        params.push(0);
    }
    params.push(0);
    let mut startup = ((params.len() + 8) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(&params);
    s.write_all(&startup).unwrap();
    // Read up to ReadyForQuery ('Z'), message by message.
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        assert_ne!(head[0], b'E', "refused: {}", String::from_utf8_lossy(&body));
        if head[0] == b'Z' {
            break;
        }
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_streamed_result_does_not_hold_up_commits() {
    let cluster = Cluster::start(1, 1 << 13);
    let layout = cluster.layout_path.to_str().unwrap().to_string();
    let writer = Writer::start_with(&["--layout", &layout, "--auth", "trust"]);
    let c = writer.client().await;
    // About 30 MB: far more than the socket and the stream's batches hold.
    c.batch_execute(
        "CREATE TABLE big (k INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO big SELECT value, printf('%01000d', value) FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < 30000) SELECT value FROM c)",
    )
    .await
    .unwrap();
    let stalled = stalled_reader(writer.port, "SELECT * FROM big");
    // Its first rows are on the way: the statement runs (or has run).
    stalled.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(stalled.peek(&mut [0u8; 1]), Ok(n) if n > 0) {
        assert!(
            Instant::now() < deadline,
            "the streamed statement never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The statement finishes on its own (what the client has not read waits in memory), so
    // its shared lock does not keep the writer from committing.
    let commit = tokio::time::timeout(
        Duration::from_secs(20),
        c.batch_execute("INSERT INTO big VALUES (30001, 'after')"),
    )
    .await
    .expect("a commit waited for a client that does not read");
    commit.unwrap();
    drop(stalled);
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30001);
}
