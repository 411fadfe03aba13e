//! `logdb status`: what a local volume looks like right now — the config store's view (epoch,
//! writer, PGs, sizes), each storage node asked directly for its segments' SCLs, the writer's VDL
//! from its metrics — as a table for people and JSON for scripts.

use std::fmt::Write;
use std::time::Duration;

use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::proto::SegmentRef;
use serde::{Deserialize, Serialize};

use crate::units::human_bytes;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub volume: String,
    pub data_dir: String,
    /// The config store's address (it listens on any free port).
    pub config_store: String,
    /// `Ready` (all six copies healthy), `Degraded` (a write quorum in every PG), `Unavailable`.
    pub phase: String,
    pub epoch: u64,
    pub writer: WriterStatus,
    /// The read-only endpoint (spread over the replicas).
    pub read_only_psql: String,
    pub replicas: Vec<ReplicaStatus>,
    pub protection_groups: u32,
    pub used_bytes: u64,
    pub allocated_bytes: u64,
    pub healthy_nodes: usize,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    /// The compute node that writes now.
    pub id: String,
    /// Its own PostgreSQL address (the read-write endpoint forwards there).
    pub address: String,
    /// Its Prometheus metrics address.
    pub metrics: Option<String>,
    /// The read-write endpoint.
    pub psql: String,
    /// `running`, or how it ended.
    pub process: String,
    pub vdl: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: String,
    pub address: String,
    pub metrics: Option<String>,
    pub process: String,
    pub read_point: Option<u64>,
    /// Mean lag (writer VDL advance → this read point passing it) since the replica started.
    pub mean_lag_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub zone: String,
    pub address: String,
    /// `running`, `stopped` (by `logdb node stop`), or how it ended.
    pub process: String,
    pub healthy: bool,
    pub segments: Vec<SegmentStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentStatus {
    pub pg: u32,
    pub scl: u64,
    pub materialized_lsn: u64,
    pub epoch: u64,
    /// Reads below it are refused; what only they needed is freed.
    #[serde(default)]
    pub horizon_lsn: u64,
    /// Bytes kept on disk: log files plus page store.
    #[serde(default)]
    pub retained_bytes: u64,
}

/// Asks the node at `address` for the state of each `(pg, segment)`; `None` if it does not
/// answer within a second.
pub async fn segment_states(
    address: &str,
    volume: &str,
    segments: &[(u32, String)],
) -> Option<Vec<SegmentStatus>> {
    let ask = async {
        let channel = logdb_common::peer_tls::endpoint(address)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = StorageServiceClient::new(channel);
        let mut out = Vec::new();
        for (pg, segment) in segments {
            let s = client
                .get_segment_state(SegmentRef {
                    volume_id: volume.to_string(),
                    segment_id: segment.clone(),
                })
                .await
                .ok()?
                .into_inner();
            out.push(SegmentStatus {
                pg: *pg,
                scl: s.scl,
                materialized_lsn: s.materialized_lsn,
                epoch: s.epoch,
                horizon_lsn: s.horizon_lsn,
                retained_bytes: s.retained_log_bytes + s.retained_store_bytes,
            });
        }
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

/// Ready / Degraded / Unavailable from how many copies answer (every PG has one segment per node
/// locally, so node counts are PG counts).
pub fn phase(writer_running: bool, healthy_nodes: usize) -> &'static str {
    match (writer_running, healthy_nodes) {
        (true, 6..) => "Ready",
        (true, 4..) => "Degraded",
        _ => "Unavailable",
    }
}

impl LocalStatus {
    /// The table `logdb status` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let vdl = self
            .writer
            .vdl
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "volume {}  phase {}  epoch {}  PGs {}  used {} of {} allocated",
            self.volume,
            self.phase,
            self.epoch,
            self.protection_groups,
            human_bytes(self.used_bytes),
            human_bytes(self.allocated_bytes)
        );
        let _ = writeln!(
            out,
            "writer {} at {} ({})  VDL {vdl}  psql '{}'",
            self.writer.id, self.writer.address, self.writer.process, self.writer.psql
        );
        if !self.replicas.is_empty() {
            let _ = writeln!(out, "replicas (read-only psql '{}'):", self.read_only_psql);
            for r in &self.replicas {
                let rp = r
                    .read_point
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into());
                let lag = r
                    .mean_lag_ms
                    .map(|v| format!("{v:.2} ms"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "  {:<10} {:<22} {:<9} read point {rp}  mean lag {lag}",
                    r.id, r.address, r.process
                );
            }
        }
        let _ = writeln!(
            out,
            "storage nodes: {}/{} healthy",
            self.healthy_nodes,
            self.nodes.len()
        );
        let _ = writeln!(
            out,
            "{:<5} {:<12} {:<22} {:<9} {:<8} SCL / RETAINED (HORIZON)",
            "NODE", "ZONE", "ADDRESS", "PROCESS", "HEALTHY"
        );
        for n in &self.nodes {
            let scl = if n.segments.is_empty() {
                "-".to_string()
            } else {
                n.segments
                    .iter()
                    .map(|s| {
                        format!(
                            "pg{}={} / {} (h {})",
                            s.pg,
                            s.scl,
                            human_bytes(s.retained_bytes),
                            s.horizon_lsn
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                out,
                "{:<5} {:<12} {:<22} {:<9} {:<8} {scl}",
                n.id,
                n.zone,
                n.address,
                n.process,
                if n.healthy { "yes" } else { "no" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        assert_eq!(phase(true, 6), "Ready");
        assert_eq!(phase(true, 4), "Degraded");
        assert_eq!(phase(true, 3), "Unavailable");
        assert_eq!(phase(false, 6), "Unavailable");
    }

    #[test]
    fn the_table_has_a_row_per_node() {
        let node = |id: &str, healthy| NodeStatus {
            id: id.into(),
            zone: "zone-a".into(),
            address: "127.0.0.1:1".into(),
            process: if healthy { "running" } else { "stopped" }.into(),
            healthy,
            segments: if healthy {
                vec![SegmentStatus {
                    pg: 0,
                    scl: 42,
                    materialized_lsn: 40,
                    epoch: 2,
                    horizon_lsn: 30,
                    retained_bytes: 3 << 20,
                }]
            } else {
                vec![]
            },
        };
        let s = LocalStatus {
            volume: "demo".into(),
            data_dir: "/d".into(),
            config_store: "127.0.0.1:9".into(),
            phase: "Degraded".into(),
            epoch: 2,
            read_only_psql: "postgresql://logdb@127.0.0.1:5434/demo".into(),
            replicas: vec![ReplicaStatus {
                id: "compute-1".into(),
                address: "127.0.0.1:7".into(),
                metrics: Some("127.0.0.1:8".into()),
                process: "running".into(),
                read_point: Some(41),
                mean_lag_ms: Some(0.5),
            }],
            writer: WriterStatus {
                id: "compute-0".into(),
                address: "127.0.0.1:5433".into(),
                metrics: None,
                psql: "postgresql://logdb@127.0.0.1:5433/demo".into(),
                process: "running".into(),
                vdl: Some(42),
            },
            protection_groups: 1,
            used_bytes: 1 << 20,
            allocated_bytes: 64 << 20,
            healthy_nodes: 1,
            nodes: vec![node("a1", true), node("a2", false)],
        };
        let t = s.table();
        assert!(
            t.starts_with(
                "volume demo  phase Degraded  epoch 2  PGs 1  used 1.0 MiB of 64.0 MiB allocated\n"
            ),
            "{t}"
        );
        assert!(t.contains("VDL 42"), "{t}");
        assert!(t.contains("compute-1  127.0.0.1:7"), "{t}");
        assert!(t.contains("read point 41  mean lag 0.50 ms"), "{t}");
        assert!(t.contains("storage nodes: 1/2 healthy"), "{t}");
        let a1 = t.lines().find(|l| l.starts_with("a1 ")).unwrap();
        assert!(
            a1.ends_with("running   yes      pg0=42 / 3.0 MiB (h 30)"),
            "{a1}"
        );
        let a2 = t.lines().find(|l| l.starts_with("a2 ")).unwrap();
        assert!(a2.ends_with("stopped   no       -"), "{a2}");
    }
}
