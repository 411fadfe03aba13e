//! A six-node storage cluster (three zones × two) on loopback for the compute node's tests, and
//! the layout file that points the writer at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use logdb_compute::layout::{Layout, Member, ProtectionGroup};
use logdb_storage::testkit::{storage_binary, StorageProcess};

pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<StorageProcess>,
    pub layout_path: PathBuf,
}

impl Cluster {
    /// Six storage nodes named a1 a2 b1 b2 c1 c2, and a layout of `pgs` PGs over them.
    pub fn start(pgs: usize, pages_per_pg: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = storage_binary();
        let mut nodes = Vec::new();
        for zone in ZONES {
            for n in 1..=2 {
                let id = format!("{}{n}", &zone[5..]);
                nodes.push(StorageProcess::start(
                    &bin,
                    &dir.path().join(&id),
                    &id,
                    zone,
                    &["--coalesce-interval-ms", "50"],
                ));
            }
        }
        let layout_path = dir.path().join("layout.json");
        let mut c = Cluster {
            dir,
            nodes,
            layout_path,
        };
        c.write_layout(pgs, pages_per_pg);
        c
    }

    pub fn layout(&self, pgs: usize, pages_per_pg: u64) -> Layout {
        Layout {
            volume: "vol1".into(),
            page_size: 8192,
            pages_per_pg,
            retention_seconds: 3600,
            pgs: (0..pgs)
                .map(|k| ProtectionGroup {
                    members: self
                        .nodes
                        .iter()
                        .map(|n| Member {
                            segment: format!("pg{k}-{}", n.node_id),
                            address: n.grpc.clone(),
                            zone: n.zone.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// (Re)writes the layout file with the nodes' current addresses.
    pub fn write_layout(&mut self, pgs: usize, pages_per_pg: u64) {
        let layout = self.layout(pgs, pages_per_pg);
        std::fs::write(
            &self.layout_path,
            serde_json::to_vec_pretty(&layout).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
