//! The volume layout the writer ships to: page size, pages per protection group, and each PG's six
//! segments (storage address, zone, segment name). Read from a JSON file until the config store
//! hands it out (issue 4); `logdb up` and the tests write that file.

use std::path::Path;

use logdb_types::{PageId, PgIndex};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub segment: String,
    pub address: String,
    pub zone: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProtectionGroup {
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub volume: String,
    pub page_size: u32,
    pub pages_per_pg: u64,
    #[serde(default)]
    pub retention_seconds: u64,
    /// The most pages the volume may grow to (maxSize / page size); 0: it cannot grow (a
    /// layout file without a config store).
    #[serde(default)]
    pub max_pages: u64,
    pub pgs: Vec<ProtectionGroup>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("layout file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("layout: {0}")]
    Invalid(String),
}

/// Writes need 4 of a PG's 6 segments; reads after a failure need 3.
pub const SEGMENTS_PER_PG: usize = 6;
pub const WRITE_QUORUM: usize = 4;
pub const READ_QUORUM: usize = 3;

impl Layout {
    pub fn load(path: &Path) -> Result<Layout, LayoutError> {
        let file_err = |reason: String| LayoutError::File {
            path: path.display().to_string(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let layout: Layout = serde_json::from_slice(&raw).map_err(|e| file_err(e.to_string()))?;
        layout.validate()?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<(), LayoutError> {
        let invalid = |m: String| Err(LayoutError::Invalid(m));
        if !(4096..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return invalid(format!(
                "page_size {} is not a power of two in 4096..=65536",
                self.page_size
            ));
        }
        if self.pages_per_pg == 0 {
            return invalid("pages_per_pg must be at least 1".into());
        }
        if self.pgs.is_empty() {
            return invalid("at least one protection group is needed".into());
        }
        for (k, pg) in self.pgs.iter().enumerate() {
            if pg.members.len() != SEGMENTS_PER_PG {
                return invalid(format!(
                    "PG {k} has {} members; exactly {SEGMENTS_PER_PG} are needed",
                    pg.members.len()
                ));
            }
        }
        Ok(())
    }

    pub fn pg_of(&self, page: PageId) -> Option<PgIndex> {
        let k = page.0 / self.pages_per_pg;
        (k < self.pgs.len() as u64).then_some(PgIndex(k as u32))
    }

    /// Total pages the volume can hold today.
    pub fn capacity_pages(&self) -> u64 {
        self.pages_per_pg * self.pgs.len() as u64
    }
}

impl Layout {
    /// The layout of a volume as the config store describes it.
    pub fn from_config(v: &logdb_config_store::api::proto::Volume) -> Result<Layout, LayoutError> {
        let spec = v
            .spec
            .as_ref()
            .ok_or_else(|| LayoutError::Invalid(format!("volume {} has no spec", v.name)))?;
        let layout = Layout {
            volume: v.name.clone(),
            page_size: spec.page_size,
            pages_per_pg: spec.segment_size / spec.page_size.max(1) as u64,
            retention_seconds: spec.retention_seconds,
            max_pages: spec.max_size / spec.page_size.max(1) as u64,
            pgs: v
                .pgs
                .iter()
                .map(|pg| ProtectionGroup {
                    members: pg
                        .members
                        .iter()
                        .map(|m| Member {
                            segment: m.segment.clone(),
                            address: m.address.clone(),
                            zone: m.zone.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        layout.validate()?;
        Ok(layout)
    }
}
