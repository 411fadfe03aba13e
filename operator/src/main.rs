//! `logdb`: run a volume on this machine (`up`, `status`, `node`, `failover`, `down`).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use logdb_operator::local::control::{self, Reply, Request};
use logdb_operator::local::supervisor::{self, UpOptions};

#[derive(Parser, Debug)]
#[command(
    name = "logdb",
    about = "logdb: a cloud-native SQL database in which the log is the database",
    version
)]
struct Cli {
    /// Where the local volume keeps its data, logs and state.
    #[arg(long, global = true, env = "LOGDB_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a volume on this machine: config store, six storage nodes in three pretend zones and
    /// the writer, on loopback. Resumes the data dir's volume when there is one.
    Up {
        /// A LogVolume manifest (the YAML you would `kubectl apply`); default: examples/local.yaml.
        file: Option<PathBuf>,
        /// The writer's PostgreSQL port for a new volume (0: any free port).
        #[arg(long)]
        port: Option<u16>,
        /// Where logdb-storage and logdb-compute are (default: beside `logdb`, then PATH).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Serve the PostgreSQL ports in plaintext and trust every client (no password). By
        /// default they speak TLS with a certificate from a CA made in the data dir, and the
        /// `logdb` user's password is in the data dir's pgpass file.
        #[arg(long)]
        insecure: bool,
    },
    /// Show the running volume: epoch, writer, VDL, storage nodes with zone, health and SCL.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make a replica the writer: new epoch, recovery by quorum, no acknowledged commit lost.
    /// The read-write endpoint follows.
    Failover {
        /// The replica to promote (e.g. compute-1); default: any replica.
        #[arg(long)]
        to: Option<String>,
    },
    /// Stop the running volume (like Ctrl-C in the terminal of `logdb up`).
    Down,
    /// Print the LogVolume CustomResourceDefinition (what crds/logvolume.yaml holds).
    Crd,
    /// Run as one pod of the operator's StatefulSet: a config store member, and the LogVolume
    /// controller while this member leads.
    Operator {
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "0.0.0.0:9400")]
        metrics_listen: std::net::SocketAddr,
        #[arg(long, env = "POD_NAME")]
        pod_name: String,
        /// The StatefulSet's headless Service.
        #[arg(long)]
        service: String,
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// Pods in the StatefulSet (config store members).
        #[arg(long, default_value_t = 3)]
        members: u32,
        /// The image of storage and compute pods.
        #[arg(long)]
        image: String,
        #[arg(long)]
        storage_class: Option<String>,
        /// Manage LogVolumes of these namespaces only (comma-separated); default: every
        /// namespace.
        #[arg(long, value_delimiter = ',')]
        watch_namespaces: Vec<String>,
    },
    /// Print the Kubernetes objects the operator makes of a LogVolume manifest.
    Render {
        file: PathBuf,
        /// Protection groups (pods per storage StatefulSet).
        #[arg(long, default_value_t = 1)]
        pgs: u32,
        #[arg(long, default_value = "ghcr.io/logdb/logdb:0.1.0")]
        image: String,
        /// Config store members the pods register with.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "logdb-operator-0.logdb-operator.logdb-system.svc:7400"
        )]
        config_store: Vec<String>,
        /// The namespace the operator runs in (its pods may reach the volume's pods).
        #[arg(long, default_value = "logdb-system")]
        operator_namespace: String,
    },
    /// Stop or start one storage node, to watch the quorum at work.
    Node {
        #[arg(value_enum)]
        action: NodeAction,
        /// Node id: a1 a2 b1 b2 c1 c2.
        node: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NodeAction {
    Stop,
    Start,
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/logdb"),
        None => PathBuf::from(".logdb"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    logdb_common::logging::init_with_default("warn");
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logdb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.data_dir;
    match cli.command {
        Cmd::Up {
            file,
            port,
            bin_dir,
            output,
            insecure,
        } => {
            supervisor::up(UpOptions {
                data_dir: dir,
                manifest: file,
                port,
                bin_dir,
                json: matches!(output, Output::Json),
                insecure,
            })
            .await?;
        }
        Cmd::Status { output } => match control::request(&dir, &Request::Status).await? {
            Reply::Status(s) => match output {
                Output::Text => print!("{}", s.table()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            },
            other => bail!("unexpected answer: {other:?}"),
        },
        Cmd::Failover { to } => {
            done(control::request(&dir, &Request::Failover { target: to }).await?)?
        }
        Cmd::Crd => print!("{}", logdb_operator::crd::yaml()),
        Cmd::Operator {
            listen,
            metrics_listen,
            pod_name,
            service,
            namespace,
            members,
            image,
            storage_class,
            watch_namespaces,
        } => {
            logdb_operator::operator_mode::run(logdb_operator::operator_mode::OperatorOptions {
                listen,
                metrics_listen,
                data_dir: dir,
                pod_name,
                service,
                namespace,
                members,
                image,
                storage_class,
                watch_namespaces,
            })
            .await?
        }
        Cmd::Render {
            file,
            pgs,
            image,
            config_store,
            operator_namespace,
        } => {
            let lv =
                logdb_operator::manifest::load(&file, logdb_operator::spec::Target::Kubernetes)?;
            let settings = logdb_operator::objects::Settings {
                image,
                config_store,
                storage_class: None,
                operator_namespace,
            };
            let desired = logdb_operator::objects::desired(&lv, &settings, pgs)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            print!("{}", desired.to_yaml());
        }
        Cmd::Down => {
            done(control::request(&dir, &Request::Down).await?)?;
            supervisor::wait_stopped(&dir, std::time::Duration::from_secs(60)).await?;
            println!("stopped");
        }
        Cmd::Node { action, node } => {
            let req = match action {
                NodeAction::Stop => Request::NodeStop { node },
                NodeAction::Start => Request::NodeStart { node },
            };
            done(control::request(&dir, &req).await?)?
        }
    }
    Ok(())
}

fn done(reply: Reply) -> anyhow::Result<()> {
    match reply {
        Reply::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Reply::Error { message } => bail!("{message}"),
        Reply::Status(_) => bail!("unexpected answer"),
    }
}
