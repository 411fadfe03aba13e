//! `logdb-compute`: the writer. Opens the volume described by the layout file (new epoch,
//! recovery by quorum), then serves PostgreSQL clients. Prints one JSON line with its addresses
//! on stdout once it serves; logs with tracing on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use logdb_compute::layout::Layout;
use logdb_compute::metrics::ComputeMetrics;
use logdb_compute::pg_server::{self, ServerContext};
use logdb_compute::shipper::{Shipper, ShipperConfig};
use logdb_compute::vfs::Engine;
use logdb_storage::types::Epoch;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "logdb-compute",
    about = "logdb writer: SQLite on a quorum-replicated redo log, spoken to over the PostgreSQL protocol"
)]
struct Args {
    /// Volume layout (JSON): page size, pages per PG, each PG's six segments. Not needed with
    /// --config-store.
    #[arg(long, required_unless_present = "config_store")]
    layout: Option<PathBuf>,
    /// Config store members (comma-separated addresses): take a writer ticket (epoch) and the
    /// layout of --volume from there.
    #[arg(long, value_delimiter = ',')]
    config_store: Vec<String>,
    /// The volume to write (with --config-store).
    #[arg(long, requires = "config_store")]
    volume: Option<String>,
    /// How often used bytes are reported to the config store, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    usage_report_ms: u64,
    /// This writer's name in the config store.
    #[arg(long, default_value = "writer")]
    writer_id: String,
    /// PostgreSQL protocol listen address (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:5433")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Password clients must give (md5 authentication). Without it, every client is trusted.
    #[arg(long, env = "LOGDB_PASSWORD")]
    password: Option<String>,
    /// Buffer pool size, in pages (shared by all sessions).
    #[arg(long, default_value_t = 16384)]
    pool_pages: usize,
    /// SQLite page cache per session, in pages: a transaction that fits commits as one batch.
    #[arg(long, default_value_t = 4096)]
    cache_pages: i64,
    /// Lowest epoch to use (the writer always goes above every epoch installed on storage).
    #[arg(long, default_value_t = 1)]
    epoch: u64,
    /// Back-pressure: LSN allocation stops this many records above VDL.
    #[arg(long, default_value_t = 200_000)]
    lal: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logdb_common::logging::init();
    let args = Args::parse();
    let (layout, min_epoch) = if args.config_store.is_empty() {
        let path = args
            .layout
            .as_ref()
            .context("--layout or --config-store is needed")?;
        (Layout::load(path)?, Epoch(args.epoch))
    } else {
        let name = args
            .volume
            .clone()
            .context("--volume is needed with --config-store")?;
        let client = logdb_config_store::client::ConfigClient::new(args.config_store.clone());
        let current = client
            .call(|mut c| {
                let name = name.clone();
                async move {
                    c.get_volume(logdb_config_store::api::proto::VolumeRef { name })
                        .await
                }
            })
            .await
            .with_context(|| format!("volume {name} in the config store"))?;
        let ticket = client
            .acquire_ticket(&name, &args.writer_id, current.epoch)
            .await
            .with_context(|| format!("writer ticket for volume {name}"))?;
        let volume = ticket.volume.context("ticket without a volume")?;
        tracing::info!(volume = %name, epoch = ticket.epoch, "writer ticket from the config store");
        (
            Layout::from_config(&volume)?,
            Epoch(ticket.epoch.max(args.epoch)),
        )
    };
    let volume = layout.volume.clone();
    let metrics = Arc::new(ComputeMetrics::new());
    let cfg = ShipperConfig {
        min_epoch,
        ticket: !args.config_store.is_empty(),
        lal: args.lal,
        ..ShipperConfig::default()
    };
    let shipper = Shipper::open(layout, cfg, Arc::clone(&metrics))
        .await
        .with_context(|| format!("opening volume {volume}"))?;
    let db_name = format!("/logdb/{volume}");
    let rt = tokio::runtime::Handle::current();
    let (name, pool, m) = (db_name.clone(), args.pool_pages, Arc::clone(&metrics));
    let engine = tokio::task::spawn_blocking(move || Engine::register(&name, shipper, pool, m, rt))
        .await?
        .context("reading the database header from storage")?;

    if let Some(volume) = args
        .volume
        .clone()
        .filter(|_| !args.config_store.is_empty())
    {
        let client = Arc::new(logdb_config_store::client::ConfigClient::new(
            args.config_store.clone(),
        ));
        let every = std::time::Duration::from_millis(args.usage_report_ms);
        tokio::spawn(logdb_compute::growth::report_usage(
            Arc::clone(&client),
            Arc::clone(&engine),
            volume.clone(),
            every,
        ));
        tokio::spawn(logdb_compute::growth::follow_volume(
            client,
            Arc::clone(&engine),
            volume,
        ));
    }
    let pg = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let pg_addr = pg.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let (scraped, shipper) = (Arc::clone(&metrics), Arc::clone(&engine.shipper));
    tokio::spawn(logdb_common::metrics_http::serve(
        metrics_listener,
        move || scraped.render_with(&shipper.segment_status()),
    ));
    let psql = format!(
        "postgresql://logdb@{}:{}/{volume}",
        pg_addr.ip(),
        pg_addr.port()
    );
    println!(
        "{}",
        serde_json::json!({"event": "listening", "pg": pg_addr.to_string(), "metrics": metrics_addr.to_string(), "epoch": engine.shipper.epoch().0, "psql": psql})
    );
    tracing::info!(%pg_addr, %metrics_addr, epoch = %engine.shipper.epoch(), "writer serving; connect with psql {psql}");
    let ctx = Arc::new(ServerContext {
        engine,
        db_name,
        password: args.password,
        cache_pages: args.cache_pages,
        write_turn: Arc::default(),
    });
    tokio::select! {
        _ = pg_server::serve(pg, ctx) => {}
        _ = logdb_common::shutdown::signal() => {}
    }
    Ok(())
}
