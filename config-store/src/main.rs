//! `logdb-config`: one config store member, standalone (the operator and `logdb up` embed the
//! same member). Prints one JSON line with its address; form a group with the Initialize call.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use logdb_config_store::member::Member;

#[derive(Parser, Debug)]
#[command(name = "logdb-config", about = "logdb config store member (raft)")]
struct Args {
    /// This member's raft id (1, 2, 3, ...).
    #[arg(long)]
    id: u64,
    /// Address for raft traffic and the client API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Directory of the raft log.
    #[arg(long)]
    data_dir: PathBuf,
    /// Form a new group of these members (`1=host:port,2=host:port,...`; this member included).
    /// Ignored when the group already exists.
    #[arg(long, value_delimiter = ',')]
    init: Vec<String>,
    #[command(flatten)]
    peer_tls: logdb_common::peer_tls::PeerTlsArgs,
    /// Speak plaintext and serve anyone who reaches the port (no certificates): for a
    /// throwaway test only.
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logdb_common::logging::init();
    let args = Args::parse();
    logdb_common::peer_tls::install(args.peer_tls.transport(args.insecure)?)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let member = Member::start(args.id, &args.data_dir, listener).await?;
    if !args.init.is_empty() {
        let mut members = std::collections::BTreeMap::new();
        for m in &args.init {
            let (id, addr) = m
                .split_once('=')
                .with_context(|| format!("--init {m:?}: expected id=host:port"))?;
            let id: u64 = id
                .parse()
                .with_context(|| format!("--init {m:?}: id is not a number"))?;
            members.insert(id, addr.to_string());
        }
        if let Err(e) = member.initialize(&members).await {
            tracing::info!(error = %e, "not initializing (the group exists already)");
        }
    }
    println!(
        "{}",
        serde_json::json!({"event": "listening", "id": args.id, "addr": member.addr})
    );
    tracing::info!(id = args.id, addr = %member.addr, "config store member serving");
    logdb_common::shutdown::signal().await;
    member.stop().await;
    Ok(())
}
