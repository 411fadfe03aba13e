//! `logdb-storage`: one storage node process. Prints one JSON line with its bound addresses on
//! stdout once it serves (so a parent can start it on port 0), logs with tracing on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use logdb_storage::materializer::{self, MaterializerConfig};
use logdb_storage::node::{Node, NodeConfig};
use logdb_storage::service::{StorageSvc, RECORD_OVERHEAD};
use logdb_types::proto::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "logdb-storage",
    about = "logdb storage node: durable redo logs, page versions at any LSN"
)]
struct Args {
    /// gRPC listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Directory holding this node's segments.
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's id (kept in the data dir; a dir of another node is refused).
    #[arg(long)]
    node_id: String,
    /// Availability zone of this node.
    #[arg(long)]
    zone: String,
    /// Largest WriteRecords batch accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_batch_bytes: usize,
    /// Log files rotate at this size, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    log_file_bytes: u64,
    /// Retention window for segments created without one, in seconds.
    #[arg(long, default_value_t = 86_400)]
    default_retention_secs: u64,
    /// How often the coalescer runs, in milliseconds.
    #[arg(long, default_value_t = 100)]
    coalesce_interval_ms: u64,
    /// Config store members (comma-separated): register there and heartbeat.
    #[arg(long, value_delimiter = ',')]
    config_store: Vec<String>,
    /// Address others reach this node on (default: the bound gRPC address).
    #[arg(long)]
    advertise: Option<String>,
    /// The storage pool this node serves: only volumes of that pool are placed on it (on
    /// Kubernetes, the LogVolume's storage pods form its pool).
    #[arg(long, default_value = "")]
    pool: String,
    /// Capacity reported to the config store, in bytes.
    #[arg(long, default_value_t = 1 << 40)]
    capacity_bytes: u64,
    /// How often retention is applied, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    gc_interval_ms: u64,
    /// Free bytes of the data disk kept back from the logs, for materializing and reading what
    /// is already accepted: below it new records are refused (RESOURCE_EXHAUSTED) until space
    /// returns. Default: 2% of the disk, within 4 MiB..1 GiB. 0 turns the check off.
    #[arg(long)]
    min_free_bytes: Option<u64>,
    #[command(flatten)]
    peer_tls: logdb_common::peer_tls::PeerTlsArgs,
    /// Speak plaintext to every other part and serve anyone who reaches the port (no
    /// certificates): for a throwaway test only.
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logdb_common::logging::init();
    let args = Args::parse();
    let transport = args.peer_tls.transport(args.insecure)?;
    logdb_common::peer_tls::install(transport.clone())?;
    let node = Node::open(NodeConfig {
        data_dir: args.data_dir.clone(),
        node_id: args.node_id.clone(),
        zone: args.zone.clone(),
        max_batch_bytes: args.max_batch_bytes,
        log_file_bytes: args.log_file_bytes,
        default_retention_secs: args.default_retention_secs,
        min_free_bytes: args.min_free_bytes,
    })
    .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;

    let grpc = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding gRPC address {}", args.listen))?;
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics address {}", args.metrics_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_addr = metrics.local_addr()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let coalescer = tokio::spawn(materializer::run(
        Arc::clone(&node),
        MaterializerConfig {
            interval: Duration::from_millis(args.coalesce_interval_ms),
            gc_interval: Duration::from_millis(args.gc_interval_ms),
        },
        stop_rx,
    ));
    let scraped = Arc::clone(&node);
    tokio::spawn(logdb_common::metrics_http::serve(metrics, move || {
        scraped.metrics.render(&scraped)
    }));

    // Leave room above the batch limit so an oversized batch gets our clear error, not the
    // transport's.
    let max_message = args
        .max_batch_bytes
        .saturating_mul(2)
        .saturating_add(RECORD_OVERHEAD << 16);
    let svc = StorageServiceServer::new(StorageSvc::new(Arc::clone(&node)))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(64 << 20);
    if !args.config_store.is_empty() {
        let me = logdb_storage::registration::Registration {
            node_id: args.node_id.clone(),
            zone: args.zone.clone(),
            address: args
                .advertise
                .clone()
                .unwrap_or_else(|| grpc_addr.to_string()),
            capacity_bytes: args.capacity_bytes,
            interval: Duration::from_secs(2),
            pool: args.pool.clone(),
        };
        let client = logdb_config_store::client::ConfigClient::new(args.config_store.clone());
        tokio::spawn(logdb_storage::registration::run(client, me));
    }
    println!(
        "{}",
        serde_json::json!({"event": "listening", "grpc": grpc_addr.to_string(), "metrics": metrics_addr.to_string(), "node_id": args.node_id, "zone": args.zone})
    );
    tracing::info!(%grpc_addr, %metrics_addr, node_id = %args.node_id, zone = %args.zone, "storage node serving");

    let shutdown = logdb_common::shutdown::signal();
    let incoming = logdb_common::grpc_listener::incoming(grpc);
    transport
        .server()
        .context("TLS for the gRPC port")?
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server")?;
    let _ = stop_tx.send(true);
    let _ = coalescer.await;
    node.close();
    Ok(())
}
