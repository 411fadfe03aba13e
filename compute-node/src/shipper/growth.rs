//! The volume changes shape under a running writer: a new PG, a storage node that moved.

use super::link::Link;
use super::{ShipError, Shipper};
use crate::layout::{Layout, WRITE_QUORUM};
use crate::page_read::client;
use logdb_types::proto::CreateSegmentRequest;
use logdb_types::Lsn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Shipper {
    /// Follows storage nodes that moved: every link whose segment's node now serves elsewhere in
    /// `layout` is pointed there (its sender uses the new address from its next try).
    pub fn follow_addresses(&self, layout: &Layout) {
        let links = self.links.read().expect("links");
        for (row, pg) in links.iter().zip(&layout.pgs) {
            for link in row {
                let Some(m) = pg.members.iter().find(|m| m.segment == link.member.segment) else {
                    continue;
                };
                match link.retarget(&m.address) {
                    Ok(true) => {
                        tracing::info!(segment = %link.member.segment, address = %m.address, "storage node moved; shipping to its new address");
                        link.wake.notify_one();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(segment = %link.member.segment, error = %e, "unusable address for a storage node")
                    }
                }
            }
        }
    }

    /// The volume grew: creates the new PG's segments (a write quorum must answer), starts
    /// shipping to them and only then lets LSNs be allocated for its pages.
    pub async fn add_pg(
        self: &Arc<Self>,
        pg: &crate::layout::ProtectionGroup,
    ) -> Result<(), ShipError> {
        let k = self.pg_count();
        let mut row = Vec::new();
        let mut created = 0;
        for (i, m) in pg.members.iter().enumerate() {
            let link = Link::new(k, i, m)?;
            // A new segment holds nothing to discard, but carries the history on like the rest.
            *link.pending_history.lock().expect("lock") = Some(self.history.clone());
            let req = CreateSegmentRequest {
                volume_id: self.layout.volume.clone(),
                segment_id: m.segment.clone(),
                pg_index: k as u32,
                first_page: k as u64 * self.layout.pages_per_pg,
                page_count: self.layout.pages_per_pg,
                page_size: self.layout.page_size,
                retention_seconds: self.layout.retention_seconds,
                epoch: self.epoch.0,
            };
            let ok = tokio::time::timeout(
                Duration::from_secs(3),
                client(&link.channel()).create_segment(req),
            )
            .await;
            if matches!(ok, Ok(Ok(_))) {
                created += 1;
            }
            row.push(link);
        }
        if created < WRITE_QUORUM {
            return Err(ShipError::Recovery(format!(
                "new PG {k}: only {created}/6 segments created"
            )));
        }
        {
            let mut s = self.state.lock().expect("ship state");
            s.quorum.add_pg();
            s.durable_tail.push(Lsn::ZERO);
        }
        self.links.write().expect("links").push(row.clone());
        for link in row {
            tokio::spawn(Arc::clone(self).send_loop(link));
        }
        self.pg_count.store(k + 1, Ordering::Release);
        tracing::info!(pg = k, "volume grew: shipping to a new protection group");
        Ok(())
    }
}
