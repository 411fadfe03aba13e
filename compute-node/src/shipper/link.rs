//! One segment as the writer sees it: its address and channel, the queue of records it has not
//! acknowledged, and whether it still has to adopt this writer's recovery decision.

use super::ShipError;
use crate::layout::Member;
use logdb_types::proto::RecoveryPoint;
use logdb_types::record::RedoRecord;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// What one segment has not yet acknowledged.
pub(super) struct LinkQueue {
    pub(super) records: VecDeque<Arc<RedoRecord>>,
    pub(super) bytes: usize,
}

pub(super) struct Link {
    pub(super) pg: usize,
    pub(super) idx: usize,
    /// Segment name and zone (fixed); `member.address` is where the segment was first found.
    pub(super) member: Member,
    /// Where the segment's node serves now, and the channel to it: a node that comes back on
    /// another address re-registers, and the volume's watch moves the link (`follow_addresses`).
    pub(super) target: Mutex<(String, Channel)>,
    pub(super) queue: Mutex<LinkQueue>,
    pub(super) wake: Notify,
    /// Set while the segment has not adopted this writer's recovery decision history yet: it
    /// does before its first record.
    pub(super) pending_history: Mutex<Option<Vec<RecoveryPoint>>>,
    pub(super) up: std::sync::atomic::AtomicBool,
    pub(super) bytes_sent: AtomicU64,
    /// Its queue was dropped (it fell too far behind): it catches up from its peers.
    pub(super) catch_up: std::sync::atomic::AtomicBool,
}

/// A lazily connecting channel to the storage node at `address`.
pub(super) fn storage_channel(address: &str) -> Result<Channel, ShipError> {
    Ok(logdb_common::peer_tls::endpoint(address)
        .map_err(|e| ShipError::Recovery(format!("address {address}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Link {
    pub(super) fn channel(&self) -> Channel {
        self.target.lock().expect("target").1.clone()
    }

    pub(super) fn address(&self) -> String {
        self.target.lock().expect("target").0.clone()
    }

    /// Points the link at `address` if it moved; answers whether it did.
    pub(super) fn retarget(&self, address: &str) -> Result<bool, ShipError> {
        let mut t = self.target.lock().expect("target");
        if t.0 == address {
            return Ok(false);
        }
        *t = (address.to_string(), storage_channel(address)?);
        Ok(true)
    }

    pub(super) fn new(pg: usize, idx: usize, member: &Member) -> Result<Arc<Link>, ShipError> {
        let channel = storage_channel(&member.address)?;
        Ok(Arc::new(Link {
            pg,
            idx,
            member: member.clone(),
            target: Mutex::new((member.address.clone(), channel)),
            queue: Mutex::new(LinkQueue {
                records: VecDeque::new(),
                bytes: 0,
            }),
            wake: Notify::new(),
            pending_history: Mutex::new(None),
            up: std::sync::atomic::AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            catch_up: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

/// How long one recovery or catch-up call may take before its segment counts as not answering
/// (a node that accepts connections but answers nothing must not hold recovery up).
pub(super) const RECOVERY_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A storage call's answer, or DEADLINE_EXCEEDED after `RECOVERY_RPC_TIMEOUT`.
pub(super) async fn answer_in_time<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(RECOVERY_RPC_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
}
