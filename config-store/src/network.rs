//! Raft traffic between members over gRPC (`logdb.raft.v1`): the client side that openraft calls
//! to reach a peer, and the service that hands a peer's messages to the local raft.

// openraft's error types are large and fixed by its traits.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use logdb_common::peer_tls::{authorize, Role};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::raft_types::{NodeId, Raft, TypeConfig};

pub mod proto {
    tonic::include_proto!("logdb.raft.v1");
}

use proto::raft_service_client::RaftServiceClient;
use proto::RaftMessage;

/// Makes one connection per peer.
#[derive(Clone, Default)]
pub struct Network;

pub struct Connection {
    target: NodeId,
    channel: Option<Channel>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let channel = logdb_common::peer_tls::endpoint(&node.addr).ok().map(|e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy()
        });
        Connection {
            target,
            channel,
            addr: node.addr.clone(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self.channel.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "bad address {}",
                self.addr
            ))))
        })?;
        let json =
            serde_json::to_vec(&req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = RaftServiceClient::new(channel);
        let msg = Request::new(RaftMessage { json });
        let reply = match kind {
            "append" => client.append_entries(msg).await,
            "vote" => client.vote(msg).await,
            _ => client.install_snapshot(msg).await,
        }
        .map_err(|s| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                s.message().to_string(),
            )))
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", req).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", req).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", req).await
    }
}

/// Serves peers' raft messages to the local raft.
pub struct RaftSvc {
    pub raft: Raft,
}

fn decode<T: DeserializeOwned>(msg: RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&msg.json)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(RaftMessage { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl proto::raft_service_server::RaftService for RaftSvc {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        authorize(&req, "raft AppendEntries", &[Role::Config])?;
        let r = self.raft.append_entries(decode(req.into_inner())?).await;
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        authorize(&req, "raft Vote", &[Role::Config])?;
        let r = self.raft.vote(decode(req.into_inner())?).await;
        encode(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        authorize(&req, "raft InstallSnapshot", &[Role::Config])?;
        let r = self.raft.install_snapshot(decode(req.into_inner())?).await;
        encode(&r)
    }
}
