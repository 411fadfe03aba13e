//! The config store's raft group with real gRPC on loopback and logs on disk: a three-member
//! group elects a leader, serves tickets with strictly increasing epochs, never lets two
//! concurrent callers share an epoch, keeps serving when the leader stops, and a member restarted
//! from its directory catches up; a single member restarted from disk has lost nothing.

use logdb_types::Epoch;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use logdb_config_store::member::{Member, MemberError};
use logdb_config_store::{Command, ConfigError, Response, VolumeSpec};
use tokio::net::TcpListener;

async fn listener(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

async fn start(id: u64, dir: &Path, addr: &str) -> Member {
    Member::start(id, &dir.join(format!("m{id}")), listener(addr).await)
        .await
        .unwrap()
}

async fn leader_of(members: &[&Member]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members {
            if let Some(l) = m.leader().await {
                if members.iter().any(|x| x.id == l) {
                    return l;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec() -> VolumeSpec {
    VolumeSpec {
        page_size: 8192,
        segment_size: 10 << 30,
        max_size: 128 << 40,
        replicas: 1,
        retention_secs: 3600,
        zones: vec!["a".into(), "b".into(), "c".into()],
        pool: String::new(),
    }
}

async fn setup_volume(m: &Member) {
    for zone in ["a", "b", "c"] {
        for n in 1..=2 {
            m.write(Command::RegisterNode {
                id: format!("{zone}{n}"),
                zone: zone.into(),
                address: format!("127.0.0.1:{n}"),
                capacity_bytes: 1 << 40,
                now_ms: 1_000,
                pool: String::new(),
            })
            .await
            .unwrap();
        }
    }
    m.write(Command::CreateVolume {
        name: "v1".into(),
        spec: spec(),
        now_ms: 1_000,
    })
    .await
    .unwrap();
}

async fn ticket(m: &Member, known: u64) -> Result<u64, MemberError> {
    match m
        .write(Command::AcquireTicket {
            volume: "v1".into(),
            writer: format!("w{}", m.id),
            known_epoch: Epoch(known),
        })
        .await?
    {
        Response::Ticket { epoch, .. } => Ok(epoch.0),
        r => panic!("{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_keep_epochs_strict_across_a_leader_loss_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let m = start(id, dir.path(), "127.0.0.1:0").await;
        addrs.insert(id, m.addr.clone());
        members.push(m);
    }
    members[0].initialize(&addrs).await.unwrap();
    let leader = leader_of(&members.iter().collect::<Vec<_>>()).await;
    let l = members.iter().find(|m| m.id == leader).unwrap();
    setup_volume(l).await;

    let mut last = 0;
    for _ in 0..3 {
        let e = ticket(l, last).await.unwrap();
        assert_eq!(e, last + 1);
        last = e;
    }
    // A follower refuses writes and names the leader.
    let follower = members.iter().find(|m| m.id != leader).unwrap();
    match ticket(follower, last).await {
        Err(MemberError::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, leader),
        r => panic!("a follower accepted a write: {r:?}"),
    }
    // Concurrent callers who all know the same epoch: exactly one gets the next one.
    let results = futures::future::join_all((0..8).map(|_| ticket(l, last))).await;
    let won: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(won, vec![last + 1], "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, MemberError::Refused(ConfigError::StaleEpoch { .. })),
                "{e}"
            );
        }
    }
    last += 1;

    // The leader stops; the other two elect a new one and go on from the same epoch.
    let pos = members.iter().position(|m| m.id == leader).unwrap();
    let old = members.remove(pos);
    let old_addr = old.addr.clone();
    old.stop().await;
    let leader2 = leader_of(&members.iter().collect::<Vec<_>>()).await;
    assert_ne!(leader2, leader);
    let l2 = members.iter().find(|m| m.id == leader2).unwrap();
    let e = ticket(l2, last).await.unwrap();
    assert_eq!(e, last + 1);
    last = e;

    // The old leader restarts from its directory on its address and catches up.
    let back = start(leader, dir.path(), &old_addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.state().await.volumes.get("v1").map(|v| v.epoch.0) != Some(last) {
        assert!(
            Instant::now() < deadline,
            "restarted member did not catch up to epoch {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.stop().await;
    for m in members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_restarted_from_disk_has_lost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(1, dir.path(), "127.0.0.1:0").await;
    let addr = m.addr.clone();
    m.initialize(&BTreeMap::from([(1, addr.clone())]))
        .await
        .unwrap();
    leader_of(&[&m]).await;
    setup_volume(&m).await;
    assert_eq!(ticket(&m, 0).await.unwrap(), 1);
    assert_eq!(ticket(&m, 1).await.unwrap(), 2);
    m.stop().await;

    let m = start(1, dir.path(), &addr).await;
    leader_of(&[&m]).await;
    // The committed log is applied again: the volume and its epoch are back.
    assert_eq!(ticket(&m, 2).await.unwrap(), 3);
    let state = m.state().await;
    assert_eq!(state.volumes["v1"].epoch, Epoch(3));
    assert_eq!(state.nodes.len(), 6);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_restarts_and_bring_a_lagging_member_back() {
    let dir = tempfile::tempdir().unwrap();
    let start_small = |id: u64, addr: String| {
        let dir = dir.path().join(format!("m{id}"));
        async move {
            Member::start_with(id, &dir, listener(&addr).await, 10)
                .await
                .unwrap()
        }
    };
    let mut members = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let m = start_small(id, "127.0.0.1:0".into()).await;
        addrs.insert(id, m.addr.clone());
        members.push(m);
    }
    members[0].initialize(&addrs).await.unwrap();
    let leader = leader_of(&members.iter().collect::<Vec<_>>()).await;
    let l = members.iter().find(|m| m.id == leader).unwrap();
    setup_volume(l).await;

    // A follower goes away while the log moves on far past several snapshots (and purges).
    let pos = members.iter().position(|m| m.id != leader).unwrap();
    let gone = members.remove(pos);
    let (gone_id, gone_addr) = (gone.id, gone.addr.clone());
    gone.stop().await;
    let l = members.iter().find(|m| m.id == leader).unwrap();
    for known in 0..60 {
        assert_eq!(ticket(l, known).await.unwrap(), known + 1);
    }
    // Snapshots are built in the background.
    let snap = dir.path().join(format!("m{leader}/snapshot.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snap.exists() {
        assert!(Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // It returns and is brought up to date (by a snapshot: the log it missed is purged).
    let back = start_small(gone_id, gone_addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.state().await.volumes.get("v1").map(|v| v.epoch.0) != Some(60) {
        assert!(
            Instant::now() < deadline,
            "lagging member not brought up to date"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.stop().await;

    // Every member restarted from its snapshot and log has the same state.
    let mut restarted = Vec::new();
    for m in members {
        let (id, addr) = (m.id, m.addr.clone());
        m.stop().await;
        restarted.push(start_small(id, addr).await);
    }
    for m in &restarted {
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.state().await.volumes.get("v1").map(|v| v.epoch.0) != Some(60) {
            assert!(
                Instant::now() < deadline,
                "member {} lost state across a restart",
                m.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for m in restarted {
        m.stop().await;
    }
}
