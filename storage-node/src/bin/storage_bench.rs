//! Storage node benchmark: ingest rate of 100-byte deltas at 1 and 8 concurrent streams next to
//! the raw fsync rate of the same disk, ReadPage latency with 0, 16 and 64 pending records, and
//! with 0, 16, 64 and 1,000 materialized deltas above the image a page starts from (read through
//! the delta index and the log), also for a page whose deltas lie far apart in the log.
//! Starts the real `logdb-storage` binary (built beside this one) on loopback and prints one JSON
//! line per figure.
//!
//! `cargo build --release -p logdb-storage && target/release/logdb-storage-bench --seconds 5`

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use logdb_storage::testkit::{percentile, TempDir};
use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::proto::{CreateSegmentRequest, ReadPageRequest, SegmentRef, WriteRecordsRequest};
use logdb_types::record::{RecordKind, RedoRecord};
use logdb_types::{Lsn, PageId};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "logdb storage node benchmark (JSON lines on stdout)")]
struct Args {
    /// Seconds per ingest measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Directory for the node's data and the raw fsync probe (default: a temp dir under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Reads per ReadPage measurement.
    #[arg(long, default_value_t = 3000)]
    reads: usize,
}

const PAGE: usize = 8192;

struct Node {
    child: Child,
    grpc: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(data: &Path) -> anyhow::Result<Node> {
    let exe = std::env::current_exe()?
        .parent()
        .context("bench binary has no directory")?
        .join("logdb-storage");
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p logdb-storage`",
            exe.display()
        );
    }
    let mut child = Command::new(&exe)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "bench",
            "--zone",
            "z",
            // The bench measures the storage engine; its client speaks plaintext.
            "--insecure",
        ])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(line.trim()).context("listening line")?;
    Ok(Node {
        child,
        grpc: v["grpc"].as_str().context("grpc")?.to_string(),
    })
}

async fn client(node: &Node) -> anyhow::Result<StorageServiceClient<Channel>> {
    Ok(StorageServiceClient::connect(format!("http://{}", node.grpc)).await?)
}

/// Each measurement gets a volume of its own, named like its one segment.
async fn create(c: &mut StorageServiceClient<Channel>, segment: &str) -> anyhow::Result<()> {
    c.create_segment(CreateSegmentRequest {
        volume_id: segment.into(),
        segment_id: segment.into(),
        pg_index: 0,
        first_page: 0,
        page_count: 1 << 20,
        page_size: PAGE as u32,
        retention_seconds: 3600,
        epoch: 1,
    })
    .await?;
    Ok(())
}

fn req(segment: &str, vdl: u64, recs: &[RedoRecord]) -> WriteRecordsRequest {
    WriteRecordsRequest {
        volume_id: segment.into(),
        segment_id: segment.into(),
        records: recs.iter().map(RedoRecord::to_proto).collect(),
        last_committed_lsn: vdl,
        epoch: 1,
    }
}

fn delta(lsn: u64, page: u64, len: usize) -> RedoRecord {
    let data: Vec<u8> = (0..len).map(|i| (lsn as usize + i) as u8).collect();
    RedoRecord::new(
        Lsn(lsn),
        Lsn(lsn - 1),
        lsn,
        PageId(page),
        ((lsn * 64) % 8000) as u32,
        RecordKind::Delta,
        0,
        0,
        data,
    )
}

/// Sequential 190-byte appends, each followed by fdatasync: what one durable log can do at most
/// without sharing fsyncs.
fn raw_fsync_rate(dir: &Path, seconds: f64) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let buf = [7u8; 190];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        f.write_all(&buf)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

async fn ingest(
    node: &Node,
    segment: &str,
    streams: usize,
    batch: u64,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let mut c = client(node).await?;
    create(&mut c, segment).await?;
    let next = Arc::new(AtomicU64::new(1));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut c = client(node).await?;
        let next = Arc::clone(&next);
        let segment = segment.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut records = 0u64;
            while Instant::now() < deadline {
                let first = next.fetch_add(batch, Ordering::SeqCst);
                let recs: Vec<RedoRecord> = (first..first + batch)
                    .map(|l| delta(l, l % 4096, 100))
                    .collect();
                let t = Instant::now();
                c.write_records(req(&segment, 0, &recs)).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                records += batch;
            }
            anyhow::Ok((records, lat))
        }));
    }
    let start = Instant::now();
    let mut records = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (r, l) = t.await??;
        records += r;
        lat.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let st = c
        .get_segment_state(SegmentRef {
            volume_id: segment.into(),
            segment_id: segment.into(),
        })
        .await?
        .into_inner();
    Ok(json!({
        "bench": "storage_ingest",
        "streams": streams,
        "records_per_batch": batch,
        "record_bytes": 100,
        "seconds": (secs * 100.0).round() / 100.0,
        "records_per_s": (records as f64 / secs).round(),
        "batches_per_s": (lat.len() as f64 / secs).round(),
        "mb_per_s": ((records as f64 * 100.0 / secs / 1e6) * 100.0).round() / 100.0,
        "batch_p50_us": percentile(&lat, 0.5).round(),
        "batch_p99_us": percentile(&lat, 0.99).round(),
        "scl": st.scl,
    }))
}

/// One whole-page image record for each of `pages` pages, LSNs from `*lsn + 1` on.
fn base_images(pages: u64, lsn: &mut u64) -> Vec<RedoRecord> {
    (0..pages)
        .map(|p| {
            *lsn += 1;
            RedoRecord::new(
                Lsn(*lsn),
                Lsn(*lsn - 1),
                *lsn,
                PageId(p),
                0,
                RecordKind::Image,
                0,
                0,
                vec![p as u8; PAGE],
            )
        })
        .collect()
}

/// Waits until the segment has materialized up to `lsn`.
async fn await_materialized(
    c: &mut StorageServiceClient<Channel>,
    segment: &str,
    lsn: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let st = c
            .get_segment_state(SegmentRef {
                volume_id: segment.to_string(),
                segment_id: segment.to_string(),
            })
            .await?
            .into_inner();
        if st.materialized_lsn >= lsn {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("not materialized up to {lsn} within {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `reads` ReadPage calls round the first `pages` pages, page p at `at(p)`: latencies in µs,
/// sorted.
async fn read_pages(
    c: &mut StorageServiceClient<Channel>,
    segment: &str,
    pages: u64,
    reads: usize,
    at: impl Fn(u64) -> u64,
) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(reads);
    for i in 0..reads {
        let p = i as u64 % pages;
        let t = Instant::now();
        let r = c
            .read_page(ReadPageRequest {
                volume_id: segment.to_string(),
                page_id: p,
                requested_lsn: at(p),
                segment_id: segment.to_string(),
            })
            .await?
            .into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if r.page_data.len() != PAGE {
            bail!("short page");
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok(lat)
}

async fn read_latency(
    node: &Node,
    pending: u64,
    reads: usize,
) -> anyhow::Result<serde_json::Value> {
    let segment = format!("read-{pending}");
    let mut c = client(node).await?;
    create(&mut c, &segment).await?;
    const PAGES: u64 = 64;
    // Base images, materialized.
    let mut lsn = 0u64;
    let images = base_images(PAGES, &mut lsn);
    c.write_records(req(&segment, lsn, &images)).await?;
    let base = lsn;
    await_materialized(&mut c, &segment, base, Duration::from_secs(60)).await?;
    // `pending` deltas per page, kept pending (the announced VDL stays at the base).
    for _ in 0..pending {
        let recs: Vec<RedoRecord> = (0..PAGES)
            .map(|p| {
                lsn += 1;
                delta(lsn, p, 100)
            })
            .collect();
        c.write_records(req(&segment, base, &recs)).await?;
    }
    let lat = read_pages(&mut c, &segment, PAGES, reads, |_| lsn).await?;
    Ok(json!({
        "bench": "storage_read_page",
        "pending_records": pending,
        "reads": reads,
        "page_bytes": PAGE,
        "p50_us": percentile(&lat, 0.5).round(),
        "p99_us": percentile(&lat, 0.99).round(),
    }))
}

/// ReadPage latency for a page `deltas` records above the image it starts from, all
/// materialized (read through the page store's delta index and the log): 64 pages, each an
/// image record and `deltas + 1` deltas, announced durable at the end so one round takes them;
/// reads at each page's `deltas`-th delta (below any image the round stored at its last).
/// With `spread`, that many records of other pages are written between two deltas of a page
/// (its history scattered over the log, as after an hour of other writes).
async fn history_read_latency(
    node: &Node,
    deltas: u64,
    spread: u64,
    reads: usize,
) -> anyhow::Result<serde_json::Value> {
    let segment = format!("history-{deltas}-{spread}");
    let mut c = client(node).await?;
    create(&mut c, &segment).await?;
    const PAGES: u64 = 64;
    let mut lsn = 0u64;
    let mut read_at = vec![0u64; PAGES as usize];
    let images = base_images(PAGES, &mut lsn);
    c.write_records(req(&segment, 0, &images)).await?;
    for k in 1..=deltas + 1 {
        let recs: Vec<RedoRecord> = (0..PAGES)
            .map(|p| {
                lsn += 1;
                if k == deltas {
                    read_at[p as usize] = lsn;
                }
                delta(lsn, p, 100)
            })
            .collect();
        c.write_records(req(&segment, 0, &recs)).await?;
        // Other pages' writes between two deltas of these (pages 64.. of the segment).
        let mut left = spread;
        while left > 0 {
            let n = left.min(512);
            let recs: Vec<RedoRecord> = (0..n)
                .map(|i| {
                    lsn += 1;
                    delta(lsn, PAGES + (lsn + i) % 1024, 100)
                })
                .collect();
            c.write_records(req(&segment, 0, &recs)).await?;
            left -= n;
        }
    }
    if deltas == 0 {
        read_at = (1..=PAGES).collect();
    }
    // Everything durable is announced: one round materializes it all.
    c.write_records(req(&segment, lsn, &[])).await?;
    await_materialized(&mut c, &segment, lsn, Duration::from_secs(120)).await?;
    let lat = read_pages(&mut c, &segment, PAGES, reads, |p| read_at[p as usize]).await?;
    Ok(json!({
        "bench": "storage_read_page_history",
        "deltas_above_image": deltas,
        "other_records_between_deltas": spread,
        "log_records": lsn,
        "reads": reads,
        "page_bytes": PAGE,
        "p50_us": percentile(&lat, 0.5).round(),
        "p99_us": percentile(&lat, 0.99).round(),
    }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new("logdb-storage-bench")?;
            tmp.0.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "os": std::env::consts::OS,
        "dir": dir.display().to_string(),
    });
    println!("{}", json!({"bench": "machine", "machine": machine}));

    let fsync = raw_fsync_rate(&dir, args.seconds.min(5.0))?;
    println!(
        "{}",
        json!({"bench": "raw_fsync", "what": "190-byte append + fdatasync, one thread", "fsyncs_per_s": fsync.round()})
    );

    let node = start_node(&dir.join("node"))?;
    client(&node).await?;
    for (streams, batch) in [(1usize, 1u64), (8, 1), (1, 16), (8, 16)] {
        let mut line = ingest(
            &node,
            &format!("ingest-{streams}-{batch}"),
            streams,
            batch,
            args.seconds,
        )
        .await?;
        line["raw_fsyncs_per_s"] = json!(fsync.round());
        line["batches_per_raw_fsync"] = json!(
            ((line["batches_per_s"].as_f64().unwrap_or(0.0) / fsync) * 100.0).round() / 100.0
        );
        println!("{line}");
    }
    for pending in [0u64, 16, 64] {
        println!("{}", read_latency(&node, pending, args.reads).await?);
    }
    for deltas in [0u64, 16, 64, 1000] {
        println!(
            "{}",
            history_read_latency(&node, deltas, 0, args.reads).await?
        );
    }
    // A page last imaged "an hour of writes" earlier: its 16 deltas each 12,500 records of
    // other pages apart (200,000 records, ~30 MB of log, between its image and the read).
    println!(
        "{}",
        history_read_latency(&node, 16, 12_500, args.reads).await?
    );
    drop(node);
    Ok(())
}
