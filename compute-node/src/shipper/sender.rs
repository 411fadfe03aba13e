//! One sender task per segment: sends its queue in batches, announces the VDL, turns
//! acknowledgements into quorum events, and brings a segment that misses records back from its
//! peers. A refusal for epoch or decision fences the writer.

use super::copy::copy_range;
use super::link::Link;
use super::Shipper;
use crate::page_read::client;
use logdb_types::proto::{TruncateRequest, WriteRecordsRequest};
use logdb_types::record::RedoRecord;
use logdb_types::Lsn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A WriteRecords that has no answer by then counts as failed (a hung or partitioned node);
/// its records are sent again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a segment that receives no records is told the new VDL.
const VDL_INTERVAL: Duration = Duration::from_millis(100);

impl Shipper {
    pub(super) async fn send_loop(self: Arc<Self>, link: Arc<Link>) {
        let mut backoff = Duration::from_millis(20);
        let mut last_vdl_sent = Lsn::ZERO;
        let mut last_send = Instant::now();
        let mut down_since: Option<Instant> = None;
        loop {
            if self.fenced().is_some() {
                return;
            }
            let batch: Vec<Arc<RedoRecord>> = {
                let q = link.queue.lock().expect("queue");
                let mut bytes = 0;
                q.records
                    .iter()
                    .enumerate()
                    .take_while(|(n, r)| {
                        bytes += r.data.len() + 64;
                        // At least one record, however large.
                        *n == 0 || bytes <= self.max_batch_bytes
                    })
                    .map(|(_, r)| Arc::clone(r))
                    .collect()
            };
            let vdl = self.vdl();
            if batch.is_empty() {
                // Nothing to send. The VDL rides on record batches; a segment that got no
                // records lately hears it alone, at most every VDL_INTERVAL, so that its
                // coalescer can go on — never once per commit.
                let since = last_send.elapsed();
                if vdl == last_vdl_sent || since < VDL_INTERVAL {
                    let wait = if vdl == last_vdl_sent {
                        VDL_INTERVAL
                    } else {
                        VDL_INTERVAL - since
                    };
                    let _ = tokio::time::timeout(wait, link.wake.notified()).await;
                    continue;
                }
            }
            let pending = link.pending_history.lock().expect("lock").clone();
            if let Some(history) = pending {
                let req = TruncateRequest {
                    volume_id: self.layout.volume.clone(),
                    segment_id: link.member.segment.clone(),
                    epoch: self.epoch.0,
                    above_lsn: history.last().map_or(0, |p| p.above_lsn),
                    decisions: history,
                };
                match client(&link.channel()).truncate(req).await {
                    Ok(_) => *link.pending_history.lock().expect("lock") = None,
                    Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                        self.fence(format!(
                            "segment {} refused this writer's recovery decision: {}",
                            link.member.segment,
                            e.message()
                        ));
                        return;
                    }
                    Err(e) => {
                        self.link_down(&link, &mut down_since, &e.to_string());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let req = WriteRecordsRequest {
                volume_id: self.layout.volume.clone(),
                segment_id: link.member.segment.clone(),
                records: batch.iter().map(|r| r.to_proto()).collect(),
                last_committed_lsn: vdl.0,
                epoch: self.epoch.0,
            };
            let size = prost::Message::encoded_len(&req) as u64;
            let sent =
                tokio::time::timeout(WRITE_TIMEOUT, client(&link.channel()).write_records(req))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
            match sent {
                Ok(ack) => {
                    let ack = ack.into_inner();
                    link.bytes_sent.fetch_add(size, Ordering::Relaxed);
                    self.metrics
                        .bytes_shipped
                        .get_or_create(&crate::metrics::NodeLabels {
                            segment: link.member.segment.clone(),
                        })
                        .inc_by(size);
                    last_vdl_sent = vdl;
                    last_send = Instant::now();
                    backoff = Duration::from_millis(20);
                    if let Some(since) = down_since.take() {
                        tracing::info!(segment = %link.member.segment, address = %link.address(), down_for_ms = since.elapsed().as_millis() as u64, "storage segment is back");
                    }
                    link.up.store(true, Ordering::Relaxed);
                    {
                        // Pop exactly what was sent (the queue may have been dropped and
                        // refilled meanwhile, see `append`).
                        let mut q = link.queue.lock().expect("queue");
                        for sent in &batch {
                            if !q.records.front().is_some_and(|r| Arc::ptr_eq(r, sent)) {
                                break;
                            }
                            q.records.pop_front();
                            q.bytes -= sent.data.len() + 64;
                        }
                    }
                    let scl = Lsn(ack.acknowledged_lsn);
                    self.on_ack(link.pg, link.idx, scl);
                    // A hole this writer's queue will not fill (records it never had for this
                    // segment: it was away during recovery, or its queue was dropped): copy what
                    // it misses from the peers that have it.
                    let behind = link.catch_up.swap(false, Ordering::Relaxed)
                        || self.has_unfilled_hole(&link, scl, Lsn(ack.highest_lsn));
                    if behind {
                        self.catch_up(&link, scl).await;
                    }
                }
                Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                    self.fence(format!(
                        "segment {} refused epoch {}: {}",
                        link.member.segment,
                        self.epoch,
                        e.message()
                    ));
                    return;
                }
                Err(e) => {
                    self.link_down(
                        &link,
                        &mut down_since,
                        &format!("{}: {}", e.code(), e.message()),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Whether the segment at `scl` misses records its queue will not bring: it holds records
    /// above a hole, or the next record it is to get (or the PG's last record, when nothing is
    /// queued) does not follow on from its SCL.
    fn has_unfilled_hole(&self, link: &Link, scl: Lsn, highest: Lsn) -> bool {
        if scl < highest {
            return true;
        }
        let s = self.state.lock().expect("ship state");
        let q = link.queue.lock().expect("queue");
        let expected = q
            .records
            .front()
            .map_or(s.quorum.pg_tail(link.pg), |r| r.prev_lsn);
        expected > scl
    }

    /// Brings `link`'s segment from `scl` up to its best peer, in bounded chunks (records pass
    /// through this process a batch at a time).
    async fn catch_up(&self, link: &Arc<Link>, mut scl: Lsn) {
        let peers: Vec<(Arc<Link>, Lsn)> = {
            let s = self.state.lock().expect("ship state");
            let links = self.links.read().expect("links");
            let mut p: Vec<(Arc<Link>, Lsn)> = links[link.pg]
                .iter()
                .filter(|l| l.idx != link.idx && l.up.load(Ordering::Relaxed))
                .filter(|l| l.pending_history.lock().expect("lock").is_none())
                .map(|l| (Arc::clone(l), s.quorum.acked(l.pg, l.idx)))
                .filter(|(_, peer)| *peer > scl)
                .collect();
            p.sort_by_key(|(_, peer)| std::cmp::Reverse(*peer));
            p
        };
        let Some((peer, target)) = peers.into_iter().next() else {
            return;
        };
        let started = Instant::now();
        match copy_range(
            &self.layout,
            &peer,
            link,
            Lsn(scl.0 + 1),
            target,
            self.epoch,
        )
        .await
        {
            Ok(got) if got > scl => {
                scl = got;
                self.on_ack(link.pg, link.idx, scl);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(segment = %link.member.segment, from = %peer.member.segment, error = %e, "catching up from a peer failed; retrying later");
                link.catch_up.store(true, Ordering::Relaxed);
                return;
            }
        }
        tracing::info!(segment = %link.member.segment, from = %peer.member.segment, %scl, took_ms = started.elapsed().as_millis() as u64, "segment caught up from a peer");
    }

    fn link_down(&self, link: &Link, down_since: &mut Option<Instant>, why: &str) {
        link.up.store(false, Ordering::Relaxed);
        if down_since.is_none() {
            *down_since = Some(Instant::now());
            tracing::warn!(segment = %link.member.segment, address = %link.address(), error = %why, "storage segment unreachable; retrying (commits continue while 4 of 6 acknowledge)");
        }
    }
}
