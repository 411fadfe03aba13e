//! The volume changes shape under a running writer: a new PG, a storage node that moved — and a
//! write that reaches pages no PG holds yet waits for one (growth on demand, DESIGN.md §8).

use super::link::Link;
use super::{ShipError, Shipper};
use crate::layout::{Layout, WRITE_QUORUM};
use crate::page_read::client;
use logdb_types::proto::CreateSegmentRequest;
use logdb_types::{Lsn, PageId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        self.pg_count.send_replace(k + 1);
        tracing::info!(pg = k, "volume grew: shipping to a new protection group");
        Ok(())
    }

    /// The open writing transaction reaches `pages` pages. Past 3/4 of the allocated pages the
    /// usage reporter is woken so the config store adds the PGs before the commit needs them.
    pub fn want_pages(&self, pages: u64) {
        let before = self.wanted_pages.fetch_max(pages, Ordering::AcqRel);
        if pages > before && pages * 4 > self.capacity_pages() * 3 {
            self.growth_wanted.notify_one();
        }
    }

    /// The writing transaction ended (committed or rolled back).
    pub fn forget_wanted_pages(&self) {
        self.wanted_pages.store(0, Ordering::Release);
    }

    /// Pages the open writing transaction reaches (0: none).
    pub fn wanted_pages(&self) -> u64 {
        self.wanted_pages.load(Ordering::Acquire)
    }

    /// Resolves when a write nears the end of the allocated pages.
    pub async fn growth_wanted(&self) {
        self.growth_wanted.notified().await
    }

    /// Returns once `page` has a PG to ship to. A page under maxSize waits for the config store
    /// to add it (bounded by `growth_timeout`, progress in the log); a page past maxSize, or of
    /// a volume that cannot grow (a layout file), is refused at once.
    pub(super) fn wait_for_pg(&self, page: PageId) -> Result<(), ShipError> {
        if self.pg_of(page).is_some() {
            return Ok(());
        }
        let max_pages = self.layout.max_pages;
        if max_pages == 0 {
            return Err(ShipError::VolumeFull(page, self.capacity_pages()));
        }
        if page.0 >= max_pages {
            return Err(ShipError::VolumeMax {
                page,
                needed: (page.0 + 1) * self.layout.page_size as u64,
                max: max_pages * self.layout.page_size as u64,
                max_pages,
                page_size: self.layout.page_size,
            });
        }
        self.want_pages(page.0 + 1);
        self.growth_wanted.notify_one();
        let start = Instant::now();
        let deadline = start + self.growth_timeout;
        let mut rx = self.pg_count.subscribe();
        let handle = tokio::runtime::Handle::current();
        tracing::info!(%page, capacity = self.capacity_pages(), "a write reaches pages no PG holds yet; waiting for the volume to grow");
        loop {
            if self.pg_of(page).is_some() {
                tracing::info!(%page, waited_ms = start.elapsed().as_millis() as u64, "the volume grew; the write goes on");
                return Ok(());
            }
            if let Some(f) = self.fenced() {
                return Err(ShipError::Fenced(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ShipError::GrowthTimeout {
                    page,
                    capacity: self.capacity_pages(),
                    max_pages,
                    secs: self.growth_timeout.as_secs(),
                });
            }
            let step = left.min(Duration::from_secs(5));
            let changed = handle.block_on(async { tokio::time::timeout(step, rx.changed()).await });
            if changed.is_err() {
                tracing::info!(%page, capacity = self.capacity_pages(), waited_s = start.elapsed().as_secs(), "still waiting for the volume to grow");
            }
        }
    }
}
