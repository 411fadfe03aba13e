//! Writer crash-recovery benchmark (issue 6): six storage nodes that do not materialize pages
//! (the coalescer is held off), a writer that ships N MB of redo to them, `kill -9` of the
//! writer, and the time until a new writer process accepts a write — recovery by quorum, nothing
//! replayed at compute, so it should not grow with N. Prints one JSON line per size; compare
//! with `scripts/pg-crash-recovery.sh` (PostgreSQL 15 replaying the same amount of WAL).
//!
//! `cargo build --release -p logdb-storage -p logdb-compute && target/release/logdb-recovery-bench`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use logdb_common::metrics_http::{scrape, sum};
use logdb_compute::benchkit::{connect, start_writer};
use logdb_compute::layout::{Layout, Member, ProtectionGroup};
use logdb_storage::testkit::{StorageProcess, TempDir};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "logdb writer crash recovery vs unmaterialized log (JSON lines on stdout)")]
struct Args {
    /// Unmaterialized redo per segment to reach before each crash, in MB (cumulative).
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    sizes_mb: Vec<u64>,
    /// Work directory (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const PAGE: u32 = 8192;
/// Rows of 4000 random bytes per loading transaction (about 1 MB of redo).
const ROWS_PER_TX: u64 = 250;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = TempDir::new("logdb-recovery-bench")?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.0.clone());
    std::fs::create_dir_all(&dir)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("bin dir")?
        .to_path_buf();
    let storage_bin = bin_dir.join("logdb-storage");
    // A day between coalescing rounds: every record stays pending (unmaterialized).
    let hold = ["--coalesce-interval-ms", "86400000"];
    let mut nodes = Vec::new();
    for zone in ["zone-a", "zone-b", "zone-c"] {
        for n in 1..=2 {
            let id = format!("{}{n}", &zone[5..]);
            nodes.push(StorageProcess::start(
                &storage_bin,
                &dir.join(&id),
                &id,
                zone,
                &hold,
            ));
        }
    }
    let layout = Layout {
        volume: "vol1".into(),
        page_size: PAGE,
        pages_per_pg: (16u64 << 30) / PAGE as u64,
        retention_seconds: 3600,
        max_pages: 0,
        pgs: vec![ProtectionGroup {
            members: nodes
                .iter()
                .map(|n| Member {
                    segment: format!("pg0-{}", n.node_id),
                    address: n.grpc.clone(),
                    zone: n.zone.clone(),
                })
                .collect(),
        }],
    };
    let layout_path = dir.join("layout.json");
    std::fs::write(&layout_path, serde_json::to_vec_pretty(&layout)?)?;
    let mut writer = start_writer(&bin_dir, &layout_path)?;
    connect(writer.port, "vol1")
        .await?
        .batch_execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)")
        .await?;
    let mut next = 1u64;
    let mut shipped_before_restarts = 0.0;
    for mb in &args.sizes_mb {
        // Load until each segment holds `mb` MB of redo it has not materialized.
        let c = connect(writer.port, "vol1").await?;
        let load = Instant::now();
        loop {
            let shipped = shipped_before_restarts
                + sum(
                    &scrape(&writer.metrics).await,
                    "logdb_compute_bytes_shipped_total",
                ) / 6.0;
            if shipped >= (*mb << 20) as f64 {
                break;
            }
            let (lo, hi) = (next, next + ROWS_PER_TX - 1);
            next = hi + 1;
            c.batch_execute(&format!("INSERT INTO blobs SELECT value, randomblob(4000) FROM (WITH RECURSIVE c(value) AS (SELECT {lo} UNION ALL SELECT value + 1 FROM c WHERE value < {hi}) SELECT value FROM c)"))
                .await?;
        }
        let load_s = load.elapsed().as_secs_f64();
        drop(c);
        shipped_before_restarts += sum(
            &scrape(&writer.metrics).await,
            "logdb_compute_bytes_shipped_total",
        ) / 6.0;
        let node = scrape(&nodes[0].metrics).await;
        let pending = sum(&node, "logdb_storage_segment_pending_records");

        // Crash and recover.
        writer.child.kill()?;
        writer.child.wait()?;
        let started = Instant::now();
        let w = start_writer(&bin_dir, &layout_path)?;
        let announced = started.elapsed();
        let c = connect(w.port, "vol1").await?;
        c.batch_execute(&format!("INSERT INTO blobs VALUES ({}, x'00')", next))
            .await?;
        next += 1;
        let total = started.elapsed();
        println!(
            "{}",
            json!({"bench": "crash_recovery", "system": "logdb", "unmaterialized_log_mb": (shipped_before_restarts / 1048576.0).round(),
                   "pending_records_per_segment": pending, "load_seconds": load_s.round(),
                   "recovery_to_serving_ms": (announced.as_secs_f64() * 1e5).round() / 100.0,
                   "recovery_to_first_write_ms": (total.as_secs_f64() * 1e5).round() / 100.0})
        );
        writer = w;
    }
    Ok(())
}
