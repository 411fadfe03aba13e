//! Storage space and cost benchmark (issue 17), on a whole local volume run by `logdb up` (config
//! store, six storage nodes, a writer) with a retention window of an hour. Prints JSON lines:
//!
//! - `space_sample`, every `--sample-seconds` of a `--seconds` pgbench TPC-B-like run at
//!   `--clients`: bytes on disk of the six storage nodes (log files and page stores apart), their
//!   RSS and CPU seconds, and commits so far;
//! - `space_per_txn`: storage bytes per committed transaction per node over the run, beside the
//!   redo a segment received per transaction (its log bytes): the ratio is what the page-version
//!   store costs on top of the history itself;
//! - `storage_cpu`: storage-node CPU seconds per 1,000 committed transactions, and RSS at the
//!   start and end of the run;
//! - `commit_throughput`: commits/s at 1 and 16 clients on the same volume afterwards.
//!
//! `cargo build --release && target/release/logdb-space-bench` (scripts/bench-storage.sh adds
//! the PostgreSQL 15 peer).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use logdb_compute::benchkit::{connect, load_schema, pgbench};
use logdb_operator::benchkit::{cpu_seconds, dir_bytes, file_bytes, rss_bytes, Volume};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "logdb storage space and cost benchmark (JSON lines on stdout)")]
struct Args {
    /// pgbench scale (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u64,
    /// Seconds of the long run.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Clients of the long run.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// A sample line every this many seconds.
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// Seconds per commit-throughput run (1 and 16 clients).
    #[arg(long, default_value_t = 20)]
    throughput_seconds: u64,
    /// The volume's retention window.
    #[arg(long, default_value = "1h")]
    retention: String,
    /// Where `logdb` and the volume's binaries are (default: beside this one) — e.g. an older
    /// `logdb-storage` for a before/after run.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

fn manifest(retention: &str) -> String {
    format!(
        "apiVersion: logdb.io/v1alpha1
kind: LogVolume
metadata:
  name: bench
spec:
  pageSize: 8192
  segmentSize: 10Gi
  maxSize: 64Gi
  replicas: 0
  retention: {retention}
"
    )
}

/// What the six storage nodes hold and use at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    log_bytes: u64,
    store_bytes: u64,
    rss_bytes: u64,
    cpu_s: f64,
}

fn sample(vol: &Volume) -> Sample {
    let storage = vol.data().join("storage");
    let mut s = Sample::default();
    for node in std::fs::read_dir(&storage).into_iter().flatten().flatten() {
        add_segments(&node.path(), &mut s);
    }
    for pid in vol.pids_of("logdb-storage") {
        s.rss_bytes += rss_bytes(pid);
        s.cpu_s += cpu_seconds(pid);
    }
    s
}

/// Log and page-store bytes of every segment under a node's data dir.
fn add_segments(dir: &Path, s: &mut Sample) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "log") {
                s.log_bytes += dir_bytes(&p);
            } else {
                add_segments(&p, s);
            }
        } else if p.extension().is_some_and(|x| x == "redb") {
            s.store_bytes += file_bytes(&p);
        }
    }
}

async fn commits(port: u16) -> anyhow::Result<u64> {
    let c = connect(port, "bench").await?;
    let row = c
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await?;
    let n: String = row
        .try_get::<_, String>(0)
        .or_else(|_| row.try_get::<_, i64>(0).map(|v| v.to_string()))?;
    Ok(n.parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bin dir")?
            .to_path_buf(),
    };
    println!(
        "{}",
        json!({"bench": "machine", "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
               "scale": args.scale, "clients": args.clients, "seconds": args.seconds, "retention": args.retention})
    );
    let vol = Volume::up(&bin_dir, "logdb-space-bench", &manifest(&args.retention))?;
    let rw = vol.port("psql")?;
    let nodes = vol.pids_of("logdb-storage").len().max(1) as f64;

    let load = Instant::now();
    load_schema(&connect(rw, "bench").await?, args.scale).await?;
    // The load's redo materializes before the run starts, so the run's growth is its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = sample(&vol);
    println!(
        "{}",
        json!({"bench": "load", "seconds": load.elapsed().as_secs_f64().round(),
               "log_bytes": start.log_bytes, "store_bytes": start.store_bytes})
    );

    let work = vol.dir.join("pgbench");
    std::fs::create_dir_all(&work)?;
    let history_before = commits(rw).await?;
    let (clients, seconds, scale, w2) = (args.clients, args.seconds, args.scale, work.clone());
    let run = tokio::task::spawn_blocking(move || {
        pgbench(rw, clients, seconds, scale, &w2, "bench", "prefer")
    });
    let began = Instant::now();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    while !run.is_finished() {
        tokio::time::sleep(every.min(Duration::from_secs(args.seconds + 5))).await;
        if run.is_finished() {
            break;
        }
        let s = sample(&vol);
        let done = commits(rw).await.unwrap_or(history_before) - history_before;
        println!(
            "{}",
            json!({"bench": "space_sample", "t_s": began.elapsed().as_secs(), "commits": done,
                   "log_bytes": s.log_bytes, "store_bytes": s.store_bytes,
                   "rss_mb_per_node": (s.rss_bytes as f64 / nodes / 1e6).round(),
                   "cpu_s": (s.cpu_s * 10.0).round() / 10.0})
        );
    }
    let (tx, tps, _) = run.await??;
    // Let the last rounds land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = sample(&vol);
    let per = |a: u64, b: u64| (b.saturating_sub(a) as f64 / tx.max(1) as f64 / nodes).round();
    let log_per_txn = per(start.log_bytes, end.log_bytes);
    let store_per_txn = per(start.store_bytes, end.store_bytes);
    println!(
        "{}",
        json!({"bench": "space_per_txn", "clients": args.clients, "seconds": args.seconds, "transactions": tx, "tps": tps,
               "retention": args.retention,
               "redo_log_bytes_per_txn_per_segment": log_per_txn,
               "page_store_bytes_per_txn_per_node": store_per_txn,
               "storage_bytes_per_txn_per_node": log_per_txn + store_per_txn,
               "storage_over_redo": ((log_per_txn + store_per_txn) / log_per_txn.max(1.0) * 100.0).round() / 100.0})
    );
    println!(
        "{}",
        json!({"bench": "storage_cpu", "transactions": tx,
               "cpu_s_per_1000_txn": ((end.cpu_s - start.cpu_s) / tx.max(1) as f64 * 1000.0 * 100.0).round() / 100.0,
               "cpu_s_per_1000_txn_per_node": ((end.cpu_s - start.cpu_s) / tx.max(1) as f64 * 1000.0 / nodes * 100.0).round() / 100.0,
               "rss_mb_per_node_start": (start.rss_bytes as f64 / nodes / 1e6).round(),
               "rss_mb_per_node_end": (end.rss_bytes as f64 / nodes / 1e6).round()})
    );
    for clients in [1usize, 16] {
        let (w2, secs, scale) = (work.clone(), args.throughput_seconds, args.scale);
        let (tx, tps, mut lat) = tokio::task::spawn_blocking(move || {
            pgbench(rw, clients, secs, scale, &w2, "bench", "prefer")
        })
        .await??;
        lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        println!(
            "{}",
            json!({"bench": "commit_throughput", "system": "logdb", "clients": clients, "seconds": secs,
                   "transactions": tx, "tps": tps,
                   "p50_ms": logdb_storage::testkit::percentile(&lat, 0.5),
                   "p99_ms": logdb_storage::testkit::percentile(&lat, 0.99)})
        );
    }
    drop(vol);
    Ok(())
}
