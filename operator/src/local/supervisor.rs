//! `logdb up`: brings a local volume up (config store in-process, six storage processes, the
//! writer), answers `status`/`node`/`down` on its control endpoint, restarts a process that
//! crashed (as Kubernetes would restart its pod) unless the user stopped it, and on Ctrl-C,
//! SIGTERM or `logdb down` stops everything in order: writer first, then storage, then the config
//! store. Running it again on the same data dir resumes the same volume.
//!
//! No port is picked for a child: each binds its own listeners on port 0 and announces them, and
//! `logdb up` learns every address from those announcements and from the config store's
//! registry (a storage node is its id and data dir; it registers wherever it lands, and the
//! writer and replicas follow). Only the two user-facing endpoints have fixed ports, and they
//! are bound before any child starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logdb_config_store::command::Command;
use logdb_config_store::member::{Member, MemberError};
use logdb_config_store::state::ConfigError;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

use super::binaries::Binaries;
use super::child::Child;
use super::control::{self, Reply, Request};
use super::credentials::{psql_url, LocalCredentials};
use super::endpoint::{self, Endpoint};
use super::state::{bind_port, DirLock, LocalState, Runtime, DEFAULT_PG_PORT};
use super::status::{self, LocalStatus, NodeStatus, ReplicaStatus, WriterStatus};
use super::LocalError;
use crate::manifest;
use crate::spec::{LogVolume, Target};

/// The config store member id of the in-process member.
const CONFIG_MEMBER: u64 = 1;
/// The compute node that starts as the writer of a new volume.
const FIRST_WRITER: &str = "compute-0";
/// How long a failover may take before `logdb failover` gives up waiting.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the storage nodes have to register before the volume is placed on them.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// A crashed process is started again after this pause.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// How long a started storage node has to register its address with the config store.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct UpOptions {
    pub data_dir: PathBuf,
    /// The LogVolume manifest; `None`: resume the data dir's volume, or the built-in default.
    pub manifest: Option<PathBuf>,
    /// The writer's PostgreSQL port for a new volume (default 5433, 0 = any free port).
    pub port: Option<u16>,
    pub bin_dir: Option<PathBuf>,
    /// Print JSON lines instead of text.
    pub json: bool,
    /// No TLS and no password: every local client is trusted.
    pub insecure: bool,
}

enum Slot {
    Running(Box<Child>),
    /// Being started (by a restart or `node start`).
    Starting,
    /// Stopped by `logdb node stop`; stays down.
    Stopped,
    /// Ended on its own at this time; restarted after a pause.
    Exited(String, Instant),
}

impl Slot {
    fn describe(&self) -> String {
        match self {
            Slot::Running(_) => "running".into(),
            Slot::Starting => "starting".into(),
            Slot::Stopped => "stopped".into(),
            Slot::Exited(how, _) => format!("exited ({how})"),
        }
    }
}

struct Supervisor {
    dir: PathBuf,
    state: LocalState,
    bins: Binaries,
    member: Member,
    /// Storage nodes and compute nodes by id.
    slots: Mutex<BTreeMap<String, Slot>>,
    down: Notify,
    json: bool,
    /// The CA, certificate and password of the PostgreSQL ports; `None` with `--insecure`.
    creds: Option<LocalCredentials>,
}

/// Runs `logdb up` until Ctrl-C, SIGTERM or `logdb down`.
pub async fn up(opts: UpOptions) -> Result<(), LocalError> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(LocalError::io(format!("creating {}", dir.display())))?;
    let _lock = DirLock::acquire(dir)?;
    let mut state = prepare_state(&opts)?;
    let endpoints = bind_endpoints(&mut state)?;
    state.save(dir)?;
    let bins = Binaries::find(opts.bin_dir.as_deref())?;
    let creds = if opts.insecure {
        None
    } else {
        Some(LocalCredentials::prepare(dir, &state.volume)?)
    };
    // This process runs the config store and asks the storage nodes for their state: it speaks
    // to the other parts as the config store member.
    let transport = match &creds {
        Some(c) => c.config_transport()?,
        None => logdb_common::peer_tls::Transport::Plaintext,
    };
    logdb_common::peer_tls::install(transport).map_err(|e| LocalError::Refused(e.to_string()))?;
    let control = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LocalError::io("binding the control endpoint"))?;

    let member = start_config_store(dir).await?;
    let config_line = format!(
        "  config store {} (in-process, raft data in {})",
        member.addr,
        dir.join("config").display()
    );
    let sup = Arc::new(Supervisor {
        dir: dir.clone(),
        state,
        bins,
        member,
        slots: Mutex::new(BTreeMap::new()),
        down: Notify::new(),
        json: opts.json,
        creds,
    });
    sup.say(
        "starting",
        &format!(
            "volume {} ({} B pages, {} segments, zones {}), data in {}",
            sup.state.volume,
            sup.state.spec.page_size,
            sup.state.spec.segment_size.0,
            sup.state.spec.zones.join(" "),
            dir.display()
        ),
    );
    sup.say("started", &config_line);
    let result = sup.clone().run(control, endpoints).await;
    sup.shutdown().await;
    let _ = std::fs::remove_file(Runtime::path(dir));
    // The last request handlers may still hold the supervisor for a moment.
    let mut sup = sup;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(sup) {
            Ok(s) => {
                s.member.stop().await;
                break;
            }
            Err(_) if Instant::now() > deadline => {
                tracing::warn!("config store not stopped cleanly (its log is durable)");
                break;
            }
            Err(again) => {
                sup = again;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    result
}

/// Waits until the `logdb up` on `dir` has ended (its data dir lock is free).
pub async fn wait_stopped(dir: &Path, timeout: Duration) -> Result<(), LocalError> {
    let deadline = Instant::now() + timeout;
    loop {
        if DirLock::acquire(dir).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LocalError::Refused(format!(
                "`logdb up` on {} has not stopped after {timeout:?}",
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state of the data dir's volume: resumed, or created from the manifest (or the default).
fn prepare_state(opts: &UpOptions) -> Result<LocalState, LocalError> {
    let dir = &opts.data_dir;
    let manifest: Option<LogVolume> = match &opts.manifest {
        Some(path) => Some(
            manifest::load(path, Target::Local).map_err(|e| LocalError::Refused(e.to_string()))?,
        ),
        None => None,
    };
    match (LocalState::load(dir)?, manifest) {
        (Some(mut state), Some(m)) => {
            let name = m.metadata.name.clone().unwrap_or_default();
            state.check_same_volume(dir, &name, &m.spec)?;
            if opts.port.is_some_and(|p| p != state.rw_port) {
                return Err(LocalError::Refused(format!(
                    "--port: volume {:?} serves on port {}; the port is chosen on the first run only",
                    state.volume, state.rw_port
                )));
            }
            state.spec = m.spec;
            state.ensure_computes();
            Ok(state)
        }
        (Some(state), None) => Ok(state),
        (None, m) => {
            let m = match m {
                Some(m) => m,
                None => manifest::parse(
                    manifest::LOCAL_DEFAULT,
                    "the built-in default",
                    Target::Local,
                )
                .map_err(|e| LocalError::Refused(e.to_string()))?,
            };
            let name = m.metadata.name.clone().unwrap_or_default();
            LocalState::new(&name, &m.spec, opts.port.unwrap_or(DEFAULT_PG_PORT))
        }
    }
}

/// Binds the two user-facing endpoints before any child starts, so no child can take them and
/// they never take each other's port (port 0: any free port, remembered from now on).
fn bind_endpoints(state: &mut LocalState) -> Result<[TcpListener; 2], LocalError> {
    let mut bound = Vec::new();
    for (port, who) in [
        (&mut state.rw_port, "the read-write PostgreSQL endpoint"),
        (&mut state.ro_port, "the read-only PostgreSQL endpoint"),
    ] {
        let l = bind_port(*port, who)?;
        let io = |e| LocalError::io(format!("binding {who}"))(e);
        *port = l.local_addr().map_err(io)?.port();
        l.set_nonblocking(true).map_err(io)?;
        bound.push(TcpListener::from_std(l).map_err(io)?);
    }
    let ro = bound.pop().expect("two");
    let rw = bound.pop().expect("two");
    Ok([rw, ro])
}

async fn start_config_store(dir: &Path) -> Result<Member, LocalError> {
    // In-process and alone in its group: the children learn its address from their arguments,
    // so it listens anywhere; nobody dials the address raft remembers for it.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LocalError::io("binding the config store"))?;
    let member = Member::start(CONFIG_MEMBER, &dir.join("config"), listener)
        .await
        .map_err(|e| LocalError::Refused(e.to_string()))?;
    if !member.raft.is_initialized().await.unwrap_or(false) {
        member
            .initialize(&BTreeMap::from([(CONFIG_MEMBER, member.addr.clone())]))
            .await
            .map_err(|e| LocalError::Refused(format!("forming the config store: {e}")))?;
    }
    Ok(member)
}

impl Supervisor {
    async fn run(
        self: Arc<Self>,
        control: TcpListener,
        endpoints: [TcpListener; 2],
    ) -> Result<(), LocalError> {
        for node in &self.state.nodes {
            self.start(&node.id).await?;
        }
        self.ensure_volume().await?;
        let mut background = Vec::new();
        // The first compute node becomes the writer of a new volume; the config store names
        // the writer after that, and every compute node asks it.
        let writer = self
            .member
            .state()
            .await
            .volumes
            .get(&self.state.volume)
            .and_then(|v| v.writer.clone())
            .unwrap_or_else(|| FIRST_WRITER.to_string());
        self.start(&writer).await?;
        for c in &self.state.computes {
            if c.id != writer {
                self.start(&c.id).await?;
            }
        }
        for (listener, endpoint) in endpoints
            .into_iter()
            .zip([Endpoint::ReadWrite, Endpoint::ReadOnly])
        {
            let sup = self.clone();
            let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            background.push(tokio::spawn(endpoint::serve(listener, move || {
                let (sup, turn) = (sup.clone(), Arc::clone(&turn));
                async move { endpoint::target(&sup.member, &sup.state.volume, endpoint, &turn).await }
            })));
        }
        Runtime {
            pid: std::process::id(),
            control: control
                .local_addr()
                .map_err(LocalError::io("control endpoint"))?,
        }
        .save(&self.dir)?;
        self.ready().await;

        let serve = {
            let sup = self.clone();
            tokio::spawn(async move {
                while let Ok((sock, _)) = control.accept().await {
                    let sup = sup.clone();
                    tokio::spawn(async move {
                        control::serve_one(sock, |req| sup.handle(req)).await;
                    });
                }
            })
        };
        let watch = tokio::spawn(self.clone().watch());
        tokio::select! {
            _ = logdb_common::shutdown::signal() => {}
            _ = self.down.notified() => {}
        }
        background.push(serve);
        background.push(watch);
        for task in &background {
            task.abort();
        }
        for task in background {
            let _ = task.await;
        }
        Ok(())
    }

    /// Prints a line for the user (or a JSON event).
    fn say(&self, event: &str, text: &str) {
        if self.json {
            println!("{}", serde_json::json!({"event": event, "message": text}));
        } else {
            println!("{text}");
        }
    }

    async fn ready(&self) {
        let st = self.status().await;
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "ready", "volume": st.volume, "psql": st.writer.psql, "read_only_psql": st.read_only_psql, "writer": st.writer.id, "epoch": st.epoch, "data_dir": st.data_dir})
            );
        } else {
            println!("ready: psql '{}'", st.writer.psql);
            if !st.replicas.is_empty() {
                println!("read-only (replicas): psql '{}'", st.read_only_psql);
            }
            println!("`logdb status` shows the volume; Ctrl-C or `logdb down` stops it.");
        }
    }

    fn node_args(&self, id: &str) -> Result<(String, PathBuf, Vec<String>), LocalError> {
        let s = &self.state;
        let any = "127.0.0.1:0";
        if let Some(c) = s.computes.iter().find(|c| c.id == id) {
            let args = [
                "--config-store",
                &self.member.addr,
                "--volume",
                &s.volume,
                "--writer-id",
                &c.id,
                "--role",
                "auto",
                "--listen",
                any,
                "--metrics-listen",
                any,
                "--replication-listen",
                any,
            ];
            let mut args = args.map(String::from).to_vec();
            match &self.creds {
                Some(creds) => args.extend(creds.compute_args()),
                None => args.extend(["--auth", "trust", "--insecure"].map(String::from)),
            }
            return Ok((c.id.clone(), self.bins.compute.clone(), args));
        }
        let n = s.node(id)?;
        let retention = s
            .spec
            .volume_spec(Target::Local)
            .map(|v| v.retention_secs)
            .map_err(LocalError::Refused)?;
        let data = self.dir.join("storage").join(&n.id);
        let args = [
            "--listen",
            any,
            "--metrics-listen",
            any,
            "--data-dir",
            &data.display().to_string(),
            "--node-id",
            &n.id,
            "--zone",
            &n.zone,
            "--config-store",
            &self.member.addr,
            "--default-retention-secs",
            &retention.to_string(),
        ];
        let mut args = args.map(String::from).to_vec();
        match &self.creds {
            Some(creds) => args.extend(creds.peer_args(logdb_common::peer_tls::Role::Storage)),
            None => args.push("--insecure".into()),
        }
        Ok((
            format!("storage node {id}"),
            self.bins.storage.clone(),
            args,
        ))
    }

    /// Starts the process `id` (a node id or the writer) and records it; its slot must not be
    /// running.
    async fn start(&self, id: &str) -> Result<(), LocalError> {
        let (name, bin, args) = self.node_args(id)?;
        {
            let mut slots = self.slots.lock().await;
            match slots.get(id) {
                Some(Slot::Running(_)) | Some(Slot::Starting) => {
                    return Err(LocalError::Refused(format!("{name} is already running")))
                }
                _ => {}
            }
            slots.insert(id.to_string(), Slot::Starting);
        }
        let log = self.dir.join("logs").join(format!("{id}.log"));
        let started = match Child::spawn(&name, &bin, &args, &log).await {
            Ok(child) if id.starts_with("compute-") => Ok(child),
            // A storage node counts as started once the config store knows where it is: only
            // then can the writer and the replicas find it.
            Ok(child) => match self.await_registered(id, &child).await {
                Ok(()) => Ok(child),
                Err(e) => {
                    child.stop().await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match started {
            Ok(child) => {
                let a = child.announcement();
                let line = if id.starts_with("compute-") {
                    format!(
                        "  {id} {:<8} {}  epoch {}  log {}",
                        a["role"].as_str().unwrap_or("?"),
                        a["pg"].as_str().unwrap_or("?"),
                        a["epoch"],
                        log.display()
                    )
                } else {
                    let n = self.state.node(id)?;
                    format!(
                        "  storage {:<3} {:<8} {}  log {}",
                        id,
                        n.zone,
                        a["grpc"].as_str().unwrap_or("?"),
                        log.display()
                    )
                };
                self.say("started", &line);
                self.slots
                    .lock()
                    .await
                    .insert(id.to_string(), Slot::Running(Box::new(child)));
                Ok(())
            }
            Err(e) => {
                self.slots
                    .lock()
                    .await
                    .insert(id.to_string(), Slot::Exited(e.to_string(), Instant::now()));
                Err(e)
            }
        }
    }

    /// Waits until the config store has storage node `id` at the address `child` announced.
    async fn await_registered(&self, id: &str, child: &Child) -> Result<(), LocalError> {
        let address = child.announced("grpc").ok_or_else(|| {
            LocalError::Refused(format!(
                "storage node {id} announced no gRPC address; its log is {}",
                child.log.display()
            ))
        })?;
        let deadline = Instant::now() + REGISTER_TIMEOUT;
        let mut changes = self.member.subscribe();
        loop {
            let known = self
                .member
                .state()
                .await
                .nodes
                .get(id)
                .map(|n| n.address.clone());
            if known.as_deref() == Some(address.as_str()) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LocalError::Refused(format!(
                    "storage node {id} serves on {address} but has not registered with the config store after {REGISTER_TIMEOUT:?}; its log is {}",
                    child.log.display()
                )));
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(200)), changes.changed()).await;
        }
    }

    /// The field `key` of the latest announcement of running process `id`.
    async fn announced(&self, id: &str, key: &str) -> Option<String> {
        match self.slots.lock().await.get(id) {
            Some(Slot::Running(c)) => c.announced(key),
            _ => None,
        }
    }

    /// Stops the process `id` and keeps it down.
    async fn stop(&self, id: &str) -> Result<(), LocalError> {
        let child = {
            let mut slots = self.slots.lock().await;
            match slots.insert(id.to_string(), Slot::Stopped) {
                Some(Slot::Running(c)) => *c,
                Some(Slot::Starting) => {
                    slots.insert(id.to_string(), Slot::Starting);
                    return Err(LocalError::Refused(format!(
                        "{id} is starting; try again in a moment"
                    )));
                }
                Some(Slot::Stopped) => {
                    return Err(LocalError::Refused(format!(
                        "storage node {id} is already stopped"
                    )))
                }
                // Exited on its own: it stays down now instead of being restarted.
                _ => return Ok(()),
            }
        };
        child.stop().await;
        self.say("stopped", &format!("  storage {id} stopped"));
        Ok(())
    }

    /// Creates the volume in the config store unless it exists, once the storage nodes have
    /// registered.
    async fn ensure_volume(&self) -> Result<(), LocalError> {
        let name = &self.state.volume;
        if self.member.state().await.volumes.contains_key(name) {
            return Ok(());
        }
        let spec = self
            .state
            .spec
            .volume_spec(Target::Local)
            .map_err(LocalError::Refused)?;
        let deadline = Instant::now() + PLACEMENT_TIMEOUT;
        loop {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let cmd = Command::CreateVolume {
                name: name.clone(),
                spec: spec.clone(),
                now_ms,
            };
            let err = match self.member.write(cmd).await {
                Ok(_) | Err(MemberError::Refused(ConfigError::VolumeExists(_))) => return Ok(()),
                Err(e @ MemberError::Refused(ConfigError::Invalid(_))) => {
                    return Err(LocalError::Refused(e.to_string()))
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(LocalError::Refused(format!(
                    "creating volume {name}: {err}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts processes that ended on their own.
    async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut restart = Vec::new();
            {
                let mut slots = self.slots.lock().await;
                for (id, slot) in slots.iter_mut() {
                    if let Slot::Running(child) = slot {
                        if let Some(how) = child.exited() {
                            self.say("exited", &format!("  {id} exited ({how}); restarting it"));
                            *slot = Slot::Exited(how, Instant::now());
                        }
                    }
                    if let Slot::Exited(_, at) = slot {
                        if at.elapsed() >= RESTART_PAUSE {
                            restart.push(id.clone());
                        }
                    }
                }
            }
            for id in restart {
                if let Err(e) = self.start(&id).await {
                    self.say("restart_failed", &format!("  {id}: {e}"));
                }
            }
        }
    }

    async fn handle(&self, req: Request) -> Reply {
        let done = |message: String| Reply::Done { message };
        let result = match req {
            Request::Status => return Reply::Status(Box::new(self.status().await)),
            Request::NodeStop { node } => match self.state.node(&node) {
                Ok(_) => self
                    .stop(&node)
                    .await
                    .map(|()| done(format!("storage node {node} stopped"))),
                Err(e) => Err(e),
            },
            Request::NodeStart { node } => match self.state.node(&node) {
                Ok(_) => self
                    .start(&node)
                    .await
                    .map(|()| done(format!("storage node {node} started"))),
                Err(e) => Err(e),
            },
            Request::Failover { target } => self.failover(target).await.map(done),
            Request::Down => {
                self.down.notify_one();
                Ok(done(format!("volume {} is stopping", self.state.volume)))
            }
        };
        result.unwrap_or_else(|e| Reply::Error {
            message: e.to_string(),
        })
    }

    async fn status(&self) -> LocalStatus {
        let s = &self.state;
        let config = self.member.state().await;
        let volume = config.volumes.get(&s.volume).cloned();
        // Where each process listens: its own announcement while it runs, else (a storage node)
        // where the config store last saw it.
        let mut announced: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let processes: BTreeMap<String, String> = {
            let slots = self.slots.lock().await;
            for (id, slot) in slots.iter() {
                if let Slot::Running(c) = slot {
                    announced.insert(id.clone(), c.announcement());
                }
            }
            slots
                .iter()
                .map(|(id, slot)| (id.clone(), slot.describe()))
                .collect()
        };
        let field = |id: &str, key: &str| {
            announced
                .get(id)
                .and_then(|a| a[key].as_str())
                .map(str::to_string)
        };
        let asks = s.nodes.iter().map(|n| {
            let segments: Vec<(u32, String)> = volume
                .iter()
                .flat_map(|v| v.pgs.iter())
                .flat_map(|pg| {
                    pg.members
                        .iter()
                        .filter(|m| m.node_id == n.id)
                        .map(move |m| (pg.index, pg.segment_name(m).into_string()))
                })
                .collect();
            let address = field(&n.id, "grpc")
                .or_else(|| config.nodes.get(&n.id).map(|r| r.address.clone()))
                .unwrap_or_else(|| "-".into());
            async move {
                let states = status::segment_states(&address, &s.volume, &segments).await;
                (address, states)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let nodes: Vec<NodeStatus> = s
            .nodes
            .iter()
            .zip(answers)
            .map(|(n, (address, states))| NodeStatus {
                id: n.id.clone(),
                zone: n.zone.clone(),
                address,
                process: processes
                    .get(&n.id)
                    .cloned()
                    .unwrap_or_else(|| "not started".into()),
                healthy: states.is_some(),
                segments: states.unwrap_or_default(),
            })
            .collect();
        let writer_id = volume
            .as_ref()
            .and_then(|v| v.writer.clone())
            .unwrap_or_else(|| FIRST_WRITER.to_string());
        let scrapes = futures::future::join_all(s.computes.iter().map(|c| {
            let metrics = field(&c.id, "metrics");
            async move {
                match metrics {
                    Some(m) => logdb_common::metrics_http::scrape(&m).await,
                    None => String::new(),
                }
            }
        }))
        .await;
        let process = |id: &str| {
            processes
                .get(id)
                .cloned()
                .unwrap_or_else(|| "not started".into())
        };
        let gauge = |text: &str, name: &str| {
            (!text.is_empty()).then(|| logdb_common::metrics_http::sum(text, name) as u64)
        };
        let rw_psql = psql_url(s.rw_port, &s.volume, self.creds.as_ref());
        let mut writer = None;
        let mut replicas = Vec::new();
        for (c, text) in s.computes.iter().zip(&scrapes) {
            let address = field(&c.id, "pg").unwrap_or_else(|| "-".into());
            let metrics = field(&c.id, "metrics");
            if c.id == writer_id {
                writer = Some(WriterStatus {
                    id: c.id.clone(),
                    address,
                    metrics,
                    psql: rw_psql.clone(),
                    process: process(&c.id),
                    vdl: gauge(text, "logdb_compute_vdl "),
                });
            } else {
                let lag = logdb_common::metrics_http::histogram_mean(
                    "",
                    text,
                    "logdb_compute_replica_lag_seconds",
                );
                replicas.push(ReplicaStatus {
                    id: c.id.clone(),
                    address,
                    metrics,
                    process: process(&c.id),
                    read_point: gauge(text, "logdb_compute_read_point "),
                    mean_lag_ms: lag.map(|s| s * 1000.0),
                });
            }
        }
        let writer = writer.unwrap_or_else(|| WriterStatus {
            id: writer_id.clone(),
            address: "-".into(),
            metrics: None,
            psql: rw_psql.clone(),
            process: "not a local compute node".into(),
            vdl: None,
        });
        let healthy_nodes = nodes.iter().filter(|n| n.healthy).count();
        LocalStatus {
            volume: s.volume.clone(),
            data_dir: self.dir.display().to_string(),
            config_store: self.member.addr.clone(),
            phase: status::phase(writer.process == "running", healthy_nodes).into(),
            epoch: volume.as_ref().map_or(0, |v| v.epoch.0),
            writer,
            read_only_psql: psql_url(s.ro_port, &s.volume, self.creds.as_ref()),
            replicas,
            protection_groups: volume.as_ref().map_or(0, |v| v.pgs.len() as u32),
            used_bytes: volume.as_ref().map_or(0, |v| v.used_bytes),
            allocated_bytes: volume.as_ref().map_or(0, |v| v.allocated_bytes()),
            healthy_nodes,
            nodes,
        }
    }

    /// Makes `target` (or any replica) the writer and waits until it serves as one.
    async fn failover(&self, target: Option<String>) -> Result<String, LocalError> {
        let started = Instant::now();
        let cmd = Command::Failover {
            volume: self.state.volume.clone(),
            target,
        };
        let v = match self.member.write(cmd).await {
            Ok(logdb_config_store::command::Response::Ticket { volume, .. }) => volume,
            Ok(other) => return Err(LocalError::Refused(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(LocalError::Refused(e.to_string())),
        };
        let new = v.writer.clone().unwrap_or_default();
        if !self.state.computes.iter().any(|c| c.id == new) {
            return Err(LocalError::Refused(format!(
                "{new} is not a local compute node"
            )));
        }
        loop {
            // Read each time: the new writer restarts in place on new ports.
            let text = match self.announced(&new, "metrics").await {
                Some(metrics) => logdb_common::metrics_http::scrape(&metrics).await,
                None => String::new(),
            };
            if logdb_common::metrics_http::sum(&text, "logdb_compute_writer ") == 1.0 {
                break;
            }
            if started.elapsed() > FAILOVER_TIMEOUT {
                return Err(LocalError::Refused(format!(
                    "{new} was named the writer but does not serve as one after {FAILOVER_TIMEOUT:?}; see its log"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let epoch = self
            .member
            .state()
            .await
            .volumes
            .get(&self.state.volume)
            .map_or(0, |v| v.epoch.0);
        let msg = format!(
            "{new} is the writer (epoch {epoch}) after {} ms",
            started.elapsed().as_millis()
        );
        self.say("failover", &format!("  failover: {msg}"));
        Ok(msg)
    }

    /// Compute nodes first (their clients get a clean end), then every storage node.
    async fn shutdown(&self) {
        self.say(
            "stopping",
            &format!("stopping volume {}", self.state.volume),
        );
        let take = |slots: &mut BTreeMap<String, Slot>, compute: bool| -> Vec<Child> {
            let ids: Vec<String> = slots
                .keys()
                .filter(|id| id.starts_with("compute-") == compute)
                .cloned()
                .collect();
            ids.into_iter()
                .filter_map(|id| match slots.remove(&id) {
                    Some(Slot::Running(c)) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let computes = take(&mut *self.slots.lock().await, true);
        futures::future::join_all(computes.into_iter().map(Child::stop)).await;
        let nodes = take(&mut *self.slots.lock().await, false);
        futures::future::join_all(nodes.into_iter().map(Child::stop)).await;
        self.say("stopped", "stopped");
    }
}
