//! Writer benchmark (issue 3): a pgbench TPC-B-like script (3 UPDATEs, 1 SELECT, 1 INSERT; tables
//! sized like pgbench scale 10) through the real `logdb-compute` writer on six real storage nodes,
//! run by pgbench itself. Prints JSON lines:
//!
//! - bytes leaving the writer per committed transaction, counted at the transport level by a
//!   byte-counting TCP proxy in front of each storage node, against the traditional model
//!   measured in the same run: stock SQLite on a local file, same script and page size,
//!   (bytes written to the database file + journal or WAL) × 2 for mirroring;
//! - commits/s and p50/p99 commit latency at 1 and 16 clients, next to stock SQLite
//!   (synchronous=FULL, rollback journal and WAL) on local disk.
//!
//! `cargo build --release -p logdb-storage -p logdb-compute && target/release/logdb-compute-bench`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use logdb_common::peer_tls::Role;
use logdb_compute::benchkit::{
    connect, load_schema, pgbench, schema, start_writer, start_writer_with,
};
use logdb_compute::layout::{Layout, Member, ProtectionGroup};
use logdb_compute::tcp_proxy::Proxy;
use logdb_storage::testkit::{percentile, scrape, StorageProcess, TempDir};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "logdb writer benchmark against stock SQLite (JSON lines on stdout)")]
struct Args {
    /// pgbench scale (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u64,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Client counts.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Segment (protection group) size in MiB.
    #[arg(long, default_value_t = 10 * 1024)]
    segment_mib: u64,
    /// Work directory (default: a temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const PAGE: u32 = 8192;

/// The TPC-B-like transaction with concrete values.
fn tpcb(aid: u64, bid: u64, tid: u64, delta: i64) -> [String; 5] {
    [
        format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"),
        format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"),
        format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}"),
        format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}"),
        format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"),
    ]
}

/// A small deterministic generator (xorshift): the same transactions for every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("wchar: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Sum of the writer's metric lines starting with `prefix`.
async fn scrape_sum(addr: &str, prefix: &str) -> f64 {
    logdb_common::metrics_http::sum(&scrape(addr).await, prefix)
}

fn sqlite_open(path: &Path, journal: &str) -> anyhow::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(&format!(
        "PRAGMA page_size = {PAGE}; PRAGMA journal_mode = {journal}; PRAGMA synchronous = FULL;"
    ))?;
    c.busy_timeout(Duration::from_secs(30))?;
    Ok(c)
}

fn sqlite_tx(c: &rusqlite::Connection, rng: &mut Rng, scale: u64) -> anyhow::Result<()> {
    let (aid, bid, tid) = (
        rng.range(1, 100_000 * scale),
        rng.range(1, scale),
        rng.range(1, 10 * scale),
    );
    let delta = rng.range(0, 10_000) as i64 - 5000;
    c.execute_batch("BEGIN IMMEDIATE")?;
    for (i, s) in tpcb(aid, bid, tid, delta).iter().enumerate() {
        if i == 1 {
            let _: i64 = c.query_row(s, [], |r| r.get(0))?;
        } else {
            c.execute(s, [])?;
        }
    }
    c.execute_batch("COMMIT")?;
    Ok(())
}

/// Stock SQLite on a local file: bytes written per transaction, then throughput and latency.
fn sqlite_peer(dir: &Path, journal: &str, args: &Args) -> anyhow::Result<()> {
    let path = dir.join(format!("stock-{journal}.db"));
    let c = sqlite_open(&path, journal)?;
    for s in schema(args.scale) {
        c.execute_batch(&s)?;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..200 {
        sqlite_tx(&c, &mut rng, args.scale)?;
    }
    let n = 2000u64;
    let before = wchar();
    for _ in 0..n {
        sqlite_tx(&c, &mut rng, args.scale)?;
    }
    if journal == "WAL" {
        // WAL pages are written again into the database at checkpoint: count that too.
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    }
    let bytes = (wchar() - before) as f64 / n as f64;
    println!(
        "{}",
        json!({"bench": "egress_per_txn", "system": format!("sqlite-local-{}", journal.to_lowercase()), "model": "traditional: (db file + journal/WAL bytes written) x 2 for mirroring", "page_size": PAGE, "transactions": n, "bytes_written_per_txn": bytes.round(), "bytes_per_txn": (bytes * 2.0).round()})
    );
    drop(c);
    for &clients in &args.clients {
        let stop = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut threads = Vec::new();
        for t in 0..clients {
            let (stop, lat, path) = (Arc::clone(&stop), Arc::clone(&lat), path.clone());
            let (journal, scale) = (journal.to_string(), args.scale);
            threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
                let c = sqlite_open(&path, &journal)?;
                let mut rng = Rng(0x1234_5678 + t as u64 * 7919);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    sqlite_tx(&c, &mut rng, scale)?;
                    mine.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                lat.lock().expect("lat").extend(mine);
                Ok(())
            }));
        }
        std::thread::sleep(Duration::from_secs(args.seconds));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("thread")?;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut lat = lat.lock().expect("lat").clone();
        lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        println!(
            "{}",
            json!({"bench": "commit_throughput", "system": format!("sqlite-local-{}", journal.to_lowercase()), "synchronous": "FULL", "clients": clients, "seconds": args.seconds, "transactions": lat.len(), "tps": (lat.len() as f64 / secs).round(), "p50_ms": (percentile(&lat, 0.5) * 1000.0).round() / 1000.0, "p99_ms": (percentile(&lat, 0.99) * 1000.0).round() / 1000.0})
        );
    }
    Ok(())
}

/// pgbench's TPC-B-like load on the writer at `port` for the run's seconds and scale.
fn run_pgbench(
    args: &Args,
    port: u16,
    clients: usize,
    dir: &std::path::Path,
    sslmode: &str,
) -> anyhow::Result<(u64, f64, Vec<f64>)> {
    pgbench(
        port,
        clients,
        args.seconds,
        args.scale,
        dir,
        "vol1",
        sslmode,
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = TempDir::new("logdb-compute-bench")?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.0.clone());
    std::fs::create_dir_all(&dir)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("bench dir")?
        .to_path_buf();
    println!(
        "{}",
        json!({"bench": "machine", "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "dir": dir.display().to_string(), "scale": args.scale, "segment_mib": args.segment_mib})
    );

    // Six storage nodes, each behind a counting proxy.
    let storage_bin = bin_dir.join("logdb-storage");
    let mut nodes = Vec::new();
    let mut proxies = Vec::new();
    for zone in ["zone-a", "zone-b", "zone-c"] {
        for n in 1..=2 {
            let id = format!("{}{n}", &zone[5..]);
            let node = StorageProcess::start(&storage_bin, &dir.join(&id), &id, zone, &[]);
            proxies.push(Proxy::start(node.grpc.parse()?).await?);
            nodes.push(node);
        }
    }
    // Protection groups of the default segment size (10 GiB); --segment-mib makes them smaller,
    // so one transaction touches several.
    let pages_per_pg = args.segment_mib * (1 << 20) / PAGE as u64;
    let pgs = ((args.scale * 2600 + 20_000) / pages_per_pg + 1) as usize;
    let layout = Layout {
        volume: "vol1".into(),
        page_size: PAGE,
        pages_per_pg,
        retention_seconds: 3600,
        max_pages: 0,
        pgs: (0..pgs)
            .map(|k| ProtectionGroup {
                members: nodes
                    .iter()
                    .zip(&proxies)
                    .map(|(n, p)| Member {
                        segment: format!("pg{k}-{}", n.node_id),
                        address: p.addr.to_string(),
                        zone: n.zone.clone(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let layout_path = dir.join("layout.json");
    std::fs::write(&layout_path, serde_json::to_vec_pretty(&layout)?)?;
    let writer = start_writer(&bin_dir, &layout_path)?;

    let client = connect(writer.port, "vol1").await?;
    let load = Instant::now();
    load_schema(&client, args.scale).await?;
    let shipped = |p: &[Proxy]| p.iter().map(Proxy::upstream_bytes).sum::<u64>();
    println!(
        "{}",
        json!({"bench": "load", "system": "logdb", "seconds": load.elapsed().as_secs_f64().round(), "bytes_shipped": shipped(&proxies)})
    );

    // Egress: one pgbench run through the counting proxies.
    {
        let clients = args.clients[0];
        let before = shipped(&proxies);
        let m = &writer.metrics;
        let kinds = ["delta", "image"];
        let redo_counts = |k: &str| {
            (
                format!("logdb_compute_redo_records_total{{kind=\"{k}\"}}"),
                format!("logdb_compute_redo_bytes_total{{kind=\"{k}\"}}"),
            )
        };
        let mut redo_before = Vec::new();
        for k in kinds {
            let (r, b) = redo_counts(k);
            redo_before.push((scrape_sum(m, &r).await, scrape_sum(m, &b).await));
        }
        let (tx, _, _) = run_pgbench(&args, writer.port, clients, &dir, "disable")?;
        let bytes = (shipped(&proxies) - before) as f64 / tx.max(1) as f64;
        let mut redo = serde_json::Map::new();
        for (k, (r0, b0)) in kinds.iter().zip(redo_before) {
            let (r, b) = redo_counts(k);
            let per_tx = |v: f64| (v / tx.max(1) as f64 * 100.0).round() / 100.0;
            redo.insert(
                format!("{k}_records_per_txn"),
                json!(per_tx(scrape_sum(m, &r).await - r0)),
            );
            redo.insert(
                format!("{k}_payload_bytes_per_txn"),
                json!(per_tx(scrape_sum(m, &b).await - b0).round()),
            );
        }
        println!(
            "{}",
            json!({"bench": "egress_per_txn", "system": "logdb", "model": "redo records to 6 segments, counted on the wire (TCP payload, all six streams)", "page_size": PAGE, "clients": clients, "transactions": tx, "bytes_per_txn": bytes.round(), "bytes_per_txn_per_segment": (bytes / 6.0).round(), "redo": redo})
        );
    }
    // Throughput: the writer again, straight to the storage nodes (no proxy hop), first all
    // plaintext, then with TLS everywhere: clients to the writer (TLS + SCRAM) and mutual TLS
    // between the writer and the storage nodes.
    drop(client);
    drop(writer);
    let certs = logdb_common::pki::CertDir::new(dir.join("tls"));
    let ca = certs.ca("bench")?;
    let leaf = certs.issue(
        &ca,
        "server",
        "bench",
        &["127.0.0.1".into()],
        logdb_common::pki::Usage::Server,
    )?;
    let peers = logdb_storage::testkit::TestPki::new();
    for tls in [false, true] {
        let writer_args: Vec<String> = if tls {
            for n in nodes.iter_mut() {
                let storage = peers.args(Role::Storage);
                n.restart_with(&storage.iter().map(String::as_str).collect::<Vec<_>>());
            }
            [
                "--tls-cert".to_string(),
                leaf.cert.display().to_string(),
                "--tls-key".to_string(),
                leaf.key.display().to_string(),
            ]
            .into_iter()
            .chain(peers.args(Role::Compute))
            .collect()
        } else {
            vec!["--insecure".into()]
        };
        let direct = Layout {
            pgs: layout
                .pgs
                .iter()
                .map(|pg| ProtectionGroup {
                    members: pg
                        .members
                        .iter()
                        .zip(&nodes)
                        .map(|(m, n)| Member {
                            address: n.grpc.clone(),
                            ..m.clone()
                        })
                        .collect(),
                })
                .collect(),
            ..layout.clone()
        };
        std::fs::write(&layout_path, serde_json::to_vec_pretty(&direct)?)?;
        let writer = start_writer_with(&bin_dir, &layout_path, &writer_args)?;
        // A restarted writer starts with a cold buffer pool: read every table once, as a running
        // database would have.
        let client = connect(writer.port, "vol1").await?;
        for t in [
            "pgbench_accounts",
            "pgbench_tellers",
            "pgbench_branches",
            "pgbench_history",
        ] {
            client
                .batch_execute(&format!("SELECT count(*), sum(length(filler)) FROM {t}"))
                .await?;
        }
        drop(client);
        let sslmode = if tls { "require" } else { "disable" };
        for &clients in &args.clients {
            let (tx, tps, lat) = run_pgbench(&args, writer.port, clients, &dir, sslmode)?;
            println!(
                "{}",
                json!({"bench": "commit_throughput", "system": "logdb", "tls": tls, "clients": clients, "seconds": args.seconds, "transactions": tx, "tps": tps.round(), "p50_ms": (percentile(&lat, 0.5) * 1000.0).round() / 1000.0, "p99_ms": (percentile(&lat, 0.99) * 1000.0).round() / 1000.0})
            );
        }
    }
    drop(nodes);

    for journal in ["DELETE", "WAL"] {
        sqlite_peer(&dir, journal, &args)?;
    }
    Ok(())
}
