//! Prometheus metrics of a compute node: commits and their latency, bytes shipped to each
//! storage segment, VDL, buffer pool hits and misses; on a replica its read point and lag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub segment: String,
}

pub struct ComputeMetrics {
    registry: Registry,
    pub commits: Counter,
    pub commit_latency: Histogram,
    pub records_shipped: Counter,
    pub redo_records: Family<KindLabels, Counter>,
    pub redo_bytes: Family<KindLabels, Counter>,
    pub bytes_shipped: Family<NodeLabels, Counter>,
    pub vdl: Gauge,
    pub pool_hits: Counter,
    pub pool_misses: Counter,
    pub storage_reads: Counter,
    pub history_leases: Counter,
    /// 1 while this node is the writer, 0 on a replica.
    pub writer: Gauge,
    /// Replica: the LSN its read transactions see.
    pub read_point: Gauge,
    /// Replica: writer's VDL advance → this replica's read point passing it, in seconds.
    pub replica_lag: Histogram,
    segment_up: Family<NodeLabels, Gauge>,
    segment_scl: Family<NodeLabels, Gauge>,
    segment_queued: Family<NodeLabels, Gauge>,
}

impl Default for ComputeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ComputeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("logdb_compute");
        let m = ComputeMetrics {
            registry: Registry::default(),
            commits: Counter::default(),
            // 50 µs .. ~6.5 s
            commit_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            records_shipped: Counter::default(),
            redo_records: Family::default(),
            redo_bytes: Family::default(),
            bytes_shipped: Family::default(),
            vdl: Gauge::default(),
            pool_hits: Counter::default(),
            pool_misses: Counter::default(),
            storage_reads: Counter::default(),
            history_leases: Counter::default(),
            writer: Gauge::default(),
            read_point: Gauge::default(),
            // 10 µs .. ~16 s in steps of 25% (fine enough for p50/p99 from the buckets)
            replica_lag: Histogram::new(exponential_buckets(0.00001, 1.25, 64)),
            segment_up: Family::default(),
            segment_scl: Family::default(),
            segment_queued: Family::default(),
        };
        registry.register(
            "commits",
            "Transactions committed durably (VDL passed their commit LSN)",
            m.commits.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From the VFS handing the redo to the shipper to VDL passing it",
            m.commit_latency.clone(),
        );
        registry.register(
            "records_shipped",
            "Redo records allocated and queued to storage",
            m.records_shipped.clone(),
        );
        registry.register(
            "bytes_shipped",
            "WriteRecords bytes sent per storage segment",
            m.bytes_shipped.clone(),
        );
        registry.register("vdl", "Volume durable LSN", m.vdl.clone());
        registry.register(
            "writer",
            "1 while this compute node is the writer",
            m.writer.clone(),
        );
        registry.register(
            "read_point",
            "Replica read point (LSN)",
            m.read_point.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Replica lag: writer VDL advance to this replica's read point passing it",
            m.replica_lag.clone(),
        );
        registry.register(
            "buffer_pool_hits",
            "Page reads served by the buffer pool",
            m.pool_hits.clone(),
        );
        registry.register(
            "buffer_pool_misses",
            "Page reads that went to storage",
            m.pool_misses.clone(),
        );
        registry.register(
            "storage_page_reads",
            "ReadPage calls answered by storage",
            m.storage_reads.clone(),
        );
        registry.register(
            "history_leases",
            "History leases a replica placed or renewed on segments (what it reads is kept)",
            m.history_leases.clone(),
        );
        registry.register(
            "redo_records",
            "Redo records made, by kind (delta or image)",
            m.redo_records.clone(),
        );
        registry.register(
            "redo_bytes",
            "Redo payload bytes made, by kind (before sixfold shipping)",
            m.redo_bytes.clone(),
        );
        registry.register(
            "segment_up",
            "1 when the segment's last request succeeded, 0 while it is unreachable",
            m.segment_up.clone(),
        );
        registry.register(
            "segment_acked_scl",
            "SCL the segment last acknowledged",
            m.segment_scl.clone(),
        );
        registry.register(
            "segment_queued_records",
            "Records waiting for the segment's acknowledgement",
            m.segment_queued.clone(),
        );
        ComputeMetrics { registry, ..m }
    }

    /// The text exposition, with the per-segment shipping state read now.
    pub fn render_with(&self, segments: &[crate::shipper::SegmentStatus]) -> String {
        for s in segments {
            let l = NodeLabels {
                segment: s.segment.clone(),
            };
            self.segment_up.get_or_create(&l).set(s.up as i64);
            self.segment_scl.get_or_create(&l).set(s.scl.0 as i64);
            self.segment_queued.get_or_create(&l).set(s.queued as i64);
        }
        self.render()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
