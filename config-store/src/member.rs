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

pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    sm: StateMachine,
    server: JoinHandle<()>,
}

impl Member {
    /// Starts member `id` with its log in `dir`, serving raft on `listener`.
    pub async fn start(
        id: NodeId,
        dir: &Path,
        listener: TcpListener,
    ) -> Result<Member, MemberError> {
        let setup = |e: String| MemberError::Setup(e);
        std::fs::create_dir_all(dir).map_err(|e| setup(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| setup(e.to_string()))?
            .to_string();
        let config = openraft::Config {
            cluster_name: "logdb-config".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| setup(e.to_string()))?);
        let log = LogStore::open(&dir.join("raft.redb")).map_err(|e| setup(e.to_string()))?;
        let sm = StateMachine::default();
        let raft = Raft::new(id, config, Network, log, sm.clone())
            .await
            .map_err(|e| setup(e.to_string()))?;
        let raft_svc = RaftServiceServer::new(RaftSvc { raft: raft.clone() });
        let api = ConfigServiceServer::new(ConfigSvc {
            raft: raft.clone(),
            sm: sm.clone(),
        });
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(raft_svc)
                .add_service(api)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Member {
            id,
            addr,
            raft,
            sm,
            server,
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

    pub async fn leader(&self) -> Option<NodeId> {
        self.raft.current_leader().await
    }

    /// Stops raft and the server (a crash, as far as the peers can tell).
    pub async fn stop(self) {
        let _ = self.raft.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}
