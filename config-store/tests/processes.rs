//! The config store as real `logdb-config` processes: a three-member group on loopback, a client
//! that follows the leader, kill -9 of the leader in the middle of ticket traffic (no two callers
//! ever share an epoch), restart from disk, bad input refused with the field and the reason,
//! and with mutual TLS, each kind of part refused what is not its job.

use logdb_types::Epoch;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logdb_common::peer_tls::{Role, Transport};
use logdb_common::test_pki::TestPki;
use logdb_config_store::api::proto;
use logdb_config_store::api::proto::config_service_client::ConfigServiceClient;
use logdb_config_store::client::ConfigClient;
use tonic::transport::Channel;
use tonic::Code;

struct Proc {
    child: Option<Child>,
    id: u64,
    dir: PathBuf,
    addr: String,
}

impl Proc {
    fn start(id: u64, dir: &Path, listen: &str) -> Proc {
        Proc::start_with(id, dir, listen, &["--insecure".into()])
    }

    /// A member with these further arguments (`--insecure`, or its `--peer-*` certificates).
    fn start_with(id: u64, dir: &Path, listen: &str, extra: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logdb-config"))
            .args(["--id", &id.to_string(), "--listen", listen])
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start logdb-config");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Proc {
            child: Some(child),
            id,
            dir: dir.to_path_buf(),
            addr: v["addr"].as_str().unwrap().to_string(),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again from its directory on the same address (the group knows it by it).
    fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpListener::bind(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "port of member {} stays taken",
                self.id
            );
            std::thread::yield_now();
        }
        let addr = self.addr.clone();
        *self = Proc::start(self.id, &self.dir.clone(), &addr);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spec(page_size: u32) -> proto::VolumeSpec {
    proto::VolumeSpec {
        page_size,
        segment_size: 10 << 30,
        max_size: 0,
        replicas: 1,
        retention_seconds: 3600,
        zones: vec!["a".into(), "b".into(), "c".into()],
        pool: String::new(),
    }
}

async fn leader(client: &ConfigClient) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .call(|mut c| async move { c.leader(proto::Empty {}).await })
            .await
        {
            if r.id != 0 {
                return (r.id, r.address);
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_process_group_survives_kill9_of_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs: Vec<Proc> = (1..=3)
        .map(|id| Proc::start(id, &dir.path().join(format!("m{id}")), "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let members: std::collections::HashMap<u64, String> =
        procs.iter().map(|p| (p.id, p.addr.clone())).collect();
    let first = ConfigClient::new(vec![addrs[0].clone()]);
    first
        .call(|mut c| {
            let members = members.clone();
            async move { c.initialize(proto::InitializeRequest { members }).await }
        })
        .await
        .unwrap();
    let client = ConfigClient::new(addrs.clone());
    leader(&client).await;

    for zone in ["a", "b", "c"] {
        for n in 1..=2 {
            let req = proto::RegisterNodeRequest {
                id: format!("{zone}{n}"),
                zone: zone.into(),
                address: format!("127.0.0.1:{}", 7600 + n),
                capacity_bytes: 1 << 40,
                pool: String::new(),
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.register_node(r).await }
                })
                .await
                .unwrap();
        }
    }
    // Bad input names the field; an unknown volume is named.
    let err = client
        .call(|mut c| async move {
            c.create_volume(proto::CreateVolumeRequest {
                name: "v1".into(),
                spec: Some(spec(5000)),
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("spec.pageSize: 5000"),
        "{}",
        err.message()
    );
    let err = client
        .acquire_ticket("nope", "w", Epoch(0))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "unknown volume nope")
    );

    let v = client
        .call(|mut c| async move {
            c.create_volume(proto::CreateVolumeRequest {
                name: "v1".into(),
                spec: Some(spec(8192)),
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(v.pgs.len(), 1);
    assert_eq!(v.pgs[0].members.len(), 6);
    assert!(v.pgs[0]
        .members
        .iter()
        .all(|m| m.segment == format!("pg0-{}", m.node_id)));

    // A watcher on a follower sees every change of the volume.
    let (leader_now, _) = leader(&client).await;
    let follower_addr = procs
        .iter()
        .find(|p| p.id != leader_now)
        .unwrap()
        .addr
        .clone();
    let mut watch = proto::config_service_client::ConfigServiceClient::connect(format!(
        "http://{follower_addr}"
    ))
    .await
    .unwrap()
    .watch_volume(proto::VolumeRef { name: "v1".into() })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().epoch, 0);
    let t = client
        .acquire_ticket("v1", "watch-test", Epoch(0))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((seen.epoch, seen.writer.as_str()), (t.epoch, "watch-test"));
    let first_epoch = t.epoch;

    // Three writers race for tickets while the leader is killed: every granted epoch is unique
    // and the granted epochs are exactly 1..=n.
    let granted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (granted, addrs) = (std::sync::Arc::clone(&granted), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let c = ConfigClient::new(addrs);
            let mut known = first_epoch;
            let mut mine = 0;
            while mine < 15 {
                match c.acquire_ticket("v1", &format!("w{w}"), Epoch(known)).await {
                    Ok(t) => {
                        assert!(
                            t.epoch > known,
                            "writer {w}: epoch {} after {known}",
                            t.epoch
                        );
                        granted.lock().unwrap().push(t.epoch);
                        known = t.epoch;
                        mine += 1;
                    }
                    Err(e) if e.code() == Code::FailedPrecondition => {
                        // Someone else got it: learn the current epoch and try again.
                        let v = c
                            .call(|mut cl| async move {
                                cl.get_volume(proto::VolumeRef { name: "v1".into() }).await
                            })
                            .await
                            .unwrap();
                        known = v.epoch;
                    }
                    Err(e) => panic!("ticket error: {e:?}"),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while granted.lock().unwrap().len() < 10 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (leader_id, _) = leader(&client).await;
    let victim = procs.iter_mut().find(|p| p.id == leader_id).unwrap();
    victim.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    let unique: BTreeSet<u64> = granted.iter().copied().collect();
    assert_eq!(
        unique.len(),
        granted.len(),
        "two callers shared an epoch: {granted:?}"
    );
    // A ticket whose reply died with the leader is committed but reaches nobody: epochs may
    // skip, never repeat.
    assert_eq!(granted.len(), 45);
    assert!(granted.iter().all(|e| *e > first_epoch));
    let (new_leader, _) = leader(&client).await;
    assert_ne!(new_leader, leader_id);

    // The killed member comes back from its log and catches up.
    let victim = procs.iter_mut().find(|p| p.id == leader_id).unwrap();
    victim.restart();
    let current = client
        .call(|mut c| async move { c.get_volume(proto::VolumeRef { name: "v1".into() }).await })
        .await
        .unwrap()
        .epoch;
    assert!(current >= first_epoch + 45);
    let back = ConfigClient::new(vec![victim.addr.clone()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = back
            .call(|mut c| async move { c.get_volume(proto::VolumeRef { name: "v1".into() }).await })
            .await;
        if v.as_ref().map(|v| v.epoch).ok() == Some(current) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn tls_client(t: &Transport, addr: &str) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(t.endpoint(addr).unwrap().connect_lazy())
}

/// The config store with mutual TLS: what each kind of part may ask of it — members manage
/// volumes, a storage node registers only where its certificate says it serves, a compute
/// node takes a ticket only for its own volume, raft only between members — and a plaintext
/// client is not served at all.
fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(says), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_each_part_may_ask_only_what_its_job_is() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let proc = Proc::start_with(1, dir.path(), "127.0.0.1:0", &pki.args(Role::Config));
    let addr = proc.addr.clone();
    let mut member = tls_client(&pki.transport(Role::Config), &addr).await;
    let mut storage = tls_client(&pki.transport(Role::Storage), &addr).await;
    let mut compute = tls_client(&pki.transport_for(Role::Compute, "vol1"), &addr).await;
    let mut stranger = tls_client(&pki.transport_for(Role::Compute, "other"), &addr).await;

    // Only a member forms the group.
    let members = std::collections::HashMap::from([(1, addr.clone())]);
    denied(
        compute
            .initialize(proto::InitializeRequest {
                members: members.clone(),
            })
            .await,
        "only served to a config part",
    );
    member
        .initialize(proto::InitializeRequest { members })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while member
        .leader(proto::Empty {})
        .await
        .unwrap()
        .into_inner()
        .id
        == 0
    {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A storage node registers where its certificate says it serves, and nowhere else.
    let node = |id: &str, zone: &str, address: &str| proto::RegisterNodeRequest {
        id: id.into(),
        zone: zone.into(),
        address: address.into(),
        capacity_bytes: 1 << 40,
        pool: String::new(),
    };
    for zone in ["a", "b", "c"] {
        for n in 1..=2 {
            let r = node(&format!("{zone}{n}"), zone, &format!("127.0.0.1:76{n}0"));
            storage.register_node(r).await.unwrap();
        }
    }
    denied(
        storage
            .register_node(node("a1", "a", "attacker.example:7600"))
            .await,
        "does not name \"attacker.example\"",
    );
    denied(
        compute
            .register_node(node("a9", "a", "127.0.0.1:7699"))
            .await,
        "only served to a storage part",
    );

    // Volumes are the members' to make; a compute node takes tickets for its own volume only.
    let spec = spec(8192);
    let create = |name: &str| proto::CreateVolumeRequest {
        name: name.into(),
        spec: Some(spec.clone()),
    };
    denied(
        compute.create_volume(create("vol1")).await,
        "only served to a config part",
    );
    member.create_volume(create("vol1")).await.unwrap();
    let ticket = |volume: &str| proto::AcquireTicketRequest {
        volume: volume.into(),
        writer: "w1".into(),
        known_epoch: 0,
    };
    denied(
        stranger.acquire_ticket(ticket("vol1")).await,
        "another volume",
    );
    denied(
        storage.acquire_ticket(ticket("vol1")).await,
        "only served to a compute part",
    );
    let t = compute.acquire_ticket(ticket("vol1")).await.unwrap();
    assert!(t.into_inner().epoch >= 1);
    denied(
        compute
            .failover(proto::FailoverRequest {
                volume: "vol1".into(),
                target: String::new(),
            })
            .await,
        "only served to a config part",
    );

    // Raft is between members only.
    let mut raft = logdb_config_store::network::proto::raft_service_client::RaftServiceClient::new(
        pki.transport(Role::Compute)
            .endpoint(&addr)
            .unwrap()
            .connect_lazy(),
    );
    denied(
        raft.vote(logdb_config_store::network::proto::RaftMessage {
            json: b"{}".to_vec(),
        })
        .await,
        "only served to a config part",
    );

    // Plaintext is not served.
    let mut plain = tls_client(&Transport::Plaintext, &addr).await;
    assert!(plain.leader(proto::Empty {}).await.is_err());
}
