//! The config store with mutual TLS, as a real `logdb-config` process: what each kind of part
//! may ask of it — members manage volumes, a storage node registers only where its certificate
//! says it serves, a compute node takes a ticket only for its own volume, raft only between
//! members — and a plaintext client is not served at all.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logdb_common::peer_tls::{Role, Transport};
use logdb_common::test_pki::TestPki;
use logdb_config_store::api::proto;
use logdb_config_store::api::proto::config_service_client::ConfigServiceClient;
use tonic::transport::Channel;
use tonic::Code;

struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, pki: &TestPki) -> (Member, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_logdb-config"))
        .args(["--id", "1", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(pki.args(Role::Config))
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
    (Member(child), v["addr"].as_str().unwrap().to_string())
}

async fn client(t: &Transport, addr: &str) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(t.endpoint(addr).unwrap().connect_lazy())
}

fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(says), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_part_may_ask_only_what_its_job_is() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (_member, addr) = start(dir.path(), &pki);
    let mut member = client(&pki.transport(Role::Config), &addr).await;
    let mut storage = client(&pki.transport(Role::Storage), &addr).await;
    let mut compute = client(&pki.transport_for(Role::Compute, "vol1"), &addr).await;
    let mut stranger = client(&pki.transport_for(Role::Compute, "other"), &addr).await;

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
    let spec = proto::VolumeSpec {
        page_size: 8192,
        segment_size: 10 << 30,
        max_size: 0,
        replicas: 1,
        retention_seconds: 3600,
        zones: vec!["a".into(), "b".into(), "c".into()],
        pool: String::new(),
    };
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
    let mut plain = client(&Transport::Plaintext, &addr).await;
    assert!(plain.leader(proto::Empty {}).await.is_err());
}
