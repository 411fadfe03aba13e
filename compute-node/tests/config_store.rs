//! The writer taking its epoch and layout from the config store (a real raft member on
//! loopback) instead of a layout file: storage nodes register themselves and heartbeat, the
//! volume is placed on them, the writer's epoch is its ticket, and a second writer's newer ticket
//! fences the first.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, Writer};
use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;
use logdb_config_store::member::Member;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_takes_its_ticket_and_layout_from_the_config_store() {
    let dir = tempfile::tempdir().unwrap();
    let member = Member::start(
        1,
        dir.path(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    member
        .initialize(&BTreeMap::from([(1, member.addr.clone())]))
        .await
        .unwrap();
    let client = ConfigClient::new(vec![member.addr.clone()]);
    // The storage nodes register themselves and heartbeat.
    let cluster = Cluster::start_opts(1, 64, 8192, &["--config-store", member.addr.as_str()]);
    let spec = proto::VolumeSpec {
        page_size: 8192,
        segment_size: 8 << 20,
        max_size: 64 << 20,
        replicas: 0,
        retention_seconds: 3600,
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
    };
    // Placement succeeds once all six have registered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let v = loop {
        let r = client
            .call(|mut c| {
                let s = spec.clone();
                async move {
                    c.create_volume(proto::CreateVolumeRequest {
                        name: "vol1".into(),
                        spec: Some(s),
                    })
                    .await
                }
            })
            .await;
        match r {
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
