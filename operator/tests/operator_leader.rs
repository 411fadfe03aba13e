//! `logdb operator` as the chart runs it, three pods: their config store members form one raft
//! group, only the leader runs the controller (which then reconciles a LogVolume from the API,
//! through kube-runtime's watcher), and when the leader's pod stops, another member takes over.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use logdb_operator::operator_mode::{run_with, OperatorOptions};
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn await_true(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_runs_the_controller_and_another_takes_over() {
    let api = FakeApi::default();
    let text = include_str!("../../examples/logvolume.yaml");
    let mut lv: serde_json::Value = serde_yaml::from_str(text).unwrap();
    lv["metadata"]["namespace"] = "shop".into();
    api.put(
        "/apis/logdb.io/v1alpha1/namespaces/shop/logvolumes/orders",
        lv,
    );

    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: std::collections::BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let mut pods = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let opts = OperatorOptions {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join(format!("op-{i}")),
            pod_name: format!("logdb-operator-{i}"),
            service: "logdb-operator".into(),
            namespace: "logdb-system".into(),
            members: 3,
            image: "ghcr.io/logdb/logdb:test".into(),
            storage_class: None,
            // One pod watches every namespace, the others only `shop` (a namespace-scoped
            // install): whichever leads, the LogVolume is reconciled.
            watch_namespaces: if i == 0 { vec![] } else { vec!["shop".into()] },
        };
        let leader = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (client, peers, flag) = (api.client(), peers.clone(), Arc::clone(&leader));
        let task = tokio::spawn(async move {
            run_with(&opts, client, peers, flag, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        pods.push((leader, Some(stop_tx), task));
    }
    let leaders = |pods: &[(Arc<AtomicBool>, _, _)]| -> Vec<usize> {
        pods.iter()
            .enumerate()
            .filter(|(_, (l, _, _))| l.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    };
    await_true("a leader", || leaders(&pods).len() == 1).await;
    let first = leaders(&pods)[0];
    // The leader's controller watched the LogVolume and applied its objects.
    await_true("the storage StatefulSets", || {
        api.list("/apis/apps/v1/namespaces/shop/statefulsets/")
            .len()
            == 7
    })
    .await;
    await_true("status Pending (no storage pod registered)", || {
        api.get("/apis/logdb.io/v1alpha1/namespaces/shop/logvolumes/orders")
            .is_some_and(|lv| lv["status"]["phase"] == "Pending")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(leaders(&pods), vec![first], "the others stand by");
    // One installation CA for every pod, kept in the operator's namespace; the LogVolume's
    // peer certificates come from it.
    let peer = || {
        api.get("/api/v1/namespaces/shop/secrets/orders-peer-tls")
            .map(|s| s["data"].clone())
    };
    await_true("the peer certificates", || peer().is_some()).await;
    let issued = peer().unwrap();
    let installation = api
        .get("/api/v1/namespaces/logdb-system/secrets/logdb-operator-installation-ca")
        .expect("the installation's CA is kept");
    assert_eq!(installation["data"]["ca.crt"], issued["ca.crt"]);

    // The leader's pod goes away: another member leads and runs the controller.
    let (_, stop, task) = &mut pods[first];
    stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    await_true("a new leader", || {
        let l = leaders(&pods);
        l.len() == 1 && l[0] != first
    })
    .await;
    // It reconciles too: a change to the LogVolume reaches the objects.
    let path = "/apis/logdb.io/v1alpha1/namespaces/shop/logvolumes/orders";
    let mut lv = api.get(path).unwrap();
    lv["spec"]["replicas"] = json!(4);
    api.put(path, lv);
    await_true("the compute set resized by the new leader", || {
        api.get("/apis/apps/v1/namespaces/shop/statefulsets/orders-compute")
            .is_some_and(|s| s["spec"]["replicas"] == 5)
    })
    .await;
    assert_eq!(
        peer(),
        Some(issued),
        "the new leader works from the same CA: nothing is re-issued"
    );
    for (_, stop, task) in pods.iter_mut() {
        if let Some(s) = stop.take() {
            let _ = s.send(());
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}
