//! The quorum log shipper (DESIGN.md §3 steps 3-7): allocates LSNs, links each record to the
//! previous one of its PG, queues it for the six segments of that PG, and advances VCL/VDL as the
//! segments acknowledge. A record is durable on 4 of 6; commits complete in LSN order once VDL
//! passes them. One sender task per segment keeps a queue of what that segment has not yet
//! acknowledged, so a slow or returning node gets exactly what it missed and nobody waits for the
//! two slowest. LSN allocation stops `lal` records above VDL (back-pressure).
//!
//! It also reads pages: from one segment whose acknowledged SCL covers the page's PG tail.

//! The jobs live in submodules: `open` (recovery: fence, scan, decide, adopt, copy), `link`
//! (one segment's queue and channel), `sender` (one task per segment, catch-up), `copy`
//! (bounded record copies between segments), `pages` (page reads), `feed` (the replica feed)
//! and `growth` (new PGs, moved nodes). The quorum arithmetic is the pure `crate::quorum`.

mod copy;
mod feed;
mod growth;
mod link;
mod open;
mod pages;
mod sender;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logdb_types::proto::RecoveryPoint;
use logdb_types::record::{RecordKind, RedoRecord, FLAG_COMMIT};
use logdb_types::{Epoch, Lsn, PageId, PgIndex};
use tokio::sync::watch;

use crate::layout::Layout;
use crate::metrics::ComputeMetrics;
use crate::quorum::Quorum;

pub use feed::FeedBatch;
use link::Link;

/// One page change of a transaction, before it gets an LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageChange {
    pub page: PageId,
    pub kind: RecordKind,
    pub offset: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum ShipError {
    #[error("page {0} is beyond the volume's {1} pages; the volume is full")]
    VolumeFull(PageId, u64),
    #[error("the volume is full: this transaction needs {needed} bytes (page {page}) but the volume's maxSize is {max} bytes ({max_pages} pages of {page_size} bytes)")]
    VolumeMax {
        page: PageId,
        needed: u64,
        max: u64,
        max_pages: u64,
        page_size: u32,
    },
    #[error("the volume is full for now: page {page} is beyond the volume's {capacity} pages and the config store added no protection group for it within {secs} s (maxSize allows {max_pages} pages); retry later")]
    GrowthTimeout {
        page: PageId,
        capacity: u64,
        max_pages: u64,
        secs: u64,
    },
    #[error("this writer was fenced: {0}")]
    Fenced(String),
    #[error("no segment of PG {pg} can serve page {page} at LSN {lsn} within {secs} s (segments: {status})")]
    ReadUnavailable {
        pg: u32,
        page: PageId,
        lsn: Lsn,
        secs: u64,
        status: String,
    },
    #[error("reading page {page}: {reason}")]
    Read { page: PageId, reason: String },
    #[error("opening the volume: {0}")]
    Recovery(String),
    #[error("this compute node is a read replica: it takes no writes")]
    ReadOnly,
    #[error("back-pressure: storage made no room for this transaction's {records} records within {secs} s ({outstanding} records already wait above VDL {vdl}); retry later")]
    Backpressure {
        records: u64,
        outstanding: u64,
        vdl: Lsn,
        secs: u64,
    },
}

struct ShipState {
    /// LSNs, acknowledgements, VCL and VDL (pure).
    quorum: Quorum,
    next_tx: u64,
    last_commit_ts: u64,
    fenced: Option<String>,
    /// Records not yet below VDL, in LSN order: they go to replicas once durable.
    feed_pending: VecDeque<Arc<RedoRecord>>,
    /// Per PG, its last record at or below VDL (what a replica reads pages at).
    durable_tail: Vec<Lsn>,
}

pub struct Shipper {
    layout: Layout,
    epoch: Epoch,
    state: Mutex<ShipState>,
    vdl_tx: watch::Sender<Lsn>,
    acks_tx: watch::Sender<u64>,
    /// Per PG, its six segments. Grows when the volume grows.
    links: std::sync::RwLock<Vec<Vec<Arc<Link>>>>,
    /// PGs the writer ships to now (`layout.pgs` is the set it opened with); writes waiting
    /// for growth watch it.
    pg_count: watch::Sender<usize>,
    /// Pages the open writing transaction reaches (0: none): reported to the config store
    /// so the PGs it needs are there before it commits.
    wanted_pages: std::sync::atomic::AtomicU64,
    /// Wakes the usage reporter early when a write nears the end of the allocated pages.
    growth_wanted: tokio::sync::Notify,
    /// How long a write into pages not yet allocated waits for their PG.
    growth_timeout: Duration,
    lal: u64,
    backpressure_timeout: Duration,
    max_batch_bytes: usize,
    queue_limit_bytes: usize,
    metrics: Arc<ComputeMetrics>,
    feed: tokio::sync::broadcast::Sender<Arc<FeedBatch>>,
    /// The recovery decision history this writer made its segments adopt (its own last).
    history: Vec<RecoveryPoint>,
}

/// Tunables of the shipper.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// Epoch to use at least; without a ticket the writer goes above every epoch it finds
    /// installed.
    pub min_epoch: Epoch,
    /// `min_epoch` is a config store ticket: use exactly it, refuse if storage saw it already.
    pub ticket: bool,
    /// LSN allocation stops this many records above VDL.
    pub lal: u64,
    /// Largest WriteRecords batch sent to a segment.
    pub max_batch_bytes: usize,
    /// A segment whose unacknowledged queue passes this is dropped from shipping (needs repair).
    pub queue_limit_bytes: usize,
    /// How long opening the volume waits for a write quorum of every PG.
    pub open_timeout: Duration,
    /// How long a transaction waits under back-pressure before it is refused.
    pub backpressure_timeout: Duration,
    /// How long a write into pages beyond the allocated PGs (under maxSize) waits for the
    /// config store to add them.
    pub growth_timeout: Duration,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            min_epoch: Epoch(1),
            ticket: false,
            lal: 200_000,
            max_batch_bytes: 4 << 20,
            queue_limit_bytes: 256 << 20,
            open_timeout: Duration::from_secs(60),
            backpressure_timeout: Duration::from_secs(60),
            growth_timeout: Duration::from_secs(60),
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

impl Shipper {
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn vdl(&self) -> Lsn {
        *self.vdl_tx.borrow()
    }

    /// Allocates LSNs for one transaction's changes (the last one carries the commit flag and a
    /// strictly increasing commit timestamp), queues them for their segments and returns the
    /// commit LSN. Blocks (back-pressure) while the next LSN is `lal` records above VDL.
    pub fn append(&self, changes: Vec<PageChange>) -> Result<Lsn, ShipError> {
        if changes.is_empty() {
            return Ok(Lsn::ZERO);
        }
        if let Some(top) = changes.iter().map(|c| c.page).max() {
            self.wait_for_pg(top)?;
        }
        self.wait_for_room(changes.len() as u64)?;
        let mut s = self.state.lock().expect("ship state");
        if let Some(f) = &s.fenced {
            return Err(ShipError::Fenced(f.clone()));
        }
        let ts = now_us().max(s.last_commit_ts + 1);
        s.last_commit_ts = ts;
        let tx = s.next_tx;
        s.next_tx += 1;
        let n = changes.len();
        let mut per_pg: Vec<Vec<Arc<RedoRecord>>> = vec![Vec::new(); s.quorum.pgs()];
        let mut commit = Lsn::ZERO;
        // One metrics update per kind and transaction (not per record): this is the commit path.
        let (mut images, mut image_bytes, mut deltas, mut delta_bytes) = (0u64, 0u64, 0u64, 0u64);
        for c in &changes {
            if c.kind == RecordKind::Image {
                images += 1;
                image_bytes += c.data.len() as u64;
            } else {
                deltas += 1;
                delta_bytes += c.data.len() as u64;
            }
        }
        for (kind, records, bytes) in [
            ("image", images, image_bytes),
            ("delta", deltas, delta_bytes),
        ] {
            if records > 0 {
                let kind = crate::metrics::KindLabels { kind };
                self.metrics
                    .redo_records
                    .get_or_create(&kind)
                    .inc_by(records);
                self.metrics.redo_bytes.get_or_create(&kind).inc_by(bytes);
            }
        }
        for (i, c) in changes.into_iter().enumerate() {
            let pg = self.pg_of(c.page).expect("checked above").0 as usize;
            let (lsn, prev) = s.quorum.allocate(pg);
            let last = i + 1 == n;
            let (flags, ts) = if last { (FLAG_COMMIT, ts) } else { (0, 0) };
            let rec = RedoRecord::new(lsn, prev, tx, c.page, c.offset, c.kind, flags, ts, c.data);
            let rec = Arc::new(rec);
            s.feed_pending.push_back(Arc::clone(&rec));
            per_pg[pg].push(rec);
            commit = lsn;
        }
        s.quorum.commit(commit);
        for (pg, recs) in per_pg.into_iter().enumerate() {
            if recs.is_empty() {
                continue;
            }
            let bytes: usize = recs.iter().map(|r| r.data.len() + 64).sum();
            let links = self.links.read().expect("links");
            for link in &links[pg] {
                let mut q = link.queue.lock().expect("queue");
                if q.bytes + bytes > self.queue_limit_bytes && !q.records.is_empty() {
                    // Memory stays bounded: what a write quorum of its peers already holds is
                    // dropped and comes from them instead (the rest LAL bounds).
                    let on_quorum = s.quorum.quorum_scl(pg);
                    let mut dropped = 0usize;
                    while q.records.front().is_some_and(|r| r.lsn <= on_quorum) {
                        let r = q.records.pop_front().expect("front");
                        q.bytes -= r.data.len() + 64;
                        dropped += 1;
                    }
                    if dropped > 0 {
                        tracing::warn!(segment = %link.member.segment, dropped, "segment fell too far behind; what its peers hold is dropped from its queue, it catches up from them");
                        link.catch_up.store(true, Ordering::Relaxed);
                    }
                }
                q.records.extend(recs.iter().cloned());
                q.bytes += bytes;
                drop(q);
                link.wake.notify_one();
            }
        }
        self.metrics.records_shipped.inc_by(n as u64);
        Ok(commit)
    }

    /// Back-pressure: waits until this transaction's `n` records fit within `lal` records
    /// above VDL (a transaction larger than `lal` waits for everything before it), at most
    /// `backpressure_timeout`, and gives up at once when the writer is fenced.
    fn wait_for_room(&self, n: u64) -> Result<(), ShipError> {
        let mut rx = self.vdl_tx.subscribe();
        let deadline = Instant::now() + self.backpressure_timeout;
        let handle = tokio::runtime::Handle::current();
        loop {
            let (outstanding, vdl) = {
                let s = self.state.lock().expect("ship state");
                if let Some(f) = &s.fenced {
                    return Err(ShipError::Fenced(f.clone()));
                }
                (s.quorum.outstanding(), s.quorum.vdl())
            };
            if outstanding + n.min(self.lal) <= self.lal {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ShipError::Backpressure {
                    records: n,
                    outstanding,
                    vdl,
                    secs: self.backpressure_timeout.as_secs(),
                });
            }
            handle.block_on(async {
                let _ = tokio::time::timeout(left, rx.changed()).await;
            });
        }
    }

    /// Resolves once VDL ≥ `lsn` (the transaction is durable on a write quorum).
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), ShipError> {
        let mut rx = self.vdl_tx.subscribe();
        loop {
            if *rx.borrow_and_update() >= lsn {
                return Ok(());
            }
            if let Some(f) = &self.state.lock().expect("ship state").fenced {
                return Err(ShipError::Fenced(f.clone()));
            }
            if rx.changed().await.is_err() {
                return Err(ShipError::Fenced("shipper stopped".into()));
            }
        }
    }

    fn on_ack(&self, pg: usize, idx: usize, scl: Lsn) {
        let mut s = self.state.lock().expect("ship state");
        if scl <= s.quorum.acked(pg, idx) {
            // Nothing new: page readers waiting for a segment to catch up need not wake.
            return;
        }
        let done = s.quorum.ack(pg, idx, scl);
        if let Some(&vdl) = done.last() {
            self.metrics.vdl.set(vdl.0 as i64);
            self.vdl_tx.send_replace(vdl);
            let mut records = Vec::new();
            while s.feed_pending.front().is_some_and(|r| r.lsn <= vdl) {
                let r = s.feed_pending.pop_front().expect("front");
                let k = (r.page_id.0 / self.layout.pages_per_pg) as usize;
                s.durable_tail[k] = r.lsn;
                records.push(r);
            }
            if self.feed.receiver_count() > 0 {
                let batch = self.feed_batch(&s, records);
                let _ = self.feed.send(Arc::new(batch));
            }
        }
        drop(s);
        self.acks_tx.send_modify(|n| *n += 1);
    }

    fn fence(&self, why: String) {
        let mut s = self.state.lock().expect("ship state");
        if s.fenced.is_none() {
            tracing::error!(reason = %why, "writer fenced: refusing further writes");
            s.fenced = Some(why);
        }
        drop(s);
        // Wake every waiter so it sees the fence.
        self.vdl_tx.send_modify(|_| {});
    }

    pub fn fenced(&self) -> Option<String> {
        self.state.lock().expect("ship state").fenced.clone()
    }

    /// One line per segment: acknowledged SCL, up or down, queued records.
    pub fn segment_status(&self) -> Vec<SegmentStatus> {
        let s = self.state.lock().expect("ship state");
        self.links
            .read()
            .expect("links")
            .iter()
            .flatten()
            .map(|l| SegmentStatus {
                pg: l.pg as u32,
                segment: l.member.segment.clone(),
                address: l.address(),
                zone: l.member.zone.clone(),
                up: l.up.load(Ordering::Relaxed),
                scl: s.quorum.acked(l.pg, l.idx),
                queued: l.queue.lock().expect("queue").records.len(),
                bytes_sent: l.bytes_sent.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Per-PG index of a page (for callers that group by PG).
    pub fn pg_of(&self, page: PageId) -> Option<PgIndex> {
        let k = page.0 / self.layout.pages_per_pg;
        (k < self.pg_count() as u64).then_some(PgIndex(k as u32))
    }

    /// Pages the volume holds now.
    pub fn capacity_pages(&self) -> u64 {
        self.layout.pages_per_pg * self.pg_count() as u64
    }

    /// PGs shipped to now.
    pub fn pg_count(&self) -> usize {
        *self.pg_count.borrow()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SegmentStatus {
    pub pg: u32,
    pub segment: String,
    pub address: String,
    pub zone: String,
    pub up: bool,
    pub scl: Lsn,
    pub queued: usize,
    pub bytes_sent: u64,
}
