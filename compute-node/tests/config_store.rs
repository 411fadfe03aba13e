//! The writer taking its epoch and layout from the config store (a real raft member on
//! loopback) instead of a layout file: the volume is placed on the six registered storage nodes,
//! the writer's epoch is its ticket, and a second writer's newer ticket fences the first.

mod common;

use std::collections::BTreeMap;

use common::{Cluster, Writer};
use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;
use logdb_config_store::member::Member;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_takes_its_ticket_and_layout_from_the_config_store() {
    let cluster = Cluster::start(1, 64);
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
    for node in &cluster.nodes {
        let req = proto::RegisterNodeRequest {
            id: node.node_id.clone(),
            zone: node.zone.clone(),
            address: node.grpc.clone(),
            capacity_bytes: 1 << 40,
        };
        client
            .call(|mut c| {
                let r = req.clone();
                async move { c.register_node(r).await }
            })
            .await
            .unwrap();
    }
    let spec = proto::VolumeSpec {
        page_size: 8192,
        segment_size: 8 << 20,
        max_size: 64 << 20,
        replicas: 0,
        retention_seconds: 3600,
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
    };
    let v = client
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
        .await
        .unwrap();
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
