//! What the benchmark programs share: the TPC-B-like load (pgbench's `tpcb-like` script in
//! SQLite's dialect, tables sized like pgbench's scale), running pgbench itself against a logdb
//! PostgreSQL endpoint, and a writer process on a layout file.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// The password benchmark programs start their compute nodes with.
pub const PASSWORD: &str = "bench";

/// Statements that create and fill pgbench's tables at `scale` (100,000 accounts per unit).
pub fn schema(scale: u64) -> Vec<String> {
    let accounts = 100_000 * scale;
    vec![
        "CREATE TABLE pgbench_branches (bid INTEGER PRIMARY KEY, bbalance INTEGER NOT NULL, filler TEXT)".into(),
        "CREATE TABLE pgbench_tellers (tid INTEGER PRIMARY KEY, bid INTEGER NOT NULL, tbalance INTEGER NOT NULL, filler TEXT)".into(),
        "CREATE TABLE pgbench_accounts (aid INTEGER PRIMARY KEY, bid INTEGER NOT NULL, abalance INTEGER NOT NULL, filler TEXT)".into(),
        "CREATE TABLE pgbench_history (tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)".into(),
        format!("INSERT INTO pgbench_branches SELECT value, 0, NULL FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < {scale}) SELECT value FROM c)"),
        format!("INSERT INTO pgbench_tellers SELECT value, (value - 1) / 10 + 1, 0, NULL FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < {}) SELECT value FROM c)", 10 * scale),
    ]
    .into_iter()
    .chain((0..scale).map(|k| {
        // 100,000 accounts per statement (one transaction each), 84-character filler like pgbench.
        let (lo, hi) = (k * 100_000 + 1, (k + 1) * 100_000);
        format!("INSERT INTO pgbench_accounts SELECT value, (value - 1) / 100000 + 1, 0, substr(hex(zeroblob(42)), 1, 84) FROM (WITH RECURSIVE c(value) AS (SELECT {lo} UNION ALL SELECT value + 1 FROM c WHERE value < {hi}) SELECT value FROM c)")
    }))
    .chain(std::iter::once(format!("SELECT count(*) FROM pgbench_accounts WHERE aid <= {accounts}")))
    .collect()
}

/// Creates and fills pgbench's tables at `scale` through a logdb endpoint.
pub async fn load_schema(client: &tokio_postgres::Client, scale: u64) -> anyhow::Result<()> {
    for s in schema(scale) {
        client
            .batch_execute(&s)
            .await
            .with_context(|| format!("loading: {s}"))?;
    }
    Ok(())
}

pub const PGBENCH_SCRIPT: &str = r"\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// Runs pgbench against the writer with libpq's `sslmode` (`disable`: plaintext; `require`:
/// TLS; `prefer`: TLS when the server offers it); returns (transactions, tps, latencies in ms).
pub fn pgbench(
    port: u16,
    clients: usize,
    seconds: u64,
    scale: u64,
    dir: &Path,
    db: &str,
    sslmode: &str,
) -> anyhow::Result<(u64, f64, Vec<f64>)> {
    let script = dir.join("tpcb.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let logs = dir.join(format!("pgbench-{clients}"));
    std::fs::create_dir_all(&logs)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "logdb",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
            "-D",
            &format!("scale={scale}"),
            "-l",
        ])
        .arg(format!("--log-prefix={}", logs.join("tx").display()))
        .arg("-f")
        .arg(&script)
        .arg(db)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", sslmode)
        .current_dir(&logs)
        .output()
        .context("running pgbench")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("pgbench failed: {text}");
    }
    let tx: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pgbench output: {text}"))?;
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mut lat = Vec::new();
    for f in std::fs::read_dir(&logs)? {
        let f = f?.path();
        for line in std::fs::read_to_string(&f)?.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
            {
                lat.push(us / 1000.0);
            }
        }
        std::fs::remove_file(f)?;
    }
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok((tx, tps, lat))
}

/// A `logdb-compute` writer started by a benchmark; killed when dropped.
pub struct WriterProc {
    pub child: Child,
    pub port: u16,
    pub metrics: String,
}

impl Drop for WriterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the writer of `layout` (binary in `bin_dir`) and waits for it to serve; plaintext.
pub fn start_writer(bin_dir: &Path, layout: &Path) -> anyhow::Result<WriterProc> {
    start_writer_with(bin_dir, layout, &["--insecure".into()])
}

/// [`start_writer`] with these arguments too (e.g. `--tls-cert F --tls-key K`).
pub fn start_writer_with(
    bin_dir: &Path,
    layout: &Path,
    extra: &[String],
) -> anyhow::Result<WriterProc> {
    let exe = bin_dir.join("logdb-compute");
    let mut child = Command::new(&exe)
        .arg("--layout")
        .arg(layout)
        .args(["--listen", "127.0.0.1:0", "--password", PASSWORD])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).with_context(|| format!("writer said {line:?}"))?;
    let pg = v["pg"].as_str().context("pg address")?;
    let port = pg.rsplit(':').next().context("port")?.parse()?;
    let metrics = v["metrics"]
        .as_str()
        .context("metrics address")?
        .to_string();
    Ok(WriterProc {
        child,
        port,
        metrics,
    })
}

/// A client session on a logdb PostgreSQL endpoint (the benchmark password; ignored where the
/// server trusts everyone, as `logdb up` does).
pub async fn connect(port: u16, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=logdb password={PASSWORD} dbname={db} connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}
