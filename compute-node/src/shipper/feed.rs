//! The replica feed: what replicas hear each time VDL advances.

use super::{now_us, ShipState, Shipper};
use logdb_types::record::RedoRecord;
use logdb_types::{Epoch, Lsn};
use std::sync::Arc;

/// What replicas hear from the writer each time VDL advances (DESIGN.md §6): the records that
/// became durable, the new VDL and when it moved, every PG's durable tail, every segment's SCL.
#[derive(Clone, Debug)]
pub struct FeedBatch {
    pub epoch: Epoch,
    pub vdl: Lsn,
    pub vdl_time_us: u64,
    pub records: Vec<Arc<RedoRecord>>,
    pub pg_tails: Vec<Lsn>,
    pub scls: Vec<(String, Lsn)>,
}

/// Batches a replica may fall behind by before it is cut off (it resubscribes and starts afresh).
pub(super) const FEED_CAPACITY: usize = 4096;

impl Shipper {
    pub(super) fn feed_batch(&self, s: &ShipState, records: Vec<Arc<RedoRecord>>) -> FeedBatch {
        let links = self.links.read().expect("links");
        FeedBatch {
            epoch: self.epoch,
            vdl: s.quorum.vdl(),
            vdl_time_us: now_us(),
            records,
            pg_tails: s.durable_tail.clone(),
            scls: links
                .iter()
                .flatten()
                .map(|l| (l.member.segment.clone(), s.quorum.acked(l.pg, l.idx)))
                .collect(),
        }
    }

    /// Subscribes to the record feed; the first batch is the current state (no records).
    pub fn subscribe_feed(
        &self,
    ) -> (
        Arc<FeedBatch>,
        tokio::sync::broadcast::Receiver<Arc<FeedBatch>>,
    ) {
        let rx = self.feed.subscribe();
        let s = self.state.lock().expect("ship state");
        (Arc::new(self.feed_batch(&s, Vec::new())), rx)
    }
}
