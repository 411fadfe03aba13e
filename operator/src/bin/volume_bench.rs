//! Replica and failover benchmark (issue 6), on a whole local volume run by `logdb up` (config
//! store, six storage nodes, a writer and a replica). Prints JSON lines:
//!
//! - replica lag p50/p99 (writer VDL advance → the replica's read point passing it, from the
//!   replica's own histogram over the run) under pgbench's TPC-B-like load with 16 clients on
//!   the read-write endpoint, while a reader queries the replica;
//! - failover time, several rounds under a write loop: from the request to the first write the
//!   new writer accepted through the read-write endpoint.
//!
//! `cargo build --release && target/release/logdb-volume-bench`

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use logdb_common::metrics_http::{histogram_mean, histogram_quantile, scrape, sum};
use logdb_compute::benchkit::{connect, load_schema, pgbench};
use logdb_operator::benchkit::Volume;
use logdb_operator::local::control::{self, Reply, Request};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "logdb replica lag and failover benchmark (JSON lines on stdout)")]
struct Args {
    /// pgbench scale (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u64,
    /// Seconds of load for the lag measurement.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// pgbench clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Failover rounds.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
}

const MANIFEST: &str = "apiVersion: logdb.io/v1alpha1
kind: LogVolume
metadata:
  name: bench
spec:
  pageSize: 8192
  segmentSize: 1Gi
  maxSize: 16Gi
  replicas: 1
";

/// The metrics address of each running compute node, as `logdb status` reports it.
async fn compute_metrics(data: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let s = match control::request(data, &Request::Status).await? {
        Reply::Status(s) => s,
        other => bail!("unexpected answer {other:?}"),
    };
    let writer = std::iter::once((s.writer.id, s.writer.metrics));
    let replicas = s.replicas.into_iter().map(|r| (r.id, r.metrics));
    Ok(writer
        .chain(replicas)
        .filter_map(|(id, m)| Some((id, m?)))
        .collect())
}

async fn writer_id(data: &Path) -> anyhow::Result<String> {
    match control::request(data, &Request::Status).await? {
        Reply::Status(s) => Ok(s.writer.id),
        other => bail!("unexpected answer {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("bin dir")?
        .to_path_buf();
    println!(
        "{}",
        json!({"bench": "machine", "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "scale": args.scale, "clients": args.clients})
    );
    let vol = Volume::up(&bin_dir, "logdb-volume-bench", MANIFEST)?;
    let data = vol.data();
    let rw = vol.port("psql")?;
    let ro = vol.port("read_only_psql")?;

    let load = Instant::now();
    load_schema(&connect(rw, "bench").await?, args.scale).await?;
    println!(
        "{}",
        json!({"bench": "load", "seconds": load.elapsed().as_secs_f64().round()})
    );

    // Replica lag under load, from the replica's histogram, with a reader on the replica.
    let metrics = compute_metrics(&data).await?;
    let writer = writer_id(&data).await?;
    let (_, replica_metrics) = metrics
        .iter()
        .find(|(id, _)| *id != writer)
        .context("a replica")?
        .clone();
    let before = scrape(&replica_metrics).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, accounts) = (Arc::clone(&stop), Arc::clone(&reads), 100_000 * args.scale);
        tokio::spawn(async move {
            let Ok(r) = connect(ro, "bench").await else {
                return;
            };
            let mut aid = 1u64;
            while !stop.load(Ordering::Relaxed) {
                aid = (aid * 7919 + 13) % accounts + 1;
                if r.query_one(
                    &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"),
                    &[],
                )
                .await
                .is_ok()
                {
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let work = vol.dir.join("pgbench");
    std::fs::create_dir_all(&work)?;
    let (clients, seconds, scale, w2) = (args.clients, args.seconds, args.scale, work.clone());
    let (tx, tps, lat) = tokio::task::spawn_blocking(move || {
        pgbench(rw, clients, seconds, scale, &w2, "bench", "prefer")
    })
    .await??;
    stop.store(true, Ordering::Relaxed);
    reader.await?;
    let after = scrape(&replica_metrics).await;
    let name = "logdb_compute_replica_lag_seconds";
    let ms = |q| histogram_quantile(&before, &after, name, q).map(|s| (s * 1e5).round() / 100.0);
    let n = sum(&after, &format!("{name}_count")) - sum(&before, &format!("{name}_count"));
    let mean = histogram_mean(&before, &after, name).unwrap_or(0.0);
    println!(
        "{}",
        json!({"bench": "replica_lag", "clients": args.clients, "seconds": args.seconds, "writer_tps": tps, "transactions": tx,
               "commit_p50_ms": logdb_storage::testkit::percentile(&lat, 0.5), "replica_reads": reads.load(Ordering::Relaxed),
               "batches_applied": n, "lag_p50_ms": ms(0.5), "lag_p99_ms": ms(0.99), "lag_mean_ms": (mean * 1e5).round() / 100.0})
    );

    // Failover under a write loop: request → first write accepted by the new writer.
    let c = connect(rw, "bench").await?;
    c.batch_execute("CREATE TABLE fo (id INTEGER PRIMARY KEY, at TEXT)")
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1));
    let loop_writes = {
        let (stop, next_id) = (Arc::clone(&stop), Arc::clone(&next_id));
        tokio::spawn(async move {
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = connect(rw, "bench").await.ok();
                }
                let Some(c) = &client else { continue };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if c.execute(&format!("INSERT INTO fo VALUES ({id}, 'loop')"), &[])
                    .await
                    .is_err()
                {
                    client = None;
                }
            }
        })
    };
    let mut times = Vec::new();
    for round in 0..args.failovers {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let old = writer_id(&data).await?;
        let started = Instant::now();
        let answer = control::request(&data, &Request::Failover { target: None }).await?;
        let promoted = started.elapsed();
        let Reply::Done { message } = answer else {
            bail!("failover failed: {answer:?}")
        };
        let c = connect(rw, "bench").await?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        c.execute(&format!("INSERT INTO fo VALUES ({id}, 'probe')"), &[])
            .await?;
        let total = started.elapsed();
        let new = writer_id(&data).await?;
        anyhow::ensure!(new != old, "the writer did not change: {message}");
        times.push(total.as_secs_f64() * 1000.0);
        println!(
            "{}",
            json!({"bench": "failover", "round": round + 1, "from": old, "to": new,
                   "promoted_ms": (promoted.as_secs_f64() * 1e5).round() / 100.0,
                   "first_write_ms": (total.as_secs_f64() * 1e5).round() / 100.0})
        );
    }
    stop.store(true, Ordering::Relaxed);
    loop_writes.await?;
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    println!(
        "{}",
        json!({"bench": "failover_summary", "rounds": times.len(),
               "first_write_p50_ms": logdb_storage::testkit::percentile(&times, 0.5),
               "first_write_max_ms": times.last().copied().unwrap_or(0.0)})
    );
    drop(vol);
    Ok(())
}
