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
    /// A small segment of volume `v` (4 KiB pages), for tests.
    #[doc(hidden)]
    pub fn for_tests() -> Descriptor {
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

/// A hold on the history from `lsn` on (a restore reading it), until `expires_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub name: String,
    pub lsn: Lsn,
    pub expires_unix_ms: u64,
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
    /// Holds on the history: the horizon stays below each unexpired one's LSN.
    #[serde(default)]
    pub leases: Vec<Lease>,
    /// Per epoch that wrote to this segment, its highest materialized record (a decision that
    /// would void one of them is refused: what is materialized is final).
    #[serde(default)]
    pub epoch_tops: Vec<(Epoch, Lsn)>,
}

impl Control {
    /// The control record as stored (versioned JSON); what is wrong with it otherwise. Bytes
    /// from disk are not trusted: a wrong format or an impossible page size is refused here,
    /// before any code sizes a page by it.
    pub fn decode(raw: &[u8]) -> Result<Control, String> {
        let control: Control = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        if control.format != CONTROL_FORMAT {
            return Err(format!(
                "format {} is not the supported {CONTROL_FORMAT}",
                control.format
            ));
        }
        crate::node::validate_page_size(control.descriptor.page_size).map_err(|e| e.to_string())?;
        if control.descriptor.page_count == 0 {
            return Err("descriptor has no pages".into());
        }
        Ok(control)
    }

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
            leases: Vec::new(),
            epoch_tops: Vec::new(),
        }
    }

    /// Where retention may move the horizon at `now_ms`: the newest checkpoint recorded at or
    /// before `cutoff_ms` (the retention window's start) below every unexpired lease's LSN (a
    /// lease holds pages and records from its LSN on; records at the horizon are gone), when
    /// that is above the current horizon.
    pub fn next_horizon(&self, cutoff_ms: u64, now_ms: u64) -> Option<Lsn> {
        let held = self
            .leases
            .iter()
            .filter(|l| l.expires_unix_ms > now_ms)
            .map(|l| l.lsn)
            .min();
        self.rounds
            .iter()
            .filter(|r| r.unix_ms <= cutoff_ms && held.is_none_or(|h| r.lsn < h))
            .map(|r| r.lsn)
            .max()
            .filter(|h| *h > self.horizon)
    }

    pub fn discards(&self, record_epoch: Epoch, lsn: Lsn) -> bool {
        self.truncations
            .iter()
            .any(|t| t.discards(record_epoch, lsn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_stops_at_the_oldest_unexpired_lease() {
        let mut c = Control::new(Descriptor::for_tests(), Epoch(1));
        c.rounds = [(10, 1_000), (20, 2_000), (30, 3_000)]
            .map(|(lsn, unix_ms)| Round {
                lsn: Lsn(lsn),
                unix_ms,
            })
            .to_vec();
        assert_eq!(c.next_horizon(2_500, 9_000), Some(Lsn(20)));
        c.leases.push(Lease {
            name: "restore-1".into(),
            lsn: Lsn(15),
            expires_unix_ms: 10_000,
        });
        assert_eq!(c.next_horizon(9_000, 9_000), Some(Lsn(10)));
        c.horizon = Lsn(10);
        assert_eq!(c.next_horizon(9_000, 9_000), None, "held at 15");
        // Expired: it no longer holds anything.
        assert_eq!(c.next_horizon(9_000, 10_000), Some(Lsn(30)));
    }
}
