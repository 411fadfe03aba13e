//! One config store member: raft with its log on disk, the state machine, and the gRPC server
//! peers reach it on. `logdb up` runs one; the operator's StatefulSet runs three.

// openraft's error types are large and fixed by its traits.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{proto::config_service_server::ConfigServiceServer, ConfigSvc};
use crate::command::{Command, Response};
use crate::log_store::LogStore;
use crate::network::{proto::raft_service_server::RaftServiceServer, Network, RaftSvc};
use crate::raft_types::{NodeId, Raft};
use crate::state::{ConfigError, State};
use crate::state_machine::StateMachine;

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("config store member: {0}")]
    Setup(String),
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Refused(#[from] ConfigError),
}

/// Proposes `cmd` through `raft`; answers once it is committed and applied. On a follower it is
/// refused with the leader's id and address.
pub async fn propose(raft: &Raft, cmd: Command) -> Result<Response, MemberError> {
    match raft.client_write(cmd).await {
        Ok(r) => Ok(r.data.0?),
        Err(e) => match e.forward_to_leader() {
            Some(f) => Err(MemberError::NotLeader {
                leader: f.leader_id.map(|id| {
                    let addr = f
                        .leader_node
                        .as_ref()
                        .map(|n| n.addr.clone())
                        .unwrap_or_default();
                    (id, addr)
                }),
            }),
            None => Err(MemberError::Raft(e.to_string())),
        },
    }
}

/// Log entries between snapshots.
pub const SNAPSHOT_EVERY: u64 = 5000;

pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    sm: StateMachine,
    server: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Kept to know when raft has let go of the log (so the directory can be opened again).
    log: LogStore,
}

impl Member {
    /// Starts member `id` with its log in `dir`, serving raft on `listener`.
    pub async fn start(
        id: NodeId,
        dir: &Path,
        listener: TcpListener,
    ) -> Result<Member, MemberError> {
        Self::start_with(id, dir, listener, SNAPSHOT_EVERY).await
    }

    /// Like `start`, snapshotting (and purging the log behind) every `snapshot_every` entries.
    pub async fn start_with(
        id: NodeId,
        dir: &Path,
        listener: TcpListener,
        snapshot_every: u64,
    ) -> Result<Member, MemberError> {
        let setup = |e: String| MemberError::Setup(e);
        std::fs::create_dir_all(dir).map_err(|e| setup(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| setup(e.to_string()))?
            .to_string();
        let config = openraft::Config {
            cluster_name: "logdb-config".into(),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: snapshot_every / 5,
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| setup(e.to_string()))?);
        let log = LogStore::open(&dir.join("raft.redb")).map_err(|e| setup(e.to_string()))?;
        let sm =
            StateMachine::open(&dir.join("snapshot.json")).map_err(|e| setup(e.to_string()))?;
        let log_handle = log.clone();
        let raft = Raft::new(id, config, Network, log, sm.clone())
            .await
            .map_err(|e| setup(e.to_string()))?;
        let raft_svc = RaftServiceServer::new(RaftSvc { raft: raft.clone() });
        let api = ConfigServiceServer::new(ConfigSvc {
            raft: raft.clone(),
            sm: sm.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = logdb_common::peer_tls::transport()
            .server()
            .map_err(|e| setup(format!("TLS for the config store port: {e}")))?;
        let server = tokio::spawn(async move {
            let incoming = logdb_common::grpc_listener::incoming(listener);
            let _ = builder
                .add_service(raft_svc)
                .add_service(api)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Ok(Member {
            id,
            addr,
            raft,
            sm,
            server,
            stop: stop_tx,
            log: log_handle,
        })
    }

    /// Makes `members` (id → address) the group; call once, on one member of a new group.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> Result<(), MemberError> {
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        self.raft
            .initialize(nodes)
            .await
            .map_err(|e| MemberError::Raft(e.to_string()))
    }

    /// Proposes a command; answers once it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<Response, MemberError> {
        propose(&self.raft, cmd).await
    }

    /// This member's applied state (may lag the leader's by a heartbeat).
    pub async fn state(&self) -> State {
        self.sm.state().await
    }

    /// Resolves at the next change of this member's applied state.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sm.subscribe()
    }

    pub async fn leader(&self) -> Option<NodeId> {
        self.raft.current_leader().await
    }

    /// Stops raft and the server (a crash, as far as the peers can tell).
    /// Stops raft, then the server — connections included, so peers reconnect to whatever
    /// serves this address next.
    pub async fn stop(self) {
        let _ = self.raft.shutdown().await;
        let _ = self.stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        // Raft's workers drop their handles to the log shortly after shutdown; the directory can
        // be opened again once they have.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.log.other_handles() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
