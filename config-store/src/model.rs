//! What the config store knows: volumes (spec, epoch, writer, protection groups and their six
//! members) and the storage node registry.

use logdb_types::{Epoch, PgIndex, SegmentId};
use std::collections::BTreeSet;

/// A DNS label (RFC 1123) of at most `max` characters: lowercase letters, digits and '-', not
/// starting or ending with '-'. Volume, node and compute names must be one (Kubernetes objects
/// are named after them).
pub fn is_dns_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A volume as a user asks for it (the `LogVolume` spec's storage part).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeSpec {
    pub page_size: u32,
    /// Bytes per protection group (segment).
    pub segment_size: u64,
    /// The volume never grows past this many bytes.
    pub max_size: u64,
    pub replicas: u32,
    pub retention_secs: u64,
    /// Exactly three distinct availability zones; each PG gets two members in each.
    pub zones: Vec<String>,
    /// Place only on storage nodes of this pool ("" = nodes of no pool). On Kubernetes each
    /// LogVolume's storage pods form its pool.
    #[serde(default)]
    pub pool: String,
}

pub const DEFAULT_SEGMENT_SIZE: u64 = 10 << 30;
pub const DEFAULT_MAX_SIZE: u64 = 128 << 40;
pub const MAX_REPLICAS: u32 = 15;

impl VolumeSpec {
    /// Checks every field; the message names the field and why.
    pub fn validate(&self) -> Result<(), String> {
        if !(4096..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err(format!(
                "spec.pageSize: {} is not a power of two between 4096 and 65536",
                self.page_size
            ));
        }
        if self.segment_size < self.page_size as u64 {
            return Err(format!(
                "spec.segmentSize: {} bytes is smaller than one {}-byte page",
                self.segment_size, self.page_size
            ));
        }
        if !self.segment_size.is_multiple_of(self.page_size as u64) {
            return Err(format!(
                "spec.segmentSize: {} bytes is not a whole number of {}-byte pages",
                self.segment_size, self.page_size
            ));
        }
        if self.max_size < self.segment_size {
            return Err(format!(
                "spec.maxSize: {} bytes is below one segment of {} bytes",
                self.max_size, self.segment_size
            ));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(format!(
                "spec.replicas: {} is above the maximum of {MAX_REPLICAS}",
                self.replicas
            ));
        }
        let distinct: BTreeSet<&str> = self.zones.iter().map(String::as_str).collect();
        if self.zones.len() != 3 || distinct.len() != 3 || distinct.contains("") {
            return Err(format!(
                "spec.zones: {:?} must be exactly three distinct, non-empty zone names",
                self.zones
            ));
        }
        Ok(())
    }

    pub fn pages_per_pg(&self) -> u64 {
        self.segment_size / self.page_size as u64
    }
}

/// One segment of a PG: which node holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub node_id: String,
    pub zone: String,
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProtectionGroup {
    pub index: u32,
    pub members: Vec<Member>,
    /// Bumped by every member replacement (the membership epoch of DESIGN.md §5).
    pub membership_epoch: u64,
}

impl ProtectionGroup {
    /// The segment name a member holds this PG under.
    pub fn segment_name(&self, member: &Member) -> SegmentId {
        SegmentId::of(PgIndex(self.index), &member.node_id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub name: String,
    pub spec: VolumeSpec,
    /// The last writer ticket handed out (0: none yet).
    pub epoch: Epoch,
    pub writer: Option<String>,
    pub pgs: Vec<ProtectionGroup>,
    pub used_bytes: u64,
    /// Compute nodes (the writer and the replicas) by id, as they registered.
    #[serde(default)]
    pub computes: std::collections::BTreeMap<String, ComputeInfo>,
}

/// A compute node of a volume: where clients and replicas reach it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComputeInfo {
    pub id: String,
    /// PostgreSQL protocol address.
    pub pg_address: String,
    /// Where replicas subscribe to its record stream (while it is the writer).
    pub replication_address: String,
}

impl Volume {
    pub fn allocated_bytes(&self) -> u64 {
        self.pgs.len() as u64 * self.spec.segment_size
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub zone: String,
    pub address: String,
    pub capacity_bytes: u64,
    /// Leader time (ms since the Unix epoch) of the last registration or heartbeat.
    pub last_heartbeat_ms: u64,
    /// The storage pool it serves: only volumes of that pool are placed on it ("" = any).
    #[serde(default)]
    pub pool: String,
}
