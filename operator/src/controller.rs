//! The LogVolume controller (DESIGN.md §9), shaped like kube-rs's controller-rs: `reconcile` takes
//! one LogVolume to where it should be and says when to look again; `run` drives it with
//! kube-runtime's Controller. One reconcile:
//!
//! 1. deletion: the finalizer removes the volume from the config store, then lets go;
//! 2. the finalizer is in place; the spec passes the CRD's checks (else a condition and a Warning);
//! 3. the compute pods' Secrets are in place (`secrets`: the app login, the CA, a server
//!    certificate renewed before it expires), then the objects of `objects::desired` are
//!    applied (server-side apply, idempotent), sized by the protection groups the config store
//!    holds — growth there scales every storage set by one;
//! 4. the volume exists in the config store (placed once its storage pods have registered);
//! 5. a `logdb.io/failover` annotation becomes a config store failover; the annotation goes away
//!    and the outcome stays in an Event and a condition;
//! 6. compute pods are labelled with their role, so `<name>-rw` reaches the writer;
//! 7. the status (phase, writer, epoch, PGs, sizes, conditions — Ready, Degraded,
//!    FailoverInProgress, Growing, RetentionSized —, observedGeneration) is patched, with an Event on every phase
//!    transition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use logdb_config_store::api::{proto, spec_to_proto};
use logdb_config_store::client::ConfigClient;
use serde_json::json;

use crate::objects::{self, Desired, Settings, ROLE_LABEL};
use crate::rollout;
use crate::secrets;
use crate::spec::{LogVolume, LogVolumeStatus, PendingFailover, ReplicaState, Target};
use crate::units::human_bytes;
use logdb_common::metrics_http::{histogram_mean, scrape, sum};
use logdb_common::peer_tls::Role;
use logdb_common::pki::{Ca, Usage};

/// Removes the volume from the config store before the LogVolume goes.
pub const FINALIZER: &str = "logdb.io/volume";
/// `kubectl annotate lv NAME logdb.io/failover=<compute pod>|auto`.
pub const FAILOVER_ANNOTATION: &str = "logdb.io/failover";
const MANAGER: &str = "logdb-operator";
/// Used share of the allocated size past which the next PG's storage pods are started.
const PREPROVISION_AT: f64 = 0.7;

/// Pods per storage set for a volume of `pgs` PGs that uses (or is about to use: the writer
/// reports what an open transaction will need) `used` bytes: enough PGs that `used` stays under
/// PREPROVISION_AT of them, never past `max_size`, never fewer than the PGs it has.
pub fn storage_pods_for(pgs: u32, used: u64, segment_size: u64, max_size: u64) -> u32 {
    let max_pgs = (max_size / segment_size.max(1)).max(1) as u32;
    let mut n = pgs;
    while n < max_pgs && used as f64 > PREPROVISION_AT * (n as u64 * segment_size) as f64 {
        n += 1;
    }
    n.max(pgs)
}
/// How long a promoted replica may take to serve as writer before the failover counts as failed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("config store: {0}")]
    Config(String),
}

pub struct Context {
    pub client: Client,
    pub config: ConfigClient,
    pub settings: Settings,
    pub recorder: Recorder,
    /// The installation's CA: it issues every LogVolume's peer certificates.
    pub installation_ca: Arc<Ca>,
}

impl Context {
    pub fn new(
        client: Client,
        config: ConfigClient,
        settings: Settings,
        instance: &str,
        installation_ca: Arc<Ca>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance.into()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            settings,
            installation_ca,
        }
    }
}

/// The config store's name of a LogVolume: namespace and name.
pub fn volume_id(lv: &LogVolume) -> String {
    format!(
        "{}-{}",
        lv.namespace().unwrap_or_else(|| "default".into()),
        lv.name_any()
    )
}

fn config_err(s: tonic::Status) -> ControllerError {
    ControllerError::Config(format!("{}: {}", s.code(), s.message()))
}

async fn get_volume(ctx: &Context, id: &str) -> Result<Option<proto::Volume>, ControllerError> {
    let r = ctx
        .config
        .call(|mut c| {
            let name = id.to_string();
            async move { c.get_volume(proto::VolumeRef { name }).await }
        })
        .await;
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s)
            if s.code() == tonic::Code::InvalidArgument
                && s.message().contains("unknown volume") =>
        {
            Ok(None)
        }
        Err(s) => Err(config_err(s)),
    }
}

async fn event(ctx: &Context, lv: &LogVolume, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &lv.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), ControllerError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(obj).expect("object serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(())
}

async fn apply_all(client: &Client, ns: &str, d: &Desired) -> Result<(), ControllerError> {
    apply::<ConfigMap>(client, ns, &d.config).await?;
    for s in &d.storage {
        apply::<StatefulSet>(client, ns, s).await?;
    }
    apply::<StatefulSet>(client, ns, &d.compute).await?;
    for s in &d.services {
        apply::<Service>(client, ns, s).await?;
    }
    for b in &d.budgets {
        apply::<PodDisruptionBudget>(client, ns, b).await?;
    }
    for p in &d.policies {
        apply::<NetworkPolicy>(client, ns, p).await?;
    }
    Ok(())
}

/// A StatefulSet's volume claims never change once it exists: the storage sets keep the claims
/// they were created with (a later `writeRate` or retention changes only the status). Returns
/// the smallest storage PVC request, in bytes.
async fn keep_volume_claims(
    client: &Client,
    ns: &str,
    d: &mut Desired,
) -> Result<(u64, Vec<Option<rollout::SetSeen>>), ControllerError> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let mut smallest = u64::MAX;
    let mut seen = Vec::with_capacity(d.storage.len());
    for s in &mut d.storage {
        let name = s.metadata.name.clone().unwrap_or_default();
        let existing = sets.get_opt(&name).await?;
        seen.push(existing.as_ref().map(|e| {
            rollout::SetSeen {
                annotation: e
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(secrets::PEER_NOT_AFTER))
                    .cloned(),
                settled: rollout::settled(e),
            }
        }));
        let existing = existing.and_then(|e| e.spec.volume_claim_templates);
        let spec = &mut s.spec;
        if let Some(claims) = existing {
            spec.volume_claim_templates = Some(claims);
        }
        let request = spec
            .volume_claim_templates
            .iter()
            .flatten()
            .filter_map(|c| c.spec.as_ref()?.resources.as_ref()?.requests.as_ref())
            .filter_map(|r| r.get("storage"))
            .filter_map(|q| crate::units::parse_quantity("storage", &q.0).ok())
            .min();
        if let Some(bytes) = request {
            smallest = smallest.min(bytes);
        }
    }
    Ok((if smallest == u64::MAX { 0 } else { smallest }, seen))
}

/// What the pods were started with, so a change rolls them: the server certificate's expiry,
/// the login's digest, the peer certificates' expiry.
struct SecretsSeen {
    server_not_after: u64,
    login: String,
    peer_not_after: u64,
}

/// The pods' Secrets (see `secrets`): the app Secret made once (or the named one checked), the
/// CA made once, the server and peer certificates issued when `secrets::renew_due`. Returns
/// what the pods see, or what is wrong with a Secret the user named.
async fn ensure_secrets(
    client: &Client,
    ns: &str,
    lv: &LogVolume,
    installation_ca: &Ca,
) -> Result<Result<SecretsSeen, String>, ControllerError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let app = secrets::app_secret_name(lv);
    let login = match api.get_opt(&app).await? {
        Some(s) => {
            if let Some(problem) = secrets::app_secret_problem(&s) {
                return Ok(Err(problem));
            }
            secrets::login_hash(&s)
        }
        None if lv.spec.app_secret.is_some() => {
            return Ok(Err(format!(
                "spec.appSecret names Secret {app}, which does not exist in namespace {ns}: create it with keys username and password"
            )))
        }
        None => {
            let password = logdb_common::pki::random_password();
            create_once(&api, &secrets::app_secret(lv, &password)).await?;
            // Another reconcile may have made it first: what is stored is what pods read.
            secrets::login_hash(&api.get(&app).await?)
        }
    };
    let ca_name = secrets::ca_secret_name(lv);
    let installation = format!("{ns}/{}", lv.name_any());
    let ca = match api
        .get_opt(&ca_name)
        .await?
        .as_ref()
        .and_then(secrets::ca_of)
    {
        Some((cert, key)) => Ca::from_pem(&installation, &cert, &key)
            .map_err(|e| ControllerError::Config(format!("Secret {ca_name}: {e}")))?,
        None => {
            let ca =
                Ca::create(&installation).map_err(|e| ControllerError::Config(e.to_string()))?;
            create_once(&api, &secrets::ca_secret(lv, &ca.cert_pem, ca.key_pem())).await?;
            // Another reconcile may have made it first: use what is stored.
            let stored = api.get(&ca_name).await?;
            let (cert, key) = secrets::ca_of(&stored).ok_or_else(|| {
                ControllerError::Config(format!("Secret {ca_name} has no ca.crt and ca.key"))
            })?;
            Ca::from_pem(&installation, &cert, &key)
                .map_err(|e| ControllerError::Config(format!("Secret {ca_name}: {e}")))?
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let server = api.get_opt(&secrets::server_secret_name(lv)).await?;
    let server_not_after =
        if secrets::renew_due(server.as_ref(), &ca.cert_pem, secrets::SERVER_KEYS, now) {
            let leaf = ca
                .issue(&lv.name_any(), &secrets::server_names(lv), Usage::Server)
                .map_err(|e| ControllerError::Config(e.to_string()))?;
            apply::<Secret>(client, ns, &secrets::server_secret(lv, &ca.cert_pem, &leaf)).await?;
            leaf.not_after_unix
        } else {
            server
                .as_ref()
                .and_then(|s| secrets::not_after(s, &ca.cert_pem, secrets::SERVER_KEYS))
                .unwrap_or_default()
        };
    let peer = api.get_opt(&secrets::peer_secret_name(lv)).await?;
    let peer_not_after = if secrets::renew_due(
        peer.as_ref(),
        &installation_ca.cert_pem,
        secrets::PEER_KEYS,
        now,
    ) {
        let issue = |role: Role| {
            installation_ca
                .issue(
                    &format!("{} {}", lv.name_any(), role.name()),
                    &secrets::peer_names(lv, role),
                    Usage::Peer,
                )
                .map_err(|e| ControllerError::Config(e.to_string()))
        };
        let (storage, compute) = (issue(Role::Storage)?, issue(Role::Compute)?);
        let s = secrets::peer_secret(lv, &installation_ca.cert_pem, &storage, &compute);
        apply::<Secret>(client, ns, &s).await?;
        storage.not_after_unix.min(compute.not_after_unix)
    } else {
        peer.as_ref()
            .and_then(|s| secrets::not_after(s, &installation_ca.cert_pem, secrets::PEER_KEYS))
            .unwrap_or_default()
    };
    Ok(Ok(SecretsSeen {
        server_not_after,
        login,
        peer_not_after,
    }))
}

/// Something the user must fix: the `Ready` condition and a Warning say what; look again after
/// `requeue_secs`.
async fn not_ready(
    ctx: &Context,
    lv: &LogVolume,
    api: &Api<LogVolume>,
    mut status: LogVolumeStatus,
    reason: &str,
    msg: String,
    requeue_secs: u64,
) -> Result<Action, ControllerError> {
    let generation = lv.metadata.generation;
    status.conditions = vec![condition("Ready", false, reason, msg.clone(), generation)];
    patch_status(api, &lv.name_any(), &status).await?;
    event(ctx, lv, EventType::Warning, reason, msg).await;
    Ok(Action::requeue(Duration::from_secs(requeue_secs)))
}

/// Creates `obj` unless it exists (a Secret made once is never overwritten).
async fn create_once(api: &Api<Secret>, obj: &Secret) -> Result<(), ControllerError> {
    match api.create(&kube::api::PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Takes one LogVolume to where it should be; see the module comment for the steps.
pub async fn reconcile(lv: Arc<LogVolume>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let ns = lv.namespace().unwrap_or_else(|| "default".into());
    let name = lv.name_any();
    let id = volume_id(&lv);
    let api: Api<LogVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let finalizers = lv.finalizers().to_vec();
    let generation = lv.metadata.generation;

    // 1. Deletion.
    if lv.metadata.deletion_timestamp.is_some() {
        if finalizers.iter().any(|f| f == FINALIZER) {
            let r = ctx
                .config
                .call(|mut c| {
                    let name = id.clone();
                    async move { c.delete_volume(proto::VolumeRef { name }).await }
                })
                .await;
            match r {
                Ok(_) => {}
                Err(s) if s.message().contains("unknown volume") => {}
                Err(s) => return Err(config_err(s)),
            }
            event(
                &ctx,
                &lv,
                EventType::Normal,
                "Deleted",
                format!("volume {id} removed from the config store"),
            )
            .await;
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    // 2. Finalizer and spec.
    if !finalizers.iter().any(|f| f == FINALIZER) {
        let mut all = finalizers.clone();
        all.push(FINALIZER.into());
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": all}})),
        )
        .await?;
    }
    let old = lv.status.clone().unwrap_or_default();
    let mut status = LogVolumeStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let spec = match lv.spec.volume_spec(Target::Kubernetes) {
        // Placed only on this LogVolume's own storage pods (they register in its pool).
        Ok(s) => logdb_config_store::model::VolumeSpec {
            pool: id.clone(),
            ..s
        },
        Err(msg) => {
            status.phase = "Failed".into();
            return not_ready(&ctx, &lv, &api, status, "InvalidSpec", msg, 300).await;
        }
    };

    // 3. Objects, sized by the PGs the config store holds — plus, once the volume fills past
    //    PREPROVISION_AT, the pods of the next PG, so that the config store's growth (at 80%)
    //    finds pod k of every set registered when it places PG k there.
    let mut volume = get_volume(&ctx, &id).await?;
    let pgs = volume.as_ref().map_or(1, |v| v.pgs.len().max(1) as u32);
    let storage_pods = volume.as_ref().map_or(pgs, |v| {
        storage_pods_for(pgs, v.used_bytes, spec.segment_size, spec.max_size)
    });
    let mut desired =
        objects::desired(&lv, &ctx.settings, storage_pods).map_err(ControllerError::Config)?;
    let (pvc_bytes, storage_seen) = keep_volume_claims(&ctx.client, &ns, &mut desired).await?;
    let seen = match ensure_secrets(&ctx.client, &ns, &lv, &ctx.installation_ca).await? {
        Ok(t) => t,
        Err(msg) => return not_ready(&ctx, &lv, &api, status, "AppSecretInvalid", msg, 30).await,
    };
    // A renewed certificate, or a changed login, rolls the pods onto it.
    if let Some(t) = desired.compute.spec.template.metadata.as_mut() {
        let a = t.annotations.get_or_insert_with(Default::default);
        a.insert(secrets::NOT_AFTER.into(), seen.server_not_after.to_string());
        a.insert(secrets::LOGIN_HASH.into(), seen.login.clone());
        a.insert(
            secrets::PEER_NOT_AFTER.into(),
            seen.peer_not_after.to_string(),
        );
    }
    // The storage sets roll onto renewed certificates one at a time (see `rollout`).
    let values = rollout::annotations(&storage_seen, &seen.peer_not_after.to_string());
    for (set, value) in desired.storage.iter_mut().zip(values) {
        if let Some(t) = set.spec.template.metadata.as_mut() {
            t.annotations
                .get_or_insert_with(Default::default)
                .insert(secrets::PEER_NOT_AFTER.into(), value);
        }
    }
    apply_all(&ctx.client, &ns, &desired).await?;

    // 4. The volume in the config store.
    if volume.is_none() {
        let req = proto::CreateVolumeRequest {
            name: id.clone(),
            spec: Some(spec_to_proto(&spec)),
        };
        let r = ctx
            .config
            .call(|mut c| {
                let r = req.clone();
                async move { c.create_volume(r).await }
            })
            .await;
        match r {
            Ok(v) => {
                event(
                    &ctx,
                    &lv,
                    EventType::Normal,
                    "Created",
                    format!("volume {id} placed on {} storage nodes", 6),
                )
                .await;
                volume = Some(v);
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                status.phase = "Pending".into();
                status.conditions = vec![condition(
                    "Ready",
                    false,
                    "WaitingForStorage",
                    s.message().to_string(),
                    generation,
                )];
                patch_status(&api, &name, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            Err(s) => return Err(config_err(s)),
        }
    }
    let mut volume = volume.expect("created above");
    let mut conditions = Vec::new();

    // 5. Failover by annotation: ask the config store, then wait (requeueing) until the target
    //    has taken its own ticket — it serves as writer — before the annotation goes.
    let mut promoting = false;
    if let Some(target) = lv.annotations().get(FAILOVER_ANNOTATION).cloned() {
        let outcome = match status.failover.clone() {
            None => match request_failover(&ctx, &id, &target).await {
                Ok(v) => {
                    let note = format!(
                        "failover to {} requested by annotation {target} (epoch {})",
                        v.writer, v.epoch
                    );
                    event(&ctx, &lv, EventType::Normal, "Failover", note.clone()).await;
                    conditions.push(condition(
                        "FailoverInProgress",
                        true,
                        "Promoting",
                        note,
                        generation,
                    ));
                    status.failover = Some(PendingFailover {
                        target: v.writer.clone(),
                        epoch: v.epoch,
                        started_at: Timestamp::now().to_string(),
                    });
                    volume = v;
                    None
                }
                Err(msg) => Some((EventType::Warning, "FailoverFailed", false, msg)),
            },
            Some(p) if volume.writer == p.target && volume.epoch > p.epoch => Some((
                EventType::Normal,
                "FailoverComplete",
                false,
                format!("{} serves as the writer (epoch {})", p.target, volume.epoch),
            )),
            Some(p) if volume.writer != p.target => Some((
                EventType::Warning,
                "FailoverFailed",
                false,
                format!(
                    "{} did not become the writer: the config store names {}",
                    p.target, volume.writer
                ),
            )),
            Some(p) => {
                let waited = p
                    .started_at
                    .parse::<Timestamp>()
                    .map(|t| Timestamp::now().duration_since(t).as_secs())
                    .unwrap_or(i64::MAX);
                if waited > FAILOVER_TIMEOUT.as_secs() as i64 {
                    Some((
                        EventType::Warning,
                        "FailoverTimedOut",
                        false,
                        format!(
                            "{} has not taken its writer ticket after {waited} s",
                            p.target
                        ),
                    ))
                } else {
                    conditions.push(condition(
                        "FailoverInProgress",
                        true,
                        "Promoting",
                        format!("waiting for {} to serve as the writer", p.target),
                        generation,
                    ));
                    None
                }
            }
        };
        match outcome {
            Some((type_, reason, ok, note)) => {
                event(&ctx, &lv, type_, reason, note.clone()).await;
                conditions.push(condition(
                    "FailoverInProgress",
                    ok,
                    reason,
                    note,
                    generation,
                ));
                status.failover = None;
                let mut annotations: BTreeMap<String, Option<String>> = BTreeMap::new();
                annotations.insert(FAILOVER_ANNOTATION.into(), None);
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
                )
                .await?;
            }
            None => promoting = true,
        }
    } else {
        status.failover = None;
    }

    // 6. Role labels on compute pods.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=compute");
    let compute = pods.list(&ListParams::default().labels(&selector)).await?;
    let mut replicas = Vec::new();
    for pod in &compute.items {
        let pod_name = pod.name_any();
        let role = if pod_name == volume.writer {
            "writer"
        } else {
            "replica"
        };
        // During a promotion the labels stay: `<name>-rw` moves once the target serves.
        if !promoting && pod.labels().get(ROLE_LABEL).map(String::as_str) != Some(role) {
            pods.patch(
                &pod_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {ROLE_LABEL: role}}})),
            )
            .await?;
        }
        if role == "replica" {
            replicas.push(replica_state(pod).await);
        }
    }

    // 7. Status. Storage sets whose pods are not all ready make the volume Degraded (it still
    //    writes while 4 of 6 copies of every PG answer).
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut short = Vec::new();
    for s in &desired.storage {
        let set_name = s.metadata.name.clone().unwrap_or_default();
        if let Some(st) = sets.get_opt(&set_name).await?.and_then(|s| s.status) {
            let ready = st.ready_replicas.unwrap_or(0);
            // Pods holding a PG (a pod started ahead of growth holds none yet).
            if ready < pgs as i32 {
                short.push(format!("{set_name}: {ready}/{pgs} ready"));
            }
        }
    }
    conditions.push(condition(
        "Degraded",
        !short.is_empty(),
        if short.is_empty() {
            "AllStorageReady"
        } else {
            "StoragePodsNotReady"
        },
        if short.is_empty() {
            "every storage pod is ready".to_string()
        } else {
            short.join(", ")
        },
        generation,
    ));
    let registered = volume.computes.iter().any(|c| c.id == volume.writer);
    status.phase = match (promoting, registered, short.is_empty()) {
        (true, _, _) => "FailoverInProgress",
        (false, false, _) => "Pending",
        (false, true, false) => "Degraded",
        (false, true, true) => "Ready",
    }
    .into();
    status.writer = volume.writer.clone();
    status.epoch = volume.epoch;
    status.protection_groups = volume.pgs.len() as u32;
    status.allocated_bytes = volume.allocated_bytes;
    status.used_bytes = volume.used_bytes;
    status.allocated = human_bytes(volume.allocated_bytes)
        .replace(".0 ", "")
        .replace("iB", "i");
    let ready = replicas.iter().filter(|r| r.ready).count();
    status.replicas_ready = format!("{ready}/{}", spec.replicas);
    status.lag = replicas
        .iter()
        .filter_map(|r| r.lag_ms)
        .reduce(f64::max)
        .map(|ms| format!("{ms:.1}ms"))
        .unwrap_or_default();
    status.replicas = replicas;
    conditions.push(condition(
        "Ready",
        registered,
        if registered {
            "WriterServing"
        } else {
            "WaitingForWriter"
        },
        format!("writer {:?}, epoch {}", volume.writer, volume.epoch),
        generation,
    ));
    conditions.push(condition(
        "Growing",
        volume.pgs.len() as u32 > pgs || storage_pods > pgs,
        "ProtectionGroups",
        format!(
            "{} protection groups; storage pods for {storage_pods} per set",
            volume.pgs.len()
        ),
        generation,
    ));
    // Whether the storage PVCs hold the retention window at the write rate asked for.
    let plan = crate::sizing::pvc_plan(
        spec.segment_size,
        spec.retention_secs,
        lv.spec.write_rate().unwrap_or(None),
    );
    let (sized, reason, message) =
        crate::sizing::retention_condition(&plan, pvc_bytes, &lv.spec.retention);
    conditions.push(condition(
        "RetentionSized",
        sized,
        reason,
        message,
        generation,
    ));
    status.conditions = conditions;
    if old.phase != status.phase {
        event(
            &ctx,
            &lv,
            EventType::Normal,
            &status.phase,
            format!(
                "phase {} → {}",
                if old.phase.is_empty() {
                    "none"
                } else {
                    &old.phase
                },
                status.phase
            ),
        )
        .await;
    }
    if old.writer != status.writer && !old.writer.is_empty() {
        event(
            &ctx,
            &lv,
            EventType::Normal,
            "WriterChanged",
            format!("writer {} → {}", old.writer, status.writer),
        )
        .await;
    }
    patch_status(&api, &name, &status).await?;
    if promoting {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if volume.pgs.len() as u32 > pgs {
        // The volume grew while we applied: scale the storage sets now.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// A replica pod as the status shows it: ready per its Ready condition; read point and mean lag
/// from its metrics endpoint (when the pod has an address and answers).
async fn replica_state(pod: &Pod) -> ReplicaState {
    let st = pod.status.as_ref();
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let mut state = ReplicaState {
        name: pod.name_any(),
        ready,
        read_point: 0,
        lag_ms: None,
    };
    if let Some(ip) = st.and_then(|s| s.pod_ip.clone()) {
        let text = scrape(&format!("{ip}:{}", objects::COMPUTE_METRICS_PORT)).await;
        state.read_point = sum(&text, "logdb_compute_read_point ") as u64;
        state.lag_ms =
            histogram_mean("", &text, "logdb_compute_replica_lag_seconds").map(|s| s * 1000.0);
    }
    state
}

/// Asks the config store to make `target` (a compute pod, or `auto`) the writer.
async fn request_failover(ctx: &Context, id: &str, target: &str) -> Result<proto::Volume, String> {
    let req = proto::FailoverRequest {
        volume: id.to_string(),
        target: if target == "auto" {
            String::new()
        } else {
            target.to_string()
        },
    };
    ctx.config
        .call(|mut c| {
            let r = req.clone();
            async move { c.failover(r).await }
        })
        .await
        .map_err(|s| format!("failover to {target} refused: {}", s.message()))
}

async fn patch_status(
    api: &Api<LogVolume>,
    name: &str,
    status: &LogVolumeStatus,
) -> Result<(), ControllerError> {
    let mut value = serde_json::to_value(status).expect("status serializes");
    if status.failover.is_none() {
        // A merge patch keeps what it does not mention: clear it explicitly.
        value["failover"] = serde_json::Value::Null;
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": value})),
    )
    .await?;
    Ok(())
}

fn error_policy(_lv: Arc<LogVolume>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until `stop` resolves.
/// Runs the controller until `stop`: over every namespace, or — with `namespaces` — one
/// controller per namespace, each watching only its own (what a namespace-scoped Role allows).
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let stop = stop.shared();
    let apis: Vec<(Api<LogVolume>, Api<StatefulSet>)> = if namespaces.is_empty() {
        vec![(Api::all(ctx.client.clone()), Api::all(ctx.client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                )
            })
            .collect()
    };
    futures::future::join_all(apis.into_iter().map(|(volumes, sets)| {
        Controller::new(volumes, watcher::Config::default())
            .owns(
                sets,
                watcher::Config::default().labels("app.kubernetes.io/managed-by=logdb-operator"),
            )
            .graceful_shutdown_on(stop.clone())
            .run(reconcile, error_policy, Arc::clone(&ctx))
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile error");
                }
            })
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::storage_pods_for;

    const GIB: u64 = 1 << 30;

    #[test]
    fn storage_pods_cover_what_the_writer_is_about_to_use_up_to_the_maximum() {
        // Below 70%: the PGs it has.
        assert_eq!(storage_pods_for(1, 7 * GIB, 10 * GIB, 40 * GIB), 1);
        // Just past: the next PG's pods.
        assert_eq!(storage_pods_for(1, 7 * GIB + 1, 10 * GIB, 40 * GIB), 2);
        // A large transaction to come: every PG it needs at once.
        assert_eq!(storage_pods_for(1, 25 * GIB, 10 * GIB, 40 * GIB), 4);
        // Never past maxSize, never fewer than the PGs that exist.
        assert_eq!(storage_pods_for(1, 900 * GIB, 10 * GIB, 40 * GIB), 4);
        assert_eq!(storage_pods_for(3, 0, 10 * GIB, 40 * GIB), 3);
    }
}
