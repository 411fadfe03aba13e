//! Prometheus metrics of the node, served as text on `/metrics`: what was received, how many
//! fsyncs it took, and per segment the SCL, the pending (unmaterialized) records and how far the
//! coalescer lags behind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentLabels {
    pub volume: String,
    pub segment: String,
}

pub struct Metrics {
    registry: Registry,
    pub records_received: Counter,
    pub bytes_received: Counter,
    pub write_batches: Counter,
    pub pages_read: Counter,
    pub records_coalesced: Counter,
    pub corrupt_frames: Counter,
    pub corrupt_reads: Counter,
    fsyncs: Family<SegmentLabels, Gauge>,
    scl: Family<SegmentLabels, Gauge>,
    materialized: Family<SegmentLabels, Gauge>,
    pending: Family<SegmentLabels, Gauge>,
    coalesce_lag: Family<SegmentLabels, Gauge>,
    epoch: Family<SegmentLabels, Gauge>,
    horizon: Family<SegmentLabels, Gauge>,
    log_bytes: Family<SegmentLabels, Gauge>,
    store_bytes: Family<SegmentLabels, Gauge>,
    pub images_written: Counter,
    pub checkpoint_images: Counter,
    pub deltas_freed: Counter,
    pub writes_refused_no_space: Counter,
    disk_free: Gauge,
    disk_reserve: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("logdb_storage");
        let m = Metrics {
            records_received: Counter::default(),
            bytes_received: Counter::default(),
            write_batches: Counter::default(),
            pages_read: Counter::default(),
            records_coalesced: Counter::default(),
            corrupt_frames: Counter::default(),
            corrupt_reads: Counter::default(),
            fsyncs: Family::default(),
            scl: Family::default(),
            materialized: Family::default(),
            pending: Family::default(),
            coalesce_lag: Family::default(),
            epoch: Family::default(),
            horizon: Family::default(),
            log_bytes: Family::default(),
            store_bytes: Family::default(),
            images_written: Counter::default(),
            checkpoint_images: Counter::default(),
            deltas_freed: Counter::default(),
            writes_refused_no_space: Counter::default(),
            disk_free: Gauge::default(),
            disk_reserve: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_received",
            "Redo records received",
            m.records_received.clone(),
        );
        registry.register(
            "bytes_received",
            "Redo payload bytes received",
            m.bytes_received.clone(),
        );
        registry.register(
            "write_batches",
            "WriteRecords calls accepted",
            m.write_batches.clone(),
        );
        registry.register("pages_read", "ReadPage calls served", m.pages_read.clone());
        registry.register(
            "records_coalesced",
            "Records applied to stored page versions",
            m.records_coalesced.clone(),
        );
        registry.register(
            "corrupt_frames",
            "Damaged log frames found at start (records lost on this node)",
            m.corrupt_frames.clone(),
        );
        registry.register(
            "corrupt_reads",
            "Reads refused because stored data failed its checksum",
            m.corrupt_reads.clone(),
        );
        registry.register(
            "segment_fsyncs",
            "Log fsyncs per segment since start",
            m.fsyncs.clone(),
        );
        registry.register("segment_scl", "Segment complete LSN", m.scl.clone());
        registry.register(
            "segment_materialized_lsn",
            "Every record at or below this LSN is in a stored page version",
            m.materialized.clone(),
        );
        registry.register(
            "segment_pending_records",
            "Records not yet materialized",
            m.pending.clone(),
        );
        registry.register(
            "segment_coalesce_lag_lsn",
            "SCL minus materialized LSN",
            m.coalesce_lag.clone(),
        );
        registry.register("segment_epoch", "Installed epoch", m.epoch.clone());
        registry.register(
            "segment_horizon_lsn",
            "Retention horizon: reads below it are refused, what only they need is freed",
            m.horizon.clone(),
        );
        registry.register(
            "segment_log_bytes",
            "Bytes of the segment's log files on disk (the retained history)",
            m.log_bytes.clone(),
        );
        registry.register(
            "segment_store_bytes",
            "Bytes of the segment's page store on disk (delta index and page images)",
            m.store_bytes.clone(),
        );
        registry.register(
            "images_written",
            "Page images written by coalescing rounds (a delta chain passed its threshold)",
            m.images_written.clone(),
        );
        registry.register(
            "checkpoint_images",
            "Page images written by retention checkpoints",
            m.checkpoint_images.clone(),
        );
        registry.register(
            "deltas_freed",
            "Delta index entries removed below the retention horizon",
            m.deltas_freed.clone(),
        );
        registry.register(
            "writes_refused_no_space",
            "WriteRecords calls refused because the data disk's free space was below the reserve",
            m.writes_refused_no_space.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes of the data disk",
            m.disk_free.clone(),
        );
        registry.register(
            "disk_reserve_bytes",
            "Free bytes kept back from the logs: below it new records are refused",
            m.disk_reserve.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition, with per-segment gauges read now.
    pub fn render(&self, node: &Node) -> String {
        for seg in node.segments() {
            let st = seg.status();
            let l = SegmentLabels {
                volume: seg.key().volume.clone(),
                segment: seg.key().segment.clone(),
            };
            self.fsyncs.get_or_create(&l).set(seg.fsyncs() as i64);
            self.scl.get_or_create(&l).set(st.scl.0 as i64);
            self.materialized
                .get_or_create(&l)
                .set(st.materialized.0 as i64);
            self.pending
                .get_or_create(&l)
                .set(st.pending_records as i64);
            self.coalesce_lag
                .get_or_create(&l)
                .set(st.scl.0.saturating_sub(st.materialized.0) as i64);
            self.epoch.get_or_create(&l).set(st.epoch.0 as i64);
            self.horizon.get_or_create(&l).set(st.horizon.0 as i64);
            self.log_bytes
                .get_or_create(&l)
                .set(st.retained.log_bytes as i64);
            self.store_bytes
                .get_or_create(&l)
                .set(st.retained.store_bytes as i64);
        }
        let space = node.space();
        self.disk_free.set(space.space().free as i64);
        self.disk_reserve.set(space.reserve() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
