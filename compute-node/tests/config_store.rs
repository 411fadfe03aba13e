//! The writer taking its epoch and layout from the config store (a real raft member on
//! loopback) instead of a layout file: storage nodes register themselves and heartbeat, the
//! volume is placed on them, the writer's epoch is its ticket, and a second writer's newer ticket
//! fences the first.

mod common;

use common::{setup, Setup, Writer};
use logdb_config_store::api::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_takes_its_ticket_and_layout_from_the_config_store() {
    let Setup {
        member,
        client,
        cluster,
        volume: v,
        ..
    } = setup("vol1", 8 << 20, 64 << 20).await;
    let addrs: std::collections::BTreeSet<&str> =
        cluster.nodes.iter().map(|n| n.grpc.as_str()).collect();
    assert!(
        v.pgs[0]
            .members
            .iter()
            .all(|m| addrs.contains(m.address.as_str())),
        "placed on the registered nodes"
    );
    assert_eq!(v.pgs[0].members.len(), 6);

    let args = [
        "--config-store",
        member.addr.as_str(),
        "--volume",
        "vol1",
        "--writer-id",
        "w1",
    ];
    let first = Writer::start_with(&args);
    assert_eq!(first.epoch, 1, "the first ticket");
    first
        .psql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    first
        .psql("INSERT INTO t VALUES (1, 'from the first writer')")
        .unwrap();

    // A second writer takes the next ticket: the first is fenced by storage from then on.
    let second = Writer::start_with(&[
        "--config-store",
        member.addr.as_str(),
        "--volume",
        "vol1",
        "--writer-id",
        "w2",
    ]);
    assert_eq!(second.epoch, 2);
    let err = first
        .psql("INSERT INTO t VALUES (2, 'stale writer')")
        .unwrap_err();
    assert!(
        err.contains("fenced"),
        "the old writer must be refused clearly: {err}"
    );
    assert_eq!(
        second.psql("SELECT id, v FROM t").unwrap(),
        "1|from the first writer\n"
    );
    second
        .psql("INSERT INTO t VALUES (2, 'from the second writer')")
        .unwrap();
    assert_eq!(second.psql("SELECT count(*) FROM t").unwrap(), "2\n");
    let v = client
        .call(|mut c| async move {
            c.get_volume(proto::VolumeRef {
                name: "vol1".into(),
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!((v.epoch, v.writer.as_str()), (2, "w2"));
    drop(first);
    drop(second);
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_grows_and_the_writer_ships_to_the_new_protection_groups() {
    // 1 MiB segments (128 pages), at most 8 MiB.
    let Setup {
        member,
        client,
        cluster,
        ..
    } = setup("big", 1 << 20, 8 << 20).await;
    let args = [
        "--config-store",
        member.addr.as_str(),
        "--volume",
        "big",
        "--usage-report-ms",
        "100",
    ];
    let writer = Writer::start_with(&args);
    let w = std::sync::Arc::new(writer);
    let psql = |sql: String| {
        let w = std::sync::Arc::clone(&w);
        async move {
            tokio::task::spawn_blocking(move || w.psql(&sql))
                .await
                .unwrap()
        }
    };
    psql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)".into())
        .await
        .unwrap();
    // ~3 MiB of rows, in 50 KiB transactions: the volume must grow past its first 1 MiB PG,
    // and no write under maxSize may fail for lack of a PG (growth on demand).
    let mut next = 0;
    while next < 3000 {
        let mut tx = String::from("BEGIN;");
        for id in next..next + 50 {
            tx.push_str(&format!(
                "INSERT INTO t VALUES ({id}, '{}');",
                "x".repeat(1000)
            ));
        }
        tx.push_str("COMMIT;");
        psql(tx).await.unwrap();
        next += 50;
    }
    assert_eq!(
        psql("SELECT count(*), sum(length(v)) FROM t".into())
            .await
            .unwrap(),
        "3000|3000000\n"
    );
    let v = client
        .call(|mut c| async move { c.get_volume(proto::VolumeRef { name: "big".into() }).await })
        .await
        .unwrap();
    assert!(v.pgs.len() >= 4, "grew to {} PGs", v.pgs.len());
    // The new PGs' segments hold records on the storage nodes.
    let mut storage = cluster.nodes[0].client().await;
    let segs = storage
        .list_segments(logdb_types::proto::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .segments;
    let grown = segs
        .iter()
        .filter(|s| s.volume_id == "big" && s.pg_index >= 1 && s.highest_lsn > 0)
        .count();
    assert!(grown >= 2, "segments of new PGs with records: {segs:?}");
    // One transaction past the 8 MiB maximum is refused as disk full (SQLSTATE 53100), with
    // the sizes in the message, and leaves nothing behind.
    let pg = w.client().await;
    let big = format!(
        "BEGIN; INSERT INTO t SELECT 10000 + value, '{}' FROM \
         (WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < 6000) \
         SELECT value FROM n); COMMIT;",
        "y".repeat(1000)
    );
    let err = pg.batch_execute(&big).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53100", "{db:?}");
    assert!(
        db.message().contains("maxSize is 8388608 bytes"),
        "the sizes must be in the message: {}",
        db.message()
    );
    let _ = pg.batch_execute("ROLLBACK").await;
    assert_eq!(
        psql("SELECT count(*) FROM t".into()).await.unwrap(),
        "3000\n"
    );
    drop(w);
    member.stop().await;
}
