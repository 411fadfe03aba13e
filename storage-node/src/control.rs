//! The segment's control record as data: what a segment is (its descriptor), the epoch it has
//! installed, the recovery decisions it honours, how far its log is materialized and its
//! retention horizon. Pure types shared by the acceptance core (which decides) and the page
//! store (which makes them durable, as versioned JSON).

use logdb_types::{Epoch, Lsn, PageId, PgIndex};

/// Version of the control record's layout; bump with an upgrade step when it changes.
pub const CONTROL_FORMAT: u32 = 1;

/// What a segment is: fixed when it is created.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    pub volume: String,
    pub segment: String,
    pub pg: PgIndex,
    pub first_page: u64,
    pub page_count: u64,
    pub page_size: u32,
    pub retention_secs: u64,
}

impl Descriptor {
    /// A small segment of volume `v` for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Descriptor {
        Descriptor {
            volume: "v".into(),
            segment: "s".into(),
            pg: PgIndex(0),
            first_page: 0,
            page_count: 100,
            page_size: 4096,
            retention_secs: 60,
        }
    }

    pub fn holds(&self, page: PageId) -> bool {
        page.0 >= self.first_page && page.0 - self.first_page < self.page_count
    }
}

/// A recovery decision: records above `above` written under an epoch below `epoch` are
/// discarded; the writer of `epoch` allocated its own records from `next` on (0: not known, a
/// decision from before this was recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Truncation {
    pub epoch: Epoch,
    pub above: Lsn,
    #[serde(default)]
    pub next: Lsn,
}

impl Truncation {
    pub fn discards(&self, record_epoch: Epoch, lsn: Lsn) -> bool {
        record_epoch < self.epoch && lsn > self.above
    }
}

/// A finished coalescing round: every record at or below `lsn` was materialized at `unix_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Round {
    pub lsn: Lsn,
    pub unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Control {
    pub format: u32,
    pub descriptor: Descriptor,
    pub epoch: Epoch,
    pub truncations: Vec<Truncation>,
    /// Every record at or below this LSN is in a stored version (it is also a chained record,
    /// so the SCL restarts from here when older log files are gone).
    pub materialized: Lsn,
    /// Reads below this LSN are refused: the log and versions under it may be gone.
    pub horizon: Lsn,
    /// Checkpoints above the horizon, oldest first: candidates for the next horizon (a round
    /// is recorded as one only when the last is a checkpoint interval old, so this stays short).
    pub rounds: Vec<Round>,
    /// The highest commit record at or below `materialized` and its timestamp (the log files
    /// that held it may be gone).
    #[serde(default)]
    pub materialized_commit: (Lsn, u64),
}

impl Control {
    pub fn new(descriptor: Descriptor, epoch: Epoch) -> Self {
        Control {
            format: CONTROL_FORMAT,
            descriptor,
            epoch,
            truncations: Vec::new(),
            materialized: Lsn::ZERO,
            horizon: Lsn::ZERO,
            rounds: Vec::new(),
            materialized_commit: (Lsn::ZERO, 0),
        }
    }

    pub fn discards(&self, record_epoch: Epoch, lsn: Lsn) -> bool {
        self.truncations
            .iter()
            .any(|t| t.discards(record_epoch, lsn))
    }
}
