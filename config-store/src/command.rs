//! The operations of the config store, as replicated commands. Time comes in the command (the
//! leader stamps it), so applying the log on any member gives the same state.

use crate::model::{ProtectionGroup, Volume, VolumeSpec};
use logdb_types::Epoch;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    RegisterNode {
        id: String,
        zone: String,
        address: String,
        capacity_bytes: u64,
        now_ms: u64,
        /// The storage pool the node serves ("" = any volume).
        #[serde(default)]
        pool: String,
    },
    Heartbeat {
        id: String,
        now_ms: u64,
    },
    CreateVolume {
        name: String,
        spec: VolumeSpec,
        now_ms: u64,
    },
    DeleteVolume {
        name: String,
    },
    /// Bumps the epoch; refused unless `known_epoch` is the volume's current one.
    AcquireTicket {
        volume: String,
        writer: String,
        known_epoch: Epoch,
    },
    /// The writer's view of used bytes; may add a PG (growth).
    ReportUsage {
        volume: String,
        used_bytes: u64,
        now_ms: u64,
    },
    /// A compute node of `volume` says where it serves (on every start).
    RegisterCompute {
        volume: String,
        id: String,
        pg_address: String,
        replication_address: String,
    },
    /// Makes `target` (a registered compute; `None`: the first one that is not the writer) the
    /// volume's writer: bumps the epoch, so the old writer can take no new ticket. The target
    /// sees it on its watch, takes its own ticket and runs recovery.
    Failover {
        volume: String,
        target: Option<String>,
    },
    /// Replaces `old_node` in PG `pg` by `new_node`, or by a healthy node of the same zone.
    ReplaceMember {
        volume: String,
        pg: u32,
        old_node: String,
        new_node: Option<String>,
        now_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    Done,
    Volume(Volume),
    /// A writer ticket: the new epoch and the layout to write to.
    Ticket {
        epoch: Epoch,
        volume: Volume,
    },
    /// Usage recorded; `grown` are the PGs added (none, or as many as keep usage under the
    /// growth threshold).
    Usage {
        allocated_bytes: u64,
        grown: Vec<ProtectionGroup>,
    },
    Replaced(ProtectionGroup),
}
