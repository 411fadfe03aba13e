//! A read replica (DESIGN.md §6): shares the writer's storage and follows its record feed. Each
//! feed batch is applied under the volume's exclusive lock — between read transactions, exactly
//! like a local writer's commit — to the pages the buffer pool holds (records of other pages are
//! dropped: those pages are read from storage at the read point when needed); then the read
//! point moves to the batch's VDL. So every read transaction sees one read point, and read points
//! only move forward, across resubscriptions too (a new feed starts with an empty pool, never an
//! older read point). Nothing is ever replayed from the log at the replica beyond the cached
//! pages.
//!
//! What a replica reads must outlive the storage's garbage collection: every `LEASE_EVERY` it
//! holds each segment's history (`HoldHistory`, named after the replica, for `LEASE_TTL`) from
//! the LSN it reads that PG at, so no horizon passes a replica that lags or runs a long read
//! transaction. A replica that stops lets its leases expire; one whose read point is older than
//! twice the retention window stops renewing them (like PostgreSQL's `max_slot_wal_keep_size`:
//! a stuck replica must not keep all history for ever) and its old reads then fail clearly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logdb_types::page_apply;
use logdb_types::record::RedoRecord;
use logdb_types::{Epoch, Lsn, PageId};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::layout::Layout;
use crate::metrics::ComputeMetrics;
use crate::shipper::ShipError;
use crate::vfs::Engine;

/// What the replica reads at: its read point and, as of it, each PG's tail and each segment's
/// SCL.
struct ReadState {
    read_point: Lsn,
    /// When the writer committed at the read point (µs since the epoch; 0: unknown).
    read_point_time_us: u64,
    epoch: Epoch,
    pg_tails: Vec<Lsn>,
    scls: HashMap<String, Lsn>,
}

pub struct Replica {
    layout: RwLock<Layout>,
    /// Per segment: the address its node served at when last asked, and a channel there (a node
    /// that moved gets a new channel once the layout says so).
    channels: Mutex<HashMap<String, (String, Channel)>>,
    state: Mutex<ReadState>,
    read_point_tx: watch::Sender<Lsn>,
    metrics: Arc<ComputeMetrics>,
}

/// One decoded feed batch.
pub struct Batch {
    pub epoch: Epoch,
    pub vdl: Lsn,
    pub vdl_time_us: u64,
    pub records: Vec<RedoRecord>,
    pub pg_tails: Vec<Lsn>,
    pub scls: Vec<(String, Lsn)>,
}

/// How long a page read waits for a segment that has the page's PG tail.
const READ_WAIT: Duration = Duration::from_secs(30);
/// How often a replica renews its history leases, and how long each lasts.
pub const LEASE_EVERY: Duration = Duration::from_secs(15);
pub const LEASE_TTL: Duration = Duration::from_secs(60);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

impl Replica {
    /// A replica of `layout`'s volume, positioned by the feed's first batch.
    pub fn new(layout: Layout, first: &Batch, metrics: Arc<ComputeMetrics>) -> Arc<Replica> {
        metrics.read_point.set(first.vdl.0 as i64);
        Arc::new(Replica {
            layout: RwLock::new(layout),
            channels: Mutex::new(HashMap::new()),
            state: Mutex::new(ReadState {
                read_point: first.vdl,
                read_point_time_us: first.vdl_time_us,
                epoch: first.epoch,
                pg_tails: first.pg_tails.clone(),
                scls: first.scls.iter().cloned().collect(),
            }),
            read_point_tx: watch::Sender::new(first.vdl),
            metrics,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout.read().expect("layout").clone()
    }

    /// The volume grew (or a member moved): read from the new layout.
    pub fn set_layout(&self, layout: Layout) {
        *self.layout.write().expect("layout") = layout;
    }

    pub fn read_point(&self) -> Lsn {
        *self.read_point_tx.borrow()
    }

    pub fn epoch(&self) -> Epoch {
        self.state.lock().expect("read state").epoch
    }

    /// Waits until the read point reaches `lsn` (read-your-writes); answers the read point, or
    /// `Err` with it when `timeout` passed first.
    pub async fn wait_for(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn, Lsn> {
        let mut rx = self.read_point_tx.subscribe();
        let reached = match tokio::time::timeout(timeout, rx.wait_for(|rp| *rp >= lsn)).await {
            Ok(Ok(rp)) => Some(*rp),
            _ => None,
        };
        reached.ok_or_else(|| self.read_point())
    }

    fn channel(&self, segment: &str, address: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().expect("channels");
        if let Some((at, c)) = channels.get(segment) {
            if at == address {
                return Some(c.clone());
            }
        }
        let c = logdb_common::peer_tls::endpoint(address)
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(segment.to_string(), (address.to_string(), c.clone()));
        Some(c)
    }

    /// The page as of the read point (the caller holds a read lock, so it cannot move): asked of
    /// a segment whose SCL covers the PG's tail at the read point.
    pub async fn read_page(&self, page: PageId) -> Result<Vec<u8>, ShipError> {
        let layout = self.layout();
        let k = (page.0 / layout.pages_per_pg) as usize;
        let deadline = std::time::Instant::now() + READ_WAIT;
        loop {
            let (needed, candidates) = {
                let st = self.state.lock().expect("read state");
                let needed = st.pg_tails.get(k).copied().unwrap_or(Lsn::ZERO);
                let members = layout
                    .pgs
                    .get(k)
                    .map(|pg| pg.members.clone())
                    .unwrap_or_default();
                let candidates: Vec<(String, Channel)> = members
                    .iter()
                    .filter(|m| st.scls.get(&m.segment).is_some_and(|s| *s >= needed))
                    .filter_map(|m| {
                        Some((m.segment.clone(), self.channel(&m.segment, &m.address)?))
                    })
                    .collect();
                (needed, candidates)
            };
            if needed == Lsn::ZERO {
                return Ok(vec![0; layout.page_size as usize]);
            }
            match crate::page_read::read_from(&layout.volume, page, needed, &candidates).await {
                Ok(data) => {
                    self.metrics.storage_reads.inc();
                    return Ok(data);
                }
                Err(status) if std::time::Instant::now() > deadline => {
                    return Err(ShipError::ReadUnavailable {
                        pg: k as u32,
                        page,
                        lsn: needed,
                        secs: READ_WAIT.as_secs(),
                        status,
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Per segment of the layout: (segment, node address, the LSN this replica reads its PG at).
    fn read_points(&self) -> Vec<(String, String, Lsn)> {
        let layout = self.layout();
        let st = self.state.lock().expect("read state");
        layout
            .pgs
            .iter()
            .enumerate()
            .flat_map(|(k, pg)| {
                let at = st.pg_tails.get(k).copied().unwrap_or(Lsn::ZERO);
                pg.members
                    .iter()
                    .map(move |m| (m.segment.clone(), m.address.clone(), at))
            })
            .filter(|(_, _, at)| *at > Lsn::ZERO)
            .collect()
    }

    /// How long ago the writer committed at this replica's read point (`None`: unknown).
    fn read_point_age(&self) -> Option<Duration> {
        let at = self.state.lock().expect("read state").read_point_time_us;
        (at > 0).then(|| Duration::from_micros(now_us().saturating_sub(at)))
    }

    /// Holds every segment's history from where this replica reads it, as `name`, for as long
    /// as the replica runs (see the module comment).
    /// `max_behind` (zero: twice the retention window) is how old a read point may be and
    /// still hold history.
    pub async fn hold_history(self: Arc<Self>, name: String, max_behind: Duration) {
        use logdb_types::proto::{
            storage_service_client::StorageServiceClient, HoldHistoryRequest,
        };
        let volume = self.layout().volume;
        // When each segment's lease was last placed: renewed every LEASE_EVERY, placed within
        // a second on a segment that has none yet (a PG first written after the replica began).
        let mut placed: HashMap<String, std::time::Instant> = HashMap::new();
        let retention = self.layout().retention_seconds;
        let limit = if max_behind.is_zero() {
            Duration::from_secs(2 * retention)
        } else {
            max_behind
        };
        let mut released = false;
        loop {
            let behind = self.read_point_age();
            if !limit.is_zero() && behind.is_some_and(|b| b > limit) {
                if !released {
                    tracing::warn!(behind_secs = behind.map(|b| b.as_secs()), limit_secs = limit.as_secs(), "this replica's read point is older than it may hold history for: its history leases are no longer renewed, and reads the horizon passes will fail");
                }
                released = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            released = false;
            for (segment, address, lsn) in self.read_points() {
                if placed
                    .get(&segment)
                    .is_some_and(|t| t.elapsed() < LEASE_EVERY)
                {
                    continue;
                }
                let Some(channel) = self.channel(&segment, &address) else {
                    continue;
                };
                let req = HoldHistoryRequest {
                    volume_id: volume.clone(),
                    segment_id: segment.clone(),
                    name: name.clone(),
                    lsn: lsn.0,
                    ttl_seconds: LEASE_TTL.as_secs(),
                };
                let mut client = StorageServiceClient::new(channel);
                let call = client.hold_history(req);
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(_)) => {
                        self.metrics.history_leases.inc();
                        placed.insert(segment, std::time::Instant::now());
                    }
                    // At the horizon already (an idle PG's tail): reads there stay served.
                    Ok(Err(status)) if status.code() == tonic::Code::OutOfRange => {
                        tracing::debug!(%segment, %lsn, error = %status.message(), "history not held");
                        placed.insert(segment, std::time::Instant::now());
                    }
                    Ok(Err(status)) => {
                        tracing::warn!(%segment, %lsn, error = %status.message(), "holding history failed; retrying")
                    }
                    Err(_) => tracing::warn!(%segment, %lsn, "holding history timed out; retrying"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Applies one feed batch (on a blocking thread: it takes the volume's exclusive lock).
    /// `fresh`: the first batch of a new subscription — the pool starts empty, since records
    /// between the old feed and this one were never seen.
    pub fn apply(&self, engine: &Engine, batch: Batch, fresh: bool) {
        engine.exclusive(|| {
            if fresh {
                engine.pool.clear();
            }
            let mut st = self.state.lock().expect("read state");
            if batch.vdl < st.read_point {
                // An older view than ours (cannot come from a writer that recovered from a
                // quorum): never move back.
                tracing::warn!(vdl = %batch.vdl, read_point = %st.read_point, "feed is behind this replica; waiting for it to pass");
                return;
            }
            for rec in &batch.records {
                if rec.lsn <= st.read_point {
                    continue;
                }
                if let Some(image) = engine.pool.peek(rec.page_id) {
                    let mut page = (*image).clone();
                    page_apply::apply(&mut page, rec);
                    engine.pool.put(rec.page_id, Arc::new(page));
                }
            }
            st.read_point = batch.vdl;
            if batch.vdl_time_us > 0 {
                st.read_point_time_us = batch.vdl_time_us;
            }
            st.epoch = batch.epoch;
            st.pg_tails = batch.pg_tails;
            for (seg, scl) in batch.scls {
                st.scls.insert(seg, scl);
            }
            drop(st);
            engine.refresh_size();
        });
        self.read_point_tx.send_replace(batch.vdl);
        self.metrics.read_point.set(batch.vdl.0 as i64);
        if !batch.records.is_empty() && batch.vdl_time_us > 0 {
            let lag = now_us().saturating_sub(batch.vdl_time_us);
            self.metrics.replica_lag.observe(lag as f64 / 1e6);
        }
    }
}
