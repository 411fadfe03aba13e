//! The quorum log shipper (DESIGN.md §3 steps 3-7): allocates LSNs, links each record to the
//! previous one of its PG, queues it for the six segments of that PG, and advances VCL/VDL as the
//! segments acknowledge. A record is durable on 4 of 6; commits complete in LSN order once VDL
//! passes them. One sender task per segment keeps a queue of what that segment has not yet
//! acknowledged, so a slow or returning node gets exactly what it missed and nobody waits for the
//! two slowest. LSN allocation stops `lal` records above VDL (back-pressure).
//!
//! It also reads pages: from one segment whose acknowledged SCL covers the page's PG tail.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logdb_storage::proto::{
    CreateSegmentRequest, InstallEpochRequest, RecoveryPoint, StreamRecordsRequest,
    TruncateRequest, WriteRecordsRequest,
};
use logdb_storage::record::{RecordKind, RedoRecord, FLAG_COMMIT};
use logdb_storage::types::{Epoch, Lsn, PageId, PgIndex};
use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::layout::{Layout, Member, SEGMENTS_PER_PG, WRITE_QUORUM};
use crate::metrics::ComputeMetrics;
use crate::page_read::client;
use crate::recovery::{self, Header, Point, SegmentScan};

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
    next_lsn: u64,
    /// The first LSN this writer allocates (its recovery decision's).
    first_lsn: u64,
    next_tx: u64,
    last_commit_ts: u64,
    pg_tail: Vec<Lsn>,
    pg_outstanding: Vec<VecDeque<Lsn>>,
    seg_scl: Vec<[Lsn; SEGMENTS_PER_PG]>,
    commits: BTreeSet<Lsn>,
    vdl: Lsn,
    fenced: Option<String>,
    /// Records not yet below VDL, in LSN order: they go to replicas once durable.
    feed_pending: VecDeque<Arc<RedoRecord>>,
    /// Per PG, its last record at or below VDL (what a replica reads pages at).
    durable_tail: Vec<Lsn>,
}

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
const FEED_CAPACITY: usize = 4096;

/// What one segment has not yet acknowledged.
struct LinkQueue {
    records: VecDeque<Arc<RedoRecord>>,
    bytes: usize,
}

struct Link {
    pg: usize,
    idx: usize,
    /// Segment name and zone (fixed); `member.address` is where the segment was first found.
    member: Member,
    /// Where the segment's node serves now, and the channel to it: a node that comes back on
    /// another address re-registers, and the volume's watch moves the link (`follow_addresses`).
    target: Mutex<(String, Channel)>,
    queue: Mutex<LinkQueue>,
    wake: Notify,
    /// Set while the segment has not adopted this writer's recovery decision history yet: it
    /// does before its first record.
    pending_history: Mutex<Option<Vec<RecoveryPoint>>>,
    up: std::sync::atomic::AtomicBool,
    bytes_sent: AtomicU64,
    /// Its queue was dropped (it fell too far behind): it catches up from its peers.
    catch_up: std::sync::atomic::AtomicBool,
}

/// A lazily connecting channel to the storage node at `address`.
fn storage_channel(address: &str) -> Result<Channel, ShipError> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| ShipError::Recovery(format!("address {address}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Link {
    fn channel(&self) -> Channel {
        self.target.lock().expect("target").1.clone()
    }

    fn address(&self) -> String {
        self.target.lock().expect("target").0.clone()
    }

    /// Points the link at `address` if it moved; answers whether it did.
    fn retarget(&self, address: &str) -> Result<bool, ShipError> {
        let mut t = self.target.lock().expect("target");
        if t.0 == address {
            return Ok(false);
        }
        *t = (address.to_string(), storage_channel(address)?);
        Ok(true)
    }

    fn new(pg: usize, idx: usize, member: &Member) -> Result<Arc<Link>, ShipError> {
        let channel = storage_channel(&member.address)?;
        Ok(Arc::new(Link {
            pg,
            idx,
            member: member.clone(),
            target: Mutex::new((member.address.clone(), channel)),
            queue: Mutex::new(LinkQueue {
                records: VecDeque::new(),
                bytes: 0,
            }),
            wake: Notify::new(),
            pending_history: Mutex::new(None),
            up: std::sync::atomic::AtomicBool::new(false),
            bytes_sent: AtomicU64::new(0),
            catch_up: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

pub struct Shipper {
    layout: Layout,
    epoch: Epoch,
    state: Mutex<ShipState>,
    vdl_tx: watch::Sender<Lsn>,
    acks_tx: watch::Sender<u64>,
    /// Per PG, its six segments. Grows when the volume grows.
    links: std::sync::RwLock<Vec<Vec<Arc<Link>>>>,
    /// PGs the writer ships to now (`layout.pgs` is the set it opened with).
    pg_count: std::sync::atomic::AtomicUsize,
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
        }
    }
}

/// A WriteRecords that has no answer by then counts as failed (a hung or partitioned node);
/// its records are sent again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lagging segment catches up this many LSNs per copy (bounds the memory it takes).
const CATCH_UP_CHUNK_LSNS: u64 = 4096;

/// How often a segment that receives no records is told the new VDL.
const VDL_INTERVAL: Duration = Duration::from_millis(100);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// The 4th highest SCL of a PG: every record at or below it is on a write quorum.
fn quorum_scl(scls: &[Lsn; SEGMENTS_PER_PG]) -> Lsn {
    let mut s = *scls;
    s.sort_unstable_by(|a, b| b.cmp(a));
    s[WRITE_QUORUM - 1]
}

impl Shipper {
    /// Opens the volume as its writer: creates missing segments, installs a new epoch on a write
    /// quorum of every PG (fencing any older writer), finds each PG's complete tail from a read
    /// quorum, brings lagging segments up to it, discards records above it, then starts one
    /// sender per segment.
    pub async fn open(
        layout: Layout,
        cfg: ShipperConfig,
        metrics: Arc<ComputeMetrics>,
    ) -> Result<Arc<Shipper>, ShipError> {
        let rec_err = |m: String| ShipError::Recovery(m);
        let mut links: Vec<Vec<Arc<Link>>> = Vec::new();
        for (k, pg) in layout.pgs.iter().enumerate() {
            let mut row = Vec::new();
            for (i, m) in pg.members.iter().enumerate() {
                row.push(Link::new(k, i, m)?);
            }
            links.push(row);
        }

        // 1. Create/open every segment; learn SCLs and epochs. Wait for a write quorum per PG.
        let deadline = Instant::now() + cfg.open_timeout;
        let mut states: Vec<Vec<Option<logdb_storage::proto::SegmentState>>>;
        loop {
            states = Vec::new();
            for (k, row) in links.iter().enumerate() {
                let mut got = Vec::new();
                for link in row {
                    let req = CreateSegmentRequest {
                        volume_id: layout.volume.clone(),
                        segment_id: link.member.segment.clone(),
                        pg_index: k as u32,
                        first_page: k as u64 * layout.pages_per_pg,
                        page_count: layout.pages_per_pg,
                        page_size: layout.page_size,
                        retention_seconds: layout.retention_seconds,
                        epoch: 0,
                    };
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        client(&link.channel()).create_segment(req),
                    )
                    .await;
                    got.push(match r {
                        Ok(Ok(s)) => Some(s.into_inner()),
                        Ok(Err(e))
                            if e.code() == tonic::Code::AlreadyExists
                                || e.code() == tonic::Code::InvalidArgument =>
                        {
                            return Err(rec_err(format!(
                                "segment {} on {}: {}",
                                link.member.segment,
                                link.address(),
                                e.message()
                            )));
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(segment = %link.member.segment, error = %e, "segment not reachable");
                            None
                        }
                        Err(_) => None,
                    });
                }
                states.push(got);
            }
            let short: Vec<String> = states
                .iter()
                .enumerate()
                .filter(|(_, s)| s.iter().flatten().count() < WRITE_QUORUM)
                .map(|(k, s)| format!("PG {k}: {}/6", s.iter().flatten().count()))
                .collect();
            if short.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(rec_err(format!(
                    "no write quorum of segments reachable ({})",
                    short.join(", ")
                )));
            }
            tracing::warn!(missing = %short.join(", "), "waiting for a write quorum of storage nodes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 2. A new epoch above every one installed, on a write quorum of every PG.
        let seen = states
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.epoch)
            .max()
            .unwrap_or(0);
        let epoch = if cfg.ticket {
            // A config store ticket is used as is: two writers never share an epoch.
            if seen >= cfg.min_epoch.0 {
                return Err(rec_err(format!(
                    "writer ticket epoch {} is not above epoch {seen} already installed on storage: a newer writer holds the volume",
                    cfg.min_epoch
                )));
            }
            cfg.min_epoch
        } else {
            Epoch(cfg.min_epoch.0.max(seen + 1))
        };
        for (k, row) in links.iter().enumerate() {
            let mut ok = 0;
            for (i, link) in row.iter().enumerate() {
                if states[k][i].is_none() {
                    continue;
                }
                let req = InstallEpochRequest {
                    volume_id: layout.volume.clone(),
                    segment_id: link.member.segment.clone(),
                    epoch: epoch.0,
                };
                match answer_in_time(client(&link.channel()).install_epoch(req)).await {
                    Ok(s) => {
                        ok += 1;
                        states[k][i] = Some(s.into_inner());
                    }
                    Err(e) => {
                        tracing::warn!(segment = %link.member.segment, error = %e.message(), "epoch install failed");
                        states[k][i] = None;
                    }
                }
            }
            if ok < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "epoch {epoch} installed on only {ok}/6 segments of PG {k}"
                )));
            }
        }

        // 3. What every answering segment holds above what is known durable (headers only).
        let from = recovery::scan_start(
            states
                .iter()
                .flatten()
                .flatten()
                .map(|s| (Lsn(s.materialized_lsn), Lsn(s.last_committed_lsn))),
        );
        let mut scans: Vec<Vec<Option<SegmentScan>>> = Vec::new();
        for (k, row) in links.iter().enumerate() {
            let mut got = Vec::new();
            for (i, link) in row.iter().enumerate() {
                got.push(match &states[k][i] {
                    None => None,
                    Some(st) => match tokio::time::timeout(
                        RECOVERY_RPC_TIMEOUT,
                        scan_segment(&layout.volume, link, st, from),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer in time".into()))
                    {
                        Ok(scan) => Some(scan),
                        Err(e) => {
                            tracing::warn!(segment = %link.member.segment, error = %e, "segment scan failed; treating it as unreachable");
                            None
                        }
                    },
                });
            }
            scans.push(got);
        }

        // 4. The decision: volume-wide VCL and VDL, each PG's tail, the history to adopt.
        let decision =
            recovery::decide(epoch, Lsn(from.0 - 1), &scans).map_err(|e| rec_err(e.to_string()))?;
        let history: Vec<RecoveryPoint> = decision
            .history
            .iter()
            .map(|p| RecoveryPoint {
                epoch: p.epoch.0,
                above_lsn: p.above.0,
                next_lsn: p.next.0,
            })
            .collect();
        let vdl = decision.vdl;

        // 5. The decision is adopted by a write quorum of every PG before anything is written
        // (every later recovery then sees it); segments that did not adopt it now adopt it
        // before their first record. Then lagging segments are brought up to their PG's tail.
        let mut seg_scl = Vec::new();
        for (k, row) in links.iter().enumerate() {
            let tail = decision.pg_tails[k];
            let mut adopted: Vec<(usize, Lsn)> = Vec::new();
            for (i, link) in row.iter().enumerate() {
                if scans[k][i].is_some() {
                    let req = TruncateRequest {
                        volume_id: layout.volume.clone(),
                        segment_id: link.member.segment.clone(),
                        epoch: epoch.0,
                        above_lsn: vdl.0,
                        decisions: history.clone(),
                    };
                    match answer_in_time(client(&link.channel()).truncate(req)).await {
                        Ok(st) => {
                            adopted.push((i, Lsn(st.into_inner().scl)));
                            continue;
                        }
                        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                            return Err(ShipError::Fenced(format!(
                                "segment {} refused this writer's recovery: {}",
                                link.member.segment,
                                e.message()
                            )));
                        }
                        Err(e) => {
                            tracing::warn!(segment = %link.member.segment, error = %e.message(), "adopting the recovery decision failed; will retry before shipping")
                        }
                    }
                }
                *link.pending_history.lock().expect("lock") = Some(history.clone());
            }
            if adopted.len() < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "PG {k}: only {}/6 segments adopted the recovery decision (epoch {epoch}, VDL {vdl}); a write quorum is needed",
                    adopted.len()
                )));
            }
            for n in 0..adopted.len() {
                let (i, scl) = adopted[n];
                if scl >= tail {
                    continue;
                }
                let mut sources: Vec<(usize, Lsn)> = adopted
                    .iter()
                    .copied()
                    .filter(|(j, s)| *j != i && *s > scl)
                    .collect();
                sources.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
                let mut now = scl;
                for (j, _) in sources {
                    match copy_range(&layout, &row[j], &row[i], Lsn(now.0 + 1), tail, epoch).await {
                        Ok(got) => now = now.max(got),
                        Err(e) => {
                            tracing::warn!(segment = %row[i].member.segment, from = %row[j].member.segment, error = %e, "could not bring segment up to the PG tail")
                        }
                    }
                    if now >= tail {
                        break;
                    }
                }
                adopted[n].1 = now;
            }
            let complete = adopted.iter().filter(|(_, s)| *s >= tail).count();
            if complete < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "PG {k}: its tail {tail} is complete on only {complete}/6 segments after recovery; a write quorum is needed"
                )));
            }
            let mut scls = [Lsn::ZERO; SEGMENTS_PER_PG];
            for (i, scl) in adopted {
                scls[i] = scl.min(tail);
            }
            seg_scl.push(scls);
        }
        let pg_tail = decision.pg_tails.clone();
        let next_lsn = decision.next_lsn.0;
        let last_commit_ts = decision.last_commit_ts_us;
        tracing::info!(volume = %layout.volume, %epoch, vcl = %decision.vcl, base = %decision.base, "recovery decided");
        tracing::info!(volume = %layout.volume, %epoch, next_lsn, %vdl, "volume opened for writing");

        let pgs = layout.pgs.len();
        let shipper = Arc::new(Shipper {
            epoch,
            state: Mutex::new(ShipState {
                next_lsn,
                first_lsn: next_lsn,
                next_tx: 1,
                last_commit_ts,
                durable_tail: pg_tail.clone(),
                pg_tail,
                pg_outstanding: vec![VecDeque::new(); pgs],
                seg_scl,
                commits: BTreeSet::new(),
                vdl,
                fenced: None,
                feed_pending: VecDeque::new(),
            }),
            vdl_tx: watch::Sender::new(vdl),
            acks_tx: watch::Sender::new(0),
            pg_count: std::sync::atomic::AtomicUsize::new(links.len()),
            links: std::sync::RwLock::new(links),
            lal: cfg.lal,
            backpressure_timeout: cfg.backpressure_timeout,
            max_batch_bytes: cfg.max_batch_bytes,
            queue_limit_bytes: cfg.queue_limit_bytes,
            metrics,
            layout,
            feed: tokio::sync::broadcast::channel(FEED_CAPACITY).0,
            history,
        });
        shipper.metrics.vdl.set(vdl.0 as i64);
        for row in shipper.links.read().expect("links").iter() {
            for link in row {
                tokio::spawn(Arc::clone(&shipper).send_loop(Arc::clone(link)));
            }
        }
        Ok(shipper)
    }

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
        for c in &changes {
            if self.pg_of(c.page).is_none() {
                return Err(ShipError::VolumeFull(c.page, self.capacity_pages()));
            }
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
        let mut per_pg: Vec<Vec<Arc<RedoRecord>>> = vec![Vec::new(); s.pg_tail.len()];
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
            let lsn = Lsn(s.next_lsn);
            s.next_lsn += 1;
            let prev = s.pg_tail[pg];
            s.pg_tail[pg] = lsn;
            s.pg_outstanding[pg].push_back(lsn);
            let last = i + 1 == n;
            let (flags, ts) = if last { (FLAG_COMMIT, ts) } else { (0, 0) };
            let rec = RedoRecord::new(lsn, prev, tx, c.page, c.offset, c.kind, flags, ts, c.data);
            let rec = Arc::new(rec);
            s.feed_pending.push_back(Arc::clone(&rec));
            per_pg[pg].push(rec);
            commit = lsn;
        }
        s.commits.insert(commit);
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
                    let on_quorum = quorum_scl(&s.seg_scl[pg]);
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
                let durable = s.vdl.0.max(s.first_lsn.saturating_sub(1));
                ((s.next_lsn - 1).saturating_sub(durable), s.vdl)
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
        if scl <= s.seg_scl[pg][idx] {
            return;
        }
        s.seg_scl[pg][idx] = scl;
        let q = quorum_scl(&s.seg_scl[pg]);
        while s.pg_outstanding[pg].front().is_some_and(|l| *l <= q) {
            s.pg_outstanding[pg].pop_front();
        }
        let vcl = s
            .pg_outstanding
            .iter()
            .filter_map(|d| d.front())
            .min()
            .map(|l| Lsn(l.0 - 1))
            .unwrap_or(Lsn(s.next_lsn - 1));
        let mut vdl = s.vdl;
        while let Some(&c) = s.commits.first() {
            if c > vcl {
                break;
            }
            s.commits.pop_first();
            vdl = c;
        }
        if vdl > s.vdl {
            s.vdl = vdl;
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

    fn feed_batch(&self, s: &ShipState, records: Vec<Arc<RedoRecord>>) -> FeedBatch {
        let links = self.links.read().expect("links");
        FeedBatch {
            epoch: self.epoch,
            vdl: s.vdl,
            vdl_time_us: now_us(),
            records,
            pg_tails: s.durable_tail.clone(),
            scls: links
                .iter()
                .flatten()
                .map(|l| (l.member.segment.clone(), s.seg_scl[l.pg][l.idx]))
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

    pub fn fenced(&self) -> Option<String> {
        self.state.lock().expect("ship state").fenced.clone()
    }

    async fn send_loop(self: Arc<Self>, link: Arc<Link>) {
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
        let expected = q.records.front().map_or(s.pg_tail[link.pg], |r| r.prev_lsn);
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
                .map(|l| (Arc::clone(l), s.seg_scl[l.pg][l.idx]))
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
                scl: s.seg_scl[l.pg][l.idx],
                queued: l.queue.lock().expect("queue").records.len(),
                bytes_sent: l.bytes_sent.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The page's newest version: asks one segment whose acknowledged SCL covers the PG's tail.
    pub async fn read_page(&self, page: PageId) -> Result<Vec<u8>, ShipError> {
        let pg = self
            .layout
            .pg_of(page)
            .ok_or(ShipError::VolumeFull(page, self.capacity_pages()))?;
        let k = pg.0 as usize;
        let needed = self.state.lock().expect("ship state").pg_tail[k];
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
                    .filter(|l| s.seg_scl[k][l.idx] >= needed)
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

    /// Per-PG index of a page (for callers that group by PG).
    pub fn pg_of(&self, page: PageId) -> Option<PgIndex> {
        let k = page.0 / self.layout.pages_per_pg;
        (k < self.pg_count.load(Ordering::Acquire) as u64).then_some(PgIndex(k as u32))
    }

    /// Pages the volume holds now.
    pub fn capacity_pages(&self) -> u64 {
        self.layout.pages_per_pg * self.pg_count.load(Ordering::Acquire) as u64
    }

    /// PGs shipped to now.
    pub fn pg_count(&self) -> usize {
        self.pg_count.load(Ordering::Acquire)
    }

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
            s.pg_tail.push(Lsn::ZERO);
            s.durable_tail.push(Lsn::ZERO);
            s.pg_outstanding.push(VecDeque::new());
            s.seg_scl.push([Lsn::ZERO; SEGMENTS_PER_PG]);
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

/// What one segment holds above its materialized LSN, for the recovery decision.
async fn scan_segment(
    volume: &str,
    link: &Link,
    st: &logdb_storage::proto::SegmentState,
    from: Lsn,
) -> Result<SegmentScan, String> {
    let mut stream = client(&link.channel())
        .stream_records(StreamRecordsRequest {
            volume_id: volume.to_string(),
            segment_id: link.member.segment.clone(),
            from_lsn: from.0,
            to_lsn: 0,
            headers_only: true,
            with_predecessor: true,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut headers = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(|e| e.message().to_string())?
    {
        headers.push(Header {
            lsn: Lsn(r.lsn),
            prev: Lsn(r.prev_lsn),
            epoch: Epoch(r.written_epoch),
            commit: r.flags & FLAG_COMMIT as u32 != 0,
            commit_ts_us: r.commit_timestamp_us,
            checksum: r.checksum,
        });
    }
    Ok(SegmentScan {
        scl: Lsn(st.scl),
        materialized: Lsn(st.materialized_lsn),
        last_committed: Lsn(st.last_committed_lsn),
        highest_lsn: Lsn(st.highest_lsn),
        highest_commit_ts_us: st.highest_commit_timestamp_us,
        points: st
            .recovery_points
            .iter()
            .map(|p| Point {
                epoch: Epoch(p.epoch),
                above: Lsn(p.above_lsn),
                next: Lsn(p.next_lsn),
            })
            .collect(),
        headers,
    })
}

/// How long one recovery or catch-up call may take before its segment counts as not answering
/// (a node that accepts connections but answers nothing must not hold recovery up).
const RECOVERY_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A storage call's answer, or DEADLINE_EXCEEDED after `RECOVERY_RPC_TIMEOUT`.
async fn answer_in_time<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(RECOVERY_RPC_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
}

/// Copies records `[from, to]` from `src` to `dst` in chunks of `CATCH_UP_CHUNK_LSNS` LSNs
/// (memory stays bounded on both nodes and here), each within a deadline. Returns `dst`'s SCL
/// after the last chunk that carried records (ZERO when none did).
async fn copy_range(
    layout: &Layout,
    src: &Link,
    dst: &Link,
    from: Lsn,
    to: Lsn,
    epoch: Epoch,
) -> Result<Lsn, String> {
    let mut scl = Lsn::ZERO;
    let mut at = from;
    while at <= to {
        let end = Lsn(to.0.min(at.0.saturating_add(CATCH_UP_CHUNK_LSNS - 1)));
        let got = tokio::time::timeout(
            RECOVERY_RPC_TIMEOUT * 3,
            copy_records(layout, src, dst, at, end, epoch),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))?;
        scl = scl.max(got);
        at = Lsn(end.0 + 1);
    }
    Ok(scl)
}

/// Copies records `(from..=to)` from one segment to another (recovery: a lagging segment is
/// brought up to the PG tail so the tail is on a write quorum). Returns the target's new SCL.
async fn copy_records(
    layout: &Layout,
    src: &Link,
    dst: &Link,
    from: Lsn,
    to: Lsn,
    epoch: Epoch,
) -> Result<Lsn, String> {
    let mut stream = client(&src.channel())
        .stream_records(StreamRecordsRequest {
            volume_id: layout.volume.clone(),
            segment_id: src.member.segment.clone(),
            from_lsn: from.0,
            to_lsn: to.0,
            ..Default::default()
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut batch = Vec::new();
    let mut scl = Lsn::ZERO;
    loop {
        let next = stream
            .message()
            .await
            .map_err(|e| e.message().to_string())?;
        let end = next.is_none();
        if let Some(r) = next {
            batch.push(r);
        }
        if (end || batch.len() >= 256) && !batch.is_empty() {
            let req = WriteRecordsRequest {
                volume_id: layout.volume.clone(),
                segment_id: dst.member.segment.clone(),
                records: std::mem::take(&mut batch),
                last_committed_lsn: 0,
                epoch: epoch.0,
            };
            let ack = client(&dst.channel())
                .write_records(req)
                .await
                .map_err(|e| e.message().to_string())?;
            scl = Lsn(ack.into_inner().acknowledged_lsn);
        }
        if end {
            return Ok(scl);
        }
    }
}
