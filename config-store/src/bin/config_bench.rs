//! Config store benchmark (issue 4): writer-ticket latency p50/p99 and metadata writes/s on a
//! three-member group of real `logdb-config` processes on loopback, next to etcd 3.4 (Debian
//! `etcd-server`) with three members on loopback doing one transactional compare-and-put per
//! ticket (through its JSON gateway, one HTTP/1.1 keep-alive connection per client), in the same
//! run. JSON lines on stdout.
//!
//! `cargo build --release -p logdb-config-store && target/release/logdb-config-bench`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use logdb_common::stats::{percentile, TempDir};
use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// Sequential tickets measured for latency.
    #[arg(long, default_value_t = 2000)]
    tickets: usize,
    /// Seconds of concurrent metadata writes.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent writers for the throughput figure.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `clients` concurrent loops (each returns how many writes it did) and gives writes/s.
async fn writes_per_second<F, Fut>(clients: usize, client_loop: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients).map(|w| tokio::spawn(client_loop(w))).collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn stats(mut lat: Vec<f64>) -> (f64, f64) {
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (
        percentile(&lat, 0.5).round(),
        percentile(&lat, 0.99).round(),
    )
}

async fn logdb(bin_dir: &Path, dir: &Path, args: &Args) -> anyhow::Result<()> {
    let mut procs = Procs(Vec::new());
    let mut addrs = Vec::new();
    for id in 1..=3u64 {
        let mut child = Command::new(bin_dir.join("logdb-config"))
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                "127.0.0.1:0",
                "--insecure",
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("logdb-m{id}")))
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .context(
                "starting logdb-config (build it with cargo build --release -p logdb-config-store)",
            )?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(line.trim())?;
        addrs.push(v["addr"].as_str().context("addr")?.to_string());
        procs.0.push(child);
    }
    let members: std::collections::HashMap<u64, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()))
        .collect();
    ConfigClient::new(vec![addrs[0].clone()])
        .call(|mut c| {
            let members = members.clone();
            async move { c.initialize(proto::InitializeRequest { members }).await }
        })
        .await?;
    let client = Arc::new(ConfigClient::new(addrs.clone()));
    for zone in ["a", "b", "c"] {
        for n in 1..=2 {
            let req = proto::RegisterNodeRequest {
                id: format!("{zone}{n}"),
                zone: zone.into(),
                address: format!("127.0.0.1:{n}"),
                capacity_bytes: 1 << 40,
                pool: String::new(),
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.register_node(r).await }
                })
                .await?;
        }
    }
    let spec = proto::VolumeSpec {
        page_size: 8192,
        segment_size: 10 << 30,
        max_size: 0,
        replicas: 0,
        retention_seconds: 3600,
        zones: vec!["a".into(), "b".into(), "c".into()],
        pool: String::new(),
    };
    client
        .call(|mut c| {
            let s = spec.clone();
            async move {
                c.create_volume(proto::CreateVolumeRequest {
                    name: "v1".into(),
                    spec: Some(s),
                })
                .await
            }
        })
        .await?;
    let mut known = 0;
    let mut lat = Vec::with_capacity(args.tickets);
    for _ in 0..args.tickets {
        let t = Instant::now();
        known = client
            .acquire_ticket("v1", "bench", logdb_types::Epoch(known))
            .await?
            .epoch;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = stats(lat);
    println!(
        "{}",
        json!({"bench": "ticket_latency", "system": "logdb-config (openraft, 3 members)", "tickets": args.tickets, "p50_us": p50, "p99_us": p99})
    );

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let rate = writes_per_second(args.clients, |w| {
        let client = Arc::clone(&client);
        async move {
            let mut n = 0u64;
            let id = ["a1", "a2", "b1", "b2", "c1", "c2"][w % 6].to_string();
            while Instant::now() < deadline {
                let req = proto::HeartbeatRequest { id: id.clone() };
                client
                    .call(|mut c| {
                        let r = req.clone();
                        async move { c.heartbeat(r).await }
                    })
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    })
    .await?;
    println!(
        "{}",
        json!({"bench": "metadata_writes", "system": "logdb-config (openraft, 3 members)", "clients": args.clients, "writes_per_s": rate.round()})
    );
    Ok(())
}

/// A minimal HTTP/1.1 keep-alive client for etcd's JSON gateway.
struct Http {
    stream: TokioBufReader<TcpStream>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> anyhow::Result<Http> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Http {
            stream: TokioBufReader::new(s),
            host: addr.to_string(),
        })
    }

    async fn post(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let body = body.to_string();
        let req = format!("POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", self.host, body.len());
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h).await?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf).await?;
        if !status.contains(" 200 ") {
            bail!("etcd {path}: {status} {}", String::from_utf8_lossy(&buf));
        }
        Ok(serde_json::from_slice(&buf)?)
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn etcd(dir: &Path, args: &Args) -> anyhow::Result<()> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(Vec::new());
    for (i, (c, p)) in ports.iter().enumerate() {
        procs.0.push(
            Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{c}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{c}"),
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{p}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{p}"),
                ])
                .args([
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd (apt-get install etcd-server)")?,
        );
    }
    let addrs: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect();
    // Wait for a leader: a put succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut http = loop {
        if let Ok(mut h) = Http::connect(&addrs[0]).await {
            if h.post(
                "/v3/kv/put",
                &json!({"key": b64(b"epoch/v1"), "value": b64(b"0")}),
            )
            .await
            .is_ok()
            {
                break h;
            }
        }
        if Instant::now() > deadline {
            bail!("etcd did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut lat = Vec::with_capacity(args.tickets);
    for known in 0..args.tickets as u64 {
        let t = Instant::now();
        let r = http
            .post(
                "/v3/kv/txn",
                &json!({
                    "compare": [{"key": b64(b"epoch/v1"), "result": "EQUAL", "target": "VALUE", "value": b64(known.to_string().as_bytes())}],
                    "success": [{"request_put": {"key": b64(b"epoch/v1"), "value": b64((known + 1).to_string().as_bytes())}}]
                }),
            )
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if r["succeeded"] != json!(true) {
            bail!("etcd compare-and-put of epoch {known} failed: {r}");
        }
    }
    let (p50, p99) = stats(lat);
    println!(
        "{}",
        json!({"bench": "ticket_latency", "system": "etcd 3.4 (3 members, txn compare-and-put)", "tickets": args.tickets, "p50_us": p50, "p99_us": p99})
    );

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let rate = writes_per_second(args.clients, |w| {
        let addr = addrs[0].clone();
        async move {
            let mut h = Http::connect(&addr).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                h.post("/v3/kv/put", &json!({"key": b64(format!("node/{w}").as_bytes()), "value": b64(n.to_string().as_bytes())})).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    })
    .await?;
    println!(
        "{}",
        json!({"bench": "metadata_writes", "system": "etcd 3.4 (3 members, put)", "clients": args.clients, "writes_per_s": rate.round()})
    );
    drop(procs);
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = TempDir::new("logdb-config-bench")?;
    let bin_dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("bench dir")?
        .to_path_buf();
    println!(
        "{}",
        json!({"bench": "machine", "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
    );
    logdb(&bin_dir, &tmp.0, &args).await?;
    etcd(&tmp.0, &args).await?;
    Ok(())
}
