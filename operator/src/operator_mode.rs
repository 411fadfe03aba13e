//! `logdb operator`: one pod of the operator's StatefulSet. It runs a config store member (the
//! pods of the StatefulSet form the raft group: ordinal i is member i+1, ordinal 0 forms the group
//! on first start; one pod works alone), and while this member is the raft leader it runs the
//! LogVolume controller; the others stand by and take over when leadership moves.
//!
//! Every pod speaks mutual TLS with the installation's CA, kept in the Secret
//! `<service>-installation-ca` of the operator's namespace (made by the first pod that finds
//! none; the API server settles a race). A pod issues its own certificate from it at start, for
//! the names of the operator's headless Service, and ends itself (to be restarted with a new
//! one) once less than `pki::RENEW_BEFORE` is left of it, pod i i days after pod 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use logdb_config_store::client::ConfigClient;
use logdb_config_store::member::Member;
use tokio::net::TcpListener;

use crate::controller::{self, Context};
use crate::objects::Settings;
use crate::secrets;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use logdb_common::peer_tls::{self, Role};
use logdb_common::pki::{Ca, Usage, RENEW_BEFORE};

/// How often a member checks whether it leads the config store.
const LEADER_CHECK: Duration = Duration::from_millis(500);

pub struct OperatorOptions {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub pod_name: String,
    /// The headless Service of the operator's StatefulSet.
    pub service: String,
    pub namespace: String,
    /// Pods in the StatefulSet (raft members).
    pub members: u32,
    pub image: String,
    pub storage_class: Option<String>,
    /// The namespaces whose LogVolumes are managed; empty: every namespace.
    pub watch_namespaces: Vec<String>,
}

/// The raft id of a StatefulSet pod: its ordinal plus one.
pub fn member_id(pod_name: &str) -> anyhow::Result<u64> {
    let ordinal: u64 = pod_name
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .with_context(|| format!("pod name {pod_name:?} does not end in a StatefulSet ordinal"))?;
    Ok(ordinal + 1)
}

/// Every member's address, by raft id.
pub fn peers(opts: &OperatorOptions) -> BTreeMap<u64, String> {
    (0..opts.members as u64)
        .map(|i| {
            (
                i + 1,
                format!(
                    "{}-{i}.{}.{}.svc:{}",
                    opts.service,
                    opts.service,
                    opts.namespace,
                    opts.listen.port()
                ),
            )
        })
        .collect()
}

pub async fn run(opts: OperatorOptions) -> anyhow::Result<()> {
    let leader = Arc::new(AtomicBool::new(false));
    let metrics = TcpListener::bind(opts.metrics_listen)
        .await
        .with_context(|| format!("binding {}", opts.metrics_listen))?;
    let flag = Arc::clone(&leader);
    tokio::spawn(logdb_common::metrics_http::serve(metrics, move || {
        format!(
            "# HELP logdb_operator_leader 1 while this pod runs the controller\n# TYPE logdb_operator_leader gauge\nlogdb_operator_leader {}\n",
            flag.load(Ordering::Relaxed) as u8
        )
    }));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let ca = installation_ca(&client, &opts.namespace, &opts.service).await?;
    let names = [
        format!("*.{}.{}.svc", opts.service, opts.namespace),
        format!("*.{}.{}.svc.cluster.local", opts.service, opts.namespace),
    ];
    let own = ca
        .issue(
            &format!("logdb operator {}", opts.pod_name),
            &peer_tls::cert_names(&[Role::Config], peer_tls::Scope::Installation, &names),
            Usage::Peer,
        )
        .context("issuing this pod's certificate")?;
    let identity = peer_tls::Mutual::from_pems(&ca.cert_pem, &own.cert_pem, &own.key_pem)
        .context("this pod's certificate")?;
    peer_tls::install(peer_tls::Transport::Mutual(Arc::new(identity)))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Pods started together would all end at once, taking the config store's quorum with
    // them: pod i renews i days later (still weeks before its certificate runs out).
    let stagger = (member_id(&opts.pod_name)? - 1).min(20) * 86_400;
    let renew_in = own
        .not_after_unix
        .saturating_sub(RENEW_BEFORE.as_secs())
        .saturating_add(stagger)
        .saturating_sub(now);
    let due = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&due);
    let stop = async move {
        tokio::select! {
            _ = logdb_common::shutdown::signal() => {}
            _ = tokio::time::sleep(Duration::from_secs(renew_in)) => flag.store(true, Ordering::Relaxed),
        }
    };
    let peers = peers(&opts);
    run_with(&opts, client, peers, leader, stop).await?;
    anyhow::ensure!(
        !due.load(Ordering::Relaxed),
        "this pod's certificate is due for renewal: exiting so that the pod restarts with a new one"
    );
    Ok(())
}

/// The installation's CA from the operator namespace's Secret, made (and stored) if there is
/// none; of two pods that make one at once, the one stored first wins and both use it.
pub async fn installation_ca(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> anyhow::Result<Ca> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secrets::installation_ca_name(service);
    let installation = format!("{namespace}/{service}");
    if api.get_opt(&name).await?.is_none() {
        let ca = Ca::create(&installation)?;
        let secret = secrets::installation_ca_secret(&name, namespace, &ca.cert_pem, ca.key_pem());
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(e).context(format!("storing the installation's CA as Secret {name}"))
            }
        }
    }
    let stored = api.get(&name).await?;
    let (cert, key) = secrets::ca_of(&stored)
        .with_context(|| format!("Secret {namespace}/{name} has no ca.crt and ca.key"))?;
    Ca::from_pem(&installation, &cert, &key)
        .with_context(|| format!("Secret {namespace}/{name} does not hold a usable CA"))
}

/// The operator on `client`, with the config store group `peers` (raft id → address); `leader`
/// is set while this pod runs the controller. Ends when `stop` does.
pub async fn run_with(
    opts: &OperatorOptions,
    client: kube::Client,
    peers: BTreeMap<u64, String>,
    leader: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let id = member_id(&opts.pod_name)?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let member = Arc::new(Member::start(id, &opts.data_dir.join("config"), listener).await?);
    if id == 1 && !member.raft.is_initialized().await.unwrap_or(false) {
        member
            .initialize(&peers)
            .await
            .context("forming the config store group")?;
        tracing::info!(members = peers.len(), "config store group formed");
    }
    let settings = Settings {
        image: opts.image.clone(),
        config_store: peers.values().cloned().collect(),
        storage_class: opts.storage_class.clone(),
        operator_namespace: opts.namespace.clone(),
    };
    let ca = installation_ca(&client, &opts.namespace, &opts.service).await?;
    let ctx = Arc::new(Context::new(
        client,
        ConfigClient::new(peers.values().cloned().collect()),
        settings,
        &opts.pod_name,
        Arc::new(ca),
    ));
    let work = async {
        loop {
            // Stand by until this member leads the config store.
            while member.leader().await != Some(id) {
                tokio::time::sleep(LEADER_CHECK).await;
            }
            tracing::info!("leading the config store: running the LogVolume controller");
            leader.store(true, Ordering::Relaxed);
            let m = Arc::clone(&member);
            let lost = async move {
                while m.leader().await == Some(id) {
                    tokio::time::sleep(LEADER_CHECK).await;
                }
            };
            controller::run(Arc::clone(&ctx), &opts.watch_namespaces, lost).await;
            leader.store(false, Ordering::Relaxed);
            tracing::info!("no longer the leader: controller stopped, standing by");
        }
    };
    tokio::select! {
        _ = work => {}
        _ = stop => {}
    }
    leader.store(false, Ordering::Relaxed);
    drop(ctx);
    if let Ok(m) = Arc::try_unwrap(member) {
        m.stop().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_come_from_the_statefulset() {
        assert_eq!(member_id("logdb-operator-0").unwrap(), 1);
        assert_eq!(member_id("logdb-operator-2").unwrap(), 3);
        assert!(member_id("logdb-operator").is_err());
        let opts = OperatorOptions {
            listen: "0.0.0.0:7400".parse().unwrap(),
            metrics_listen: "0.0.0.0:9400".parse().unwrap(),
            data_dir: "/data".into(),
            pod_name: "logdb-operator-1".into(),
            service: "logdb-operator".into(),
            namespace: "logdb-system".into(),
            members: 3,
            image: "x".into(),
            storage_class: None,
            watch_namespaces: vec![],
        };
        let p = peers(&opts);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[&2],
            "logdb-operator-1.logdb-operator.logdb-system.svc:7400"
        );
    }
}
