//! The client-facing gRPC API (`logdb.config.v1`): typed requests become [`Command`]s proposed
//! through raft (the member stamps the time), replies and refusals become typed messages and
//! status codes — INVALID_ARGUMENT for bad input and unknown names, FAILED_PRECONDITION for a
//! stale epoch or a placement that cannot be met, UNAVAILABLE with the leader's address on a
//! follower.

use logdb_common::peer_tls::{authorize, authorize_for, serves_at, Role};
use logdb_types::Epoch;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::command::{Command, Response as Reply};
use crate::member::{propose, MemberError};
use crate::model;
use crate::raft_types::Raft;
use crate::state::ConfigError;
use crate::state_machine::StateMachine;

pub mod proto {
    tonic::include_proto!("logdb.config.v1");
}

/// Metadata key naming the leader's address when a follower refuses a write.
pub const LEADER_HEADER: &str = "x-logdb-leader";

pub struct ConfigSvc {
    pub raft: Raft,
    pub sm: StateMachine,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

pub fn status(e: MemberError) -> Status {
    match e {
        MemberError::Refused(c) => match c {
            ConfigError::Invalid(_)
            | ConfigError::UnknownVolume(_)
            | ConfigError::UnknownNode(_) => Status::invalid_argument(c.to_string()),
            ConfigError::VolumeExists(_) => Status::already_exists(c.to_string()),
            ConfigError::StaleEpoch { .. } | ConfigError::Placement { .. } => {
                Status::failed_precondition(c.to_string())
            }
        },
        MemberError::NotLeader { leader } => {
            let mut s = Status::unavailable(match &leader {
                Some((id, addr)) => format!("not the leader; member {id} at {addr} is"),
                None => "not the leader, and no leader is known yet; retry".to_string(),
            });
            if let Some((_, addr)) = leader {
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_HEADER, v);
                }
            }
            s
        }
        MemberError::Raft(m) | MemberError::Setup(m) => Status::unavailable(m),
    }
}

pub fn spec_to_proto(s: &model::VolumeSpec) -> proto::VolumeSpec {
    proto::VolumeSpec {
        page_size: s.page_size,
        segment_size: s.segment_size,
        max_size: s.max_size,
        replicas: s.replicas,
        retention_seconds: s.retention_secs,
        zones: s.zones.clone(),
        pool: s.pool.clone(),
    }
}

pub fn spec_from_proto(s: proto::VolumeSpec) -> model::VolumeSpec {
    model::VolumeSpec {
        page_size: s.page_size,
        segment_size: s.segment_size,
        max_size: if s.max_size == 0 {
            model::DEFAULT_MAX_SIZE
        } else {
            s.max_size
        },
        replicas: s.replicas,
        retention_secs: s.retention_seconds,
        zones: s.zones,
        pool: s.pool,
    }
}

pub fn pg_to_proto(pg: &model::ProtectionGroup) -> proto::ProtectionGroup {
    proto::ProtectionGroup {
        index: pg.index,
        members: pg
            .members
            .iter()
            .map(|m| proto::Member {
                node_id: m.node_id.clone(),
                zone: m.zone.clone(),
                address: m.address.clone(),
                segment: pg.segment_name(m).into_string(),
            })
            .collect(),
        membership_epoch: pg.membership_epoch,
    }
}

pub fn volume_to_proto(v: &model::Volume) -> proto::Volume {
    proto::Volume {
        name: v.name.clone(),
        spec: Some(spec_to_proto(&v.spec)),
        epoch: v.epoch.0,
        writer: v.writer.clone().unwrap_or_default(),
        pgs: v.pgs.iter().map(pg_to_proto).collect(),
        used_bytes: v.used_bytes,
        allocated_bytes: v.allocated_bytes(),
        computes: v
            .computes
            .values()
            .map(|c| proto::Compute {
                id: c.id.clone(),
                pg_address: c.pg_address.clone(),
                replication_address: c.replication_address.clone(),
            })
            .collect(),
    }
}

/// Who may make which request: volumes, failovers and the group itself are managed by members
/// (the operator, `logdb up`); a storage node registers (for its pool, at an address its
/// certificate names) and heartbeats itself; a compute node takes tickets, registers and
/// reports usage for its own volume, and reads it; members read every volume.
const MEMBERS: &[Role] = &[Role::Config];
const STORAGE: &[Role] = &[Role::Storage];
const COMPUTE: &[Role] = &[Role::Compute];
const READERS: &[Role] = &[Role::Compute, Role::Config];
const ANY: &[Role] = &Role::ALL;

impl ConfigSvc {
    async fn run(&self, cmd: Command) -> Result<Reply, Status> {
        propose(&self.raft, cmd).await.map_err(status)
    }
}

fn unexpected(r: Reply) -> Status {
    Status::internal(format!("unexpected reply {r:?}"))
}

#[tonic::async_trait]
impl proto::config_service_server::ConfigService for ConfigSvc {
    async fn initialize(
        &self,
        r: Request<proto::InitializeRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize(&r, "Initialize", MEMBERS)?;
        let members: std::collections::BTreeMap<u64, openraft::BasicNode> = r
            .into_inner()
            .members
            .into_iter()
            .map(|(id, addr)| (id, openraft::BasicNode { addr }))
            .collect();
        if members.is_empty() {
            return Err(Status::invalid_argument("members: at least one is needed"));
        }
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(format!("initialize: {e}")))?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn leader(
        &self,
        r: Request<proto::Empty>,
    ) -> Result<Response<proto::LeaderReply>, Status> {
        authorize(&r, "Leader", ANY)?;
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader.unwrap_or(0);
        let address = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Ok(Response::new(proto::LeaderReply { id, address }))
    }

    async fn register_node(
        &self,
        r: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize_for(&r, "RegisterNode", STORAGE, &r.get_ref().pool)?;
        serves_at(&r, "RegisterNode", &r.get_ref().address)?;
        if let Some(known) = self.sm.state().await.nodes.get(&r.get_ref().id) {
            if known.pool != r.get_ref().pool {
                return Err(Status::permission_denied(format!(
                    "RegisterNode: node {} serves pool {:?}, not {:?}; a node does not change pools",
                    r.get_ref().id,
                    known.pool,
                    r.get_ref().pool
                )));
            }
        }
        let r = r.into_inner();
        self.run(Command::RegisterNode {
            id: r.id,
            zone: r.zone,
            address: r.address,
            capacity_bytes: r.capacity_bytes,
            now_ms: now_ms(),
            pool: r.pool,
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn heartbeat(
        &self,
        r: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize(&r, "Heartbeat", STORAGE)?;
        self.run(Command::Heartbeat {
            id: r.into_inner().id,
            now_ms: now_ms(),
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn create_volume(
        &self,
        r: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        authorize(&r, "CreateVolume", MEMBERS)?;
        let r = r.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        match self
            .run(Command::CreateVolume {
                name: r.name,
                spec: spec_from_proto(spec),
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Volume(v) => Ok(Response::new(volume_to_proto(&v))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_volume(
        &self,
        r: Request<proto::VolumeRef>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize(&r, "DeleteVolume", MEMBERS)?;
        self.run(Command::DeleteVolume {
            name: r.into_inner().name,
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn acquire_ticket(
        &self,
        r: Request<proto::AcquireTicketRequest>,
    ) -> Result<Response<proto::Ticket>, Status> {
        authorize_for(&r, "AcquireTicket", COMPUTE, &r.get_ref().volume)?;
        let r = r.into_inner();
        match self
            .run(Command::AcquireTicket {
                volume: r.volume,
                writer: r.writer,
                known_epoch: Epoch(r.known_epoch),
            })
            .await?
        {
            Reply::Ticket { epoch, volume } => Ok(Response::new(proto::Ticket {
                epoch: epoch.0,
                volume: Some(volume_to_proto(&volume)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn report_usage(
        &self,
        r: Request<proto::ReportUsageRequest>,
    ) -> Result<Response<proto::UsageReply>, Status> {
        authorize_for(&r, "ReportUsage", COMPUTE, &r.get_ref().volume)?;
        let r = r.into_inner();
        match self
            .run(Command::ReportUsage {
                volume: r.volume,
                used_bytes: r.used_bytes,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Usage {
                allocated_bytes,
                grown,
            } => Ok(Response::new(proto::UsageReply {
                allocated_bytes,
                grown: !grown.is_empty(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn replace_member(
        &self,
        r: Request<proto::ReplaceMemberRequest>,
    ) -> Result<Response<proto::ProtectionGroup>, Status> {
        authorize(&r, "ReplaceMember", MEMBERS)?;
        let r = r.into_inner();
        let new_node = (!r.new_node.is_empty()).then_some(r.new_node);
        match self
            .run(Command::ReplaceMember {
                volume: r.volume,
                pg: r.pg,
                old_node: r.old_node,
                new_node,
                now_ms: now_ms(),
            })
            .await?
        {
            Reply::Replaced(pg) => Ok(Response::new(pg_to_proto(&pg))),
            other => Err(unexpected(other)),
        }
    }

    async fn register_compute(
        &self,
        r: Request<proto::RegisterComputeRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize_for(&r, "RegisterCompute", COMPUTE, &r.get_ref().volume)?;
        let r = r.into_inner();
        self.run(Command::RegisterCompute {
            volume: r.volume,
            id: r.id,
            pg_address: r.pg_address,
            replication_address: r.replication_address,
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn failover(
        &self,
        r: Request<proto::FailoverRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        authorize(&r, "Failover", MEMBERS)?;
        let r = r.into_inner();
        let target = (!r.target.is_empty()).then_some(r.target);
        match self
            .run(Command::Failover {
                volume: r.volume,
                target,
            })
            .await?
        {
            Reply::Ticket { volume, .. } => Ok(Response::new(volume_to_proto(&volume))),
            other => Err(unexpected(other)),
        }
    }

    type WatchVolumeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::Volume, Status>> + Send + 'static>,
    >;

    async fn watch_volume(
        &self,
        r: Request<proto::VolumeRef>,
    ) -> Result<Response<Self::WatchVolumeStream>, Status> {
        authorize_for(&r, "WatchVolume", READERS, &r.get_ref().name)?;
        let name = r.into_inner().name;
        let sm = self.sm.clone();
        let mut changes = sm.subscribe();
        let first = sm.state().await.volumes.get(&name).cloned();
        let Some(first) = first else {
            return Err(Status::invalid_argument(format!("unknown volume {name}")));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(volume_to_proto(&last))).await.is_err() {
                return;
            }
            while changes.changed().await.is_ok() {
                match sm.state().await.volumes.get(&name) {
                    None => return,
                    Some(v) if *v != last => {
                        last = v.clone();
                        if tx.send(Ok(volume_to_proto(&last))).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_volume(
        &self,
        r: Request<proto::VolumeRef>,
    ) -> Result<Response<proto::Volume>, Status> {
        authorize_for(&r, "GetVolume", READERS, &r.get_ref().name)?;
        let name = r.into_inner().name;
        let state = self.sm.state().await;
        let v = state
            .volumes
            .get(&name)
            .ok_or_else(|| Status::invalid_argument(format!("unknown volume {name}")))?;
        Ok(Response::new(volume_to_proto(v)))
    }
}
