//! `logdb-compute`: a compute node — the writer (opens the volume: new epoch, recovery by quorum,
//! then ships redo and serves the record feed) or a read replica (follows the writer's feed).
//! With `--role auto` the config store decides, and the process re-executes itself when that
//! changes (a failover promotes a replica; the old writer comes back as a replica). Serves
//! PostgreSQL clients either way. Prints one JSON line with its addresses on stdout once it
//! serves; logs with tracing on stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use logdb_compute::layout::Layout;
use logdb_compute::metrics::ComputeMetrics;
use logdb_compute::pg_auth::{Method, PgAuth, TlsFiles, Users};
use logdb_compute::pg_server::{self, ServerContext};
use logdb_compute::replica::Replica;
use logdb_compute::shipper::{Shipper, ShipperConfig};
use logdb_compute::vfs::Engine;
use logdb_config_store::api::proto::{RegisterComputeRequest, VolumeRef};
use logdb_config_store::client::ConfigClient;
use logdb_types::Epoch;
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
    /// How clients authenticate: scram-sha-256 (the default), md5 (older clients), or trust
    /// (everyone is let in; needs --insecure).
    #[arg(long, value_enum, default_value_t = AuthArg::ScramSha256)]
    auth: AuthArg,
    /// The user of --password.
    #[arg(long, env = "LOGDB_USER", default_value = "logdb")]
    user: String,
    /// The password of --user (a Kubernetes Secret gives it as an environment variable).
    #[arg(long, env = "LOGDB_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A file of users: one `name:password` or `name:SCRAM-SHA-256$...` (PostgreSQL's stored
    /// verifier) per line.
    #[arg(long, env = "LOGDB_USERS_FILE")]
    users_file: Option<PathBuf>,
    /// The PostgreSQL port's TLS certificate (PEM, leaf first), with --tls-key.
    #[arg(long, env = "LOGDB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LOGDB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS (PostgreSQL's `hostssl`).
    #[arg(long)]
    require_tls: bool,
    /// Allow what is unsafe on a network: serving plaintext without a certificate, --auth
    /// trust, and plaintext to the other parts without --peer-* certificates.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    peer_tls: logdb_common::peer_tls::PeerTlsArgs,
    /// A replica holds the storage's history from its read point (so GC keeps what it reads)
    /// while that read point is at most this old, in seconds; 0: twice the retention window.
    #[arg(long, default_value_t = 0)]
    max_hold_history_secs: u64,
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
    /// A session idle this long (ms) inside a writing transaction is rolled back and ended with
    /// SQLSTATE 25P03, so it cannot hold every other writer back; 0: never.
    #[arg(long, default_value_t = 60_000)]
    idle_in_transaction_timeout_ms: u64,
    /// Client sessions served at once; one more is refused with SQLSTATE 53300 (PostgreSQL's
    /// max_connections).
    #[arg(long, default_value_t = 100)]
    max_connections: usize,
    /// Largest result a query may gather before sending it, in bytes (a statement inside a
    /// write transaction, or one of several in a string), and the most of a streamed result
    /// that may wait for a client slower than the statement: this bounds a session's memory;
    /// past it the query fails with SQLSTATE 54000.
    #[arg(long, default_value_t = 256 << 20)]
    max_result_bytes: usize,
    /// How long (ms) a transaction waits under back-pressure (--lal) before it is refused.
    #[arg(long, default_value_t = 60_000)]
    backpressure_timeout_ms: u64,
    /// Largest WriteRecords batch sent to one segment, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_batch_bytes: usize,
    /// writer, replica, or auto (with --config-store: the writer if the volume has none or names
    /// this node, else a replica; follows failovers).
    #[arg(long, value_enum, default_value_t = RoleArg::Writer)]
    role: RoleArg,
    /// Where the writer serves its record feed to replicas (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    replication_listen: SocketAddr,
    /// Host name others reach this node by (registered in the config store with its ports);
    /// default: the listen address (set it when listening on 0.0.0.0, e.g. the pod's DNS name).
    #[arg(long)]
    advertise_host: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    #[value(name = "scram-sha-256")]
    ScramSha256,
    Md5,
    Trust,
}

/// The PostgreSQL port's authentication and TLS, checked before anything else starts.
fn pg_auth(args: &Args) -> anyhow::Result<PgAuth> {
    let mut users = match &args.users_file {
        Some(path) => Users::load(path)?,
        None => Users::default(),
    };
    if let Some(p) = &args.password {
        anyhow::ensure!(!p.is_empty(), "--password (LOGDB_PASSWORD) is empty");
        users.add_password(&args.user, p);
    }
    let method = match args.auth {
        AuthArg::ScramSha256 => Method::ScramSha256,
        AuthArg::Md5 => Method::Md5,
        AuthArg::Trust => Method::Trust,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    Ok(PgAuth::new(
        method,
        users,
        tls,
        args.require_tls,
        args.insecure,
    )?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    Writer,
    Replica,
    Auto,
}

/// Starts this program again with the same arguments, in place (same pid): how a compute node
/// changes role. Connections of the old role end; clients reconnect.
fn reexec(why: &str) -> ! {
    use std::os::unix::process::CommandExt;
    tracing::warn!(reason = %why, "changing role: restarting in place");
    let exe = std::env::current_exe().expect("own executable");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    tracing::error!(error = %err, "re-executing failed; exiting");
    std::process::exit(1);
}

async fn register_compute(
    client: &ConfigClient,
    volume: &str,
    id: &str,
    advertise_host: Option<&str>,
    pg: SocketAddr,
    feed: SocketAddr,
) -> anyhow::Result<()> {
    let at = |a: SocketAddr| match advertise_host {
        Some(host) => format!("{host}:{}", a.port()),
        None => a.to_string(),
    };
    let req = RegisterComputeRequest {
        volume: volume.to_string(),
        id: id.to_string(),
        pg_address: at(pg),
        replication_address: at(feed),
    };
    client
        .call(|mut c| {
            let r = req.clone();
            async move { c.register_compute(r).await }
        })
        .await
        .with_context(|| format!("registering compute {id} of volume {volume}"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logdb_common::logging::init();
    let args = Args::parse();
    let auth = Arc::new(pg_auth(&args).context("the PostgreSQL port's authentication")?);
    logdb_common::peer_tls::install(
        args.peer_tls
            .transport(args.insecure)
            .context("the connections to the other parts")?,
    )?;
    let pg = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let feed_listener = TcpListener::bind(args.replication_listen)
        .await
        .with_context(|| format!("binding {}", args.replication_listen))?;
    let pg_addr = pg.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let feed_addr = feed_listener.local_addr()?;
    let metrics = Arc::new(ComputeMetrics::new());
    let rt = tokio::runtime::Handle::current();

    let config = if args.config_store.is_empty() {
        if args.role != RoleArg::Writer {
            anyhow::bail!(
                "--role {:?} needs --config-store (replicas find the writer there)",
                args.role
            );
        }
        None
    } else {
        let name = args
            .volume
            .clone()
            .context("--volume is needed with --config-store")?;
        let client = Arc::new(ConfigClient::new(args.config_store.clone()));
        register_compute(
            &client,
            &name,
            &args.writer_id,
            args.advertise_host.as_deref(),
            pg_addr,
            feed_addr,
        )
        .await?;
        Some((client, name))
    };
    let writer = match (&config, args.role) {
        (_, RoleArg::Writer) => true,
        (_, RoleArg::Replica) => false,
        (Some((client, name)), RoleArg::Auto) => {
            let v = get_volume(client, name).await?;
            v.writer.is_empty() || v.writer == args.writer_id
        }
        (None, RoleArg::Auto) => true,
    };

    let engine = if writer {
        open_writer(&args, config.as_ref(), Arc::clone(&metrics), rt).await?
    } else {
        let (client, name) = config.as_ref().expect("replicas run with a config store");
        let (first, stream) =
            logdb_compute::replication::subscribe_to_writer(client, name, &args.writer_id).await;
        let layout = Layout::from_config(&get_volume(client, name).await?)?;
        let replica = Replica::new(layout, &first, Arc::clone(&metrics));
        tokio::spawn(Arc::clone(&replica).hold_history(
            format!("replica-{}", args.writer_id),
            std::time::Duration::from_secs(args.max_hold_history_secs),
        ));
        let (db, pool, m, r) = (
            format!("/logdb/{name}"),
            args.pool_pages,
            Arc::clone(&metrics),
            Arc::clone(&replica),
        );
        let engine =
            tokio::task::spawn_blocking(move || Engine::register_replica(&db, r, pool, m, rt))
                .await?
                .context("reading the database header from storage")?;
        tokio::spawn(logdb_compute::replication::follow(
            Arc::clone(client),
            name.clone(),
            args.writer_id.clone(),
            Arc::clone(&engine),
            replica,
            stream,
        ));
        engine
    };
    if let Some(shipper) = engine.writer() {
        logdb_compute::replication::serve(feed_listener, Arc::clone(shipper))
            .context("TLS for the record feed's port")?;
        metrics.writer.set(1);
    }
    if let Some((client, volume)) = &config {
        if writer {
            let every = std::time::Duration::from_millis(args.usage_report_ms);
            tokio::spawn(logdb_compute::growth::report_usage(
                Arc::clone(client),
                Arc::clone(&engine),
                volume.clone(),
                every,
            ));
        }
        let (me, auto) = (args.writer_id.clone(), args.role == RoleArg::Auto);
        tokio::spawn(logdb_compute::growth::follow_volume(
            Arc::clone(client),
            Arc::clone(&engine),
            volume.clone(),
            move |v| {
                let named = v.writer == me;
                if writer && !named {
                    if auto {
                        reexec(&format!("the config store made {} the writer", v.writer));
                    }
                    tracing::error!(writer = %v.writer, "the config store names another writer; storage will refuse this one's writes");
                } else if !writer && named && auto {
                    reexec("promoted to writer");
                }
            },
        ));
    }
    let volume = engine
        .writer()
        .map(|w| w.layout().volume.clone())
        .or_else(|| engine.replica().map(|r| r.layout().volume))
        .unwrap_or_default();
    let db_name = format!("/logdb/{volume}");
    let (scraped, scrape_engine) = (Arc::clone(&metrics), Arc::clone(&engine));
    tokio::spawn(logdb_common::metrics_http::serve(
        metrics_listener,
        move || {
            let segments = scrape_engine
                .writer()
                .map(|w| w.segment_status())
                .unwrap_or_default();
            scraped.render_with(&segments)
        },
    ));
    let psql = format!(
        "postgresql://logdb@{}:{}/{volume}",
        pg_addr.ip(),
        pg_addr.port()
    );
    let role = if writer { "writer" } else { "replica" };
    // Whoever started us may have stopped reading stdout: never fail on it.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({"event": "listening", "role": role, "pg": pg_addr.to_string(), "metrics": metrics_addr.to_string(), "replication": feed_addr.to_string(), "epoch": engine.epoch().0, "psql": psql})
    );
    tracing::info!(%pg_addr, %metrics_addr, %feed_addr, role, epoch = %engine.epoch(), "compute node serving; connect with psql {psql}");
    let ctx = Arc::new(ServerContext {
        engine,
        db_name,
        auth,
        cache_pages: args.cache_pages,
        write_turn: Arc::default(),
        connections: Arc::new(tokio::sync::Semaphore::new(args.max_connections)),
        max_connections: args.max_connections,
        max_result_bytes: args.max_result_bytes,
        idle_in_transaction_timeout: (args.idle_in_transaction_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(args.idle_in_transaction_timeout_ms)),
    });
    tokio::select! {
        _ = pg_server::serve(pg, ctx) => {}
        _ = logdb_common::shutdown::signal() => {}
    }
    Ok(())
}

async fn get_volume(
    client: &ConfigClient,
    name: &str,
) -> anyhow::Result<logdb_config_store::api::proto::Volume> {
    client
        .call(|mut c| {
            let name = name.to_string();
            async move { c.get_volume(VolumeRef { name }).await }
        })
        .await
        .with_context(|| format!("volume {name} in the config store"))
}

/// Opens the volume as its writer: a ticket (or --epoch), recovery by quorum, the engine.
async fn open_writer(
    args: &Args,
    config: Option<&(Arc<ConfigClient>, String)>,
    metrics: Arc<ComputeMetrics>,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<Arc<Engine>> {
    let (layout, min_epoch) = match config {
        None => {
            let path = args
                .layout
                .as_ref()
                .context("--layout or --config-store is needed")?;
            (Layout::load(path)?, Epoch(args.epoch))
        }
        Some((client, name)) => {
            let current = get_volume(client, name).await?;
            let ticket = client
                .acquire_ticket(name, &args.writer_id, Epoch(current.epoch))
                .await
                .with_context(|| format!("writer ticket for volume {name}"))?;
            let volume = ticket.volume.context("ticket without a volume")?;
            tracing::info!(volume = %name, epoch = ticket.epoch, "writer ticket from the config store");
            (
                Layout::from_config(&volume)?,
                Epoch(ticket.epoch.max(args.epoch)),
            )
        }
    };
    let volume = layout.volume.clone();
    let cfg = ShipperConfig {
        min_epoch,
        ticket: config.is_some(),
        lal: args.lal,
        max_batch_bytes: args.max_batch_bytes,
        backpressure_timeout: std::time::Duration::from_millis(args.backpressure_timeout_ms),
        ..ShipperConfig::default()
    };
    let shipper = Shipper::open(layout, cfg, Arc::clone(&metrics))
        .await
        .with_context(|| format!("opening volume {volume}"))?;
    let (name, pool) = (format!("/logdb/{volume}"), args.pool_pages);
    let engine =
        tokio::task::spawn_blocking(move || Engine::register(&name, shipper, pool, metrics, rt))
            .await?
            .context("reading the database header from storage")?;
    Ok(engine)
}
