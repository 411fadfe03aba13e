//! Page reads from storage: one segment whose acknowledged SCL covers the page's PG tail.

use super::link::Link;
use super::{ShipError, Shipper};
use logdb_types::{Lsn, PageId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

impl Shipper {
    /// The page's newest version: asks one segment whose acknowledged SCL covers the PG's tail.
    pub async fn read_page(&self, page: PageId) -> Result<Vec<u8>, ShipError> {
        // The PGs shipped to now (the volume may have grown since it was opened).
        let pg = self
            .pg_of(page)
            .ok_or(ShipError::VolumeFull(page, self.capacity_pages()))?;
        let k = pg.0 as usize;
        let needed = self.state.lock().expect("ship state").quorum.pg_tail(k);
        if needed == Lsn::ZERO {
            return Ok(vec![0; self.layout.page_size as usize]);
        }
        let timeout = Duration::from_secs(30);
        let deadline = Instant::now() + timeout;
        let mut acks = self.acks_tx.subscribe();
        loop {
            let candidates: Vec<(String, Channel)> = {
                let s = self.state.lock().expect("ship state");
                let links = self.links.read().expect("links");
                let mut c: Vec<&Arc<Link>> = links[k]
                    .iter()
                    .filter(|l| s.quorum.acked(k, l.idx) >= needed)
                    .collect();
                // Prefer segments known to be up.
                c.sort_by_key(|l| !l.up.load(Ordering::Relaxed));
                c.into_iter()
                    .map(|l| (l.member.segment.clone(), l.channel()))
                    .collect()
            };
            let last_err =
                match crate::page_read::read_from(&self.layout.volume, page, needed, &candidates)
                    .await
                {
                    Ok(data) => {
                        self.metrics.storage_reads.inc();
                        return Ok(data);
                    }
                    Err(e) => e,
                };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ShipError::ReadUnavailable {
                    pg: pg.0,
                    page,
                    lsn: needed,
                    secs: timeout.as_secs(),
                    status: last_err,
                });
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(200)), acks.changed()).await;
        }
    }
}
